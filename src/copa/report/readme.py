"""The README's results section, written from a profile's outcome targets, instruments per run,
tables, figures and claims check (the files the workflow and `copa targets` wrote), never typed: `copa readme-results` replaces what lies between the two
markers below, and `--check` says whether the README still shows the files' contents.
"""

from __future__ import annotations

import re
from pathlib import Path

from copa.config import DEFAULT_PARAMS_DIR
from copa.report.grid_figures import FIGURES
from copa.report.grids import available_grids
from copa.run_layout import RunLayout

BEGIN = "<!-- results: written by `copa readme-results` from the files below; do not edit by hand -->"
END = "<!-- end of results -->"


def _number(name: str) -> tuple[str, int]:
    """table10 after table9: the grids in the paper's order."""
    match = re.fullmatch(r"(\D+)(\d+)(\D*)", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def results_block(profile: str, root: Path = Path("."), params_dir: str | Path = DEFAULT_PARAMS_DIR) -> str:
    """The section's text: the outcome targets (copa.report.targets), the instruments of each run
    (copa.report.instruments), every table's Markdown, every figure (Figure 5 with its table), the claims check of ``profile``,
    from the workflow's folders under ``root`` (the README's folder: the paths it prints)."""
    layout = RunLayout(profile)
    tables = sorted((g for g in available_grids(params_dir) if g not in FIGURES), key=_number)
    parts = [BEGIN, f"Profile **{profile}**, from `{layout.targets}`, `{layout.instruments}`, `{layout.tables}/*.md`, "
             f"`{layout.figures}/*.png` and `{layout.claims}`.", "", _read(root / layout.targets).rstrip(), "",
             _read(root / layout.instruments).rstrip(), ""]
    for name in tables:
        parts += [_read(root / layout.table(name).with_suffix(".md")).rstrip(), ""]
    for name in sorted(FIGURES, key=_number):
        _read(root / _png(layout, name), binary=True)
        parts += [f"![{name}]({_png(layout, name)})", ""]
    if (root / _png(layout, "figure4")).is_file():  # the TPD's detections and their generalisation: only when the default run has a TPD
        parts += [f"![figure4]({_png(layout, 'figure4')})", ""]
    if (root / _png(layout, "figure5")).is_file():
        parts += [_read(root / layout.table("figure5").with_suffix(".md")).rstrip(), "", f"![figure5]({_png(layout, 'figure5')})", ""]
    claims = _read(root / layout.claims).split("\n", 1)[1].strip()  # without its level-1 title
    parts += [claims, "", END]
    return "\n".join(parts)


def _png(layout: RunLayout, name: str) -> Path:
    return layout.figure(name).with_suffix(".png")


def _read(path: Path, binary: bool = False) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the workflow first)")
    return "" if binary else path.read_text(encoding="utf-8")


def replace_block(readme_text: str, block: str, readme: Path) -> str:
    """``readme_text`` with its marked section replaced by ``block``."""
    start, end = readme_text.find(BEGIN), readme_text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no results section marked by the lines {BEGIN!r} ... {END!r}")
    return readme_text[:start] + block + readme_text[end + len(END):]
