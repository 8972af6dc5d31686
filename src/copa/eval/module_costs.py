"""FLOPs of a dual-stream model's cost forward per module, the TPD's detector apart (issue 21's
paper-scale cost table; conventions of the counter: ``copa.eval.flops``).

The architecture's ``cost_forward`` (``copa.models.copa.understanding_forward``) enters a part
context around text / vision / fusion; each part gets its own ``FlopCounterMode`` here, whose
per-module breakdown (``get_flop_counts``, keyed by module path from the module the part calls
first: ``VisionEncoder.selector``, ``VisionEncoder.blocks.5``) separates the detector: the
selector runs its layer's block itself (``copa.models.selectors``), so the detector's work is
what the selector counted beyond the blocks at its locations: the TPD's MLP (its first layer's
text half once per image, its patch half per patch), nothing for ``none`` and for a TPD that keeps
every patch (keep ratio 1.0, COPA's "w/o TPD": ``select_text`` skips the MLP when nothing is
dropped). Selectors that split their block (``cls_attention``, ``text_attention``: the attention
half computed outside the block's module) cannot be separated this way and are refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from copa.eval.flops import flop_counter_mode, part_flops

MODULES = ("text", "vit", "detector", "fusion")  # the parts of the understanding forward, in order
SEPARABLE_SELECTIONS = ("none", "tpd", "oracle", "random")  # selectors that run their layer's block as a whole


def module_flops(model: nn.Module, images: Tensor, input_ids: Tensor, attention_mask: Tensor,
                 forward: Callable) -> dict[str, int]:
    """FLOPs (2 x MACs) of ``forward`` (a dual-stream ``cost_forward``) per module of ``MODULES``
    and in ``total``: ``vit`` is the vision part without the detector."""
    selection = model.spec.selection
    if selection not in SEPARABLE_SELECTIONS:
        raise ValueError(f"model.selection.method {selection!r}: its detector cannot be told apart from its layer's block "
                         f"(separable: {', '.join(SEPARABLE_SELECTIONS)})")
    parts, by_module = part_flops(model, images, input_ids, attention_mask, forward)
    if set(parts) != {"text", "vision", "fusion"}:
        raise ValueError(f"the cost forward entered parts {sorted(parts)}, expected text, vision and fusion (a dual-stream model)")
    detector = detector_flops(by_module["vision"], type(model.vision).__name__, model.vision.locations)
    counts = {"text": parts["text"], "vit": parts["vision"] - detector, "detector": detector, "fusion": parts["fusion"]}
    return {**counts, "total": sum(counts.values())}


def detector_flops(by_module: dict[str, int], root: str, locations: frozenset[int]) -> int:
    """The selector's own FLOPs in a vision breakdown ``by_module`` (module path -> FLOPs, paths
    from ``root``): the selector's count less the blocks it ran (layer k is ``blocks.{k-1}``)."""
    selector = by_module.get(f"{root}.selector", 0)
    blocks = sum(by_module.get(f"{root}.blocks.{k - 1}", 0) for k in locations)
    if selector and not blocks:
        raise ValueError(f"{root}.selector counted {selector} FLOPs but its blocks at layers {sorted(locations)} none: "
                         "the selector does not run its block as a whole")
    return selector - blocks


def call_flops(call: Callable[[], object]) -> int:
    """FLOPs of ``call()`` in total, e.g. the decoder's answer generation (its beam search's own
    log-softmax and top-k are not counted, as norms are not) or a whole reference model."""
    with torch.no_grad(), flop_counter_mode() as counter:
        call()
    return counter.get_total_flops()
