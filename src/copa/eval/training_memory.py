"""Memory of one pretraining step (COPA Figure 3; conventions: ``copa.eval.efficiency``): the bytes
autograd saves for backward, and on a GPU the allocator's peak."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from copa.config import ITM_GUIDANCES, EfficiencyParams, Params
from copa.data.tokenizer import SPECIAL_TOKENS
from copa.eval.cost_inputs import pretraining_batch
from copa.train.architectures import Architecture, architecture, resolve

MIB = 2**20


class SizedVocabulary:
    """What ``build_pretraining`` reads of a tokenizer, for ``vocab_size`` ids in the project's
    WordPiece layout ([PAD]=0 ... [MASK]=4): costs do not depend on which ids are special."""

    all_special_tokens = list(SPECIAL_TOKENS)
    pad_token_id = SPECIAL_TOKENS.index("[PAD]")
    mask_token_id = SPECIAL_TOKENS.index("[MASK]")

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def convert_tokens_to_ids(self, token: str) -> int:
        return SPECIAL_TOKENS.index(token)


class _Saved:
    """What autograd stores for a saved tensor while ``saved_for_backward`` watches: a box that
    lives exactly as long as the graph node that saved it."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


def saved_for_backward(step: Callable[[], Tensor], exclude: Iterable[Tensor] = ()) -> tuple[Tensor, dict]:
    """Run ``step()`` (it returns a loss) under ``saved_tensors_hooks`` and count what the graph
    still holds for backward when it returns: the bytes of the unique storages (by address; they
    are all alive then) of the saved tensors, those of ``exclude`` (parameters, buffers) left out.
    Branches whose graph was dropped during the step (e.g. a detached metric) do not count."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    live: weakref.WeakSet[_Saved] = weakref.WeakSet()

    def pack(tensor: Tensor) -> _Saved:
        box = _Saved(tensor)
        live.add(box)
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        loss = step()
    gc.collect()  # graph nodes in reference cycles go now, not at some later collection
    storages: dict[int, int] = {}
    boxes = list(live)
    for box in boxes:
        storage = box.tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages.setdefault(storage.data_ptr(), storage.nbytes())
    return loss, {"saved_bytes": sum(storages.values()), "saved_storages": len(storages), "saved_tensors": len(boxes)}


def training_memory(params: Params, vocab_size: int, settings: EfficiencyParams, device: torch.device) -> dict:
    """Memory of one step of the run's pretraining module at the ``memory`` settings. An
    architecture with ``memory_by_itm_guidance`` (dual-stream): the step under each ITM encoding
    (``ITM_GUIDANCES``; the same seeded model and batch) in ``by_itm_guidance``, the run's
    (``pretrain.itm_guidance``) also at the top level."""
    arch = architecture(params)
    m = settings.memory
    sized = dataclasses.replace(
        params,
        patch_labels=dataclasses.replace(params.patch_labels, image_size=m.image_size),
        model=dataclasses.replace(params.model, max_text_length=max(params.model.max_text_length, m.text_length)),
    )
    batch = pretraining_batch(m.batch_size, m.object_batch_size, m.image_size, m.text_length,
                              params.patch_labels.patch_size, vocab_size, device, params.seed)
    sizes = {"batch_size": m.batch_size, "object_batch_size": m.object_batch_size, "image_size": m.image_size, "text_length": m.text_length}
    if not arch.memory_by_itm_guidance:
        step, step_sizes, memory = _step_memory(arch, sized, vocab_size, batch, device)
        return {"step": _step_text(step, arch), **sizes, **step_sizes, **memory}
    by_encoding = {}
    for encoding in ITM_GUIDANCES:
        encoded = dataclasses.replace(sized, pretrain=dataclasses.replace(sized.pretrain, itm_guidance=encoding))
        step, step_sizes, by_encoding[encoding] = _step_memory(arch, encoded, vocab_size, batch, device)
    return {"step": _step_text(step, arch), **sizes, "itm_guidance": params.pretrain.itm_guidance, "itc_image": params.pretrain.itc_image,
            **step_sizes, **by_encoding[params.pretrain.itm_guidance], "by_itm_guidance": by_encoding}


OBJECTIVE_NAMES = {"itc": "ITC", "itm": "ITM", "mlm": "MLM", "prefix": "PrefixLM", "pta": "PTA"}  # as the paper writes them


def _step_text(step: str, arch: Architecture) -> str:
    """What the record says the measured step is: the module and its objectives."""
    objectives = " + ".join(OBJECTIVE_NAMES.get(name, name) for name in arch.objectives)
    return f"{step} forward + backward ({objectives}), detector on, no optimiser state"


def _step_memory(arch: Architecture, params: Params, vocab_size: int, batch: dict, device: torch.device) -> tuple[str, dict, dict]:
    """(the class of the step module ``arch`` builds from ``params``, fresh and seeded; its sizes;
    the memory of its step on ``batch`` with the detector on, as after the warm-up: the TPD selects
    for most of the run)."""
    torch.manual_seed(params.seed)
    model = resolve(arch.build_pretraining)(params, SizedVocabulary(vocab_size)).to(device).train()
    model.detector_on.fill_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
    sizes = {
        "trainable_parameters": sum(p.numel() for p in trainable),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "other_state_bytes": sum(t.numel() * t.element_size() for t in state),  # momentum encoders, queue, buffers
    }
    memory: dict[str, Any] = {"out_of_memory": False}
    try:
        loss, saved = saved_for_backward(lambda: model(batch)["loss"], [*trainable, *state])
        loss.backward()
        del loss
        memory.update(saved, saved_mib=saved["saved_bytes"] / MIB)
        if device.type == "cuda":  # the same step again (the first one warmed up the kernels), measured by the allocator
            model.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            model(batch)["loss"].backward()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            memory.update(cuda_allocated_before_bytes=before, cuda_max_allocated_bytes=peak, cuda_max_allocated_mib=peak / MIB,
                          cuda_max_reserved_bytes=torch.cuda.max_memory_reserved(device))
    except torch.cuda.OutOfMemoryError:  # the step does not fit on this GPU: say so, measure the rest
        memory["out_of_memory"] = True
    return type(model).__name__, sizes, memory
