"""Subcommands of the report: the grids' tables and figures, COPA Figure 5, the claims check,
the workflow's stage times and the README's results section."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from copa.cli.common import HELP_LAYOUT, CommandError, path_or, profile_params
from copa.config import ParamsError
from copa.run_layout import RunLayout


def results_layout(args: argparse.Namespace, profile: str) -> RunLayout:
    """The layout of ``profile`` with its results read from --results where given."""
    return RunLayout(profile, Path(args.results) if args.results else None)


def figure5_paths(args: argparse.Namespace, layout: RunLayout) -> tuple[Path, Path, Path, Path]:
    """`copa figure5`'s (held-out probes read, patch detection read, table stem, figure stem)."""
    return (layout.pretrain_eval(args.run), layout.patch_detection(args.run), path_or(args.out, layout.table("figure5")),
            path_or(args.figure, layout.figure("figure5")))


def cmd_figure5(args: argparse.Namespace) -> int:
    from copa.report.figure5 import write_figure5

    profile = profile_params(args).profile
    try:
        paths = write_figure5(*figure5_paths(args, results_layout(args, profile)))
    except ValueError as exc:  # the two result files disagree on the checkpoints
        raise CommandError(exc) from exc
    print(f"Figure 5 ({profile}, run {args.run}) -> {', '.join(map(str, paths))}")
    return 0


def table_outputs(args: argparse.Namespace, layout: RunLayout, grid: str) -> tuple[Path, Path | None]:
    """`copa table` / `copa figure`'s (data table stem, figure stem; None for a table)."""
    figure = path_or(args.figure, layout.figure(grid)) if args.command == "figure" else None
    return path_or(args.out, layout.table(grid)), figure


def cmd_table(args: argparse.Namespace) -> int:
    """`copa table` and `copa figure`: a grid's data table, and for a figure its drawing."""
    from copa.report.figures import save_figure
    from copa.report.grid_figures import FIGURES
    from copa.report.grids import load_grid
    from copa.report.tables import write_table

    params = profile_params(args)
    grid = load_grid(args.grid, args.params_dir)
    if args.command == "figure" and grid.name not in FIGURES:
        raise ParamsError(f"grid {grid.name!r} has no figure (figures: {', '.join(FIGURES)})")
    layout = results_layout(args, params.profile)
    stem, figure = table_outputs(args, layout, grid.name)
    try:
        paths, cells, note = write_table(grid, params, layout.results, params.report.seeds, stem)
    except ValueError as exc:  # a result file that does not parse
        raise CommandError(exc) from exc
    if figure is not None:
        paths += save_figure(FIGURES[grid.name](grid, cells, note), figure)
    print(f"{grid.title} ({params.profile}) -> {', '.join(map(str, paths))}")
    return 0


def claims_paths(args: argparse.Namespace, layout: RunLayout) -> tuple[Path, Path]:
    """`copa claims`'s (tables folder read, Markdown verdicts)."""
    return path_or(args.tables, layout.tables), path_or(args.out, layout.claims)


def cmd_claims(args: argparse.Namespace) -> int:
    from copa.report.claims import write_claims

    params = profile_params(args)
    tables, out = claims_paths(args, RunLayout(params.profile))
    paths = write_claims(tables, params.profile, out, params, args.params_dir)
    print(f"claims check ({params.profile}) -> {', '.join(map(str, paths))}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from copa.report.targets import write_targets

    params = profile_params(args)
    layout = RunLayout(params.profile)
    try:
        paths = write_targets(params, path_or(args.out, layout.targets), layout, args.params_dir)
    except ValueError as exc:  # a benchmark file that is not one, a record without a target's number
        raise CommandError(exc) from exc
    print(f"outcome targets ({params.profile}) -> {', '.join(map(str, paths))}")
    return 0


def instruments_output(args: argparse.Namespace, layout: RunLayout) -> Path:
    """`copa instruments`'s Markdown table (its JSON goes beside it)."""
    return path_or(args.out, layout.instruments)


def cmd_instruments(args: argparse.Namespace) -> int:
    from copa.report.instruments import write_instruments

    params = profile_params(args)
    layout = RunLayout(params.profile)
    try:
        paths = write_instruments(params, instruments_output(args, layout), layout, args.params_dir)
    except ValueError as exc:  # a record without an instrument's number
        raise CommandError(exc) from exc
    print(f"instruments per run ({params.profile}) -> {', '.join(map(str, paths))}")
    return 0


def cmd_stage_times(args: argparse.Namespace) -> int:
    from copa.report.stage_times import busy_seconds, stage_times, stage_times_markdown

    folder = path_or(args.folder, RunLayout(profile_params(args).profile).benchmarks)
    try:
        print(stage_times_markdown(stage_times(folder)), end="")
        print(f"\nwith a job running: {busy_seconds(folder) / 60:.1f} min (jobs side by side count once)")
    except ValueError as exc:  # a file that is not a benchmark table
        raise CommandError(exc) from exc
    return 0


def cmd_readme_results(args: argparse.Namespace) -> int:
    from copa.report.readme import replace_block, results_block

    profile = profile_params(args).profile
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    try:
        updated = replace_block(text, results_block(profile, readme.parent, args.params_dir), readme)
    except ValueError as exc:  # no marked section
        raise CommandError(exc) from exc
    results = RunLayout(profile).results
    if args.check:
        if updated != text:
            print(f"{readme}: its results section differs from {results}/ (run `copa readme-results`)", file=sys.stderr)
            return 1
        print(f"{readme}: results section up to date with {results}/")
        return 0
    readme.write_text(updated, encoding="utf-8")
    print(f"{readme}: results section {'rewritten' if updated != text else 'already up to date'} from {results}/")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    layout, given = HELP_LAYOUT, RunLayout("<profile>", Path("<results>"))  # the defaults, and those under --results
    p = sub.add_parser("figure5", help="COPA Figure 5 (PNG, PDF) and its table: a run's TPD accuracy and recall per epoch, in and out of domain")
    p.add_argument("--run", required=True, help=f"the run's name, e.g. tpd-loc3-keep0.5-seed0: reads {given.pretrain_eval('<run>')} "
                                                f"(copa pretrain-eval) and {given.patch_detection('<run>')} (copa patch-detection)")
    p.add_argument("--results", help=f"results folder (default: {layout.results})")
    p.add_argument("--out", help=f"stem of the table (default: {given.table('figure5')}): .csv .md .tex .json")
    p.add_argument("--figure", help=f"figure stem (default: {layout.figure('figure5')})")
    p.set_defaults(func=cmd_figure5)

    helps = {"table": "a table of params/grids/<grid>.yaml from the run results: CSV, Markdown, LaTeX and a metrics JSON",
             "figure": "a figure of params/grids/<grid>.yaml (figure1a, figure3) as PNG and PDF, and its data as `copa table` writes it"}
    for command, example in (("table", "table9"), ("figure", "figure3")):
        p = sub.add_parser(command, help=helps[command])
        p.add_argument("grid", help=f"the grid's name, e.g. {example}")
        p.add_argument("--results", help=f"results folder the runs wrote (default: {layout.results})")
        p.add_argument("--out", help=f"stem of the data table (default: {given.table('<grid>')}): .csv .md .tex .json")
        if command == "figure":
            p.add_argument("--figure", help=f"figure stem (default: {layout.figure('<grid>')})")
        p.set_defaults(func=cmd_table)

    p = sub.add_parser("claims", help=f"check the paper's qualitative claims against the profile's tables ({layout.claims})")
    p.add_argument("--tables", help=f"folder of the tables' CSVs (default: {layout.tables})")
    p.add_argument("--out", help=f"the Markdown verdicts; a JSON beside it (default: {layout.claims})")
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("targets", help="issue 23's outcome targets against the profile's default run: what it reaches, "
                                       f"from its result files and the benchmarks in {layout.benchmarks}")
    p.add_argument("--out", help=f"the Markdown table; a JSON beside it (default: {layout.targets})")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("instruments", help="the held-out instruments of every pretraining run the profile trains, side by side "
                                           f"(from {given.pretrain_eval('<run>')} and each run's VQA evaluation)")
    p.add_argument("--out", help=f"the Markdown table; a JSON beside it (default: {layout.instruments})")
    p.set_defaults(func=cmd_instruments)

    p = sub.add_parser("stage-times", help="wall time per rule from the workflow's Snakemake benchmark files, as a Markdown table")
    p.add_argument("folder", nargs="?", help=f"the benchmark files' folder (default: {layout.benchmarks})")
    p.set_defaults(func=cmd_stage_times)

    p = sub.add_parser("readme-results", help="write the profile's tables, figures and claims check into the README's marked results section")
    p.add_argument("--readme", default="README.md", help="the file with the marked section (default: README.md)")
    p.add_argument("--check", action="store_true", help="only say whether the section is up to date (exit 1 if not)")
    p.set_defaults(func=cmd_readme_results)
