"""The paper-scale cost table (issue 21; COPA Table 4's setting): mPLUG, COPA "w/o TPD", COPA at
its profile's location and keep ratio and COPA at 10% keep, built fresh with random weights from a
profile (``paper``: ViT-B/16, BERT-base split 6 + 6, 12-layer decoder) at the protocol's image
size and text length (Table 4: 224 px, 40 tokens).

- **GMACs per module** of one pair's understanding forward (``copa.eval.module_costs``: text, ViT,
  detector, fusion) and of the **decoder** writing one VQA answer as evaluation does
  (``copa.tasks.generation.generate``: beam search with the profile's ``evaluate.vqa`` beam, no
  key/value cache, every step re-reads the prefix and the fused states), with ``min_length =
  max_length = answer_tokens`` so that random weights decode the full length: the most a VQA answer
  costs under the profile's settings.
- **Time** by the paired protocol (``copa.eval.paired_timing``): all variants in this process on
  the same inputs, warm-up, then interleaved rounds; median and IQR per variant, the speedup over
  mPLUG per round with a bootstrap interval, and the speedup divided by the FLOP ratio mPLUG /
  variant (1: the time falls as the FLOPs do). Three timings: batch-1 latency and batch-B
  throughput of the understanding forward, and the batch-1 latency of a whole VQA answer (forward
  + decoder). On a GPU optionally under bf16 autocast, at the largest batch that fits
  (``copa.eval.timing.largest_batch``), with timm's own ViT-B/16 timed in the throughput rounds as
  a calibration row, and one pretraining step's memory per variant (COPA Figure 3,
  ``copa.eval.training_memory``).
- The paper's values (params/grids/table4.yaml, else table9.yaml, ``paper:`` cells) as a labelled
  reference, never as a measurement.

``measure_cost_table`` returns the record, ``cost_table_markdown`` renders it (from the record
alone, so also from its JSON), ``write_cost_table`` writes both.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from copa.config import MIN_TIMING_ROUNDS, Params, load_params
from copa.eval.cost_inputs import pair_inputs, protocol_model
from copa.eval.efficiency import GIGA, device_info
from copa.eval.module_costs import MODULES, call_flops, module_flops
from copa.eval.paired import paired_speedup
from copa.eval.paired_timing import interleaved_rounds, spread
from copa.eval.timing import fits_on, largest_batch
from copa.eval.training_memory import training_memory
from copa.report.grids import load_grid, profile_location
from copa.tasks.generation import LAYOUT_SPECIAL_IDS, answer_flops, condition, full_length, generate


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...]  # --set style, after the run's own


VARIANTS = (
    Variant("mPLUG", ("model.selection.method=none",)),
    Variant("w/o TPD", ("model.selection.method=tpd", "model.selection.keep_ratio=1.0")),  # COPA Table 10: nothing dropped
    Variant("COPA", ("model.selection.method=tpd",)),  # the profile's location and keep ratio
    Variant("COPA 10%", ("model.selection.method=tpd", "model.selection.keep_ratio=0.1")),
)
BASELINE = "mPLUG"
REFERENCE_GRIDS = ("table4", "table9")  # the first grid with a row of the variant's selection gives its paper values
CALIBRATION_MODEL = "vit_base_patch16_224"  # timm's ViT-B/16
CALIBRATION = f"timm {CALIBRATION_MODEL} (calibration)"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}
TIMINGS = {  # kind -> what is timed (the batch is the record's)
    "latency": "the understanding forward (text, ViT with the detector, fusion) of batch 1",
    "throughput": "the understanding forward of the table's batch, as image-text pairs/s",
    "with_decoder": "one VQA answer at batch 1: the understanding forward, then the decoder's beam search over answer_tokens",
}


@dataclass(frozen=True)
class CostSettings:
    profile: str = "paper"
    overrides: tuple[str, ...] = ()  # --set style, before each variant's
    image_size: int = 224
    text_length: int = 40
    batch: int | None = 8  # the throughput batch; None: the largest that fits (up to max_batch)
    max_batch: int = 2048
    rounds: int = MIN_TIMING_ROUNDS
    warmup: int = 1
    latency_repeats: int = 1  # batch-1 calls per timed round (many on a GPU, where one takes milliseconds)
    answer_tokens: int | None = None  # decoded tokens of a VQA answer; None: the profile's evaluate.vqa.max_length
    decoder_timing: bool = True  # time the whole VQA answer too (the decoder's GMACs are always counted)
    calibration: bool = False  # timm's ViT-B/16 in the throughput rounds
    memory: bool = False  # one pretraining step's memory per variant (Figure 3)
    device: str = "cpu"
    amp: str = "none"  # autocast dtype of the timed calls: none | bf16

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        if self.rounds < 2:
            raise ValueError(f"rounds must be >= 2 for a bootstrap interval (the protocol asks {MIN_TIMING_ROUNDS}), got {self.rounds}")


@dataclass
class _Built:
    variant: Variant
    params: Params
    model: torch.nn.Module
    forward: Callable


def variant_params(settings: CostSettings, variant: Variant) -> Params:
    """The variant's params: the profile, the run's overrides, then the variant's."""
    return load_params(settings.profile, [*settings.overrides, *variant.overrides])


def paper_reference(params: Params, grids: tuple[str, ...] = REFERENCE_GRIDS) -> dict | None:
    """The paper's values for the selection of ``params`` from the first grid with such a row
    (location in the paper's 12 layers mapped to the profile's depth), with where they come from."""
    selection = params.model.selection
    for name in grids:
        grid = load_grid(name)
        for row in grid.rows:
            if row.architecture != "dual_stream" or row.method != selection.method or not row.paper:
                continue
            if row.method != "none" and ([profile_location(k, params.model.vision_depth) for k in row.location] != list(selection.location)
                                         or row.keep != selection.keep_ratio):
                continue
            return {"source": f"{grid.title}, row {row.label!r}", **row.paper}
    return None


def _amp(device: torch.device, amp: str):
    dtype = AMP_DTYPES[amp]
    return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext


def _timed(calls: dict[str, Callable], device: torch.device, settings: CostSettings, repeats: int, amp: Callable) -> dict[str, list[float]]:
    def under_amp(call: Callable) -> Callable:
        def run():
            with amp():
                return call()
        return run

    with torch.no_grad():
        return interleaved_rounds({k: under_amp(c) for k, c in calls.items()}, device, settings.warmup, settings.rounds, repeats)


def _timing(seconds: dict[str, list[float]], pairs: int, gmacs: dict[str, float], repeats: int) -> dict:
    """Per variant: median [IQR] seconds per call, pairs/s, paired speedup over the baseline,
    FLOP ratio and speedup / FLOP ratio (estimate and interval ends each divided by the ratio)."""
    out = {}
    for label, times in seconds.items():
        entry = {"seconds": spread(times), "pairs_per_s": pairs / spread(times)["median"], "rounds_s": times}
        if label != BASELINE:
            speedup = paired_speedup(seconds[BASELINE], times)
            ratio = gmacs[BASELINE] / gmacs[label]
            entry.update(speedup=speedup, flop_ratio=ratio,
                         speedup_per_flop_ratio={k: speedup[k] / ratio for k in ("estimate", "low", "high")})
        out[label] = entry
    return {"pairs_per_call": pairs, "repeats": repeats, "per_variant": out}


def measure_cost_table(settings: CostSettings, provenance: dict | None = None) -> dict:
    """The record of the cost table (see the module docstring); ``provenance`` (e.g. the commit)
    goes into its ``device`` entry."""
    device = torch.device(settings.device)
    amp = _amp(device, settings.amp)
    memory = None
    if settings.memory:  # first, while no other model holds device memory
        memory = {}
        for variant in VARIANTS:
            params = variant_params(settings, variant)
            memory[variant.label] = training_memory(params, params.model.vocab_size, params.efficiency, device)
    built, variants = [], []
    for variant in VARIANTS:
        params = variant_params(settings, variant)
        protocol = dataclasses.replace(params.efficiency, image_size=settings.image_size, text_length=settings.text_length)
        vocab = params.model.vocab_size
        model, forward, description = protocol_model(params, vocab, protocol)
        model = model.to(device).eval()
        one = pair_inputs(1, settings.image_size, settings.text_length, vocab, device)
        flops = module_flops(model, *one, forward=forward)
        with torch.no_grad():
            cond = condition(model, *one, guided=True)
        flops["decoder"] = answer_flops(model, *one, params.evaluate.vqa, settings.answer_tokens)
        flops["total_with_decoder"] = flops["total"] + flops["decoder"]
        variants.append({
            "label": variant.label, "overrides": list(variant.overrides), "model": description,
            "selection": {"method": params.model.selection.method, "location": list(params.model.selection.location),
                          "keep_ratio": params.model.selection.keep_ratio},
            "image_tokens_into_fusion": int(cond.image.shape[1]),
            "gmacs": {k: v / 2 / GIGA for k, v in flops.items()},
            "paper": paper_reference(params),
        })
        built.append(_Built(variant, params, model, forward))
    base = built[0]  # VARIANTS[0], the baseline
    gmacs = {v["label"]: v["gmacs"]["total"] for v in variants}
    gmacs_decoding = {v["label"]: v["gmacs"]["total_with_decoder"] for v in variants}
    vocab, size, length = base.params.model.vocab_size, settings.image_size, settings.text_length

    if settings.batch is None:  # the largest batch the baseline (the most tokens) runs without running out of memory
        def run(b: int):
            with torch.no_grad(), amp():
                return base.forward(base.model, *pair_inputs(b, size, length, vocab, device))
        batch, tried = largest_batch(fits_on(device, run), settings.max_batch)
    else:
        batch, tried = settings.batch, [settings.batch]
    many = pair_inputs(batch, size, length, vocab, device)
    throughput_calls = {b.variant.label: (lambda b=b: b.forward(b.model, *many)) for b in built}
    calibration = None
    if settings.calibration:
        import timm  # only here: the calibration row is optional
        vit = timm.create_model(CALIBRATION_MODEL, pretrained=False, img_size=size).to(device).eval()
        calibration_gmacs = call_flops(lambda: vit(one[0])) / 2 / GIGA
        gmacs[CALIBRATION] = calibration_gmacs
        throughput_calls[CALIBRATION] = lambda: vit(many[0])
        calibration = {"label": CALIBRATION, "model": CALIBRATION_MODEL, "image_size": size, "gmacs": calibration_gmacs,
                       "what": "timm's own ViT-B/16 (random weights, images only): the same hardware's throughput of a known model"}
    timings = {
        "latency": _timing(_timed({b.variant.label: (lambda b=b: b.forward(b.model, *one)) for b in built}, device, settings,
                                  settings.latency_repeats, amp), 1, gmacs, settings.latency_repeats),
        "throughput": _timing(_timed(throughput_calls, device, settings, 1, amp), batch, gmacs, 1),
    }
    if settings.decoder_timing:
        answers = {b.variant.label: (lambda b=b: generate(b.model, condition(b.model, *one, guided=True), LAYOUT_SPECIAL_IDS,
                                                          full_length(b.params.evaluate.vqa, settings.answer_tokens))) for b in built}
        timings["with_decoder"] = _timing(_timed(answers, device, settings, 1, amp), 1, gmacs_decoding, 1)
    for kind, timing in timings.items():
        timing["what"] = TIMINGS[kind]

    decoding = full_length(base.params.evaluate.vqa, settings.answer_tokens)
    mplug = variants[0]
    checks = {v["label"]: {"detector_gmacs": v["gmacs"]["detector"], "equals_baseline_gmacs": v["gmacs"]["total"] == mplug["gmacs"]["total"]}
              for v in variants[1:] if v["selection"]["keep_ratio"] == 1.0}
    return {
        "title": "Costs at paper scale (COPA Table 4's setting), random weights",
        "device": {**device_info(device), "amp": settings.amp, **(provenance or {})},
        "settings": {**dataclasses.asdict(settings), "batch": batch, "batches_tried": tried, "protocol_rounds": MIN_TIMING_ROUNDS,
                     "decoder": {"beam_size": decoding.beam_size, "answer_tokens": decoding.max_length,
                                 "what": "the decoder writing one VQA answer as evaluation does (copa.tasks.generation.generate): "
                                         "beam search, no key/value cache (each step re-reads the prefix and re-projects the fused "
                                         "image + text states), min_length = max_length so that random weights decode every token"}},
        "conventions": {"gmacs": "torch.utils.flop_counter FLOPs / 2 per image-text pair at batch 1 (matmuls, linears, the patch "
                                 "convolution, attention; not norms, softmax, activations); ViT excludes the detector (the TPD's "
                                 "MLP), total = text + ViT + detector + fusion (no decoder)",
                        "speedup": "per round, the baseline's time / the variant's; median over the rounds with a 95% percentile "
                                   "bootstrap interval over rounds",
                        "speedup_per_flop_ratio": "speedup / (baseline GMACs / variant GMACs); with_decoder against the GMACs "
                                                  "with the decoder"},
        "baseline": BASELINE,
        "variants": variants,
        "calibration": calibration,
        "timings": timings,
        "training_memory": memory,
        "checks": checks,
    }


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _interval(entry: dict | None, digits: int = 2) -> str:
    if not entry:
        return "—"
    return f"{entry['estimate']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def cost_table_markdown(record: dict) -> str:
    """The Markdown of a ``measure_cost_table`` record (or of its JSON)."""
    s, d = record["settings"], record["device"]
    where = d.get("gpu") or f"{d['cpu']}, {d['threads']} threads"
    lines = [f"### {record['title']}", "",
             f"Measured on {where} (torch {d['torch']}, {d['device']}, autocast {d['amp']}"
             + (f", commit {d['commit'][:12]}" if d.get("commit") else "") + f"); profile `{s['profile']}`"
             + (f" with {', '.join(f'`{o}`' for o in s['overrides'])}" if s["overrides"] else "")
             + f"; {s['image_size']} px, {s['text_length']} text tokens"
             + (f"; the benchmark took {record['elapsed_s'] / 60:.1f} min." if "elapsed_s" in record else "."), ""]
    if s["rounds"] < s["protocol_rounds"]:
        lines += [f"**{s['rounds']} rounds: fewer than the protocol's {s['protocol_rounds']}; the intervals are not to be trusted.**", ""]
    dec = s["decoder"]
    lines += [f"GMACs per image-text pair (batch 1). Decoder: one VQA answer, beam {dec['beam_size']} x {dec['answer_tokens']} "
              "tokens, as evaluation decodes (no key/value cache). Paper: the paper's FLOPs(G), a reference, not measured here.", "",
              "| Variant | selection | image tokens into fusion | text | ViT | detector | fusion | total | decoder | total + decoder "
              "| FLOP ratio vs " + record["baseline"] + " | paper FLOPs(G) (reference) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    base = record["variants"][0]["gmacs"]["total"]
    for v in record["variants"]:
        g, sel = v["gmacs"], v["selection"]
        chosen = "none" if sel["method"] == "none" else f"{sel['method']} at {sel['location']}, keep {sel['keep_ratio']:g}"
        paper = v["paper"]
        ref = f"{paper['gmacs']:.2f} ({paper['source']})" if paper and "gmacs" in paper else "—"
        lines.append(f"| {v['label']} | {chosen} | {v['image_tokens_into_fusion']} | "
                     + " | ".join(_num(g[m]) for m in MODULES) + f" | {_num(g['total'])} | {_num(g['decoder'])} | "
                     f"{_num(g['total_with_decoder'])} | {_num(base / g['total'])} | {ref} |")
    if record.get("calibration"):
        c = record["calibration"]
        lines.append(f"| {c['label']} | — | — | — | {_num(c['gmacs'])} | — | — | {_num(c['gmacs'])} | — | — | {_num(base / c['gmacs'])} | — |")
    for kind, timing in record["timings"].items():
        repeats = f", {timing['repeats']} calls per round" if timing["repeats"] > 1 else ""
        lines += ["", f"Time, {kind.replace('_', ' ')}: {timing['what']} (batch {timing['pairs_per_call']}; {s['rounds']} interleaved "
                  f"rounds after {s['warmup']} warm-up{repeats}). Median [IQR]; speedup vs {record['baseline']} [95% interval].", "",
                  "| Variant | ms per call | pairs/s | speedup | FLOP ratio | speedup / FLOP ratio | paper (reference) |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        papers = {v["label"]: v["paper"] for v in record["variants"]}
        for label, e in timing["per_variant"].items():
            t = e["seconds"]
            paper = papers.get(label)
            ref = "—"
            if paper and kind == "throughput" and "throughput" in paper:
                ref = f"{paper['throughput']:.2f} pairs/s"
            elif paper and kind == "latency" and "latency_ms" in paper:
                ref = f"{paper['latency_ms']:g} ms"
            lines.append(f"| {label} | {1000 * t['median']:.1f} [{1000 * t['q1']:.1f}, {1000 * t['q3']:.1f}] | {e['pairs_per_s']:.2f} | "
                         f"{_interval(e.get('speedup'))} | {_num(e.get('flop_ratio'))} | {_interval(e.get('speedup_per_flop_ratio'))} | {ref} |")
    if record.get("training_memory"):
        lines += ["", "One pretraining step's memory (COPA Figure 3's setting; copa.eval.training_memory, float32):", "",
                  "| Variant | saved for backward (MiB) | peak allocated (MiB) |", "|---|---:|---:|"]
        for label, m in record["training_memory"].items():
            peak = "out of memory" if m["out_of_memory"] else _num(m.get("cuda_max_allocated_mib"), 0)
            lines.append(f"| {label} | {'—' if m['out_of_memory'] else _num(m['saved_mib'], 0)} | {peak} |")
    if record.get("ddp_step"):
        step = record["ddp_step"]
        memory = f", peak allocated {step['cuda_max_allocated_mib']:.0f} MiB" if step.get("cuda_max_allocated_mib") is not None else ""
        lines += ["", f"One Algorithm 1 step under DDP ({step['backend']}, {step['world_size']} process(es), {step['device']}, autocast "
                  f"{step['amp']}): {step['pairs_per_rank']} pairs + {step['objects_per_rank']} objects per rank at {step['image_size']} px, "
                  f"{step['seconds']:.2f} s{memory}; parameters identical on every rank after it: {step['parameters_identical_on_ranks']}."]
    lines += ["", "Checks (must cost exactly the baseline's GMACs, with no detector): "
              + "; ".join(f"{label}: detector {c['detector_gmacs']:g} GMACs, "
                          f"{'equal to' if c['equals_baseline_gmacs'] else 'NOT equal to'} {record['baseline']}'s total"
                          for label, c in record["checks"].items()), ""]
    return "\n".join(lines)


def write_cost_table(record: dict, out_dir: Path) -> tuple[Path, Path]:
    """``costs.json`` and ``costs.md`` (rendered from the JSON just written) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "costs.json", out_dir / "costs.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(cost_table_markdown(json.loads(json_path.read_text(encoding="utf-8"))), encoding="utf-8")
    return json_path, md_path
