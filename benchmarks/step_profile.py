"""Where one real pretraining step's time goes (issue 21 item 5): data, step, counted FLOPs and their
rate against a same-process matmul, the top operators and each objective's share, and the same
ratio at wider models. What it measures and how: ``copa.eval.step_profile``.

Needs the profile's world and its filtered annotations (``make demo`` makes them; alone:
``snakemake --cores all filter_annotations``).

    python benchmarks/step_profile.py                          # demo profile, 2 threads: results/demo-cpu/step.{json,md}
    python benchmarks/step_profile.py --widths 256,384         # and the same step at wider models
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from copa.config import load_params
from copa.eval.step_profile import profile_steps
from copa.provenance import git_commit
from copa.report.step_profile import step_profile_markdown
from copa.run_layout import RunLayout
from copa.train.pretrain import PretrainTask

ROOT = Path(__file__).resolve().parents[1]
HEAD_WIDTH = 64  # one attention head per 64 channels at the wider widths (ViT's and BERT's ratio)


def widths_option(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, got {text!r}") from None
    bad = [w for w in widths if w < HEAD_WIDTH or w % HEAD_WIDTH]
    if bad:
        raise argparse.ArgumentTypeError(f"widths must be multiples of {HEAD_WIDTH}, got {bad}")
    return widths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="demo", help="params profile of the step (default: demo)")
    p.add_argument("--root", type=Path, help="data root (default: the profile's data.root)")
    p.add_argument("--annotations", type=Path, help="filtered annotations (default: the profile's run layout)")
    p.add_argument("--rounds", type=int, default=10, help="timed steps, each followed by the matmul reference")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch's intra-op threads (fixed and recorded)")
    p.add_argument("--widths", type=widths_option, default=[], help="also time the step at these model widths (e.g. 256,384)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "demo-cpu", help="folder of step.json and step.md")
    return p


def width_overrides(width: int) -> list[str]:
    """The model at ``width`` channels (vision and text), BERT's 4x MLP, a head per 64 channels."""
    heads = width // HEAD_WIDTH
    return [f"model.vision_dim={width}", f"model.text_dim={width}", f"model.text_intermediate={4 * width}",
            f"model.vision_heads={heads}", f"model.text_heads={heads}"]


def measure(profile: str, overrides: list[str], root: Path | None, annotations: Path | None, rounds: int, warmup: int,
            scratch: Path) -> tuple[dict, dict]:
    """The profile's step at the width ``overrides`` give (none: its own): the width's entry, and the
    batch and data root it ran on."""
    params = load_params(profile, overrides)
    root = root or Path(params.data.root)
    annotations = annotations or RunLayout(params.profile).filtered_annotations
    for path, what in ((root, "data root"), (annotations, "filtered annotations")):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {what} (run `make demo`, or `snakemake --cores all filter_annotations`)")
    task = PretrainTask(params, root, annotations, scratch)
    model = task.model
    if hasattr(model, "detector_on"):
        model.detector_on.fill_(True)  # the step after the warm-up: the selection is the detector's
    needed = warmup + rounds + 1
    if task.steps_per_epoch(1) < needed:
        raise ValueError(f"{profile}: an epoch has {task.steps_per_epoch(1)} steps, the benchmark needs {needed}")
    result = profile_steps(model, torch.optim.AdamW(task.param_groups()), task.batches(0, 0, 1, 0),
                           lambda step: task.after_step(model, step), rounds, warmup)
    p = params.pretrain
    setting = {"root": str(root), "batch": f"{p.batch_size} pairs + {p.object_batch_size} object images at "
                                          f"{params.patch_labels.image_size} px"}
    return {"width": params.model.vision_dim, "overrides": overrides, **result}, setting


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = []
    try:
        with tempfile.TemporaryDirectory(prefix="copa-step-") as scratch:
            for overrides in [[], *map(width_overrides, args.widths)]:
                run_dir = Path(scratch) / str(len(widths))
                entry, setting = measure(args.profile, overrides, args.root, args.annotations, args.rounds, args.warmup, run_dir)
                widths.append(entry)
                shutil.rmtree(run_dir, ignore_errors=True)
                print(f"width {entry['width']}: step {entry['step_s']['median']:.3f} s, ratio {entry['ratio']['median']:.2f}",
                      file=sys.stderr, flush=True)
    except (OSError, ValueError) as exc:
        print(f"step_profile: {exc}", file=sys.stderr)
        return 2
    record = {"settings": {"profile": args.profile, "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup,
                           "commit": git_commit(ROOT), "torch": torch.__version__,
                           "date": datetime.date.today().isoformat(), **setting},
              "widths": widths}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    markdown = step_profile_markdown(record)
    (args.out / "step.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
