"""The grids of the tables and figures (params/grids/<name>.yaml): which runs each one needs.

A grid lists rows in the paper's terms (a selector, a location in a 12-layer ViT, a keeping
ratio) with the paper's numbers for the grid's columns, and, per profile, which rows are
pretrained and fine-tuned (``trained``: ``all`` or labels; the others get the measurements that
need no training: FLOPs, throughput, latency, memory). Rows of different grids that describe the
same model are the same run (Table 10's COPA row is Table 9's location 6 / 50% cell): the run
name is all that identifies a run.

A profile's ViT of depth D takes the paper's location k as round(k * D / 12), halves rounded
up (the demo's depth 6: 4 / 6 / 8 -> 2 / 3 / 4). ``none`` (mPLUG) has no location or ratio:
its runs are named with the profile's default location and ratio 1.0, so every grid shares one.

``baseline`` names the row every other row is compared with on the same test examples: the
tables add, beside each column that keeps per-example scores, each row's paired difference to it
with its 95% bootstrap interval (copa.eval.paired). A grid's ``columns`` are those it names,
each followed by its controls (copa.report.columns.CONTROLS: after VQA accuracy, the majority
answer per question type and the swapped-image accuracy).

A row's ``architecture`` is ``dual_stream`` (COPA, mPLUG) unless it names another of
``copa.train.architectures`` (COPA Table 6's COPA-S and ViLT: ``single_stream``); a run's name
starts with its architecture's ``run_prefix`` (``single-``), and its selector must be one the
architecture takes.

``anchors`` are models that are not the paper's, trained for one task on the same data and
budget (issue 23; ``ANCHOR_TASKS``): the from-scratch VQA model (``copa vqa-scratch``), which
reads a pretrained row against what the task's own data teach, and the perception bracket (the
profile's default run fine-tuned and answering with the scene's perfect image tokens in place
of its ViT, ``finetune.vqa.perception`` oracle), which reads it against what its fusion and
decoder make of perfect perception at that budget (on the synthetic world only: real data has no
scene to draw the tokens from). A table shows each after the rows, in its task's columns, with
its paired difference to the baseline row. A profile trains them where ``trained`` names them
(``all`` does).

A row may fix its VQA fine-tuning ``resolution`` (COPA Table 5, in the paper's px). A profile
scales the paper's px for each result by the resolution that stands for the paper's
(``profile_resolution``), to a multiple of the patch size: the VQA fine-tuning by its pretraining
resolution S against the paper's 256 (px * S / 256: the demo's 224 ... 512 -> 112 ... 256), the
costs by its efficiency protocol's resolution E against Table 4's 224 (px * E / 224; E is 224 in
every profile, so the costs are the paper's px). The paper measures Table 5's costs "as Table 4
except for the image resolution": a model at the paper's 224 px has Table 4's cost, one result
file. Such a row's results are ``vqa-<px>px.json`` and ``<run>-<px>px.json`` unless that px is
the profile's VQA resolution (``finetune.vqa.image_size``) or efficiency protocol's
(``efficiency.image_size``), so that rows of the same fine-tune or cost share one result.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import yaml

from copa.config import (DEFAULT_PARAMS_DIR, KeepRatio, ParamsError, Params, SelectionMethod, available_profiles, safe_load_unique,
                         validated_record, vqa_image_size)
from copa.report.columns import COLUMNS, CONTROLS, COST_SOURCES, with_controls
from copa.run_layout import RunLayout, seed_run, size_tag
from copa.train.architectures import architecture

GRIDS_DIR = "grids"
PAPER_DEPTH = 12  # ViT-B/16
PAPER_PRETRAIN_SIZE = 256  # px (COPA Appendix D): a profile's VQA fine-tuning resolutions scale with its pretraining's
ABLATION_GRID = "table10"  # COPA Table 10: the rows the accuracy claims compare, shown first where runs are listed
PAPER_PROTOCOL_SIZE = 224  # px (COPA Table 4): a profile's cost resolutions scale with its efficiency protocol's


@dataclass(frozen=True)
class GridRow:
    label: str
    method: SelectionMethod  # one its architecture takes (copa.train.architectures)
    location: tuple[int, ...]  # in the paper's 12-layer ViT
    keep: KeepRatio  # refused out of range as model.selection.keep_ratio is
    paper: dict[str, float]  # the paper's values, by column
    resolution: int | None = None  # px of the VQA fine-tuning and the costs (Table 5); None: the profile's
    architecture: str = "dual_stream"  # a name of copa.train.architectures (COPA Table 6: COPA-S and ViLT are single_stream)


# anchor model (copa.run_layout: its runs and results) -> the task whose columns it fills
ANCHOR_TASKS = {"vqa_scratch": "vqa", "perception_oracle": "vqa"}
# the anchors that read the scene grids, which only the synthetic world has (copa.data.scene_grid)
SYNTHETIC_ANCHORS = frozenset({"perception_oracle"})


@dataclass(frozen=True)
class AnchorRow:
    """A model trained for one task alone on the grid's data and budget (see the module docstring)."""

    label: str
    model: str  # a key of ANCHOR_TASKS (checked when the grid loads)

    @property
    def task(self) -> str:
        return ANCHOR_TASKS[self.model]


@dataclass(frozen=True)
class ReferenceRow:
    """A model of the paper's table that the harness does not implement: its numbers only."""

    label: str
    paper: dict[str, float]


@dataclass(frozen=True)
class Grid:
    title: str
    columns: tuple[str, ...]
    rows: tuple[GridRow, ...]
    trained: dict[str, list[str]]  # profile -> labels of the rows (and anchors) it trains
    reference: tuple[ReferenceRow, ...] = ()
    anchors: tuple[AnchorRow, ...] = ()
    selection_columns: bool = False  # show each row's detection location and keeping ratio (COPA Table 6's EL, KR)
    baseline: str | None = None  # the row the others' paired differences are taken against (a label of ``rows``)
    name: str = field(default="", compare=False)

    def row(self, label: str) -> GridRow:
        return next(r for r in self.rows if r.label == label)

    @property
    def sources(self) -> set[str]:
        """Where the grid's columns are read from (copa.report.columns: tasks, efficiency, paired)."""
        return {COLUMNS[c].source for c in self.columns}

    @property
    def tasks(self) -> list[str]:
        """The fine-tuning tasks a trained row needs for the grid's columns."""
        return sorted(self.sources - set(COST_SOURCES))


def trained_labels(grid: Grid, params: Params) -> set[str]:
    """The labels of the rows and anchors of ``grid`` that the params' profile trains: those its
    ``trained`` names, or every one with ``report.cells: all`` (the full grid); on real data, not
    the anchors that need the synthetic world's scenes (``SYNTHETIC_ANCHORS``: "not trained")."""
    labels = {r.label for r in (*grid.rows, *grid.anchors)} if params.report.cells == "all" else set(grid.trained[params.profile])
    if params.data.source != "synthetic":
        labels -= {a.label for a in grid.anchors if a.model in SYNTHETIC_ANCHORS}
    return labels


def grid_path(name: str, params_dir: str | Path = DEFAULT_PARAMS_DIR) -> Path:
    return Path(params_dir) / GRIDS_DIR / f"{name}.yaml"


def available_grids(params_dir: str | Path = DEFAULT_PARAMS_DIR) -> list[str]:
    return sorted(p.stem for p in (Path(params_dir) / GRIDS_DIR).glob("*.yaml"))


def load_grid(name: str, params_dir: str | Path = DEFAULT_PARAMS_DIR) -> Grid:
    """The grid ``name``, validated: known columns, unique labels, every profile's ``trained``."""
    path = grid_path(name, params_dir)
    if not path.is_file():
        raise ParamsError(f"unknown grid {name!r}: no file {path} (available: {', '.join(available_grids(params_dir)) or 'none'})")
    try:
        raw = safe_load_unique(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    raw = _normalised(raw, path, available_profiles(params_dir))
    if "name" in raw:
        raise ParamsError(f"{path}: unknown key 'name' (a grid is named by its file)")
    grid: Grid = validated_record(Grid, raw, str(path))
    _check(grid, path)
    return dataclasses.replace(grid, name=name, columns=with_controls(grid.columns))


def _normalised(raw: dict[str, Any], path: Path, profiles: list[str]) -> dict[str, Any]:
    """YAML shorthands spelt out: ``location: 6`` -> [6]; ``trained: {p: all}`` -> every label."""
    raw = dict(raw)
    rows = raw.get("rows")
    if isinstance(rows, list):
        raw["rows"] = [{**r, "location": [r["location"]]} if isinstance(r, dict) and isinstance(r.get("location"), int) else r
                       for r in rows]
    trained = raw.get("trained")
    if isinstance(trained, dict):
        missing = [p for p in profiles if p not in trained]
        if missing:
            raise ParamsError(f"{path}: key 'trained' must name every profile; missing: {', '.join(missing)}")
        labels = [r.get("label") for key in ("rows", "anchors") for r in raw.get(key, []) if isinstance(r, dict)]
        raw["trained"] = {p: labels if v == "all" else v for p, v in trained.items()}
    return raw


def _check(grid: Grid, path: Path) -> None:
    for column in grid.columns:
        if column not in COLUMNS:
            raise ParamsError(f"{path}: unknown column {column!r} in 'columns' (known: {', '.join(COLUMNS)})")
        shown_after = [name for name, controls in CONTROLS.items() if column in controls]
        if shown_after:
            raise ParamsError(f"{path}: column {column!r} in 'columns' is a control, shown after {shown_after[0]!r} by itself")
    if grid.baseline is not None and grid.baseline not in {r.label for r in grid.rows}:
        raise ParamsError(f"{path}: key 'baseline' names no row: {grid.baseline!r}")
    labels = [r.label for r in (*grid.rows, *grid.anchors, *grid.reference)]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise ParamsError(f"{path}: row labels must be unique; repeated: {', '.join(duplicated)}")
    for row in (*grid.rows, *grid.reference):
        unknown = sorted(set(row.paper) - set(grid.columns))
        if unknown:
            raise ParamsError(f"{path}: row {row.label!r}: 'paper' names columns the grid does not have: {', '.join(unknown)}")
    for i, row in enumerate(grid.rows):
        other_tasks = sorted({COLUMNS[c].source for c in grid.columns} - {*COST_SOURCES, "vqa"})  # resolution: VQA only
        if row.resolution is not None and (row.resolution <= 0 or other_tasks):
            raise ParamsError(f"{path}: key 'rows[{i}].resolution' must be a positive px count, for grids whose only "
                              f"fine-tuned column is VQA; got {row.resolution} with {', '.join(other_tasks) or 'VQA'}")
        try:
            arch = architecture(row.architecture)
        except ParamsError as exc:
            raise ParamsError(f"{path}: rows[{i}]: {exc}") from None
        if row.method not in arch.selection_methods:
            raise ParamsError(f"{path}: key 'rows[{i}].method': {row.method}: a {arch.name} row selects with "
                              f"{', '.join(arch.selection_methods)}")
        if not row.location or not all(1 <= k <= PAPER_DEPTH for k in row.location):
            raise ParamsError(f"{path}: key 'rows[{i}].location' must be layers 1..{PAPER_DEPTH} of the paper's ViT, got {list(row.location)}")
    for i, anchor in enumerate(grid.anchors):
        if anchor.model not in ANCHOR_TASKS:
            raise ParamsError(f"{path}: key 'anchors[{i}].model': unknown anchor {anchor.model!r} (known: {', '.join(ANCHOR_TASKS)})")
        if anchor.task not in {COLUMNS[c].source for c in grid.columns}:
            raise ParamsError(f"{path}: key 'anchors[{i}]': {anchor.model} answers {anchor.task}, a column the grid does not have")
    for profile, chosen in grid.trained.items():
        unknown = [label for label in chosen if label not in {r.label for r in (*grid.rows, *grid.anchors)}]
        if unknown:
            raise ParamsError(f"{path}: key 'trained.{profile}' names no row: {', '.join(map(repr, unknown))}")


def profile_location(k: int, depth: int) -> int:
    """The paper's layer k of 12 on a ViT of ``depth`` layers (halves rounded up)."""
    return max(1, math.floor(k * depth / PAPER_DEPTH + 0.5))


def run_name(method: str, location: tuple[int, ...] | list[int], keep: float, seed: int, arch: str = "dual_stream") -> str:
    """A pretraining run's folder name, as the workflow's wildcards spell it: the ``run_prefix`` of
    architecture ``arch`` first."""
    return f"{architecture(arch).run_prefix}{method}-loc{'-'.join(str(k) for k in location)}-keep{keep}-seed{seed}"


def params_run_name(params: Params) -> str:
    """The run of the model ``params`` describe (its selection, seed and architecture): the workflow's
    default run for a profile's own params, a cost's name for a row's."""
    s = params.model.selection
    return run_name(s.method, s.location, s.keep_ratio, params.seed, params.architecture)


def _row_selection_in_profile(row: GridRow, params: Params) -> tuple[list[int], float]:
    """(detection location in the profile's layers, keeping ratio) of ``row``'s model."""
    if row.method == "none":  # nothing selected: one model whatever the row says
        return list(params.model.selection.location), 1.0
    return [profile_location(k, params.model.vision_depth) for k in row.location], row.keep


def row_run(row: GridRow, params: Params, seed: int) -> str:
    """The run of ``row`` in the profile of ``params``."""
    location, keep = _row_selection_in_profile(row, params)
    return run_name(row.method, location, keep, seed, row.architecture)


def row_cost_overrides(row: GridRow, params: Params) -> list[str]:
    """The ``--set`` overrides that turn the profile's params into ``row``'s model at its cost
    protocol's resolution: what the efficiency rule sets from the row's run name."""
    location, keep = _row_selection_in_profile(row, params)
    sets = [f"architecture={row.architecture}", f"model.selection.method={row.method}", f"model.selection.location={location}",
            f"model.selection.keep_ratio={keep}"]
    if row.resolution is not None:
        sets.append(f"efficiency.image_size={profile_resolution(row.resolution, params, 'efficiency')}")
    return sets


def row_selection(row: GridRow, depth: int = PAPER_DEPTH) -> tuple[str, str]:
    """(detection location in a ViT of ``depth`` layers, keeping ratio) of ``row`` as a table
    shows them; "-" for a model that selects nothing."""
    if row.method == "none":
        return "-", "-"
    return ", ".join(str(profile_location(k, depth)) for k in row.location), f"{100 * row.keep:g}%"


def profile_resolution(px: int, params: Params, source: str = "vqa") -> int:
    """The paper's resolution ``px`` in the profile of ``params`` for the result of ``source``
    (the VQA fine-tuning, or "efficiency": the costs), to the patch grid (halves rounded up)."""
    patch = params.patch_labels.patch_size
    if source == "efficiency":  # the paper's 224 px (Table 4) is the profile's efficiency.image_size
        size, paper = params.efficiency.image_size, PAPER_PROTOCOL_SIZE
    else:  # the paper's 256 px pretraining is the profile's patch_labels.image_size
        size, paper = params.patch_labels.image_size, PAPER_PRETRAIN_SIZE
    return patch * max(1, math.floor(px * size / paper / patch + 0.5))


def result_path(results: Path, source: str, run: str, image_size: int | None = None) -> Path:
    """Where the workflow writes a run's result of ``source`` (a task, or efficiency) in the results
    folder ``results``, measured at ``image_size`` px where that is not the profile's own resolution
    for it (None)."""
    layout = RunLayout(results.name, results)  # results/<profile>; only its result paths are asked
    if source == "efficiency":
        return layout.efficiency(run, size_tag(image_size))
    return layout.finetune_result(run, source, size_tag(image_size))


def paired_result(results: Path, grid: str) -> Path:
    """Where the workflow writes the speed of grid ``grid``'s models, timed together, in the results folder ``results``."""
    return RunLayout(results.name, results).efficiency_paired(grid)


def anchor_result(anchor: AnchorRow, results: Path, seed: int) -> Path:
    """The result file of ``anchor`` for ``seed`` in the results folder ``results``."""
    return RunLayout(results.name, results).anchor_result(anchor.model, seed_run(seed))


def row_result(row: GridRow, source: str, params: Params, results: Path, seed: int) -> Path:
    """The result file of ``source`` for ``row`` in the profile of ``params``, in the results folder ``results``."""
    size = None if row.resolution is None else profile_resolution(row.resolution, params, source)
    default = params.efficiency.image_size if source == "efficiency" else vqa_image_size(params)
    return result_path(results, source, row_run(row, params, seed), None if size == default else size)


def instrumented_runs(grids: Iterable[Grid], params: Params) -> dict[str, list[str]]:
    """Run name -> the grid rows it serves ("Table 10 COPA"), for every run of a row that the grids
    train for the profile of ``params`` and whose architecture the held-out probes read (`copa
    pretrain-eval`: the report's instruments per run), each seed of ``report.seeds``; the profile's
    default run first (the targets' run), then in the grids' order, Table 10's first."""
    runs: dict[str, list[str]] = {params_run_name(params): []} if architecture(params.architecture).instruments else {}
    for grid in sorted(grids, key=lambda g: g.name != ABLATION_GRID):
        trained = trained_labels(grid, params)
        table = grid.title.split(":", 1)[0]
        for row in grid.rows:
            if row.label in trained and architecture(row.architecture).instruments:
                for seed in params.report.seeds:
                    runs.setdefault(row_run(row, params, seed), []).append(f"{table} {row.label}")
    return runs
