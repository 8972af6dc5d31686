"""The paper-scale cost table (issue 21): mPLUG, w/o TPD, COPA and COPA at 10% keep at ViT-B/16,
224 px, 40 text tokens, random weights; GMACs per module, paired latency / throughput / VQA-answer
timings, speedup / FLOP ratio, the paper's Table 4 values as a reference. What it measures and how:
``copa.report.paper_costs``.

    python benchmarks/paper_costs.py                       # CPU, 2 threads: results/paper-cpu/costs.{json,md}
    python benchmarks/paper_costs.py --device cuda --amp bf16 --batch auto --calibration --memory \\
        --latency-repeats 20 --out results/paper-gpu   # what benchmarks/gpu.sh runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from copa.config import MIN_TIMING_ROUNDS
from copa.provenance import git_commit
from copa.report.paper_costs import AMP_DTYPES, CostSettings, cost_table_markdown, measure_cost_table, write_cost_table

ROOT = Path(__file__).resolve().parents[1]


def batch_option(text: str) -> int | None:
    """``auto`` -> None (the largest batch that fits), else a positive int."""
    if text == "auto":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch must be >= 1 or 'auto', got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="paper", help="params profile of the models' sizes (default: paper)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter override, before each variant's own (repeatable)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--text-length", type=int, default=40)
    p.add_argument("--batch", type=batch_option, default=8, help="throughput batch, or 'auto': the largest that fits")
    p.add_argument("--max-batch", type=int, default=2048, help="the cap of --batch auto's doubling search")
    p.add_argument("--rounds", type=int, default=MIN_TIMING_ROUNDS, help=f"interleaved timing rounds (the protocol asks >= {MIN_TIMING_ROUNDS})")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each variant before the rounds")
    p.add_argument("--latency-repeats", type=int, default=1, help="batch-1 calls per timed round")
    p.add_argument("--answer-tokens", type=int, default=None, help="decoded tokens per VQA answer (default: the profile's evaluate.vqa.max_length)")
    p.add_argument("--no-decoder-timing", dest="decoder_timing", action="store_false",
                   help="count the decoder's GMACs but do not time whole VQA answers")
    p.add_argument("--calibration", action="store_true", help="time timm's ViT-B/16 in the throughput rounds")
    p.add_argument("--memory", action="store_true", help="one pretraining step's memory per variant (Figure 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none")
    p.add_argument("--threads", type=int, default=2, help="torch's intra-op threads (fixed and recorded)")
    p.add_argument("--ddp-step", type=Path, default=None, metavar="JSON",
                   help="a benchmarks/ddp_step.py record to include in the table's JSON and Markdown")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "paper-cpu", help="folder of costs.json and costs.md")
    return p


def settings_of(args: argparse.Namespace) -> CostSettings:
    return CostSettings(profile=args.profile, overrides=tuple(args.overrides), image_size=args.image_size, text_length=args.text_length,
                        batch=args.batch, max_batch=args.max_batch, rounds=args.rounds, warmup=args.warmup,
                        latency_repeats=args.latency_repeats, answer_tokens=args.answer_tokens, decoder_timing=args.decoder_timing,
                        calibration=args.calibration, memory=args.memory, device=args.device, amp=args.amp)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = settings_of(args)
    except ValueError as exc:
        print(f"paper_costs: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    record = measure_cost_table(settings, {"commit": git_commit(ROOT)})
    record["elapsed_s"] = time.perf_counter() - start  # the benchmark's own budget: 15 minutes on 2 cores
    if args.ddp_step is not None:
        record["ddp_step"] = json.loads(args.ddp_step.read_text(encoding="utf-8"))
    json_path, md_path = write_cost_table(record, args.out)
    print(cost_table_markdown(record))
    print(f"written: {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
