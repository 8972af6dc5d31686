"""Where one pretraining step's time goes (issue 21): the real step, its data loader included,
against the machine's own matrix-multiply rate.

A step's counted FLOPs (``copa.eval.flops``: matmuls, linears, convolutions, attention; forward and
backward) divided by its wall time is its FLOP rate; a 2048 x 2048 float32 matmul timed in the same
process, interleaved with the steps (step, matmul, step, matmul, ...), is what the machine's BLAS
reaches. Their per-round ratio is the step's efficiency. One more step under ``torch.profiler`` says
where the rest goes: the top operators by self time, the matmul kernels' own rate at the step's
shapes (the step's ceiling: the ratio it would reach if everything but those kernels were free),
and each objective's share of the forward and of the backward (``objective_scope`` marks each
objective's forward; a backward node inherits the scope of the forward op that made it, through
the autograd sequence number).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from copa.eval.flops import flop_counter_mode
from copa.eval.paired_timing import spread
from copa.models.objectives import SCOPE_PREFIX
from copa.train.engine import training_step

MATMUL_SIDE = 2048
# the kernels the FLOP counter counts (their self time is the step's matmul work)
MATMUL_KERNELS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution", "aten::convolution_backward",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
})
BACKWARD_NODE = "autograd::engine::evaluate_function: "
OPTIMIZER_STEP = "Optimizer.step#AdamW.step"  # torch's own profiler scope of AdamW's step
AFTER_STEP_SCOPE = "after_step"
UNATTRIBUTED = "other"  # backward nodes of ops outside every objective scope (the loss sum, gradient accumulation)


def matmul_reference(side: int = MATMUL_SIDE) -> tuple[Callable[[], Any], int]:
    """A same-process BLAS reference: a call of a ``side`` x ``side`` float32 matmul and its FLOPs."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    return (lambda: a @ b), 2 * side**3


def profile_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[Any],
                  after_step: Callable[[int], None], rounds: int, warmup: int, top: int = 12) -> dict[str, Any]:
    """Time ``rounds`` real steps of ``model`` (each: the next of ``batches``, then the engine's
    ``training_step`` and ``after_step``), each followed by the matmul reference, after ``warmup``
    untimed ones; count each timed batch's FLOPs; profile one more step. Needs
    ``warmup + rounds + 1`` batches."""
    if rounds < 2 or warmup < 0:
        raise ValueError(f"need rounds >= 2 and warmup >= 0, got {rounds} and {warmup}")
    matmul, matmul_flops = matmul_reference()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    done = 0

    def update(batch: Any) -> None:
        nonlocal done
        training_step(model, batch, optimizer, scaler, nullcontext(), None)
        with record_function(AFTER_STEP_SCOPE):
            after_step(done)
        done += 1

    model.train()
    for _ in range(warmup):
        update(next(batches))
        matmul()
    data_s, step_s, matmul_s, flops = [], [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        update(batch)
        stepped = time.perf_counter()
        matmul()
        data_s.append(loaded - start)
        step_s.append(stepped - loaded)
        matmul_s.append(time.perf_counter() - stepped)
        flops.append(_step_flops(model, batch))
    matmul_rate = [matmul_flops / s for s in matmul_s]
    real = [f / (d + s) / m for f, d, s, m in zip(flops, data_s, step_s, matmul_rate)]
    step_only = [f / s / m for f, s, m in zip(flops, step_s, matmul_rate)]
    batch = next(batches)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        update(batch)
    breakdown = _breakdown(prof, _step_flops(model, batch), spread(matmul_rate)["median"], top)
    return {
        "rounds": rounds, "warmup": warmup, "threads": torch.get_num_threads(),
        "data_s": spread(data_s), "step_s": spread(step_s), "gflop": spread([f / 1e9 for f in flops]),
        "gflop_per_s": spread([f / (d + s) / 1e9 for f, d, s in zip(flops, data_s, step_s)]),
        "matmul": {"side": MATMUL_SIDE, "gflop_per_s": spread([r / 1e9 for r in matmul_rate])},
        "ratio": spread(real), "ratio_without_data": spread(step_only), "profile": breakdown,
    }


def _step_flops(model: nn.Module, batch: Any) -> int:
    """Counted FLOPs of one forward and backward of ``batch`` (the gradients are dropped after)."""
    with flop_counter_mode() as counter:
        model(batch)["loss"].backward()
    for p in model.parameters():
        p.grad = None
    return counter.get_total_flops()


def _breakdown(prof: profile, flops: int, matmul_rate: float, top: int) -> dict[str, Any]:
    """The profiled step: top operators by self time, the matmul kernels' rate and the ratio it
    caps the step at, and the time per objective (forward scopes; backward through sequence numbers)."""
    averages = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in averages)
    # a scope's self time is the Python that runs between its operators
    python_us = sum(e.self_cpu_time_total for e in averages if _is_scope(e.key))
    ops = sorted((e for e in averages if not _is_scope(e.key)), key=lambda e: -e.self_cpu_time_total)
    kernels_us = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL_KERNELS)
    top_ops = [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total_us}
               for e in ops[:top]]
    forward: dict[str, float] = defaultdict(float)
    backward: dict[str, float] = defaultdict(float)
    update: dict[str, float] = defaultdict(float)
    scope_of_sequence: dict[int, str] = {}
    for event in prof.events():
        if event.name.startswith(SCOPE_PREFIX):
            forward[event.name.removeprefix(SCOPE_PREFIX)] += event.cpu_time_total
        elif event.name in (OPTIMIZER_STEP, AFTER_STEP_SCOPE):
            update[event.name] += event.cpu_time_total
        elif event.name.startswith(BACKWARD_NODE):
            backward[scope_of_sequence.get(event.sequence_nr, UNATTRIBUTED)] += event.cpu_time_total
        elif event.sequence_nr >= 0 and (scope := _enclosing_scope(event)) is not None:
            # an op that makes no autograd node records the number the next node will get, so the
            # node's maker is the last forward op to record it (a frozen term's ops come before the
            # sum that makes the next node, and must not take its backward)
            scope_of_sequence[event.sequence_nr] = scope
    scopes = sorted(set(forward) | set(backward), key=lambda s: -(forward[s] + backward[s]))
    return {
        "self_ms": total_us / 1e3, "top_ops": top_ops, "python_ms": python_us / 1e3,
        "matmul_kernels": {"self_ms": kernels_us / 1e3, "share": kernels_us / total_us,
                           "gflop_per_s": flops / (kernels_us / 1e6) / 1e9,
                           "ceiling_ratio": flops / (kernels_us / 1e6) / matmul_rate},
        "objectives": [{"scope": s, "forward_ms": forward[s] / 1e3, "backward_ms": backward[s] / 1e3,
                        "share": (forward[s] + backward[s]) / total_us} for s in scopes],
        "optimizer_ms": update[OPTIMIZER_STEP] / 1e3, "after_step_ms": update[AFTER_STEP_SCOPE] / 1e3,
    }


def _is_scope(name: str) -> bool:
    return name.startswith(SCOPE_PREFIX) or name in (OPTIMIZER_STEP, AFTER_STEP_SCOPE)


def _enclosing_scope(event: Any) -> str | None:
    """The objective scope around a forward op (``other`` outside every one; None for an op that
    runs inside a backward node)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(SCOPE_PREFIX):
            return parent.name.removeprefix(SCOPE_PREFIX)
        if parent.name.startswith(BACKWARD_NODE):
            return None
        parent = parent.cpu_parent
    return UNATTRIBUTED
