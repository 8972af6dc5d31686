"""A grid's table from the run results: CSV (canonical), Markdown, LaTeX, and a JSON for DVC.

Each row of the grid gets, per column, the value measured in this profile (the mean over the
seeds, with the standard deviation when there are several) and the paper's value in a separate,
labelled column (not for controls, which the paper does not report). A column that needs
fine-tuning is empty ("not trained") for rows the profile does not train; FLOPs, throughput,
latency and memory are measured for every row. Reference rows (models the harness does not
implement) carry the paper's numbers only.

In a grid with a ``baseline`` row, each column whose results keep per-example scores (VQA
questions, retrieval queries, grounding expressions) is followed by every row's paired difference
to the baseline row, in points, with its 95% interval: a paired bootstrap over the test examples
both rows were scored on (copa.eval.paired; the per-example scores averaged over the seeds).

Throughput and latency come from the grid's models timed together (``copa efficiency --grid``,
copa.eval.paired_timing): each is the median over the timing rounds with its interquartile
range, followed, in a grid with a baseline, by the row's paired speedup over the baseline row with
its 95% bootstrap interval, and by that speedup over the FLOP ratio (baseline GMACs / the row's):
1 where the time falls exactly as the counted FLOPs do.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from copa.config import Params
from copa.data.formats.records import load_json
from copa.eval.paired import LEVEL, RESAMPLES, PairedDifference, paired_bootstrap
from copa.report.columns import COLUMNS, COST_SOURCES, PERCENT
from copa.report.grids import (PAPER_PRETRAIN_SIZE, PAPER_PROTOCOL_SIZE, AnchorRow, Grid, GridRow, anchor_result, paired_result, profile_resolution,
                               params_run_name, result_path, row_cost_overrides, row_result, row_run, row_selection,
                               trained_labels)
from copa.run_layout import seed_run

NOT_TRAINED = "not trained"
NOT_MEASURED = "not measured"  # (not "n/a": pandas reads that back as NaN)
NOT_PAIRED = "not paired"  # a difference without both rows' per-example scores (the baseline not trained, older results)
BASELINE = "baseline"
SUFFIXES = (".csv", ".md", ".tex", ".json")


def _row_sources(grid: Grid) -> list[str]:
    """The per-row result sources of the grid's columns (a speedup's FLOP ratio reads the rows' costs)."""
    return sorted((grid.sources | ({"efficiency"} if speedup_columns(grid) else set())) - {"paired"})


def grid_inputs(grid: Grid, params: Params, results: Path, seeds: Sequence[int]) -> list[Path]:
    """Every result file the table of ``grid`` reads in the profile of ``params``."""
    trained = trained_labels(grid, params)
    paths = [paired_result(results, grid.name)] if "paired" in grid.sources else []
    for row in grid.rows:
        for seed in seeds:
            for source in _row_sources(grid):
                if source == "efficiency" or row.label in trained:
                    paths.append(row_result(row, source, params, results, seed))
    paths += [anchor_result(anchor, results, seed) for anchor in grid.anchors if anchor.label in trained for seed in seeds]
    return sorted(set(paths))


def cost_cells(grids: Iterable[Grid], params: Params, results: Path, seeds: Sequence[int]) -> dict[Path, list[str]]:
    """Every row cost (a model's FLOPs and memory, `copa efficiency`) that the tables of ``grids``
    read in the profile of ``params``, and the cost of the model of ``params`` itself (the workflow's
    default run): result path -> the ``--set`` overrides that give the model."""
    costs = {result_path(results, "efficiency", params_run_name(params)): []}
    for grid in grids:
        if "efficiency" in _row_sources(grid):
            for row in grid.rows:
                for seed in seeds:
                    costs[row_result(row, "efficiency", params, results, seed)] = [*row_cost_overrides(row, params), f"seed={seed}"]
    return dict(sorted(costs.items()))


@dataclass(frozen=True)
class Speedup:
    """A row's paired speedup over the baseline row, with its interval, and the same over the FLOP ratio."""

    estimate: float
    low: float
    high: float
    per_flop: tuple[float, float, float] | None  # (estimate, low, high) / (baseline GMACs / the row's)

    def text(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def per_flop_text(self) -> str:
        return NOT_MEASURED if self.per_flop is None else "{:.3f} [{:.3f}, {:.3f}]".format(*self.per_flop)


@dataclass(frozen=True)
class Cell:
    """One measured value: the mean over seeds, their standard deviation (None with one seed)."""

    mean: float | None
    std: float | None
    n: int
    status: str = ""  # "" measured, NOT_TRAINED, NOT_MEASURED
    examples: int | None = None  # test examples behind each value (accuracies)
    difference: PairedDifference | None = None  # to the grid's baseline row, in points, paired over the same examples
    iqr: tuple[float, float] | None = None  # a timing's interquartile range over its rounds
    speedup: Speedup | None = None  # a timing's, over the grid's baseline row

    def text(self, digits: int) -> str:
        if self.status:
            return self.status
        if self.iqr is not None:
            return f"{self.mean:.{digits}f} (IQR {self.iqr[0]:.{digits}f}-{self.iqr[1]:.{digits}f})"
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def _cell(values: list[float | None], examples: int | None) -> Cell:
    measured = [v for v in values if v is not None]
    if not measured:
        return Cell(None, None, 0, NOT_MEASURED)
    std = statistics.stdev(measured) if len(measured) > 1 else None
    return Cell(statistics.fmean(measured), std, len(measured), examples=examples)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: a result the table needs is missing (run the workflow for it)")
    return load_json(path)


def paired_columns(grid: Grid) -> list[str]:
    """The grid's columns that get each row's paired difference to its baseline row."""
    return [name for name in grid.columns if grid.baseline and COLUMNS[name].per_example]


def speedup_columns(grid: Grid) -> list[str]:
    """The grid's timing columns that get each row's paired speedup over its baseline row."""
    return [name for name in grid.columns if grid.baseline and COLUMNS[name].speedup]


def _timing_cell(column_name: str, model: dict, flop_ratio: float | None) -> Cell:
    """A timing column's cell from the row's entry of the paired record: median, IQR, speedup."""
    column = COLUMNS[column_name]
    speed = column.speedup_of(model)
    speedup = None
    if speed is not None:
        per_flop = None if flop_ratio is None else tuple(speed[k] / flop_ratio for k in ("estimate", "low", "high"))
        speedup = Speedup(speed["estimate"], speed["low"], speed["high"], per_flop)
    return Cell(column.value(model), None, 1, iqr=column.iqr_of(model), speedup=speedup)


def measure(grid: Grid, params: Params, results: Path, seeds: Sequence[int]) -> tuple[dict[str, dict[str, Cell]], list[str]]:
    """(label -> column -> Cell for the grid's rows in the profile of ``params``, with the paired
    differences to the baseline row; the devices the efficiency columns were measured on: one,
    normally); each result file is read once."""
    trained = trained_labels(grid, params)
    records: dict[Path, dict] = {}  # result file -> its JSON

    def record(path: Path) -> dict:
        if path not in records:
            records[path] = _read(path)
        return records[path]

    out: dict[str, dict[str, Cell]] = {}
    scores: dict[str, dict[str, dict[str, float] | None]] = {}  # label -> paired column -> example id -> score

    def measured(label: str, name: str, paths: Iterable[Path]) -> Cell:
        """Column ``name`` of row ``label`` from its seeds' result files (keeping the per-example scores to pair)."""
        column, read = COLUMNS[name], [(path, record(path)) for path in paths]
        if name in paired_columns(grid):
            scores.setdefault(label, {})[name] = column.seed_mean_scores(read)
        return _cell([column.value(r) for _, r in read], column.examples(read[0][1]))

    gmacs = COLUMNS["gmacs"]
    base = next((r for r in grid.rows if r.label == grid.baseline), None)
    base_gmacs = gmacs.value(record(row_result(base, "efficiency", params, results, seeds[0]))) if speedup_columns(grid) else None
    for row in grid.rows:
        cells = {}
        for name in grid.columns:
            column = COLUMNS[name]
            if column.source == "paired":
                path = paired_result(results, grid.name)
                if row.label not in record(path).get("models", {}):
                    raise ValueError(f"{path}: no timing of row {row.label!r} (rerun `copa efficiency --grid {grid.name}`)")
                row_gmacs = gmacs.value(record(row_result(row, "efficiency", params, results, seeds[0]))) if base_gmacs else None
                cells[name] = _timing_cell(name, record(path)["models"][row.label], base_gmacs / row_gmacs if row_gmacs else None)
                continue
            if column.source not in COST_SOURCES and row.label not in trained:
                cells[name] = Cell(None, None, 0, NOT_TRAINED)
                continue
            cells[name] = measured(row.label, name, (row_result(row, column.source, params, results, seed) for seed in seeds))
        out[row.label] = cells
    for anchor in grid.anchors:  # its task's columns only
        out[anchor.label] = {name: (Cell(None, None, 0, NOT_MEASURED) if COLUMNS[name].source != anchor.task else
                                    Cell(None, None, 0, NOT_TRAINED) if anchor.label not in trained else
                                    measured(anchor.label, name, (anchor_result(anchor, results, seed) for seed in seeds)))
                             for name in grid.columns}
    for label, cells in out.items():
        for name in paired_columns(grid):
            first, second = scores.get(label, {}).get(name), scores.get(grid.baseline, {}).get(name)
            if label != grid.baseline and first is not None and second is not None:
                what = f"{grid.name}: rows {label!r} and {grid.baseline!r}, column {name!r}"
                cells[name] = dataclasses.replace(cells[name], difference=paired_difference(first, second, what))
    devices = {_device_name(r.get("device", {})) for path, r in records.items() if path.parent.name in ("efficiency", "paired")}
    return out, sorted(devices)


def paired_difference(first: dict[str, float], second: dict[str, float], what: str) -> PairedDifference:
    """first - second in points (per-example scores are fractions), paired over their examples,
    which must be the same (``what`` names them in the error)."""
    if first.keys() != second.keys():
        raise ValueError(f"{what}: not evaluated on the same examples ({len(first.keys() ^ second.keys())} examples in only one)")
    ids = sorted(first)
    return paired_bootstrap([first[i] for i in ids], [second[i] for i in ids]).scaled(PERCENT)


def difference_text(grid: Grid, label: str, cell: Cell, digits: int) -> str:
    """A Δ column's cell: estimate [low, high]; "baseline" in the baseline's row."""
    if label == grid.baseline:
        return BASELINE
    if cell.status:
        return cell.status
    d = cell.difference
    return NOT_PAIRED if d is None else f"{d.estimate:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def difference_header(grid: Grid, name: str) -> str:
    return f"{COLUMNS[name].header}: Δ vs {grid.baseline} [{100 * (1 - LEVEL):g}% CI]"


def speedup_headers(grid: Grid, name: str) -> list[str]:
    """The two columns after a timing column: its paired speedup, and that over the FLOP ratio."""
    what = COLUMNS[name].header.split(" (")[0]
    return [f"{what}: speedup vs {grid.baseline} [{100 * (1 - LEVEL):g}% CI]", f"{what}: speedup / FLOP ratio"]


def speedup_texts(grid: Grid, label: str, cell: Cell) -> list[str]:
    """A timing column's speedup cells; "baseline" in the baseline's row."""
    if label == grid.baseline:
        return [BASELINE, BASELINE]
    if cell.status or cell.speedup is None:
        return [cell.status or NOT_MEASURED] * 2
    return [cell.speedup.text(), cell.speedup.per_flop_text()]


def _device_name(info: dict) -> str:
    return f"{info.get('device', '?')} ({info.get('cpu', '?')}, {info.get('threads', '?')} threads)"


def table_frame(grid: Grid, params: Params, cells: dict[str, dict[str, Cell]], seeds: Sequence[int]) -> pd.DataFrame:
    """The canonical CSV's frame: one line per row (then the anchors, method "anchor: <model>"; reference
    rows last), per column the measured mean, std, number of seeds and the paper's value."""
    lines, trained = [], trained_labels(grid, params)
    for row in (*grid.rows, *grid.anchors):
        line: dict = {"row": row.label, "trained": row.label in trained}
        if isinstance(row, AnchorRow):
            line.update(run=seed_run(seeds[0]) if len(seeds) == 1 else "", method=f"anchor: {row.model}")
            lines.append(_column_values(grid, line, cells[row.label], {}))
            continue
        line.update(run=row_run(row, params, seeds[0]) if len(seeds) == 1 else "", method=row.method)
        if row.resolution is not None:  # Table 5: the px of the VQA fine-tuning and of the costs in this profile
            line["vqa_image_size"] = profile_resolution(row.resolution, params, "vqa")
            line["efficiency_image_size"] = profile_resolution(row.resolution, params, "efficiency")
        if grid.selection_columns:  # Table 6: the architecture, detection location (profile layers) and keeping ratio
            line["architecture"] = row.architecture
            line["location"], line["keep"] = row_selection(row, params.model.vision_depth)
        lines.append(_column_values(grid, line, cells[row.label], row.paper))
    for ref in grid.reference:
        line = {"row": ref.label, "run": "", "method": "reference", "trained": False}
        for name in grid.columns:
            line.update({name: None, f"{name}_std": None, f"{name}_seeds": 0, f"{name}_examples": None, f"{name}_status": "paper only",
                         f"{name}_paper": ref.paper.get(name)})
        lines.append(line)
    frame = pd.DataFrame(lines)
    frame.insert(0, "profile", params.profile)
    if grid.baseline:
        frame["baseline"] = grid.baseline
    frame["seeds"] = " ".join(str(s) for s in seeds)
    return frame


def _column_values(grid: Grid, line: dict, cells: dict[str, Cell], paper: dict[str, float]) -> dict:
    """``line`` of the canonical CSV with a row's ``cells``: per column the measured mean, std, number of seeds,
    examples, status, the paper's value, the paired difference and speedup against the baseline row."""
    for name in grid.columns:
        cell = cells[name]
        line.update({name: cell.mean, f"{name}_std": cell.std, f"{name}_seeds": cell.n, f"{name}_examples": cell.examples,
                     f"{name}_status": cell.status or "measured", f"{name}_paper": paper.get(name)})
        if name in paired_columns(grid):  # points, against the baseline row
            d = cell.difference
            line.update({f"{name}_vs_baseline{part}": None if d is None else getattr(d, field)
                         for part, field in (("", "estimate"), ("_low", "low"), ("_high", "high"))})
        if cell.iqr is not None:
            line.update({f"{name}_q1": cell.iqr[0], f"{name}_q3": cell.iqr[1]})
        if name in speedup_columns(grid):  # over the baseline row: paired by timing round, and over the FLOP ratio
            up = cell.speedup
            per_flop = (None, None, None) if up is None or up.per_flop is None else up.per_flop
            line.update({f"{name}_speedup": None if up is None else up.estimate, f"{name}_speedup_low": None if up is None else up.low,
                         f"{name}_speedup_high": None if up is None else up.high, f"{name}_speedup_per_flop": per_flop[0],
                         f"{name}_speedup_per_flop_low": per_flop[1], f"{name}_speedup_per_flop_high": per_flop[2]})
    return line


def _display(grid: Grid, cells: dict[str, dict[str, Cell]], params: Params) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by the Markdown and LaTeX tables: measured | paper (columns the
    paper reports) | Δ vs the baseline row (columns with per-example scores) per column (with
    ``selection_columns``, first the detection location and keeping ratio: this profile's | the
    paper's)."""
    header = ["model"]
    if grid.selection_columns:
        header += [f"detection location (of {params.model.vision_depth} layers)", "detection location (paper, of 12)",
                   "keeping ratio", "keeping ratio (paper)"]
    for name in grid.columns:
        header += [COLUMNS[name].header] + [f"{COLUMNS[name].header} (paper)"] * COLUMNS[name].in_paper
        header += [difference_header(grid, name)] * (name in paired_columns(grid))
        header += speedup_headers(grid, name) if name in speedup_columns(grid) else []
    body = []
    for row in (*grid.rows, *grid.anchors, *grid.reference):
        line = [row.label]
        if grid.selection_columns:  # reference rows: the paper's numbers only
            (location, keep), (paper_location, paper_keep) = ((row_selection(row, params.model.vision_depth), row_selection(row))
                                                              if isinstance(row, GridRow) else (("", ""), ("", "")))
            line += [location, paper_location, keep, paper_keep]
        for name in grid.columns:
            column = COLUMNS[name]
            measured = cells[row.label][name].text(column.digits) if row.label in cells else "paper only"
            paper = getattr(row, "paper", {}).get(name)  # an anchor is not the paper's
            line += [measured] + ["" if paper is None else f"{paper:g}"] * column.in_paper
            if name in paired_columns(grid):
                line.append(difference_text(grid, row.label, cells[row.label][name], column.digits) if row.label in cells else "")
            if name in speedup_columns(grid):
                line += speedup_texts(grid, row.label, cells[row.label][name]) if row.label in cells else ["", ""]
        body.append(line)
    return header, body


def measured_note(params: Params, seeds: Sequence[int], device_names: Sequence[str]) -> str:
    """What the measured columns are: profile, seeds, device of the efficiency columns."""
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(map(str, seeds))}"
    parts = [f"profile {params.profile}", seed_text]
    if device_names:
        parts.append("efficiency on " + "; ".join(device_names))
    return f"Measured here: {', '.join(parts)}"


def resolution_note(grid: Grid, params: Params) -> str:
    """How the rows' resolutions (COPA Table 5, the paper's px) map onto the profile of ``params``,
    for the VQA fine-tuning and for the costs (``profile_resolution``); "" for a grid without."""
    paper = sorted({row.resolution for row in grid.rows if row.resolution is not None})
    if not paper:
        return ""
    sources = {COLUMNS[c].source for c in grid.columns}
    scales = (("vqa", "the VQA fine-tuning runs at", params.patch_labels.image_size, PAPER_PRETRAIN_SIZE, "pretraining"),
              ("efficiency", f"FLOPs and throughput are measured as in Table 4 ({params.efficiency.text_length} text tokens) at",
               params.efficiency.image_size, PAPER_PROTOCOL_SIZE, "Table 4"))
    parts = []
    for source, what, size, paper_size, reference in scales:
        if source in sources:
            mapped = [profile_resolution(px, params, source) for px in paper]
            where = "the paper's px" if mapped == paper else f"{', '.join(map(str, mapped))} px for {', '.join(map(str, paper))}"
            parts.append(f"{what} px x {size}/{paper_size} (its {reference} resolution against the paper's): {where}")
    shared = f", so a model at the paper's {PAPER_PROTOCOL_SIZE} px costs what Table 4 shows" if "efficiency" in sources else ""
    return "Resolutions are the paper's px. In this profile " + "; ".join(parts) + shared


def grounding_note(grid: Grid, params: Params) -> str:
    """The departures of the profile's grounding fine-tune from the paper's (issue 23: PTA on the
    referred box, another keep ratio; copa.tasks.grounding), for a grid with a grounding column; ""
    without them: the profile's, as the grounding fine-tunes ran (the table rule passes finetune.grounding's
    overrides). The keep ratio applies to the rows that select, PTA to those whose TPD does
    (copa.train.finetune.start_from)."""
    settings = params.finetune.grounding
    if all(COLUMNS[c].source != "grounding" for c in grid.columns) or (settings.pta_weight == 0 and settings.keep_ratio is None):
        return ""
    parts = ([f"PTA's loss on the referred box's patches added with weight {settings.pta_weight:g} where the TPD scores them"]
             if settings.pta_weight > 0 else [])
    parts += [f"the selection keeping {settings.keep_ratio:.0%} of the patches where the row selects"] if settings.keep_ratio is not None else []
    return ("The grounding fine-tune departs from the paper's (the box's loss alone, at the pretraining run's keep ratio): "
            f"{'; '.join(parts)}; elsewhere as the paper")


def caption(grid: Grid, note: str, notes: str = "") -> str:
    """The table's caption: its title, what was measured here, ``notes`` (how its resolutions map,
    ``resolution_note``; how its fine-tune departs from the paper's, ``grounding_note``), what the paired
    differences are."""
    mapped = f" {notes}." if notes else ""
    paired = (f" \"Δ vs {grid.baseline}\": each row minus the {grid.baseline} row in points over the same test examples, "
              f"with the {100 * (1 - LEVEL):g}% interval of a paired bootstrap ({RESAMPLES} resamples of the examples, "
              "each drawing both rows' scores; per-example scores averaged over the seeds)." if paired_columns(grid) else "")
    timed = (" Throughput and latency: the table's models timed together in interleaved rounds, the median over the rounds "
             f"(IQR); \"speedup vs {grid.baseline}\": the median of the per-round time ratios to the {grid.baseline} row, with "
             f"the {100 * (1 - LEVEL):g}% interval of a bootstrap over the rounds; \"speedup / FLOP ratio\": that over "
             f"{grid.baseline}'s GMACs / the row's (1: time falls as the counted FLOPs do)." if speedup_columns(grid) else "")
    return (f"{grid.title}. {note}.{mapped}{paired}{timed} \"(paper)\" columns: the paper's numbers, for reference only "
            "(its scale, data and hardware)")


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], caption_text: str) -> str:
    lines = [f"**{caption_text}.**", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def markdown(grid: Grid, cells: dict[str, dict[str, Cell]], caption_text: str, params: Params) -> str:
    return markdown_table(*_display(grid, cells, params), caption_text)


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                          ("{", r"\{"), ("}", r"\}"), ("±", r"$\pm$"), ("Δ", r"$\Delta$")):
        text = text.replace(char, escaped)
    return text


def latex_table(header: Sequence[str], body: Sequence[Sequence[str]], caption_text: str, label: str, columns: str,
                rule_before: int | None = None) -> str:
    """A booktabs table; ``columns`` the tabular alignment (``lrr``), ``rule_before`` the body row a
    \\midrule precedes (the paper-only rows)."""
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + columns + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for i, line in enumerate(body):
        if i == rule_before:
            lines.append(r"\midrule")
        lines.append(" & ".join(_latex_escape(c) for c in line) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(caption_text)}.}}", rf"\label{{{label}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex(grid: Grid, cells: dict[str, dict[str, Cell]], caption_text: str, params: Params) -> str:
    header, body = _display(grid, cells, params)
    return latex_table(header, body, caption_text, f"tab:{grid.name}", "l" + "r" * (len(header) - 1),
                       len(grid.rows) + len(grid.anchors) if grid.reference else None)


def metrics_json(grid: Grid, cells: dict[str, dict[str, Cell]]) -> dict:
    """{row: {column: mean}} of the measured cells: the file `dvc metrics diff` compares."""
    return {label: {name: round(cell.mean, 4) for name, cell in row.items() if cell.mean is not None}
            for label, row in cells.items()}


def write_table(grid: Grid, params: Params, results: Path, seeds: Sequence[int], stem: Path) -> tuple[list[Path], dict[str, dict[str, Cell]], str]:
    """Read the grid's results and write ``<stem>.csv / .md / .tex / .json``; returns the paths,
    the cells and the note on what was measured (for a figure of the same grid)."""
    cells, devices = measure(grid, params, results, seeds)
    note = measured_note(params, seeds, devices)
    text = caption(grid, note, ". ".join(filter(None, (resolution_note(grid, params), grounding_note(grid, params)))))
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md, tex, js = (stem.with_name(stem.name + s) for s in SUFFIXES)
    table_frame(grid, params, cells, seeds).to_csv(csv, index=False, float_format="%.6g")
    md.write_text(markdown(grid, cells, text, params), encoding="utf-8")
    tex.write_text(latex(grid, cells, text, params), encoding="utf-8")
    js.write_text(json.dumps(metrics_json(grid, cells), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [csv, md, tex, js], cells, note
