"""Figures, written byte-stable so that reruns of a pipeline stage reproduce its outputs exactly.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot:
no global backend or figure state, and the same bytes whatever MPLBACKEND says.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from copa.data.patch_labels import LabelledImage

# None drops a metadata field. matplotlib 3.11 writes a PDF /CreationDate of the current time (the
# only bytes that differ between two runs) and a PNG "Software" chunk naming its version (stable
# between runs; dropped so the PNG bytes depend on the pixels only).
PNG_METADATA = {"Software": None}
PDF_METADATA = {"CreationDate": None}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf``; returns the two paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")
    fig.savefig(png, metadata=PNG_METADATA)
    fig.savefig(pdf, metadata=PDF_METADATA)
    return [png, pdf]


def patch_label_figure(examples: Sequence[LabelledImage], patch_size: int, columns: int = 3) -> Figure:
    """A grid of resized images, each with its box (outline) and positive patches (shaded)."""
    columns = max(1, min(columns, len(examples)))
    rows = max(1, math.ceil(len(examples) / columns))
    fig = new_figure(3.0 * columns, 3.4 * rows)
    for n, ex in enumerate(examples):
        ax = fig.add_subplot(rows, columns, n + 1)
        size = ex.pixels.shape[0]
        extent = (0, size, size, 0)  # pixel edges, y down, so boxes draw in image coordinates
        ax.imshow(ex.pixels, extent=extent, interpolation="nearest")
        shade = np.zeros((*ex.labels.shape, 4))
        shade[ex.labels] = (1.0, 0.85, 0.0, 0.45)  # RGBA per patch: positive patches in amber
        ax.imshow(shade, extent=extent, interpolation="nearest")
        ticks = np.arange(0, size + 1, patch_size)
        ax.set_xticks(ticks, labels=[])
        ax.set_yticks(ticks, labels=[])
        ax.tick_params(length=0)
        ax.grid(True, color="black", linewidth=0.4, alpha=0.3)  # the patch grid
        x, y, w, h = ex.box
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=1.5))
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.set_title(ex.title, fontsize=8)
    fig.tight_layout()
    return fig
