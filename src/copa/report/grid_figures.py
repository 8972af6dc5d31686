"""The paper's figures drawn from a grid's measured cells (copa.report.tables.measure).

Figure 1(a): VQA accuracy against the keeping ratio, one line per selector, the no-selection
model as a horizontal line. Figure 3: pretraining-step memory against the keeping ratio and
against the detection location, a line per ITM encoding (pretrain.itm_guidance), mPLUG (no
selection) as a red line. x values are the rows' settings in the paper's terms (ratios, layers
of 12), whatever the profile's depth.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Callable

from copa.config import ITM_GUIDANCES
from copa.report.columns import COLUMNS, MEMORY_HEADER, memory_column
from copa.report.grids import Grid, GridRow

# The Snakefile imports FIGURES for the names of the grids drawn as figures: matplotlib and pandas
# (~1 s of every Snakemake start) load only where a figure is drawn.
if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from copa.report.tables import Cell

    Cells = dict[str, dict[str, Cell]]

SELECTOR_NAMES = {"tpd": "TPD (COPA)", "cls_attention": "[CLS] attention", "text_attention": "text attention (TRIPS)",
                  "oracle": "oracle (referent boxes)", "random": "random"}
TITLE_WIDTH = 120  # characters a line of Figure 3's two-panel title holds at its font size


def _points(rows: list[GridRow], cells: Cells, column: str, x: Callable[[GridRow], float]) -> tuple[list[float], list[float], list[float]]:
    """(x, mean, std) of the rows measured in ``column``, sorted by x."""
    measured = sorted((x(r), cells[r.label][column]) for r in rows if cells[r.label][column].mean is not None)
    return [p[0] for p in measured], [p[1].mean for p in measured], [p[1].std or 0.0 for p in measured]


def _baseline(ax, rows: list[GridRow], cells: Cells, column: str, label: str, color: str) -> None:
    for row in rows:
        cell = cells[row.label][column]
        if cell.mean is not None:
            ax.axhline(cell.mean, color=color, linestyle="--", linewidth=1, label=label)


def accuracy_vs_keep(grid: Grid, cells: Cells, subtitle: str) -> Figure:
    from copa.report.figures import new_figure

    fig = new_figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    selecting = [r for r in grid.rows if r.keep < 1.0]
    for method in sorted({r.method for r in selecting}):
        xs, ys, errs = _points([r for r in selecting if r.method == method], cells, "vqa", lambda r: 100 * r.keep)
        if xs:
            ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", capsize=3, label=SELECTOR_NAMES.get(method, method))
    _baseline(ax, [r for r in grid.rows if r.keep == 1.0], cells, "vqa", "no selection", "gray")
    ax.set_xlabel("keeping ratio (%)")
    ax.set_ylabel(COLUMNS["vqa"].header)
    ax.set_title(f"{grid.title}\n{subtitle}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def memory_vs_keep_and_location(grid: Grid, cells: Cells, subtitle: str) -> Figure:
    from copa.report.figures import new_figure

    fig = new_figure(8.0, 3.4)
    tpd = [r for r in grid.rows if r.method == "tpd"]
    baseline = [r for r in grid.rows if r.method == "none"]
    default_location = max({r.location for r in tpd}, key=lambda loc: sum(r.location == loc for r in tpd))
    panels = (("keeping ratio (%)", [r for r in tpd if r.location == default_location], lambda r: 100 * r.keep),
              ("detection location (layer of 12)", [r for r in tpd if r.keep == 0.5], lambda r: r.location[0]))
    for i, (xlabel, rows, x) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, i)
        for encoding in ITM_GUIDANCES:  # a line per ITM encoding, each named
            xs, ys, _ = _points(rows, cells, memory_column(encoding), x)
            ax.plot(xs, ys, marker="o", label=f"COPA (TPD), ITM {encoding}")
        _baseline(ax, baseline, cells, "memory_mib", "mPLUG (no selection: the encodings agree)", "red")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(MEMORY_HEADER, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(grid.title, TITLE_WIDTH) + f"\n{subtitle}", fontsize=8)
    fig.tight_layout()
    return fig


FIGURES: dict[str, Callable[[Grid, Cells, str], Figure]] = {
    "figure1a": accuracy_vs_keep,
    "figure3": memory_vs_keep_and_location,
}
