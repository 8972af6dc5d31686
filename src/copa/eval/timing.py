"""Timing of the protocol's forward (conventions: ``copa.eval.efficiency``): throughput at the
largest batch of a doubling search, and batch-1 latency."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from copa.config import EfficiencyParams
from copa.eval.cost_inputs import pair_inputs


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
