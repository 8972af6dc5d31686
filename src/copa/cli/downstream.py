"""Subcommands of the downstream stage: fine-tuning a pretraining run on a task, evaluating the
fine-tuned run, and COPA Figure 4's detections of a VQA run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from copa.cli.common import (HELP_LAYOUT, CommandError, in_range, path_or, profile_params, refuse_unread_overrides,
                             require_instruments, run_head)
from copa.config import Count, KeepRatio, PositiveInt, load_params
from copa.run_layout import RunLayout, data_beside, predictions_beside, seed_run, split_size_tag
from copa.tasks.registry import TASKS, check_finetuned, check_start
from copa.train.architectures import resolve


def cmd_finetune(args: argparse.Namespace) -> int:
    refuse_unread_overrides(args, (f"finetune.{args.task}", "seed", "data.root"), f"the run {args.start}'s stored parameters")
    params = profile_params(args)
    check_start(args.task, Path(args.start))
    run = resolve(run_head(Path(args.start), args.task).finetune)
    metrics = run(params, Path(args.start), Path(args.root or params.data.root), Path(args.out), resume=not args.restart)
    print(f"{args.task} fine-tuning done: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def evaluate_outputs(args: argparse.Namespace, layout: RunLayout) -> tuple[Path, Path]:
    """`copa evaluate`'s (result JSON, predictions) in ``layout``, the run's profile's: a fine-tuning
    run folder <pretraining run>/<task><size tag> has its result at the layout's place for the three."""
    run = Path(args.run)
    task, size = split_size_tag(run.name)
    out = path_or(args.json, layout.finetune_result(run.parent.name, args.task, size if task == args.task else ""))
    return out, path_or(args.predictions, predictions_beside(out))


def cmd_evaluate(args: argparse.Namespace) -> int:
    spec = TASKS[args.task]
    refuse_unread_overrides(args, (f"evaluate.{spec.settings}",), f"the fine-tuned run {args.run}'s stored parameters")
    run = Path(args.run)
    check_finetuned(args.task, run)
    head = run_head(run, args.task)
    finetuned, evaluate = resolve(head.load)(run), resolve(head.evaluate)  # the run's model, data and fine-tuning settings
    params = finetuned.params
    # inference settings: the current params of the run's profile (or of --profile)
    settings = getattr(load_params(args.profile or params.profile, args.set, args.params_dir).evaluate, spec.settings)
    split = args.split or spec.default_split or getattr(settings, "split", None)
    record, predictions, summary = evaluate(finetuned, settings, Path(args.root or params.data.root), split,
                                            args.batch_size, progress=not args.quiet)
    out, answers = evaluate_outputs(args, RunLayout(params.profile))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": args.task, "run": str(run), "profile": params.profile, **finetuned.state, **record}, indent=2) + "\n",
                   encoding="utf-8")
    answers.write_text(json.dumps(predictions, indent=1) + "\n", encoding="utf-8")
    print(f"{summary} -> {out}; predictions {answers}")
    return 0


def vqa_scratch_outputs(args: argparse.Namespace, layout: RunLayout) -> tuple[Path, Path]:
    """`copa vqa-scratch`'s (result JSON, predictions) in ``layout``: by default the result of the
    anchor run named as the --out folder, predictions beside it."""
    out = path_or(args.json, layout.anchor_result("vqa_scratch", Path(args.out).name))
    return out, path_or(args.predictions, predictions_beside(out))


def cmd_vqa_scratch(args: argparse.Namespace) -> int:
    from copa.tasks.vqa_scratch import evaluate_scratch_vqa, load_scratch_vqa, train_scratch_vqa

    params = profile_params(args)
    root, run = Path(args.root or params.data.root), Path(args.out)
    train_scratch_vqa(params, root, run, resume=not args.restart)
    scratch = load_scratch_vqa(run)
    record, predictions, summary = evaluate_scratch_vqa(scratch, params.evaluate.vqa, root, progress=not args.quiet)
    out, answers = vqa_scratch_outputs(args, RunLayout(params.profile))
    out.parent.mkdir(parents=True, exist_ok=True)
    identity = {"task": "vqa", "model": "vqa_scratch", "description": "FiLM CNN + GRU trained from scratch on the VQA training questions"}
    out.write_text(json.dumps({**identity, "run": str(run), "profile": params.profile, **scratch.state, **record}, indent=2) + "\n",
                   encoding="utf-8")
    answers.write_text(json.dumps(predictions, indent=1) + "\n", encoding="utf-8")
    print(f"from-scratch {summary} -> {out}; predictions {answers}")
    return 0


def cmd_detected_patches(args: argparse.Namespace) -> int:
    from copa.data.downstream import vqa_examples
    from copa.data.layout import DataLayout
    from copa.data.formats.referents import read_referents
    from copa.report.detected_patches import (detect_patches, detected_patches_figure, pair_summary, pick_question_pairs,
                                              pick_questions)
    from copa.report.figures import save_figure
    from copa.train.finetune import load_finetuned

    refuse_unread_overrides(args, ("evaluate.vqa",), f"the fine-tuned run {args.run}'s stored parameters")
    require_instruments(Path(args.run), "detected-patches")
    check_finetuned("vqa", Path(args.run))
    run = load_finetuned(Path(args.run))
    settings = load_params(args.profile or run.params.profile, args.set, args.params_dir).evaluate.vqa
    layout = DataLayout(Path(args.root))
    questions = vqa_examples(layout, settings.split)
    examples = pick_questions(questions, args.questions)
    if not examples:
        raise FileNotFoundError(f"{args.root}: no questions in the VQA split {settings.split}")
    selection = run.params.model.selection
    pairs = pick_question_pairs(questions, args.pairs, read_referents(layout.referents) if layout.referents.is_file() else None)
    try:
        detections = detect_patches(run, examples, args.ratios, settings)
        paired = detect_patches(run, [e for pair in pairs for e in pair], [selection.keep_ratio], settings) if pairs else []
    except ValueError as exc:  # not a TPD run
        raise CommandError(exc) from exc
    paired_detections = list(zip(paired[::2], paired[1::2]))
    title = (f"Figure 4: patches the TPD keeps for VQA questions (run {Path(args.run).parent.name}, "
             f"{run.params.profile} profile, TPD after layer {selection.location[0]}; dimmed: fused)")
    figure = Path(args.figure)
    paths = save_figure(detected_patches_figure(detections, selection.keep_ratio, title, paired_detections), figure)
    data = data_beside(figure)  # the paired panel's numbers
    data.write_text(json.dumps(pair_summary(paired_detections, selection.keep_ratio), indent=2) + "\n", encoding="utf-8")
    print(f"{len(detections)} questions x {len(args.ratios)} ratios, {len(paired_detections)} question pairs -> "
          f"{', '.join(map(str, [*paths, data]))}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    layout = HELP_LAYOUT
    p = sub.add_parser("finetune", help="fine-tune a pretraining run on a downstream task; resumes from the run's last checkpoint")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--pretrained", dest="start", required=True, metavar="RUN",
                   help="the run to start from, its last checkpoint: a pretraining run (copa pretrain --out), or for "
                        "captioning_cider the captioning run (copa finetune --out)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, DVCLive, the copied vocabulary, pretrained.json")
    p.add_argument("--root", help="data root (default: the profile's data.root)")
    p.add_argument("--restart", action="store_true", help="refuse to resume (fails if the run folder has checkpoints)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="evaluate a fine-tuned run on its task's test split")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--run", required=True, help="the fine-tuning run folder (copa finetune --out)")
    p.add_argument("--root", help="data root (default: the one the run was trained on)")
    p.add_argument("--split", help="retrieval, captioning: a Karpathy split (test); vqa: a VQA v2 split (val2014); grounding: "
                                   "a RefCOCO+ split (default: evaluate.<task> of the params, grounding every split named there)")
    p.add_argument("--json", help=f"result JSON (default: {layout.finetune_result('<pretraining run>', '<task>')}, "
                                  "the run folder's size tag after <task>)")
    p.add_argument("--predictions", help="the answers / captions / boxes / rankings (default: beside --json as <name>_predictions.json; "
                                         "VQA in the official result format, captions in COCO's)")
    p.add_argument("--batch-size", type=in_range(PositiveInt), default=64, help="evaluation batch size (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("vqa-scratch", help="the supervised-from-scratch VQA anchor (params vqa_scratch): train a FiLM model on the "
                                           "VQA training questions (resuming from the run's last checkpoint), evaluate it as the VQA rows")
    p.add_argument("--out", required=True,
                   help=f"run folder: checkpoints, DVCLive, the word list, answers.json (e.g. {layout.anchor_run('vqa_scratch', seed_run(0))})")
    p.add_argument("--root", help="data root (default: the profile's data.root)")
    p.add_argument("--json", help=f"result JSON (default: {layout.anchor_result('vqa_scratch', '<name of --out>')})")
    p.add_argument("--predictions", help="the answers in the official result format (default: beside --json as <name>_predictions.json)")
    p.add_argument("--restart", action="store_true", help="refuse to resume (fails if the run folder has checkpoints)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_vqa_scratch)

    p = sub.add_parser("detected-patches", help="COPA Figure 4: the patches a VQA run's TPD keeps for a few test questions, at several ratios")
    p.add_argument("--run", required=True, help=f"a fine-tuned VQA run ({layout.finetune_run('<run>', 'vqa')})")
    p.add_argument("--root", required=True, help="data root (its VQA split of evaluate.vqa.split)")
    p.add_argument("--figure", required=True, help="figure stem: <stem>.png, <stem>.pdf and <stem>.json (the paired panel's numbers)")
    p.add_argument("--questions", type=in_range(PositiveInt), default=4, help="how many questions, one per image (default 4)")
    p.add_argument("--ratios", type=in_range(KeepRatio), nargs="+", default=[0.1, 0.3, 0.5, 0.7], help="keeping ratios (default 0.1 0.3 0.5 0.7)")
    p.add_argument("--pairs", type=in_range(Count), default=2, help="paired panel: how many images, each under two questions (default 2); "
                   "the kept-set IoU per pair in <figure>.json")
    p.set_defaults(func=cmd_detected_patches)
