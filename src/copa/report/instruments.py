"""The instruments of every pretraining run the profile trains, side by side: issue 23 asks the
report to show them per run, so that a row of Table 10 reads with what its pretraining learned.
One table (results/<profile>/instruments.md, and the same rows as JSON beside it), a row per run:

- ITC retrieval R-mean on held-out images (copa.eval.pretraining), image->text / text->image R@1;
- the outcome targets that a run's own files measure (copa.report.targets, ``Target.instrument``),
  with the same measures and texts: VQA minus its swapped-image control, held-out ITM, the TPD's
  AP, the same-image contrast, target-patch recall against image-[CLS] attention (with the random
  and oracle brackets).

The held-out probes are those of the run's last pretraining checkpoint (`copa pretrain-eval`: every
epoch for the default run, the last one for the others). The runs are those the grids train for the
profile (``trained``, or every cell with ``report.cells: all``) whose architecture the probes read,
once per seed of ``report.seeds`` (copa.report.grids.instrumented_runs); a run whose file is missing
says "not run" in that cell, and the table names the missing files below it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from copa.config import DEFAULT_PARAMS_DIR, Params
from copa.report.grids import available_grids, instrumented_runs, load_grid
from copa.report.targets import NOT_RUN, TARGETS, Bar, RunFiles, Target, measure_target
from copa.run_layout import RunLayout


def _itc(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, None]:
    r = run.probes()["retrieval"]
    return f"{r['r_mean']:.1f} ({r['tr_r1']:.1f} / {r['ir_r1']:.1f})", None


# ITC's held-out retrieval (no target of its own: the retrieval target is the fine-tune's), then the targets' instruments
INSTRUMENTS = (Target("ITC R-mean, held out (TR@1 / IR@1)", (), _itc), *(t for t in TARGETS if t.instrument))


def instrument_rows(params: Params, layout: RunLayout, params_dir: str | Path = DEFAULT_PARAMS_DIR) -> list[dict]:
    """One row per instrumented run (copa.report.grids.instrumented_runs of every grid): run, rows
    (the grid rows it serves), missing (the files it reads that are not there), then each
    instrument's measured text."""
    grids = [load_grid(name, params_dir) for name in available_grids(params_dir)]
    rows = []
    for run, labels in instrumented_runs(grids, params).items():
        files = RunFiles(layout, run)
        missing = [str(path) for path in (layout.pretrain_eval(run), layout.finetune_result(run, "vqa")) if not path.is_file()]
        rows.append({"run": run, "rows": labels, "missing": missing, **{t.what: measure_target(t, files)[0] for t in INSTRUMENTS}})
    return rows


def instruments_markdown(rows: list[dict], profile: str) -> str:
    columns = ["run", "rows", *(t.what for t in INSTRUMENTS)]
    lines = [f"Instruments of each pretraining run of the {profile} profile (copa.report.instruments): held-out probes of its "
             "last pretraining checkpoint, and its VQA against the swapped-image control, each measured as the "
             "outcome target of that name is.", "",
             "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]

    def cell(row: dict, column: str) -> str:
        if column == "run":
            return f"`{row['run']}`"
        if column == "rows":  # a run serves up to 15 cells of the full grid: the first, and how many more
            labels = row["rows"]
            return (labels[0] + (f" (+{len(labels) - 1} more)" if len(labels) > 1 else "")) if labels else "the default run"
        return NOT_RUN if row[column].startswith(NOT_RUN) else row[column]  # the files: below the table

    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    missing = [path for row in rows for path in row["missing"]]
    if missing:
        lines += ["", f"{NOT_RUN}: {', '.join(missing)} missing."]
    return "\n".join(lines) + "\n"


def write_instruments(params: Params, out: Path, layout: RunLayout, params_dir: str | Path = DEFAULT_PARAMS_DIR) -> list[Path]:
    """``out`` (.md) and the same rows as JSON beside it."""
    rows = instrument_rows(params, layout, params_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(instruments_markdown(rows, params.profile), encoding="utf-8")
    js = out.with_suffix(".json")
    js.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return [out, js]
