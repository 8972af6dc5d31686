"""Subcommands of the data stage: the parameters, the synthetic world, the check of a data root,
filtering, patch labels and the reference boxes of COPA Figure 5."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from copa.cli.common import HELP_LAYOUT, CommandError, in_range, path_or, profile_params
from copa.config import PositiveInt
from copa.run_layout import RunLayout, markdown_beside


def cmd_params(args: argparse.Namespace) -> int:
    """Print the resolved parameters."""
    print(yaml.safe_dump(profile_params(args).to_dict(), sort_keys=False), end="")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from copa.data.synth.world import generate_world

    params = profile_params(args)
    root = Path(args.root or params.data.root)
    clear_previous_world(root, args.overwrite)
    manifest = generate_world(params.synth, root, progress=not args.quiet, workers=args.workers)
    images = sum(manifest["images"].values())
    print(f"synthetic world ({params.profile}, seed {params.synth.seed}): {images} images written under {root}")
    return 0


def clear_previous_world(root: Path, overwrite: bool) -> None:
    """A non-empty root is an error, unless --overwrite and it holds only the files its manifest
    says `copa synth` wrote (copa.data.synth.ownership): those are deleted, nothing else ever is."""
    from copa.data.synth.ownership import refuse_foreign, remove_world

    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return
    refuse_foreign(root, "`copa synth --overwrite`")
    if not overwrite:
        raise FileExistsError(f"data root {root} already holds a synthetic world: pass --overwrite to replace it")
    remove_world(root)


def cmd_validate_data(args: argparse.Namespace) -> int:
    from copa.data.validate import format_summary, validate_data_root, write_json

    root = Path(args.root) if args.root else Path(profile_params(args).data.root)
    result = validate_data_root(root, check_files=not args.skip_image_check)
    print(format_summary(result))
    if args.json:
        write_json(result, Path(args.json))
    absent = [f"{s.source} {s.split}" for s in result.sources if s.status == "absent"]
    if args.require_all and absent:
        print(f"copa validate-data: missing sources: {', '.join(absent)}", file=sys.stderr)
        return 1
    return 0 if result.ok else 1


def filter_outputs(args: argparse.Namespace, layout: RunLayout) -> tuple[Path, Path]:
    """`copa filter`'s (annotations folder, report JSON): the options, else the layout's."""
    return path_or(args.out, layout.filtered_annotations), path_or(args.report, layout.filter_report)


def cmd_filter(args: argparse.Namespace) -> int:
    from copa.data.filtering import run_filter
    from copa.report.filter_table import filter_table

    params = profile_params(args)
    root = Path(args.root or params.data.root)
    out, report_path = filter_outputs(args, RunLayout(params.profile))
    report = run_filter(root, params.filter, out, progress=not args.quiet, workers=args.workers)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    table = filter_table(report, params.profile)
    markdown_beside(report_path).write_text(table)
    print(table, end="")
    return 0


def patch_label_paths(args: argparse.Namespace, layout: RunLayout) -> tuple[Path, Path, Path, Path]:
    """`copa patch-labels`'s (annotations read, label store, summary JSON, figure stem)."""
    return (path_or(args.annotations, layout.filtered_annotations), path_or(args.out, layout.patch_label_store),
            path_or(args.summary, layout.patch_label_summary), path_or(args.figure, layout.patch_label_figure))


def cmd_patch_labels(args: argparse.Namespace) -> int:
    from copa.data.patch_labels import run_patch_labels
    from copa.report.figures import patch_label_figure, save_figure

    params = profile_params(args)
    annotations, out, summary_path, figure = patch_label_paths(args, RunLayout(params.profile))
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


def reference_box_outputs(args: argparse.Namespace, layout: RunLayout) -> tuple[Path, Path]:
    """`copa reference-boxes`'s (boxes JSON lines, summary JSON)."""
    return path_or(args.out, layout.reference_boxes), path_or(args.summary, layout.reference_boxes_summary)


def cmd_reference_boxes(args: argparse.Namespace) -> int:
    from copa.data.reference_boxes import run_reference_boxes
    from copa.train.distributed import resolve_device

    params = profile_params(args)
    out, summary_path = reference_box_outputs(args, RunLayout(params.profile))
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    layout = HELP_LAYOUT
    p = sub.add_parser("params", help="print the resolved parameters as YAML")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("synth", help="generate the synthetic world in the official dataset formats")
    p.add_argument("--root", help="data root to write (default: the profile's data.root)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic world already in --root (nothing else is ever deleted)")
    p.add_argument("--workers", type=in_range(PositiveInt), default=os.cpu_count() or 1, help="processes drawing images; the output is the same for any number (default: %(default)s)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("filter", help="filter object/region annotations (COPA Appendix A) into X-VLM JSON lines")
    p.add_argument("--root", help="data root to read (default: the profile's data.root)")
    p.add_argument("--out", help=f"folder of the filtered files (default: {layout.filtered_annotations})")
    p.add_argument("--report", help=f"report JSON; the table goes beside it as .md (default: {layout.filter_report})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=in_range(PositiveInt), default=os.cpu_count() or 1, help="sources filtered at once, each in its own process (default: %(default)s)")
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser("patch-labels", help="turn filtered boxes into bit-packed patch labels (COPA §3.3) and draw a check figure")
    p.add_argument("--annotations", help=f"folder of filtered files (default: {layout.filtered_annotations})")
    p.add_argument("--out", help=f"label store (default: {layout.patch_label_store})")
    p.add_argument("--summary", help=f"summary JSON (default: {layout.patch_label_summary})")
    p.add_argument("--figure", help=f"figure stem, written as .png and .pdf (default: {layout.patch_label_figure})")
    p.add_argument("--root", help="data root holding the images (default: the profile's data.root)")
    p.add_argument("--workers", type=in_range(PositiveInt), default=os.cpu_count() or 1, help="filtered files labelled at once, each in its own process (default: %(default)s)")
    p.set_defaults(func=cmd_patch_labels)

    p = sub.add_parser("reference-boxes", help="COPA Appendix C.1: boxes of what each caption names on a sample of web pairs "
                                               "(Grounding DINO, or the synthetic world's oracle: reference_boxes.detector)")
    p.add_argument("--root", help="data root with the CC3M training TSV (default: the profile's data.root)")
    p.add_argument("--out", help=f"JSON lines, one pair each (default: {layout.reference_boxes})")
    p.add_argument("--summary", help=f"counts of pairs and boxes (default: {layout.reference_boxes_summary})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s: CUDA when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reference_boxes)

    p = sub.add_parser("validate-data", help="run every reader over a data root and print a summary")
    p.add_argument("root", nargs="?", help="data root (default: the profile's data.root)")
    p.add_argument("--json", help="also write the summary as JSON to this file")
    p.add_argument("--skip-image-check", action="store_true", help="do not check that every image file exists")
    p.add_argument("--require-all", action="store_true", help="fail when a source is absent (the synthetic world has them all)")
    p.set_defaults(func=cmd_validate_data)
