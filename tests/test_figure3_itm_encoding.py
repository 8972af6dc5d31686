"""Figure 3 and claims 4a / 4b under the ITM encoding (issue 19, defect 5): the pretraining step
encodes ITM negatives with the image's own-caption selection (Algorithm 1 line 10's one forward)
in every profile; the efficiency record measures the step under each encoding, and Figure 3's
table and drawing show both, named."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import matplotlib
import pandas as pd
import torch

from copa.config import ITM_GUIDANCES, load_params
from copa.eval.training_memory import training_memory
from copa.models.pretraining import CopaPretraining
from copa.report.columns import COLUMNS, memory_column
from copa.report.grid_figures import FIGURES
from copa.report.grids import load_grid, result_path, row_run
from copa.report.tables import write_table

matplotlib.use("Agg")
REPO = Path(__file__).parents[1]
PARAMS_DIR = REPO / "params"
SMALL = ["efficiency.memory.image_size=32", "efficiency.memory.batch_size=3", "efficiency.memory.object_batch_size=1"]


def test_every_profile_pretrains_with_the_own_caption_encoding():
    assert all(load_params(profile, params_dir=PARAMS_DIR).pretrain.itm_guidance == "own_caption"
               for profile in ("fixture", "demo", "paper"))
    assert inspect.signature(CopaPretraining).parameters["itm_guidance"].default == "own_caption"
    assert set(ITM_GUIDANCES) == {"own_caption", "pair_text"}


def test_training_memory_is_measured_under_each_itm_encoding():
    params = load_params("fixture", SMALL, PARAMS_DIR)
    record = training_memory(params, 100, params.efficiency, torch.device("cpu"))
    by = record["by_itm_guidance"]
    assert list(by) == list(ITM_GUIDANCES) and record["itm_guidance"] == "own_caption"
    assert record["saved_bytes"] == by["own_caption"]["saved_bytes"]  # the headline: the run's encoding
    # re-encoding each negative under its text saves the layers after the selection once more per negative
    assert by["pair_text"]["saved_bytes"] > by["own_caption"]["saved_bytes"]
    assert COLUMNS[memory_column("pair_text")].value({"training_memory": record}) == by["pair_text"]["saved_mib"]
    assert COLUMNS["memory_mib"].value({"training_memory": record}) == by["own_caption"]["saved_mib"]
    # the other encoding as the run's: only the headline moves
    other = load_params("fixture", [*SMALL, "pretrain.itm_guidance=pair_text"], PARAMS_DIR)
    moved = training_memory(other, 100, other.efficiency, torch.device("cpu"))
    assert moved["by_itm_guidance"] == by and moved["saved_bytes"] == by["pair_text"]["saved_bytes"]
    # no selection (mPLUG): the encodings agree
    none = load_params("fixture", [*SMALL, "model.selection.method=none"], PARAMS_DIR)
    baseline = training_memory(none, 100, none.efficiency, torch.device("cpu"))["by_itm_guidance"]
    assert baseline["pair_text"]["saved_bytes"] == baseline["own_caption"]["saved_bytes"]


def test_figure3_shows_and_names_each_encoding(tmp_path):
    shutil.copytree(PARAMS_DIR, tmp_path / "params")
    grid, demo = load_grid("figure3", tmp_path / "params"), load_params("demo", params_dir=tmp_path / "params")
    assert {memory_column(e) for e in ITM_GUIDANCES} | {"memory_mib"} == set(grid.columns)
    assert all(e in grid.title for e in ITM_GUIDANCES) and "Algorithm 1" in grid.title
    results = tmp_path / "results"
    for i, row in enumerate(grid.rows):
        by = {"own_caption": {"saved_mib": 100.0 + i}, "pair_text": {"saved_mib": 200.0 + i}}
        record = {"training_memory": {"itm_guidance": "own_caption", **by["own_caption"], "by_itm_guidance": by},
                  "device": {"device": "cpu", "cpu": "test cpu", "threads": 2}}
        path = result_path(results, "efficiency", row_run(row, demo, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    paths, cells, note = write_table(grid, demo, results, [0], tmp_path / "tables" / "figure3")
    frame = pd.read_csv(paths[0]).set_index("row")
    assert frame.at["keep 30%", "memory_mib_own_caption"] == frame.at["keep 30%", "memory_mib"] == 101.0
    assert frame.at["keep 30%", "memory_mib_pair_text"] == 201.0
    markdown = paths[1].read_text()
    assert "own_caption" in markdown.splitlines()[0]  # the caption
    assert all(COLUMNS[memory_column(e)].header in markdown for e in ITM_GUIDANCES)
    figure = FIGURES["figure3"](grid, cells, note)
    labels = [text.get_text() for ax in figure.axes for text in ax.get_legend().get_texts()]
    assert all(any(e in label for label in labels) for e in ITM_GUIDANCES)
    assert "own_caption" in figure._suptitle.get_text()
