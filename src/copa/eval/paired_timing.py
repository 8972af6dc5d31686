"""The paired timing protocol: the variants of one table timed in one process, interleaved.

A model timed in its own job, at another moment of a shared machine, measures the machine as much
as the model (two demo rows running the same ViT measured 95 and 116 pairs/s). Here every variant
gets the same input batch in one process with torch's thread count fixed, and after a warm-up
of each variant the timing runs in rounds: each round times every variant once, in an order
rotated from round to round (A B C, B C A, C A B, ...), so that no variant always follows the same
other one. A slow moment of the machine slows the variants of its round alike, so the per-round
ratio of the baseline's time to a variant's (its speedup) cancels most of it. The speedup is the
median of those ratios, with a percentile bootstrap interval over the rounds
(copa.eval.paired.paired_speedup); each variant's own time is reported as median and
interquartile range.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU), so that a timer sees it done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_rounds(calls: Mapping[str, Callable[[], Any]], device: torch.device, warmup: int, rounds: int,
                       repeats: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls`` (name -> a call of a fixed input): ``warmup`` untimed
    calls of each, then ``rounds`` rounds that time each ``repeats`` calls of every variant in a
    rotated order (see the module's docstring). Returns name -> one mean time per round."""
    if not calls:
        raise ValueError("nothing to time: no variants")
    if rounds < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, repeats >= 1 and warmup >= 0, got {rounds}, {repeats} and {warmup}")
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(repeats):
                calls[name]()
            synchronize(device)
            seconds[name].append((time.perf_counter() - start) / repeats)
    return seconds


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and interquartile range (q1, q3) of ``values``."""
    q1, median, q3 = np.quantile(np.asarray(values, dtype=np.float64), [0.25, 0.5, 0.75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}
