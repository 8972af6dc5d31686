"""Timing of the protocol's forward (conventions: ``copa.eval.efficiency``): throughput at the
largest batch of a doubling search, and batch-1 latency, of one model or of a table's models
together (the paired protocol of ``copa.eval.paired_timing``)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from copa.config import EfficiencyParams
from copa.eval.cost_inputs import pair_inputs
from copa.eval.paired_timing import interleaved_rounds, spread


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


def fits_on(device: torch.device, run: Callable[[int], Any]) -> Callable[[int], bool]:
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


@dataclass(frozen=True)
class TimedModel:
    """A model whose speed is measured: the module, its architecture's ``cost_forward`` and the
    image size of its protocol."""

    model: nn.Module
    forward: Callable
    image_size: int


def throughput_and_latency(models: Mapping[str, TimedModel], settings: EfficiencyParams, vocab_size: int,
                           device: torch.device) -> dict[str, dict]:
    """Per model (name -> record): pairs/s at one batch for all (the largest of the doubling search
    that fits every model) and batch-1 latency (ms), by the paired protocol of
    ``copa.eval.paired_timing``: every model in the same rounds, on the same input (at its own
    image size), with each round's seconds kept for paired speedups."""
    length, t, lat, rounds = settings.text_length, settings.throughput, settings.latency, settings.timing.rounds

    def call(name: str, batch: int) -> Callable[[], Tensor]:
        timed, inputs = models[name], pair_inputs(batch, models[name].image_size, length, vocab_size, device)
        return lambda: timed.forward(timed.model, *inputs)

    with torch.no_grad():
        searches = {name: largest_batch(fits_on(device, lambda b, name=name: call(name, b)()), t.max_batch) for name in models}
        batch = min(found for found, _ in searches.values())
        throughput = interleaved_rounds({name: call(name, batch) for name in models}, device, t.warmup, rounds, t.iterations)
        latency = interleaved_rounds({name: call(name, 1) for name in models}, device, lat.warmup, rounds, lat.iterations)
    out = {}
    for name, timed in models.items():
        per_batch, single = spread(throughput[name]), spread(latency[name])
        common = {"image_size": timed.image_size, "text_length": length, "rounds": rounds}
        out[name] = {
            "throughput": {
                **common, "batch": batch, "batches_tried": searches[name][1],
                "stopped_by": "max_batch" if batch == t.max_batch else "out_of_memory",
                "warmup": t.warmup, "iterations_per_round": t.iterations,
                "pairs_per_s": batch / per_batch["median"],
                "pairs_per_s_iqr": [batch / per_batch["q3"], batch / per_batch["q1"]],
                "seconds_per_round": throughput[name],
            },
            "latency": {
                **common, "batch": 1, "warmup": lat.warmup, "iterations_per_round": lat.iterations,
                "median_ms": 1000 * single["median"], "iqr_ms": [1000 * single["q1"], 1000 * single["q3"]],
                "seconds_per_round": latency[name],
            },
        }
    return out
