"""FLOPs of a forward, per part, with PyTorch's counter (conventions: ``copa.eval.efficiency``).

``torch.utils.flop_counter`` counts matmuls, linears, convolutions and attention (not norms,
softmax, activations, gathers) and reports FLOPs = 2 x multiply-accumulates. It has no formula for
the CPU attention kernels (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward)
and counts them as 0; ``flop_counter_mode`` adds PyTorch's own sdpa formulas for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's sdpa formula (q k^T and attn v: 2 x 2 b h s_q s_k d FLOPs), for the CPU kernel."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's sdpa backward formula, for the CPU kernel's backward (a training step's count)."""
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter_mode() -> FlopCounterMode:
    """``FlopCounterMode`` that also counts attention on the CPU (see the module docstring)."""
    extra = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flop)):
        if hasattr(torch.ops.aten, name):
            extra[getattr(torch.ops.aten, name)] = formula
    return FlopCounterMode(display=False, custom_mapping=extra)


def part_flops(model: nn.Module, images: Tensor, input_ids: Tensor, attention_mask: Tensor,
               forward: Callable) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """FLOPs (2 x MACs) of ``forward`` (an architecture's ``cost_forward``) per part it enters (e.g.
    text, vision, fusion), and per part by module path (the counter's breakdown)."""
    totals: dict[str, int] = {}
    by_module: dict[str, dict[str, int]] = {}

    @contextmanager
    def count(name: str) -> Iterator[None]:
        with flop_counter_mode() as counter:
            yield
        totals[name] = counter.get_total_flops()
        by_module[name] = {path: sum(ops.values()) for path, ops in counter.get_flop_counts().items()}

    with torch.no_grad():
        forward(model, images, input_ids, attention_mask, count)
    return totals, by_module


def forward_flops(model: nn.Module, images: Tensor, input_ids: Tensor, attention_mask: Tensor, forward: Callable) -> dict[str, int]:
    """FLOPs (2 x MACs) of ``forward`` (an architecture's ``cost_forward``) per part (e.g. text,
    vision, fusion) and in total."""
    totals, _ = part_flops(model, images, input_ids, attention_mask, forward)
    return {**totals, "total": sum(totals.values())}
