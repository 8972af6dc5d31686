"""Cost of a COPA model in the paper's protocols (COPA Table 4 / 9 and Figure 3).

Conventions (``CONVENTIONS`` below is written into every record):

- **FLOPs** of one image-text pair's forward, the architecture's ``cost_forward``
  (copa.train.architectures): dual-stream, the understanding forward, the VQA / ITM path: text
  encoder, ViT with its selector guided by the text [CLS] (the TPD on), fusion; the decoder writing
  one VQA answer apart (``decoder``: beam search over the full ``evaluate.vqa.max_length``, COPA's
  inference time includes it) and in ``total_with_decoder``. A
  single-stream model (COPA-S, ViLT): its one transformer over [text; image], the TPD guided by the
  overall [CLS]; no head. Counted by
  ``torch.utils.flop_counter`` (matmuls, linears, the patch convolution and attention; not norms,
  softmax, activations, gathers; ``copa.eval.flops`` adds the CPU attention kernel it misses),
  which reports FLOPs = 2 x multiply-accumulates: both are given. The paper's "FLOPs(G)" are most
  likely MACs.
- **Throughput**: image-text pairs/s of the same forward (eval mode, no grad, float32) at the
  largest batch found by doubling from 1 up to ``max_batch`` (on a GPU also stopping at the first
  out-of-memory; on a CPU the cap decides), after warm-up forwards: the batch over the median
  seconds per batch of the timing rounds (``efficiency.timing``).
- **Latency**: the median wall time of batch-1 forwards over the rounds, in ms, after warm-up.
- **Speed of a table's models** (``measure_paired_speed``): all in one process, timed in the same
  interleaved rounds (``copa.eval.paired_timing``), each one's speedup over the table's baseline
  paired round by round, with its bootstrap interval. A model timed alone gets the same rounds.
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

This module writes the record; the parts are measured by ``copa.eval.flops``, ``copa.eval.timing``
and ``copa.eval.training_memory``, on the model and inputs of ``copa.eval.cost_inputs``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from copa.config import EfficiencyParams, Params
from copa.eval.cost_inputs import pair_inputs, protocol_model
from copa.eval.flops import forward_flops
from copa.eval.paired import paired_speedup
from copa.eval.timing import TimedModel, throughput_and_latency
from copa.eval.training_memory import MIB, training_memory
from copa.train.architectures import architecture

# the FLOPs convention: what the architecture's forward runs (Architecture.cost_forward_text) goes in {forward}
FLOPS_CONVENTION = ("torch.utils.flop_counter over one image-text pair's forward: {forward}; matmuls, linears, convolutions and "
                    "attention (sdpa) counted, norms / softmax / activations not; GFLOPs = 2 x GMACs")
CONVENTIONS = {
    "throughput": "image-text pairs/s of the same forward (eval, no grad, float32) at the largest batch of the "
                  "doubling search (cap max_batch; on a GPU also the first out-of-memory), after warm-up: the batch over "
                  "the median seconds per batch of the timing rounds",
    "latency": "median ms of batch-1 forwards over the timing rounds, after warm-up",
    "training_memory": "one step of the architecture's pretraining module (forward + backward, no optimiser state, "
                       "detector on) on a synthetic batch: bytes of the unique storages autograd saves for backward, "
                       "parameters and buffers excluded; on a GPU also torch.cuda.max_memory_allocated of the step; "
                       "dual-stream: under the run's ITM encoding (itm_guidance), and under each encoding in by_itm_guidance",
    "weights": "fresh seeded initialisation at the protocol sizes (costs do not depend on weight values)",
}

PAIRED_CONVENTION = ("the models of one table timed in one process on the same input (each at its own image size), "
                     "after a warm-up of each, in interleaved rounds (the order rotated each round): per model the "
                     "median and interquartile range over the rounds; its speedup over the baseline is the median of the "
                     "per-round ratios baseline time / its time, with a percentile bootstrap interval over the rounds")

GIGA = 1e9


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
                       parts: tuple[str, ...] = ("flops", "speed", "memory"),
                       answer_flops: Callable[[nn.Module, Tensor, Tensor, Tensor], int] | None = None) -> dict:
    """FLOPs, throughput, latency and training memory of the model ``params`` describe (with a
    vocabulary of ``vocab_size``), at the protocol of ``settings``; ``parts`` picks what to measure.
    ``answer_flops`` (model, images, input_ids, attention_mask) -> the FLOPs of the decoder writing
    one VQA answer (the task layer's, ``copa.tasks.registry``): counted as ``decoder`` beside the
    forward, and in ``total_with_decoder``; None: the model writes no answers."""
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
        one = pair_inputs(1, settings.image_size, settings.text_length, vocab_size, device)
        flops = forward_flops(model, *one, forward=forward)
        if answer_flops is not None:
            flops["decoder"] = answer_flops(model, *one)
            flops["total_with_decoder"] = flops["total"] + flops["decoder"]
        record["flops"] = {
            "image_size": settings.image_size, "text_length": settings.text_length, "batch": 1,
            "image_tokens": 1 + grid * grid,
            "convention": "GFLOPs = 2 x GMACs (multiply-accumulates); the paper's FLOPs(G) are most likely GMACs",
            "gmacs": {k: v / 2 / GIGA for k, v in flops.items()},
            "gflops": {k: v / GIGA for k, v in flops.items()},
        }
    if "speed" in parts:
        record.update(throughput_and_latency({"model": TimedModel(model, forward, settings.image_size)}, settings, vocab_size,
                                             device)["model"])
    del model
    if "memory" in parts:
        record["training_memory"] = training_memory(params, vocab_size, settings, device)
    return record


def measure_paired_speed(models: Mapping[str, Params], vocab_size: int, device: torch.device | str, baseline: str) -> dict:
    """Throughput and latency of the models ``models`` describe (name -> params; a table's rows,
    each at its own ``efficiency.image_size``), timed together by the paired protocol
    (``copa.eval.paired_timing``), and each one's paired speedup over ``baseline`` (a name of
    ``models``), throughput and latency, with its bootstrap interval over the rounds."""
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is none of the models: {', '.join(models)}")
    device = torch.device(device)
    shared = {dataclasses.replace(p.efficiency, image_size=0) for p in models.values()}
    if len(shared) != 1:
        raise ValueError("the models of one paired timing differ in efficiency settings other than image_size")
    settings = next(iter(models.values())).efficiency
    timed, described = {}, {}
    for name, params in models.items():
        model, forward, described[name] = protocol_model(params, vocab_size, params.efficiency)
        timed[name] = TimedModel(model.to(device).eval(), forward, params.efficiency.image_size)
    speeds = throughput_and_latency(timed, settings, vocab_size, device)
    rounds = settings.timing
    for name, speed in speeds.items():
        speed["model"] = described[name]
        speed["speedup"] = {
            part: paired_speedup(speeds[baseline][part]["seconds_per_round"], speed[part]["seconds_per_round"], seed=rounds.seed)
            for part in ("throughput", "latency")
        }
    return {
        "conventions": {"speed": PAIRED_CONVENTION, **{k: CONVENTIONS[k] for k in ("throughput", "latency", "weights")}},
        "device": device_info(device),
        "settings": {k: dataclasses.asdict(getattr(settings, k)) for k in ("throughput", "latency", "timing")},
        "baseline": baseline,
        "models": speeds,
    }


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
