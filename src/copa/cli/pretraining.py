"""Subcommands of pretraining and its instruments: the contrastive encoder init, a pretraining
run, its held-out probes and its TPD against reference boxes, and a model's costs."""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from copa.cli.common import HELP_LAYOUT, CommandError, in_range, path_or, profile_params, require_instruments
from copa.config import PositiveInt, load_params
from copa.data.formats.records import FormatError, load_json
from copa.run_layout import METRICS_FILE, RunLayout


def cmd_encoder_init(args: argparse.Namespace) -> int:
    from copa.train.pretrain import run_encoder_init

    params = profile_params(args)
    annotations = path_or(args.annotations, RunLayout(params.profile).filtered_annotations)
    metrics = run_encoder_init(params, Path(args.root or params.data.root), Path(args.out), annotations)
    print("contrastive encoder init done: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from copa.train.pretrain import run_pretraining

    params = profile_params(args)
    annotations = path_or(args.annotations, RunLayout(params.profile).filtered_annotations)
    init_dir = Path(args.encoder_init) if args.encoder_init else None
    metrics = run_pretraining(params, Path(args.root or params.data.root), annotations, Path(args.out), resume=not args.restart,
                              init_dir=init_dir)
    print("pretraining done: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def pretrain_eval_outputs(args: argparse.Namespace, layout: RunLayout) -> tuple[Path, Path]:
    """`copa pretrain-eval`'s (result JSON, figure stem) in ``layout``, the run's profile's."""
    run = Path(args.run).name
    return path_or(args.json, layout.pretrain_eval(run)), path_or(args.figure, layout.pretrain_figure(run))


def cmd_pretrain_eval(args: argparse.Namespace) -> int:
    from copa.data.heldout import grounding_words, heldout_attributes, heldout_object_samples, karpathy_retrieval_set
    from copa.data.layout import DataLayout
    from copa.eval.pretraining import evaluate_checkpoints
    from copa.eval.target_recall import target_questions
    from copa.report.pretrain_figure import pretraining_figure
    from copa.train.pretrain import run_checkpoints, run_params

    run = Path(args.run)
    require_instruments(run, "pretrain-eval")
    params = run_params(run)  # the run's own data root and filter rules, whatever --profile says
    layout = DataLayout(Path(args.root or params.data.root))
    pairs = karpathy_retrieval_set(layout, "coco", args.split)
    objects = heldout_object_samples(layout, params.filter, args.split)
    labels = params.patch_labels
    # what each question is about: the synthetic world's sidecar only (real data has none)
    questions = (target_questions(layout, params.evaluate.vqa.split, labels.image_size, labels.patch_size, labels.min_overlap)
                 if layout.referents.is_file() else None)
    attributes = heldout_attributes(layout, objects)
    probes = evaluate_checkpoints(run_checkpoints(run, args.checkpoints), pairs, objects, attributes, grounding_words(layout, attributes),
                                  args.batch_size, progress=not args.quiet, target_questions=questions)
    out, figure = pretrain_eval_outputs(args, RunLayout(params.profile))
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"run": run.name, "profile": params.profile, "heldout": f"COCO Karpathy {args.split} split", "checkpoints": probes}
    if questions is None:
        result["target_recall"] = {"note": f"not measured: {layout.referents} (the synthetic world's referent boxes) is not there"}
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    warm_up = params.pretrain.warm_up
    switch = warm_up.steps if warm_up.rule == "steps" and params.model.selection.method != "none" else None
    pretraining_figure(run / "dvclive", probes, switch, f"Pretraining {run.name} ({params.profile} profile)", figure)
    last = probes[-1]
    detection = last["patch_detection"].get("kept")
    summary = f"epoch {last['epoch']}: ITC R@1 image->text {last['retrieval']['tr_r1']:.1f}%, text->image {last['retrieval']['ir_r1']:.1f}%"
    if detection:
        summary += (f"; kept patches precision {detection['precision']:.3f} (base rate {last['patch_detection']['base_rate']:.3f}), "
                    f"recall {detection['recall']:.3f} (kept fraction {last['patch_detection']['keep_fraction']:.3f})")
    itm = last["itm"]
    summary += (f"; ITM balanced accuracy hard {itm['hard']['balanced']:.3f}, random {itm['random']['balanced']:.3f} "
                f"(constant {itm['constant']:.1f}), AUC hard {itm['hard']['auc']:.3f}, random {itm['random']['auc']:.3f}")
    if "contrast" in last["same_image_contrast"]:
        contrast = last["same_image_contrast"]["contrast"]
        summary += f"; same-image AP contrast {contrast['estimate']:+.3f} [{contrast['low']:+.3f}, {contrast['high']:+.3f}]"
    for cls, grounding in last["word_grounding"].items():
        summary += (f"; masked {cls} words within class {grounding['own_image_within_class']:.1f}% with their image, "
                    f"{grounding['other_image_within_class']:.1f}% with another (chance {grounding['within_class_chance']:.1f}%)")
    print(f"{summary} -> {out}; figure {figure}.png")
    return 0


def patch_detection_output(args: argparse.Namespace, layout: RunLayout) -> Path:
    """`copa patch-detection`'s result JSON in ``layout``, the run's profile's."""
    return path_or(args.json, layout.patch_detection(Path(args.run).name))


def cmd_patch_detection(args: argparse.Namespace) -> int:
    from copa.data.formats.reference_boxes import read_reference_boxes
    from copa.eval.patch_detection import DEFINITIONS, evaluate_reference_pairs
    from copa.train.distributed import resolve_device
    from copa.train.pretrain import run_checkpoints, run_params

    run = Path(args.run)
    require_instruments(run, "patch-detection")
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
    out = patch_detection_output(args, RunLayout(params.profile))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": run.name, "profile": params.profile, "reference": reference, "definitions": DEFINITIONS,
                               "checkpoints": probes}, indent=2) + "\n", encoding="utf-8")
    last = probes[-1]
    print(f"epoch {last['epoch']}, top-K: accuracy {last['kept']['accuracy']:.3f}, recall {last['kept']['recall']:.3f} "
          f"(base rate {last['base_rate']:.3f}); score > 0.5: accuracy {last['score_above_0.5']['accuracy']:.3f}, "
          f"recall {last['score_above_0.5']['recall']:.3f} -> {out}")
    return 0


def efficiency_output(args: argparse.Namespace, layout: RunLayout, name: str) -> Path:
    """`copa efficiency`'s result JSON for ``name`` (a run folder's name, with --from-params the
    run name of the parameters, with --grid the grid's) in ``layout``, its profile's."""
    if getattr(args, "grid", None):
        return path_or(args.json, layout.efficiency_paired(name))
    return path_or(args.json, layout.efficiency_from_params(name) if args.from_params else layout.efficiency(name))


def cmd_efficiency(args: argparse.Namespace) -> int:
    if args.grid:
        return _paired_efficiency(args)
    if args.grid_costs:
        return _grid_costs(args)
    from copa.data.tokenizer import load_tokenizer
    from copa.report.grids import params_run_name
    from copa.train.pretrain import VOCAB_DIR, run_params

    if args.run:  # the run's model and vocabulary size; the protocol from the current params of its profile
        run = Path(args.run)
        params = run_params(run)
        vocab = run / VOCAB_DIR / "vocab.txt"
        if not vocab.is_file():
            raise FileNotFoundError(f"{vocab}: the run's vocabulary is missing")
        vocab_size = len(load_tokenizer(vocab))
        current = load_params(args.profile or params.profile, args.set, args.params_dir)
        settings, decoding = current.efficiency, current.evaluate.vqa
        metrics = run / METRICS_FILE
        step = load_json(metrics).get("step") if metrics.is_file() else None
        name, source = run.name, {"run": str(run), "trained_steps": step}
    else:  # --from-params: the model of the current profile and overrides (e.g. selection none: the mPLUG baseline)
        params = profile_params(args)
        vocab_size, settings, decoding = params.model.vocab_size, params.efficiency, params.evaluate.vqa
        name = params_run_name(params)
        source = {"params": params.profile, "overrides": list(args.set)}
    out = efficiency_output(args, RunLayout(params.profile), name)
    _write_costs(params, vocab_size, settings, decoding, _device(args), ("flops", "memory") if args.no_timing else ("flops", "speed", "memory"),
                 {"name": name, "profile": params.profile, **source}, out)
    return 0


def _grid_costs(args: argparse.Namespace) -> int:
    """`copa efficiency --grid-costs`: every row cost the tables read, and the profile's own model's
    (copa.report.tables.cost_cells), FLOPs and memory, in one process: after torch loads, a model's
    costs take about a second."""
    from copa.report.grids import available_grids, load_grid, params_run_name
    from copa.report.tables import cost_cells

    if args.json:
        raise CommandError("--grid-costs writes each cost where the tables read it (results/<profile>/efficiency/): no --json")
    params = profile_params(args)
    device = _device(args)
    grids = [load_grid(name, args.params_dir) for name in available_grids(args.params_dir)]
    for out, overrides in cost_cells(grids, params, RunLayout(params.profile).results, params.report.seeds).items():
        row = load_params(params.profile, [*args.set, *overrides], args.params_dir)
        head = {"name": params_run_name(row), "profile": row.profile,
                "params": row.profile, "overrides": [*args.set, *overrides]}
        _write_costs(row, row.model.vocab_size, row.efficiency, row.evaluate.vqa, device, ("flops", "memory"), head, out)
    return 0


def _device(args: argparse.Namespace):
    from copa.train.distributed import resolve_device

    try:
        return resolve_device(args.device)
    except RuntimeError as exc:
        raise CommandError(exc) from exc


def _write_costs(params, vocab_size: int, settings, decoding, device, parts: tuple[str, ...], head: dict, out: Path) -> None:
    """Measure ``parts`` of the model of ``params`` and write the record (``head`` first) to ``out``."""
    import time

    from copa.eval.efficiency import measure_efficiency, summary_line
    from copa.tasks import registry
    from copa.train.architectures import architecture, resolve

    start = time.perf_counter()
    answer_cost = registry.answer_cost(architecture(params).name)  # the decoder column (None: no decoder)
    answer_flops = None if answer_cost is None else partial(resolve(answer_cost), decoding=decoding)
    record = {**head, **measure_efficiency(params, vocab_size, settings, device, parts, answer_flops), "wall_s": time.perf_counter() - start}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"efficiency {head['name']} ({device}): {summary_line(record)} -> {out}")


def _paired_efficiency(args: argparse.Namespace) -> int:
    """`copa efficiency --grid`: the speed of a grid's models, timed together (the paired protocol)."""
    import time

    from copa.eval.efficiency import measure_paired_speed
    from copa.report.grids import load_grid, row_cost_overrides

    params = profile_params(args)
    grid = load_grid(args.grid, args.params_dir)
    if grid.baseline is None:
        raise CommandError(f"grid {args.grid}: no baseline row to pair the speedups with (its key 'baseline')")
    models = {row.label: load_params(params.profile, [*args.set, *row_cost_overrides(row, params)], args.params_dir) for row in grid.rows}
    device = _device(args)
    start = time.perf_counter()
    record = measure_paired_speed(models, params.model.vocab_size, device, grid.baseline)
    record = {"grid": args.grid, "profile": params.profile, "overrides": list(args.set), **record, "wall_s": time.perf_counter() - start}
    out = efficiency_output(args, RunLayout(params.profile), args.grid)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for label, model in record["models"].items():
        t, up = model["throughput"], model["speedup"]["throughput"]
        print(f"{label}: {t['pairs_per_s']:.1f} pairs/s (IQR {t['pairs_per_s_iqr'][0]:.1f}-{t['pairs_per_s_iqr'][1]:.1f}), "
              f"speedup over {grid.baseline} {up['estimate']:.3f} [{up['low']:.3f}, {up['high']:.3f}]")
    print(f"efficiency of grid {args.grid} ({device}, {len(models)} models, {record['settings']['timing']['rounds']} rounds) -> {out}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    layout = HELP_LAYOUT
    p = sub.add_parser("pretrain", help="pretrain COPA (Algorithm 1); resumes from the run's last checkpoint; torchrun for several processes")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, dvclive/, metrics.json, vocab/")
    p.add_argument("--annotations", help=f"filtered annotations (default: {layout.filtered_annotations})")
    p.add_argument("--root", help="data root (default: the profile's data.root)")
    p.add_argument("--restart", action="store_true", help="refuse to resume (fails if the run folder has checkpoints)")
    p.add_argument("--encoder-init", metavar="DIR", help="the contrastive encoder init to start from, shared by runs "
                   "(copa encoder-init --out; trained there if unfinished; default: <out>/encoder_init)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("encoder-init", help="the contrastive encoder init alone (pretrain.encoder_init, method contrastive): "
                                            "selection-free, shared by every pretraining run of a profile and seed")
    p.add_argument("--out", required=True, help="folder: checkpoints/, dvclive/, metrics.json, vocab/")
    p.add_argument("--root", help="data root (default: the profile's data.root)")
    p.add_argument("--annotations", help=f"filtered annotations, read when pretrain.encoder_init.objective is captions_and_boxes "
                                         f"(default: {layout.filtered_annotations})")
    p.set_defaults(func=cmd_encoder_init)

    p = sub.add_parser("pretrain-eval", help="held-out probes of a pretraining run (ITC retrieval, patch detection, ITM accuracy, "
                                             "same-image TPD contrast, linear probes, the fusion's word grounding; on the synthetic world, target-patch "
                                             "recall on evaluate.vqa.split's questions) per checkpoint, and its figure")
    p.add_argument("--run", required=True, help="the run folder (copa pretrain --out)")
    p.add_argument("--root", help="data root (default: the one the run was trained on)")
    p.add_argument("--checkpoints", choices=("epochs", "last"), default="epochs", help="every per-epoch checkpoint, or the last one (default: %(default)s)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="Karpathy split of held-out COCO images (default: %(default)s)")
    p.add_argument("--json", help=f"result JSON (default: {layout.pretrain_eval('<run>')})")
    p.add_argument("--figure", help=f"figure stem, written as .png and .pdf (default: {layout.pretrain_figure('<run>')})")
    p.add_argument("--batch-size", type=in_range(PositiveInt), default=64, help="evaluation batch size (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain_eval)

    p = sub.add_parser("patch-detection", help="the TPD of every per-epoch checkpoint of a run against the reference boxes' patch "
                                               "labels: accuracy, recall, precision, F1 (COPA Figure 5)")
    p.add_argument("--run", required=True, help="a TPD pretraining run folder (copa pretrain --out)")
    p.add_argument("--reference", required=True, help="the reference boxes (copa reference-boxes --out)")
    p.add_argument("--root", help="data root the reference images are relative to (default: the one the run was trained on)")
    p.add_argument("--checkpoints", choices=("epochs", "last"), default="epochs", help="every per-epoch checkpoint, or the last one (default: %(default)s)")
    p.add_argument("--json", help=f"result JSON (default: {layout.patch_detection('<run>')})")
    p.add_argument("--batch-size", type=in_range(PositiveInt), default=64, help="evaluation batch size (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s: CUDA when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_patch_detection)

    p = sub.add_parser("efficiency", help="FLOPs, throughput, latency (COPA Table 4: 224 px, 40 tokens) and pretraining-step memory (Figure 3) of a run's model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a pretraining run folder (copa pretrain --out): its model and vocabulary size")
    which.add_argument("--from-params", action="store_true", help="the model of --profile / --set instead (vocabulary: model.vocab_size)")
    which.add_argument("--grid", help="a grid of params/grids/ (a table): its rows' models timed together, throughput, latency and "
                                      "paired speedups over its baseline row (copa.eval.paired_timing); no FLOPs or memory")
    which.add_argument("--grid-costs", action="store_true", help="every row cost the tables of params/grids/ read and the profile's own "
                                                                 "model's (FLOPs and memory, no timing), each where the tables read it: "
                                                                 "one process for them all (the workflow's efficiency rule)")
    p.add_argument("--no-timing", action="store_true", help="FLOPs and memory only (the workflow times a table's models together: --grid)")
    p.add_argument("--json", help=f"result JSON (default: {layout.efficiency('<run>')}; {layout.efficiency_from_params('<name>')} with "
                                  f"--from-params; {layout.efficiency_paired('<grid>')} with --grid)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s: CUDA when available)")
    p.set_defaults(func=cmd_efficiency)
