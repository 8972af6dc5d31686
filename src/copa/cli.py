"""The ``copa`` command line: a thin layer that binds paths and parameters to library calls.

Global options choose the parameters (``--profile``, ``--set key.path=value``); each subcommand
is one stage of the pipeline and is what the Snakemake rules run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from copa.config import DEFAULT_PARAMS_DIR, Params, ParamsError, load_params
from copa.data.formats.records import FormatError
from copa.tasks.registry import TASKS
from copa.train.architectures import ARCHITECTURES, Architecture, architecture, architecture_of_run, resolve


class CommandError(Exception):
    """A user error a subcommand met in a library call (no CUDA, a result file that does not parse):
    ``main`` reports it as it reports the others."""


# What ``main`` reports as one line and exit status 2 (``--debug``: the traceback instead).
USER_ERRORS = (ParamsError, FormatError, FileNotFoundError, FileExistsError, CommandError)


def _params(args: argparse.Namespace) -> Params:
    params = load_params(args.profile, args.set, args.params_dir)
    architecture(params)  # a registered one, whose selection fits: refused before any work
    return params


def _filtered_annotations(params: Params) -> Path:
    """Where `copa filter` writes by default, and `patch-labels` / `pretrain` read by default."""
    return Path(f"data/processed/{params.profile}/annotations")


def cmd_params(args: argparse.Namespace) -> int:
    """Print the resolved parameters."""
    print(yaml.safe_dump(_params(args).to_dict(), sort_keys=False), end="")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from copa.data.synth.world import generate_world

    params = _params(args)
    root = Path(args.root or params.data.root)
    clear_previous_world(root, args.overwrite)
    manifest = generate_world(params.synth, root, progress=not args.quiet, workers=args.workers)
    images = sum(manifest["images"].values())
    print(f"synthetic world ({params.profile}, seed {params.synth.seed}): {images} images written under {root}")
    return 0


def clear_previous_world(root: Path, overwrite: bool) -> None:
    """A non-empty root is an error, unless --overwrite and it holds only what `copa synth` writes
    (a finished or interrupted world): stale files of another world must not linger."""
    from copa.data.synth.world import WORLD_ENTRIES

    if not root.exists() or not any(root.iterdir()):
        return
    foreign = sorted(p.name for p in root.iterdir() if p.name not in WORLD_ENTRIES)
    if foreign:
        raise FileExistsError(f"data root {root} holds files the synthetic world does not write ({', '.join(foreign[:5])}): choose another --root")
    if not overwrite:
        raise FileExistsError(f"data root {root} already holds a synthetic world: pass --overwrite to replace it")
    shutil.rmtree(root)


def cmd_filter(args: argparse.Namespace) -> int:
    from copa.data.filtering import run_filter
    from copa.report.filter_table import filter_table

    params = _params(args)
    root = Path(args.root or params.data.root)
    out = Path(args.out) if args.out else _filtered_annotations(params)
    report_path = Path(args.report or f"results/{params.profile}/filter_report.json")
    report = run_filter(root, params.filter, out, progress=not args.quiet, workers=args.workers)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    table = filter_table(report, params.profile)
    report_path.with_suffix(".md").write_text(table)
    print(table, end="")
    return 0


def cmd_patch_labels(args: argparse.Namespace) -> int:
    from copa.data.patch_labels import run_patch_labels
    from copa.report.figures import patch_label_figure, save_figure

    params = _params(args)
    annotations = Path(args.annotations) if args.annotations else _filtered_annotations(params)
    out = Path(args.out or f"data/processed/{params.profile}/patch_labels.npz")
    summary_path = Path(args.summary or f"results/{params.profile}/patch_labels.json")
    figure = Path(args.figure or f"figures/{params.profile}/patch_labels")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.parent.mkdir(parents=True, exist_ok=True)
    summary, examples = run_patch_labels(annotations, out, params.patch_labels, Path(args.root or params.data.root), params.seed, args.workers)
    save_figure(patch_label_figure(examples, params.patch_labels.patch_size), figure)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    grid = summary["grid"]
    print(
        f"patch labels: {summary['boxes']:,} boxes on a {grid}x{grid} grid ({params.patch_labels.image_size} px, patch {params.patch_labels.patch_size}), "
        f"{100 * summary['mean_positive_fraction']:.1f}% of patches positive on average -> {out}; figure {figure}.png"
    )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from copa.train.pretrain import run_pretraining

    params = _params(args)
    annotations = Path(args.annotations) if args.annotations else _filtered_annotations(params)
    init_dir = Path(args.encoder_init) if args.encoder_init else None
    metrics = run_pretraining(params, Path(args.root or params.data.root), annotations, Path(args.out), resume=not args.restart,
                              init_dir=init_dir)
    print("pretraining done: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def cmd_encoder_init(args: argparse.Namespace) -> int:
    from copa.train.pretrain import run_encoder_init

    params = _params(args)
    metrics = run_encoder_init(params, Path(args.root or params.data.root), Path(args.out))
    print("contrastive encoder init done: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def _architecture(run: Path) -> Architecture:
    """A run folder's architecture, from its resolved parameters; a folder without them is left to
    the loaders of the architecture its name says, whose errors name what is missing."""
    from copa.train.engine import RESOLVED_FILE
    from copa.train.pretrain import run_params

    return architecture(run_params(run)) if (run / RESOLVED_FILE).is_file() else architecture_of_run(run.name)


def _head(run: Path, task: str):
    """The head (copa.tasks.registry.HEADS) of ``task`` for the architecture of ``run`` (a
    pretraining or fine-tuning run folder); refused where it has none."""
    from copa.tasks.registry import head

    return head(_architecture(run).name, task, run)


def _instrumented(run: Path, command: str) -> None:
    """Refuse a run whose architecture the probes of ``copa <command>`` do not read."""
    arch = _architecture(run)
    if not arch.instruments:
        readable = ", ".join(a.name for a in ARCHITECTURES.values() if a.instruments)
        raise ParamsError(f"{run} is a {arch.name} run: `copa {command}` reads runs of the architectures {readable} only")


def cmd_finetune(args: argparse.Namespace) -> int:
    params = _params(args)
    run = resolve(_head(Path(args.start), args.task).finetune)
    metrics = run(params, Path(args.start), Path(args.root or params.data.root), Path(args.out), resume=not args.restart)
    print(f"{args.task} fine-tuning done: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    spec = TASKS[args.task]
    run = Path(args.run)
    head = _head(run, args.task)
    finetuned, evaluate = resolve(head.load)(run), resolve(head.evaluate)  # the run's model, data and fine-tuning settings
    params = finetuned.params
    # inference settings: the current params of the run's profile (or of --profile)
    settings = getattr(load_params(args.profile or params.profile, args.set, args.params_dir).evaluate, spec.settings)
    split = args.split or spec.default_split or getattr(settings, "split", None)
    record, predictions, summary = evaluate(finetuned, settings, Path(args.root or params.data.root), split,
                                            args.batch_size, progress=not args.quiet)
    out = Path(args.json or f"results/{params.profile}/finetune/{run.parent.name}/{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": args.task, "run": str(run), "profile": params.profile, **finetuned.state, **record}, indent=2) + "\n",
                   encoding="utf-8")
    answers = Path(args.predictions) if args.predictions else out.with_name(f"{out.stem}_predictions.json")
    answers.write_text(json.dumps(predictions, indent=1) + "\n", encoding="utf-8")
    print(f"{summary} -> {out}; predictions {answers}")
    return 0


def cmd_pretrain_eval(args: argparse.Namespace) -> int:
    import json

    from copa.data.heldout import heldout_attributes, heldout_object_samples, karpathy_retrieval_set
    from copa.data.layout import DataLayout
    from copa.eval.pretraining import evaluate_checkpoints
    from copa.eval.target_recall import target_questions
    from copa.report.pretrain_figure import pretraining_figure
    from copa.train.pretrain import run_checkpoints, run_params

    run = Path(args.run)
    _instrumented(run, "pretrain-eval")
    params = run_params(run)  # the run's own data root and filter rules, whatever --profile says
    layout = DataLayout(Path(args.root or params.data.root))
    pairs = karpathy_retrieval_set(layout, "coco", args.split)
    objects = heldout_object_samples(layout, params.filter, args.split)
    labels = params.patch_labels
    # what each question is about: the synthetic world's sidecar only (real data has none)
    questions = (target_questions(layout, params.evaluate.vqa.split, labels.image_size, labels.patch_size, labels.min_overlap)
                 if layout.referents.is_file() else None)
    probes = evaluate_checkpoints(run_checkpoints(run, args.checkpoints), pairs, objects, heldout_attributes(layout, objects), args.batch_size,
                                  progress=not args.quiet, target_questions=questions)
    out = Path(args.json or f"results/{params.profile}/pretrain/{run.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"run": run.name, "profile": params.profile, "heldout": f"COCO Karpathy {args.split} split", "checkpoints": probes}
    if questions is None:
        result["target_recall"] = {"note": f"not measured: {layout.referents} (the synthetic world's referent boxes) is not there"}
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    warm_up = params.pretrain.warm_up
    switch = warm_up.steps if warm_up.rule == "steps" and params.model.selection.method != "none" else None
    figure = Path(args.figure or f"figures/{params.profile}/pretrain/{run.name}")
    pretraining_figure(run / "dvclive", probes, switch, f"Pretraining {run.name} ({params.profile} profile)", figure)
    last = probes[-1]
    detection = last["patch_detection"].get("kept")
    summary = f"epoch {last['epoch']}: ITC R@1 image->text {last['retrieval']['tr_r1']:.1f}%, text->image {last['retrieval']['ir_r1']:.1f}%"
    if detection:
        summary += (f"; kept patches precision {detection['precision']:.3f} (base rate {last['patch_detection']['base_rate']:.3f}), "
                    f"recall {detection['recall']:.3f} (kept fraction {last['patch_detection']['keep_fraction']:.3f})")
    summary += (f"; ITM balanced accuracy hard {last['itm']['hard']['balanced']:.3f}, random {last['itm']['random']['balanced']:.3f} "
                f"(constant {last['itm']['constant']:.1f})")
    if "contrast" in last["same_image_contrast"]:
        contrast = last["same_image_contrast"]["contrast"]
        summary += f"; same-image AP contrast {contrast['estimate']:+.3f} [{contrast['low']:+.3f}, {contrast['high']:+.3f}]"
    print(f"{summary} -> {out}; figure {figure}.png")
    return 0


def cmd_reference_boxes(args: argparse.Namespace) -> int:
    from copa.data.reference_boxes import run_reference_boxes
    from copa.train.distributed import resolve_device

    params = _params(args)
    out = Path(args.out or f"data/processed/{params.profile}/reference_boxes.jsonl")
    summary_path = Path(args.summary or f"results/{params.profile}/reference_boxes.json")
    try:
        device = resolve_device(args.device)
        summary = run_reference_boxes(Path(args.root or params.data.root), params.reference_boxes, out, device, progress=not args.quiet)
    except (RuntimeError, ValueError) as exc:  # no CUDA; more pairs asked for than there are
        raise CommandError(exc) from exc
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps({"profile": params.profile, "file": str(out), **summary}, indent=2) + "\n", encoding="utf-8")
    print(f"reference boxes ({summary['source']}): {summary['boxes']:,} boxes on {summary['pairs']:,} pairs "
          f"({summary['pairs_without_boxes']:,} without any, {summary['boxes_outside_image']:,} outside their image) -> {out}")
    return 0


def cmd_patch_detection(args: argparse.Namespace) -> int:
    from copa.data.formats.reference_boxes import read_reference_boxes
    from copa.eval.patch_detection import DEFINITIONS, evaluate_reference_pairs
    from copa.train.distributed import resolve_device
    from copa.train.pretrain import run_checkpoints, run_params

    run = Path(args.run)
    _instrumented(run, "patch-detection")
    params = run_params(run)
    root = Path(args.root or params.data.root)
    pairs = read_reference_boxes(Path(args.reference), root)
    if not pairs:
        raise FormatError(Path(args.reference), "no pair to evaluate on")
    try:
        probes = evaluate_reference_pairs(run_checkpoints(run, args.checkpoints), pairs, root, args.batch_size, progress=not args.quiet,
                                          device=resolve_device(args.device))
    except (RuntimeError, ValueError) as exc:  # no CUDA; not a TPD run; an image of another size than the file says
        raise CommandError(exc) from exc
    sources = sorted({p.source for p in pairs})
    reference = {"file": args.reference, "source": ", ".join(sources), "pairs": len(pairs), "boxes": sum(len(p.boxes) for p in pairs),
                 "pairs_without_boxes": sum(not p.boxes for p in pairs)}
    out = Path(args.json or f"results/{params.profile}/patch_detection/{run.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": run.name, "profile": params.profile, "reference": reference, "definitions": DEFINITIONS,
                               "checkpoints": probes}, indent=2) + "\n", encoding="utf-8")
    last = probes[-1]
    print(f"epoch {last['epoch']}, top-K: accuracy {last['kept']['accuracy']:.3f}, recall {last['kept']['recall']:.3f} "
          f"(base rate {last['base_rate']:.3f}); score > 0.5: accuracy {last['score_above_0.5']['accuracy']:.3f}, "
          f"recall {last['score_above_0.5']['recall']:.3f} -> {out}")
    return 0


def cmd_figure5(args: argparse.Namespace) -> int:
    from copa.report.figure5 import write_figure5

    profile = _params(args).profile
    results = Path(args.results or f"results/{profile}")
    try:
        paths = write_figure5(results / "pretrain" / f"{args.run}.json", results / "patch_detection" / f"{args.run}.json",
                              Path(args.out or results / "tables" / "figure5"), Path(args.figure or f"figures/{profile}/figure5"))
    except ValueError as exc:  # the two result files disagree on the checkpoints
        raise CommandError(exc) from exc
    print(f"Figure 5 ({profile}, run {args.run}) -> {', '.join(map(str, paths))}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """`copa table` and `copa figure`: a grid's data table, and for a figure its drawing."""
    from copa.report.figures import save_figure
    from copa.report.grid_figures import FIGURES
    from copa.report.grids import load_grid
    from copa.report.tables import write_table

    params = _params(args)
    grid = load_grid(args.grid, args.params_dir)
    if args.command == "figure" and grid.name not in FIGURES:
        raise ParamsError(f"grid {grid.name!r} has no figure (figures: {', '.join(FIGURES)})")
    results = Path(args.results or f"results/{params.profile}")
    try:
        paths, cells, note = write_table(grid, params, results, params.report.seeds, Path(args.out or results / "tables" / grid.name))
    except ValueError as exc:  # a result file that does not parse
        raise CommandError(exc) from exc
    if args.command == "figure":
        paths += save_figure(FIGURES[grid.name](grid, cells, note), Path(args.figure or f"figures/{params.profile}/{grid.name}"))
    print(f"{grid.title} ({params.profile}) -> {', '.join(map(str, paths))}")
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    from copa.report.claims import write_claims

    params = _params(args)
    tables = Path(args.tables or f"results/{params.profile}/tables")
    paths = write_claims(tables, params.profile, Path(args.out or f"results/{params.profile}/claims.md"), params, args.params_dir)
    print(f"claims check ({params.profile}) -> {', '.join(map(str, paths))}")
    return 0


def cmd_detected_patches(args: argparse.Namespace) -> int:
    from copa.data.downstream import vqa_examples
    from copa.data.layout import DataLayout
    from copa.data.formats.referents import read_referents
    from copa.report.detected_patches import (detect_patches, detected_patches_figure, pair_summary, pick_question_pairs,
                                              pick_questions)
    from copa.report.figures import save_figure
    from copa.train.finetune import load_finetuned

    _instrumented(Path(args.run), "detected-patches")
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
    data = figure.with_name(figure.name + ".json")  # the paired panel's numbers
    data.write_text(json.dumps(pair_summary(paired_detections, selection.keep_ratio), indent=2) + "\n", encoding="utf-8")
    print(f"{len(detections)} questions x {len(args.ratios)} ratios, {len(paired_detections)} question pairs -> "
          f"{', '.join(map(str, [*paths, data]))}")
    return 0


def cmd_stage_times(args: argparse.Namespace) -> int:
    from copa.report.stage_times import stage_times, stage_times_markdown

    folder = Path(args.folder or f"logs/{_params(args).profile}/benchmarks")
    try:
        print(stage_times_markdown(stage_times(folder)), end="")
    except ValueError as exc:  # a file that is not a benchmark table
        raise CommandError(exc) from exc
    return 0


def cmd_readme_results(args: argparse.Namespace) -> int:
    from copa.report.readme import replace_block, results_block

    profile = _params(args).profile
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    try:
        updated = replace_block(text, results_block(profile, readme.parent, args.params_dir), readme)
    except ValueError as exc:  # no marked section
        raise CommandError(exc) from exc
    if args.check:
        if updated != text:
            print(f"{readme}: its results section differs from results/{profile}/ (run `copa readme-results`)", file=sys.stderr)
            return 1
        print(f"{readme}: results section up to date with results/{profile}/")
        return 0
    readme.write_text(updated, encoding="utf-8")
    print(f"{readme}: results section {'rewritten' if updated != text else 'already up to date'} from results/{profile}/")
    return 0


def cmd_efficiency(args: argparse.Namespace) -> int:
    import time

    from copa.data.tokenizer import load_tokenizer
    from copa.eval.efficiency import measure_efficiency, summary_line
    from copa.report.grids import run_name
    from copa.train.distributed import resolve_device
    from copa.train.pretrain import VOCAB_DIR, run_params

    if args.run:  # the run's model and vocabulary size; the protocol from the current params of its profile
        run = Path(args.run)
        params = run_params(run)
        vocab = run / VOCAB_DIR / "vocab.txt"
        if not vocab.is_file():
            raise FileNotFoundError(f"{vocab}: the run's vocabulary is missing")
        vocab_size = len(load_tokenizer(vocab))
        settings = load_params(args.profile or params.profile, args.set, args.params_dir).efficiency
        metrics = run / "metrics.json"
        step = json.loads(metrics.read_text(encoding="utf-8")).get("step") if metrics.is_file() else None
        name, source = run.name, {"run": str(run), "trained_steps": step}
        default = Path(f"results/{params.profile}/efficiency/{name}.json")
    else:  # --from-params: the model of the current profile and overrides (e.g. selection none: the mPLUG baseline)
        params = _params(args)
        vocab_size, settings = params.model.vocab_size, params.efficiency
        s = params.model.selection
        name = run_name(s.method, s.location, s.keep_ratio, params.seed, params.architecture)
        source = {"params": params.profile, "overrides": list(args.set)}
        default = Path(f"results/{params.profile}/efficiency/from-params/{name}.json")
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise CommandError(exc) from exc
    start = time.perf_counter()
    record = measure_efficiency(params, vocab_size, settings, device)
    record = {"name": name, "profile": params.profile, **source, **record, "wall_s": time.perf_counter() - start}
    out = Path(args.json) if args.json else default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"efficiency {name} ({device}): {summary_line(record)} -> {out}")
    return 0


def cmd_validate_data(args: argparse.Namespace) -> int:
    from copa.data.validate import format_summary, validate_data_root, write_json

    root = Path(args.root) if args.root else Path(_params(args).data.root)
    result = validate_data_root(root, check_files=not args.skip_image_check)
    print(format_summary(result))
    if args.json:
        write_json(result, Path(args.json))
    absent = [f"{s.source} {s.split}" for s in result.sources if s.status == "absent"]
    if args.require_all and absent:
        print(f"copa validate-data: missing sources: {', '.join(absent)}", file=sys.stderr)
        return 1
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="copa", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="scale profile: fixture | demo | paper (default: the one named in params/base.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter, e.g. --set synth.seed=3 (repeatable)")
    parser.add_argument("--params-dir", default=str(DEFAULT_PARAMS_DIR), help="folder holding base.yaml and profiles/ (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="on an error, its traceback instead of the one-line message")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="print the resolved parameters as YAML")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("synth", help="generate the synthetic world in the official dataset formats")
    p.add_argument("--root", help="data root to write (default: the profile's data.root)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic world already in --root (nothing else is ever deleted)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes drawing images; the output is the same for any number (default: %(default)s)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("filter", help="filter object/region annotations (COPA Appendix A) into X-VLM JSON lines")
    p.add_argument("--root", help="data root to read (default: the profile's data.root)")
    p.add_argument("--out", help="folder of the filtered files (default: data/processed/<profile>/annotations)")
    p.add_argument("--report", help="report JSON; the table goes beside it as .md (default: results/<profile>/filter_report.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sources filtered at once, each in its own process (default: %(default)s)")
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser("patch-labels", help="turn filtered boxes into bit-packed patch labels (COPA §3.3) and draw a check figure")
    p.add_argument("--annotations", help="folder of filtered files (default: data/processed/<profile>/annotations)")
    p.add_argument("--out", help="label store (default: data/processed/<profile>/patch_labels.npz)")
    p.add_argument("--summary", help="summary JSON (default: results/<profile>/patch_labels.json)")
    p.add_argument("--figure", help="figure stem, written as .png and .pdf (default: figures/<profile>/patch_labels)")
    p.add_argument("--root", help="data root holding the images (default: the profile's data.root)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="filtered files labelled at once, each in its own process (default: %(default)s)")
    p.set_defaults(func=cmd_patch_labels)

    p = sub.add_parser("pretrain", help="pretrain COPA (Algorithm 1); resumes from the run's last checkpoint; torchrun for several processes")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, dvclive/, metrics.json, vocab/")
    p.add_argument("--annotations", help="filtered annotations (default: data/processed/<profile>/annotations)")
    p.add_argument("--root", help="data root (default: the profile's data.root)")
    p.add_argument("--restart", action="store_true", help="refuse to resume (fails if the run folder has checkpoints)")
    p.add_argument("--encoder-init", metavar="DIR", help="the contrastive encoder init to start from, shared by runs "
                   "(copa encoder-init --out; trained there if unfinished; default: <out>/encoder_init)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("encoder-init", help="the contrastive encoder init alone (pretrain.encoder_init, method contrastive): "
                                            "selection-free, shared by every pretraining run of a profile and seed")
    p.add_argument("--out", required=True, help="folder: checkpoints/, dvclive/, metrics.json, vocab/")
    p.add_argument("--root", help="data root (default: the profile's data.root)")
    p.set_defaults(func=cmd_encoder_init)

    p = sub.add_parser("pretrain-eval", help="held-out probes of a pretraining run (ITC retrieval, patch detection, ITM accuracy, "
                                             "same-image TPD contrast, linear probes; on the synthetic world, target-patch "
                                             "recall on evaluate.vqa.split's questions) per checkpoint, and its figure")
    p.add_argument("--run", required=True, help="the run folder (copa pretrain --out)")
    p.add_argument("--root", help="data root (default: the one the run was trained on)")
    p.add_argument("--checkpoints", choices=("epochs", "last"), default="epochs", help="every per-epoch checkpoint, or the last one (default: %(default)s)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="Karpathy split of held-out COCO images (default: %(default)s)")
    p.add_argument("--json", help="result JSON (default: results/<profile>/pretrain/<run>.json)")
    p.add_argument("--figure", help="figure stem, written as .png and .pdf (default: figures/<profile>/pretrain/<run>)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain_eval)

    p = sub.add_parser("reference-boxes", help="COPA Appendix C.1: boxes of what each caption names on a sample of web pairs "
                                               "(Grounding DINO, or the synthetic world's oracle: reference_boxes.detector)")
    p.add_argument("--root", help="data root with the CC3M training TSV (default: the profile's data.root)")
    p.add_argument("--out", help="JSON lines, one pair each (default: data/processed/<profile>/reference_boxes.jsonl)")
    p.add_argument("--summary", help="counts of pairs and boxes (default: results/<profile>/reference_boxes.json)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s: CUDA when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reference_boxes)

    p = sub.add_parser("patch-detection", help="the TPD of every per-epoch checkpoint of a run against the reference boxes' patch "
                                               "labels: accuracy, recall, precision, F1 (COPA Figure 5)")
    p.add_argument("--run", required=True, help="a TPD pretraining run folder (copa pretrain --out)")
    p.add_argument("--reference", required=True, help="the reference boxes (copa reference-boxes --out)")
    p.add_argument("--root", help="data root the reference images are relative to (default: the one the run was trained on)")
    p.add_argument("--checkpoints", choices=("epochs", "last"), default="epochs", help="every per-epoch checkpoint, or the last one (default: %(default)s)")
    p.add_argument("--json", help="result JSON (default: results/<profile>/patch_detection/<run>.json)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s: CUDA when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_patch_detection)

    p = sub.add_parser("figure5", help="COPA Figure 5 (PNG, PDF) and its table: a run's TPD accuracy and recall per epoch, in and out of domain")
    p.add_argument("--run", required=True, help="the run's name, e.g. tpd-loc3-keep0.5-seed0: reads <results>/pretrain/<run>.json "
                                                "(copa pretrain-eval) and <results>/patch_detection/<run>.json (copa patch-detection)")
    p.add_argument("--results", help="results folder (default: results/<profile>)")
    p.add_argument("--out", help="stem of the table (default: <results>/tables/figure5): .csv .md .tex .json")
    p.add_argument("--figure", help="figure stem (default: figures/<profile>/figure5)")
    p.set_defaults(func=cmd_figure5)

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
    p.add_argument("--json", help="result JSON (default: results/<profile>/finetune/<pretraining run>/<task>.json)")
    p.add_argument("--predictions", help="the answers / captions / boxes / rankings (default: beside --json as <name>_predictions.json; "
                                         "VQA in the official result format, captions in COCO's)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("efficiency", help="FLOPs, throughput, latency (COPA Table 4: 224 px, 40 tokens) and pretraining-step memory (Figure 3) of a run's model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a pretraining run folder (copa pretrain --out): its model and vocabulary size")
    which.add_argument("--from-params", action="store_true", help="the model of --profile / --set instead (vocabulary: model.vocab_size)")
    p.add_argument("--json", help="result JSON (default: results/<profile>/efficiency/<run>.json; from-params/<name>.json with --from-params)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s: CUDA when available)")
    p.set_defaults(func=cmd_efficiency)

    helps = {"table": "a table of params/grids/<grid>.yaml from the run results: CSV, Markdown, LaTeX and a metrics JSON",
             "figure": "a figure of params/grids/<grid>.yaml (figure1a, figure3) as PNG and PDF, and its data as `copa table` writes it"}
    for command, example in (("table", "table9"), ("figure", "figure3")):
        p = sub.add_parser(command, help=helps[command])
        p.add_argument("grid", help=f"the grid's name, e.g. {example}")
        p.add_argument("--results", help="results folder the runs wrote (default: results/<profile>)")
        p.add_argument("--out", help="stem of the data table (default: <results>/tables/<grid>): .csv .md .tex .json")
        if command == "figure":
            p.add_argument("--figure", help="figure stem (default: figures/<profile>/<grid>)")
        p.set_defaults(func=cmd_table)

    p = sub.add_parser("claims", help="check the paper's qualitative claims against the profile's tables (results/<profile>/claims.md)")
    p.add_argument("--tables", help="folder of the tables' CSVs (default: results/<profile>/tables)")
    p.add_argument("--out", help="the Markdown verdicts; a JSON beside it (default: results/<profile>/claims.md)")
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("detected-patches", help="COPA Figure 4: the patches a VQA run's TPD keeps for a few test questions, at several ratios")
    p.add_argument("--run", required=True, help="a fine-tuned VQA run (runs/<profile>/finetune/<run>/vqa)")
    p.add_argument("--root", required=True, help="data root (its VQA split of evaluate.vqa.split)")
    p.add_argument("--figure", required=True, help="figure stem: <stem>.png, <stem>.pdf and <stem>.json (the paired panel's numbers)")
    p.add_argument("--questions", type=int, default=4, help="how many questions, one per image (default 4)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7], help="keeping ratios (default 0.1 0.3 0.5 0.7)")
    p.add_argument("--pairs", type=int, default=2, help="paired panel: how many images, each under two questions (default 2); "
                   "the kept-set IoU per pair in <figure>.json")
    p.set_defaults(func=cmd_detected_patches)

    p = sub.add_parser("stage-times", help="wall time per rule from the workflow's Snakemake benchmark files, as a Markdown table")
    p.add_argument("folder", nargs="?", help="the benchmark files' folder (default: logs/<profile>/benchmarks)")
    p.set_defaults(func=cmd_stage_times)

    p = sub.add_parser("readme-results", help="write the profile's tables, figures and claims check into the README's marked results section")
    p.add_argument("--readme", default="README.md", help="the file with the marked section (default: README.md)")
    p.add_argument("--check", action="store_true", help="only say whether the section is up to date (exit 1 if not)")
    p.set_defaults(func=cmd_readme_results)

    p = sub.add_parser("validate-data", help="run every reader over a data root and print a summary")
    p.add_argument("root", nargs="?", help="data root (default: the profile's data.root)")
    p.add_argument("--json", help="also write the summary as JSON to this file")
    p.add_argument("--skip-image-check", action="store_true", help="do not check that every image file exists")
    p.add_argument("--require-all", action="store_true", help="fail when a source is absent (the synthetic world has them all)")
    p.set_defaults(func=cmd_validate_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines())  # one line (YAML errors span several)
        print(f"copa {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
