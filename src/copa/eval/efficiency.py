"""Cost of a COPA model in the paper's protocols (COPA Table 4 / 9 and Figure 3).

Conventions (``CONVENTIONS`` below is written into every record):

- **FLOPs** of one image-text pair's forward, the architecture's ``cost_forward``
  (copa.train.architectures): dual-stream, the understanding forward, the VQA / ITM path: text
  encoder, ViT with its selector guided by the text [CLS] (the TPD on), fusion; no decoder. A
  single-stream model (COPA-S, ViLT): its one transformer over [text; image], the TPD guided by the
  overall [CLS]; no head. Counted by
  ``torch.utils.flop_counter`` (matmuls, linears, the patch convolution and attention; not norms,
  softmax, activations, gathers), which reports FLOPs = 2 x multiply-accumulates: both are given.
  PyTorch's counter has no formula for the CPU attention kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``) and counts it as 0; ``flop_counter_mode``
  adds PyTorch's own sdpa formula for it. The paper's "FLOPs(G)" are most likely MACs.
- **Throughput**: image-text pairs/s of the same forward (eval mode, no grad, float32) at the
  largest batch found by doubling from 1 up to ``max_batch`` (on a GPU also stopping at the first
  out-of-memory; on a CPU the cap decides), after warm-up forwards.
- **Latency**: the median wall time of batch-1 forwards, in ms, after warm-up.
- **Training memory** (Figure 3): one step of the architecture's pretraining module (forward +
  backward, no optimiser state, train mode, the detector on as after the warm-up) on a synthetic
  batch (dual-stream ``CopaPretraining``, single-stream ``SingleStreamPretraining``). Dual-stream
  (``memory_by_itm_guidance``): the step under
  each ITM encoding (``pretrain.itm_guidance``: ``own_caption`` reuses the image's own-caption
  selection for the negatives, ``pair_text`` re-encodes each negative under its text), each from
  the same seeded model and batch; the run's encoding is the record's headline. On
  any device: the bytes of the tensors autograd saves for backward (unique storages, parameters
  and buffers excluded and reported apart); deterministic, a proxy of the activation memory. On a
  GPU also ``torch.cuda.max_memory_allocated`` of the step.

Models are built fresh (seeded) from a run's params at the protocol sizes: costs do not depend on
the weights, and the position embeddings then fit the protocol resolution.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from copa.config import ITM_GUIDANCES, EfficiencyParams, Params
from copa.data.tokenizer import SPECIAL_TOKENS
from copa.train.architectures import Architecture, architecture, resolve

# the FLOPs convention: what the architecture's forward runs (Architecture.cost_forward_text) goes in {forward}
FLOPS_CONVENTION = ("torch.utils.flop_counter over one image-text pair's forward: {forward}; matmuls, linears, convolutions and "
                    "attention (sdpa) counted, norms / softmax / activations not; GFLOPs = 2 x GMACs")
CONVENTIONS = {
    "throughput": "image-text pairs/s of the same forward (eval, no grad, float32) at the largest batch of the "
                  "doubling search (cap max_batch; on a GPU also the first out-of-memory), after warm-up",
    "latency": "median ms of batch-1 forwards, after warm-up",
    "training_memory": "one step of the architecture's pretraining module (forward + backward, no optimiser state, "
                       "detector on) on a synthetic batch: bytes of the unique storages autograd saves for backward, "
                       "parameters and buffers excluded; on a GPU also torch.cuda.max_memory_allocated of the step; "
                       "dual-stream: under the run's ITM encoding (itm_guidance), and under each encoding in by_itm_guidance",
    "weights": "fresh seeded initialisation at the protocol sizes (costs do not depend on weight values)",
}

GIGA = 1e9
MIB = 2**20


# --------------------------------------------------------------------------- FLOPs
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's sdpa formula (q k^T and attn v: 2 x 2 b h s_q s_k d FLOPs), for the CPU kernel."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter_mode() -> FlopCounterMode:
    """``FlopCounterMode`` that also counts attention on the CPU (see the module docstring)."""
    extra = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop
    return FlopCounterMode(display=False, custom_mapping=extra)


def forward_flops(model: nn.Module, images: Tensor, input_ids: Tensor, attention_mask: Tensor, forward: Callable) -> dict[str, int]:
    """FLOPs (2 x MACs) of ``forward`` (an architecture's ``cost_forward``) per part (e.g. text,
    vision, fusion) and in total."""
    counts: dict[str, int] = {}

    @contextmanager
    def count(name: str) -> Iterator[None]:
        with flop_counter_mode() as counter:
            yield
        counts[name] = counter.get_total_flops()

    with torch.no_grad():
        forward(model, images, input_ids, attention_mask, count)
    return {**counts, "total": sum(counts.values())}


# --------------------------------------------------------------------------- models and inputs
def protocol_spec(params: Params, vocab_size: int, image_size: int, text_length: int) -> Any:
    """The run's model spec (its architecture's ``spec``) at another resolution, with room for
    ``text_length`` tokens."""
    spec = resolve(architecture(params).spec)(params, vocab_size)
    return dataclasses.replace(spec, image_size=image_size, max_text_length=max(spec.max_text_length, text_length))


def protocol_model(params: Params, vocab_size: int, settings: EfficiencyParams) -> tuple[nn.Module, Callable, dict]:
    """The model whose costs are measured (fresh, seeded, at the protocol's sizes), its forward
    (the architecture's ``cost_forward``) and its description for the record."""
    arch = architecture(params)
    spec = protocol_spec(params, vocab_size, settings.image_size, settings.text_length)
    torch.manual_seed(params.seed)
    model = resolve(arch.model)(spec)
    description = {"architecture": arch.name, "selection": spec.selection, "location": list(params.model.selection.location),
                   "keep_ratio": spec.keep_ratio, **resolve(arch.describe)(model)}
    return model, resolve(arch.cost_forward), description


def pair_inputs(batch: int, image_size: int, text_length: int, vocab_size: int, device: torch.device,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random images (B, 3, S, S), token ids (B, L) with [CLS] ... [SEP] in the project's WordPiece
    layout, and a full attention mask (B, L)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (batch, text_length), generator=g)
    ids[:, 0], ids[:, -1] = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")
    return images.to(device), ids.to(device), torch.ones(batch, text_length, dtype=torch.long, device=device)


class _Vocabulary:
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


def pretraining_batch(pairs: int, objects: int, image_size: int, text_length: int, patch_size: int, vocab_size: int,
                      device: torch.device, seed: int = 0) -> dict:
    """A synthetic ``CopaPretraining`` batch: pairs {images, input_ids, attention_mask}, objects {the
    same + patch_labels (B_O, n) in {0, 1}}, seed."""
    images, ids, mask = pair_inputs(pairs, image_size, text_length, vocab_size, device, seed)
    o_images, o_ids, o_mask = pair_inputs(objects, image_size, text_length, vocab_size, device, seed + 1)
    n = (image_size // patch_size) ** 2
    labels = (torch.rand(objects, n, generator=torch.Generator().manual_seed(seed + 2)) > 0.7).float()
    return {"pairs": {"images": images, "input_ids": ids, "attention_mask": mask},
            "objects": {"images": o_images, "input_ids": o_ids, "attention_mask": o_mask, "patch_labels": labels.to(device)},
            "seed": seed}


# --------------------------------------------------------------------------- timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, iterations: int) -> list[float]:
    """Seconds of each of ``iterations`` calls of ``fn`` after ``warmup`` untimed ones."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for _ in range(warmup):
        fn()
    _synchronize(device)
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def largest_batch(fits: Callable[[int], bool], max_batch: int) -> tuple[int, list[int]]:
    """The doubling search: batches 1, 2, 4, ... (the last step clipped to ``max_batch``) while
    ``fits(batch)``; returns the largest that fit and the batches tried."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    tried = [1]
    if not fits(1):
        raise RuntimeError("a batch of one image-text pair does not fit on the device")
    batch = 1
    while batch < max_batch:
        candidate = min(2 * batch, max_batch)
        tried.append(candidate)
        if not fits(candidate):
            break
        batch = candidate
    return batch, tried


def _fits_on(device: torch.device, run: Callable[[int], Any]) -> Callable[[int], bool]:
    """On a GPU: ``run(batch)`` completes without running out of memory; on a CPU: always (the cap decides)."""
    if device.type != "cuda":
        return lambda batch: True

    def fits(batch: int) -> bool:
        out_of_memory = False
        try:
            run(batch)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # the tensors of the failed call go with the exception, before empty_cache
        gc.collect()
        torch.cuda.empty_cache()
        return not out_of_memory

    return fits


def throughput_and_latency(model: nn.Module, settings: EfficiencyParams, vocab_size: int, device: torch.device,
                           model_forward: Callable) -> dict:
    """Pairs/s at the largest batch of the search, and batch-1 latency (ms), of ``model_forward``."""
    size, length, t, lat = settings.image_size, settings.text_length, settings.throughput, settings.latency

    def forward(inputs: tuple[Tensor, Tensor, Tensor]) -> Callable[[], Tensor]:
        return lambda: model_forward(model, *inputs)

    with torch.no_grad():
        batch, tried = largest_batch(_fits_on(device, lambda b: forward(pair_inputs(b, size, length, vocab_size, device))()),
                                     t.max_batch)
        seconds = timed(forward(pair_inputs(batch, size, length, vocab_size, device)), device, t.warmup, t.iterations)
        single = timed(forward(pair_inputs(1, size, length, vocab_size, device)), device, lat.warmup, lat.iterations)
    return {
        "throughput": {
            "image_size": size, "text_length": length, "batch": batch, "batches_tried": tried,
            "stopped_by": "max_batch" if batch == t.max_batch else "out_of_memory",
            "warmup": t.warmup, "iterations": t.iterations,
            "pairs_per_s": batch * len(seconds) / sum(seconds),
            "median_s_per_batch": statistics.median(seconds),
        },
        "latency": {
            "image_size": size, "text_length": length, "batch": 1, "warmup": lat.warmup, "iterations": lat.iterations,
            "median_ms": 1000 * statistics.median(single), "min_ms": 1000 * min(single), "max_ms": 1000 * max(single),
        },
    }


# --------------------------------------------------------------------------- training memory
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
    model = resolve(arch.build_pretraining)(params, _Vocabulary(vocab_size)).to(device).train()
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


# --------------------------------------------------------------------------- everything
def device_info(device: torch.device) -> dict:
    """Where the numbers were measured."""
    info = {"device": str(device), "cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "dtype": "float32"}
    if hasattr(os, "getloadavg"):  # other work on the machine slows the timings down
        info["load_average_1min"] = os.getloadavg()[0]
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure_efficiency(params: Params, vocab_size: int, settings: EfficiencyParams, device: torch.device | str = "cpu",
                       parts: tuple[str, ...] = ("flops", "speed", "memory")) -> dict:
    """FLOPs, throughput, latency and training memory of the model ``params`` describe (with a
    vocabulary of ``vocab_size``), at the protocol of ``settings``; ``parts`` picks what to measure."""
    device = torch.device(device)
    model, forward, description = protocol_model(params, vocab_size, settings)
    model = model.to(device).eval()
    grid = settings.image_size // params.patch_labels.patch_size
    record: dict[str, Any] = {
        "conventions": {"flops": FLOPS_CONVENTION.format(forward=architecture(params).cost_forward_text), **CONVENTIONS},
        "device": device_info(device),
        "settings": dataclasses.asdict(settings),
        "model": description,
    }
    if "flops" in parts:
        flops = forward_flops(model, *pair_inputs(1, settings.image_size, settings.text_length, vocab_size, device), forward=forward)
        record["flops"] = {
            "image_size": settings.image_size, "text_length": settings.text_length, "batch": 1,
            "image_tokens": 1 + grid * grid,
            "convention": "GFLOPs = 2 x GMACs (multiply-accumulates); the paper's FLOPs(G) are most likely GMACs",
            "gmacs": {k: v / 2 / GIGA for k, v in flops.items()},
            "gflops": {k: v / GIGA for k, v in flops.items()},
        }
    if "speed" in parts:
        record.update(throughput_and_latency(model, settings, vocab_size, device, forward))
    del model
    if "memory" in parts:
        record["training_memory"] = training_memory(params, vocab_size, settings, device)
    return record


def summary_line(record: dict) -> str:
    """One line of the headline numbers of a ``measure_efficiency`` record."""
    out = []
    if "flops" in record:
        f = record["flops"]
        out.append(f"{f['gmacs']['total']:.3f} GMACs = {f['gflops']['total']:.3f} GFLOPs (2 x MACs) per pair at "
                   f"{f['image_size']} px / {f['text_length']} tokens")
    if "throughput" in record:
        t, lat = record["throughput"], record["latency"]
        out.append(f"{t['pairs_per_s']:.1f} pairs/s at batch {t['batch']} ({t['stopped_by']}); latency {lat['median_ms']:.1f} ms")
    if "training_memory" in record:
        m = record["training_memory"]
        text = f"training step (batch {m['batch_size']} + {m['object_batch_size']} objects, {m['image_size']} px, {m['text_length']} tokens) "
        if m["out_of_memory"]:
            text += "out of GPU memory"
        else:
            text += f"saves {m['saved_mib']:.0f} MiB for backward + {m['parameter_bytes'] / MIB:.0f} MiB parameters"
        if "cuda_max_allocated_mib" in m:
            text += f", peak allocated {m['cuda_max_allocated_mib']:.0f} MiB"
        if "by_itm_guidance" in m:
            each = ", ".join(f"{name} out of GPU memory" if e["out_of_memory"] else f"{name} {e['saved_mib']:.0f} MiB"
                             for name, e in m["by_itm_guidance"].items())
            text += f" under ITM {m['itm_guidance']} (saved by ITM encoding: {each})"
        out.append(text)
    device = record["device"]
    where = device.get("gpu") or f"{device['cpu']}, {device['threads']} threads"
    return "; ".join(out) + f" [{where}]"
