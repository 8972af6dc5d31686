"""Grids (params/grids/), the tables built from run results, their figures and the claims check."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from copa.config import ParamsError, load_params
from copa.eval.efficiency import measure_efficiency
from copa.report.claims import FAILS, HOLDS, UNMEASURABLE, Tables, check_claims, standard_error, write_claims
from copa.report.columns import COLUMNS
from copa.report.grid_figures import FIGURES
from copa.report.grids import available_grids, load_grid, profile_location, profile_resolution, result_path, row_result, row_run
from copa.report.tables import NOT_TRAINED, grid_inputs, write_table

REPO = Path(__file__).parents[1]


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "params", tmp_path / "params")
    return tmp_path / "params"


def test_every_grid_of_the_repository_loads_and_names_known_columns():
    names = available_grids()
    assert {"table1", "table2", "table3", "table4", "table5", "table9", "table10", "figure1a", "figure3"} <= set(names)
    for name in names:
        grid = load_grid(name)
        assert grid.name == name and grid.rows
        assert set(grid.trained) == {"fixture", "demo", "paper"}
        assert grid.trained["paper"] == [r.label for r in (*grid.rows, *grid.anchors)] or not grid.trained["paper"]


@pytest.mark.parametrize("k, depth, expected", [(6, 12, 6), (4, 6, 2), (6, 6, 3), (8, 6, 4), (10, 6, 5), (2, 4, 1), (8, 4, 3), (1, 4, 1)])
def test_profile_location_scales_the_papers_layer(k, depth, expected):
    assert profile_location(k, depth) == expected


def test_rows_that_describe_the_same_model_are_one_run():
    demo = load_params("demo")
    table9, table10 = load_grid("table9"), load_grid("table10")
    assert row_run(table9.row("loc 6, 50%"), demo, 0) == row_run(table10.row("COPA"), demo, 0) == "tpd-loc3-keep0.5-seed0"
    assert row_run(table9.row("none, 100%"), demo, 0) == row_run(table10.row("w/o TPD"), demo, 0) == "tpd-loc3-keep1.0-seed0"
    # mPLUG has no location or ratio: one run name, whatever the row says
    assert row_run(table10.row("mPLUG"), demo, 0) == "none-loc3-keep1.0-seed0"


def _write(params_dir: Path, name: str, text: str) -> None:
    (params_dir / "grids" / f"{name}.yaml").write_text(text)


GOOD = """title: t
columns: [vqa, gmacs]
rows:
  - {label: a, method: tpd, location: 6, keep: 0.5, paper: {vqa: 1.0}}
  - {label: b, method: none, location: 6, keep: 1.0, paper: {}}
trained: {paper: all, demo: [a], fixture: []}
"""


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("columns: [vqa, gmacs]", "columns: [vqa, flops]"), "unknown column 'flops'"),
    (lambda t: t.replace("label: b", "label: a"), "row labels must be unique; repeated: a"),
    (lambda t: t.replace("paper: {vqa: 1.0}", "paper: {cider: 1.0}"), "names columns the grid does not have: cider"),
    (lambda t: t.replace("keep: 0.5", "keep: 1.5"), "rows[0].keep"),
    (lambda t: t.replace("location: 6, keep: 0.5", "location: 13, keep: 0.5"), "rows[0].location"),
    (lambda t: t.replace("demo: [a]", "demo: [c]"), "trained.demo' names no row: 'c'"),
    (lambda t: t.replace(", fixture: []", ""), "missing: fixture"),
    (lambda t: t.replace("method: tpd", "method: tpdd"), "rows[0].method"),
    (lambda t: t.replace("keep: 0.5,", "kep: 0.5,"), "unknown key 'rows[0].kep'"),
    (lambda t: t.replace("title: t\n", ""), "missing key 'title'"),
    (lambda t: t.replace("keep: 0.5,", "keep: 0.5, resolution: 0,"), "rows[0].resolution' must be a positive px count"),
    (lambda t: t.replace("[vqa, gmacs]", "[vqa, caption_cider]").replace("keep: 0.5,", "keep: 0.5, resolution: 384,"),
     "only fine-tuned column is VQA; got 384 with captioning"),
])
def test_bad_grid_files_name_the_file_and_the_key(params_dir, edit, message):
    _write(params_dir, "mine", edit(GOOD))
    with pytest.raises(ParamsError, match="mine.yaml") as error:
        load_grid("mine", params_dir)
    assert message in str(error.value)


def test_unknown_grid_lists_the_available_ones(params_dir):
    with pytest.raises(ParamsError, match="unknown grid 'table99'.*table10"):
        load_grid("table99", params_dir)


def _result(results: Path, source: str, run: str, record: dict, image_size: int | None = None) -> None:
    path = result_path(results, source, run, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _efficiency(gmacs: float, throughput: float = 100.0, memory: float = 50.0) -> dict:
    return {"flops": {"gmacs": {"total": gmacs}}, "throughput": {"pairs_per_s": throughput}, "latency": {"median_ms": 3.0},
            "training_memory": {"saved_mib": memory}, "device": {"device": "cpu", "cpu": "test cpu", "threads": 2}}


def test_table_reads_the_runs_results_and_marks_untrained_rows(params_dir, tmp_path):
    _write(params_dir, "mine", GOOD)
    grid, demo = load_grid("mine", params_dir), load_params("demo", params_dir=params_dir)
    results = tmp_path / "results"
    a, b = row_run(grid.row("a"), demo, 0), row_run(grid.row("b"), demo, 0)
    assert grid_inputs(grid, demo, results, [0]) == sorted([result_path(results, "vqa", a), result_path(results, "efficiency", a),
                                                           result_path(results, "efficiency", b)])
    _result(results, "vqa", a, {"overall": 47.5, "questions": 2400})
    _result(results, "efficiency", a, _efficiency(0.2))
    _result(results, "efficiency", b, _efficiency(0.4))
    paths, cells, _ = write_table(grid, demo, results, [0], tmp_path / "tables" / "mine")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex", ".json"]
    frame = pd.read_csv(paths[0]).set_index("row")
    assert frame.at["a", "vqa"] == 47.5 and frame.at["a", "vqa_examples"] == 2400 and frame.at["a", "vqa_paper"] == 1.0
    assert frame.at["b", "vqa_status"] == NOT_TRAINED and math.isnan(frame.at["b", "vqa"]) and frame.at["b", "gmacs"] == 0.4
    assert set(frame["profile"]) == {"demo"}
    markdown = paths[1].read_text()
    # VQA accuracy's controls (majority per question type, swapped images) follow it, not measured in this result
    assert "| a | 47.50 | 1 | not measured | not measured | 0.200 |" in markdown and NOT_TRAINED in markdown and "profile demo" in markdown and "test cpu" in markdown
    assert r"\begin{tabular}" in paths[2].read_text()
    assert json.loads(paths[3].read_text()) == {"a": {"vqa": 47.5, "gmacs": 0.2}, "b": {"gmacs": 0.4}}


def test_several_seeds_give_mean_and_standard_deviation(params_dir, tmp_path):
    _write(params_dir, "mine", GOOD)
    grid, demo = load_grid("mine", params_dir), load_params("demo", params_dir=params_dir)
    results = tmp_path / "results"
    for seed, acc in ((0, 40.0), (1, 44.0)):
        run = row_run(grid.row("a"), demo, seed)
        _result(results, "vqa", run, {"overall": acc, "questions": 100})
        _result(results, "efficiency", run, _efficiency(0.2))
        _result(results, "efficiency", row_run(grid.row("b"), demo, seed), _efficiency(0.4))
    _, cells, note = write_table(grid, demo, results, [0, 1], tmp_path / "t")
    assert cells["a"]["vqa"].mean == 42.0 and cells["a"]["vqa"].std == pytest.approx(math.sqrt(8)) and cells["a"]["vqa"].n == 2
    assert cells["a"]["vqa"].text(2) == "42.00 ± 2.83" and "seeds 0, 1" in note


def test_rows_at_a_resolution_read_their_own_fine_tune_and_costs(params_dir, tmp_path):
    """Table 5: the paper's px scaled to the profile, the VQA fine-tuning by the pretraining
    resolution (demo 128 = the paper's 256), the costs by the efficiency protocol's (224 = Table
    4's: the paper's px); a result of its own unless it is the profile's VQA / protocol resolution."""
    _write(params_dir, "mine", GOOD.replace("keep: 0.5,", "keep: 0.5, resolution: 384,").replace("keep: 1.0,", "keep: 1.0, resolution: 224,"))
    grid, demo = load_grid("mine", params_dir), load_params("demo", params_dir=params_dir)
    results = tmp_path / "results"
    a, b = row_run(grid.row("a"), demo, 0), row_run(grid.row("b"), demo, 0)
    assert grid_inputs(grid, demo, results, [0]) == sorted([
        result_path(results, "vqa", a, 192), result_path(results, "efficiency", a, 384), result_path(results, "efficiency", b)])
    assert result_path(results, "vqa", a, 192).name == "vqa-192px.json"
    paper = load_params("paper", params_dir=params_dir)  # fine-tunes VQA at 384 px: that row is its own VQA run
    assert result_path(results, "vqa", row_run(grid.row("a"), paper, 0)) in grid_inputs(grid, paper, results, [0])
    _result(results, "vqa", a, {"overall": 50.0, "questions": 10}, 192)
    _result(results, "efficiency", a, _efficiency(0.3), 384)
    _result(results, "efficiency", b, _efficiency(0.2))
    paths, cells, _ = write_table(grid, demo, results, [0], tmp_path / "t")
    assert cells["a"]["vqa"].mean == 50.0 and cells["a"]["gmacs"].mean == 0.3 and cells["b"]["gmacs"].mean == 0.2
    frame = pd.read_csv(paths[0]).set_index("row")
    assert frame.at["a", "vqa_image_size"] == 192 and frame.at["a", "efficiency_image_size"] == 384
    caption = paths[1].read_text().splitlines()[0]  # the mapping, in the Markdown's (and LaTeX's) caption
    assert "VQA fine-tuning runs at px x 128/256" in caption
    assert "112, 192 px for 224, 384" in caption and "px x 224/224" in caption and "the paper's px, so a model" in caption


def test_grounding_note_names_the_fine_tunes_departures_where_a_table_has_grounding():
    from copa.report.tables import grounding_note

    paper = load_params("paper")
    assert paper.finetune.grounding.pta_weight == 0 and grounding_note(load_grid("table3"), paper) == ""
    departing = load_params("paper", ["finetune.grounding.pta_weight=1", "finetune.grounding.keep_ratio=0.1"])
    note = grounding_note(load_grid("table3"), departing)
    assert "added with weight 1 where the TPD scores them" in note and "keeping 10% of the patches" in note
    assert grounding_note(load_grid("table10"), departing) == ""  # no grounding column
    only_keep = grounding_note(load_grid("table3"), load_params("paper", ["finetune.grounding.keep_ratio=0.1"]))
    assert "PTA" not in only_keep and "keeping 10%" in only_keep


@pytest.mark.parametrize("px, expected", [(224, 112), (256, 128), (304, 160), (384, 192), (464, 240), (512, 256)])
def test_profile_resolution_scales_the_papers_px_to_the_patch_grid(px, expected):
    assert profile_resolution(px, load_params("demo")) == expected
    assert profile_resolution(px, load_params("paper")) == px  # the paper profile pretrains at 256: as is
    for profile in ("demo", "paper"):  # costs: Table 4's protocol is 224 px in every profile
        assert profile_resolution(px, load_params(profile), "efficiency") == px
    assert profile_resolution(px, load_params("demo", ["efficiency.image_size=112"]), "efficiency") == expected


SHARED_ROW = {"table4": "COPA", "table5": "COPA 224"}  # COPA (TPD at layer 6, keeping 50%) at the paper's 224 px


@pytest.mark.parametrize("profile", ["demo", "fixture", "paper"])
def test_table5_224_px_row_and_table4_read_one_cost(profile):
    """Issue 19: Table 5's COPA 224 and Table 4's COPA are one model at one resolution: one result file."""
    params = load_params(profile)
    paths = {grid: row_result(load_grid(grid).row(label), "efficiency", params, Path("results") / profile, 0)
             for grid, label in SHARED_ROW.items()}
    assert paths["table5"] == paths["table4"]


def test_table5_224_px_row_costs_what_table4_shows():
    """Issue 19 (demo: 0.107 vs 0.315 GMACs): each table's cost of the shared row, measured from the
    params as rule efficiency does (a -<px>px result sets efficiency.image_size), is the same."""
    demo = load_params("demo")
    gmacs = {}
    for grid, label in SHARED_ROW.items():
        tag = re.search(r"-(\d+)px\.json$", row_result(load_grid(grid).row(label), "efficiency", demo, Path("results/demo"), 0).name)
        sized = load_params("demo", [f"efficiency.image_size={tag.group(1)}"] if tag else [])
        gmacs[grid] = measure_efficiency(sized, sized.model.vocab_size, sized.efficiency, parts=("flops",))["flops"]["gmacs"]["total"]
    assert gmacs["table5"] == gmacs["table4"], gmacs


def test_a_missing_result_is_an_error_naming_it(params_dir, tmp_path):
    _write(params_dir, "mine", GOOD)
    grid, demo = load_grid("mine", params_dir), load_params("demo", params_dir=params_dir)
    with pytest.raises(FileNotFoundError, match="finetune/tpd-loc3-keep0.5-seed0/vqa.json: a result the table needs is missing"):
        write_table(grid, demo, tmp_path / "results", [0], tmp_path / "t")


def test_columns_read_their_values():
    captioning = {"bleu_4": 0.25, "spice": None}
    assert COLUMNS["caption_bleu4"].value(captioning) == 25.0
    assert COLUMNS["caption_spice"].value(captioning) is None  # SPICE unavailable: not a number
    gpu = {"training_memory": {"saved_mib": 10.0, "cuda_max_allocated_mib": 30.0}}
    assert COLUMNS["memory_mib"].value(gpu) == 30.0 and COLUMNS["memory_mib"].value({"training_memory": {"saved_mib": 10.0}}) == 10.0
    grounding = {"splits": {"val": {"acc@0.5": 2.0, "expressions": 1100}}}
    assert COLUMNS["grounding_val"].value(grounding) == 2.0 and COLUMNS["grounding_val"].examples(grounding) == 1100


def test_standard_error_of_an_accuracy_difference():
    a = {"mean": 50.0, "std": None, "seeds": 1, "examples": 100}
    assert standard_error(a, a) == pytest.approx(math.sqrt(2 * 25.0))  # binomial: sqrt(p (100 - p) / N) per accuracy
    b = {"mean": 50.0, "std": 1.0, "seeds": 4, "examples": 100}
    assert standard_error(b, b) == pytest.approx(math.sqrt(2 / 4))  # over seeds when there are several


def _csv(folder: Path, grid: str, rows: dict[str, dict[str, float]], examples: int = 2400) -> None:
    lines = []
    for label, values in rows.items():
        line = {"row": label}
        for column, value in values.items():
            line.update({column: value, f"{column}_std": None, f"{column}_seeds": 1, f"{column}_examples": examples})
        lines.append(line)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(lines).to_csv(folder / f"{grid}.csv", index=False)


def _paired_timing(results: Path, grid: str, seconds: dict[str, float], rounds: int = 15) -> None:
    """A `copa efficiency --grid` record: each model's seconds per batch in each round, the
    round's load (shared by all models) times the model's own time."""
    load = 1 + 0.5 * np.random.default_rng(0).random(rounds)
    models = {label: {"throughput": {"seconds_per_round": list(base * load)}} for label, base in seconds.items()}
    path = results / "efficiency" / "paired" / f"{grid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": {"timing": {"rounds": rounds, "seed": 0}}, "models": models}))


def test_claims_verdicts(tmp_path):
    tables = tmp_path / "tables"
    _csv(tables, "table10", {"COPA": {"vqa": 50.0}, "w/o PTA": {"vqa": 45.0}, "w/o TPD": {"vqa": 50.5}, "mPLUG": {"vqa": 50.0}})
    _csv(tables, "table9", {f"loc {loc}, {r}%": {"gmacs": loc + r / 100} for loc in (4, 6, 8) for r in (10, 30, 50, 70)})
    _paired_timing(tmp_path, "table9", {f"loc {loc}, {r}%": 0.2 + r / 100 for loc in (4, 6, 8) for r in (10, 30, 50, 70)})
    _csv(tables, "figure3", {"keep 10%": {"memory_mib": 10}, "keep 30%": {"memory_mib": 20}, "keep 50%": {"memory_mib": 30},
                             "keep 70%": {"memory_mib": 40}, "loc 2": {"memory_mib": 20}, "loc 10": {"memory_mib": 40}})
    verdicts = {v.claim.split(".")[0]: v for v in check_claims(Tables(tables))}
    assert verdicts["1"].verdict == HOLDS  # 5 points over 2,400 questions: > 2 standard errors (2.9)
    assert verdicts["2"].verdict == UNMEASURABLE  # 0.5 points: within the noise
    assert verdicts["3a"].verdict == HOLDS and verdicts["3b"].verdict == HOLDS
    assert verdicts["3c"].verdict == UNMEASURABLE and "not trained" in verdicts["3c"].measured  # no VQA column in table9 here
    assert verdicts["4a"].verdict == HOLDS and verdicts["4b"].verdict == FAILS and "spread" in verdicts["4b"].measured
    assert verdicts["5a"].verdict == UNMEASURABLE and verdicts["5b"].measured == "Table 5 missing"
    assert verdicts["6a"].verdict == verdicts["6b"].verdict == UNMEASURABLE and "Figure 5 missing" in verdicts["6a"].measured
    assert verdicts["7a"].verdict == verdicts["7b"].verdict == UNMEASURABLE and verdicts["7a"].measured == "Table 6 missing"
    _csv(tables, "table6", {"COPA-S": {"vqa": 56.0, "gmacs": 1.0}, "ViLT": {"vqa": 50.0, "gmacs": 2.0}})
    _paired_timing(tmp_path, "table6", {"COPA-S": 0.4, "ViLT": 0.6})
    verdicts = {v.claim.split(".")[0]: v for v in check_claims(Tables(tables))}
    assert verdicts["7a"].verdict == HOLDS and verdicts["7b"].verdict == HOLDS  # 6 points over 2,400 questions
    assert "throughput speedup 1.500 [1.500, 1.500]" in verdicts["7a"].measured  # the rounds' shared load cancels in the pairs
    _csv(tables, "table6", {"COPA-S": {"vqa": 44.0, "gmacs": 1.0}, "ViLT": {"vqa": 50.0, "gmacs": 2.0}})
    _paired_timing(tmp_path, "table6", {"COPA-S": 0.7, "ViLT": 0.6})
    verdicts = {v.claim.split(".")[0]: v for v in check_claims(Tables(tables))}
    assert verdicts["7a"].verdict == FAILS and verdicts["7b"].verdict == FAILS  # slower, and less accurate
    _csv(tables, "table5", {"mPLUG 384": {"vqa": 50.0, "gmacs": 8.0}, "COPA 224": {"vqa": 44.0, "gmacs": 2.0},
                            "COPA 464": {"vqa": 56.0, "gmacs": 7.5}, "COPA 512": {"gmacs": 9.0}})
    verdicts = {v.claim.split(".")[0]: v for v in check_claims(Tables(tables))}
    assert verdicts["5a"].verdict == HOLDS and "COPA 464 56.00 vs COPA 224 44.00" in verdicts["5a"].measured
    assert verdicts["5b"].verdict == HOLDS and "FLOPs 7.500 vs 8.000" in verdicts["5b"].measured  # 512 costs more than mPLUG
    _csv(tables, "table10", {"COPA": {"vqa": 40.0}, "w/o PTA": {"vqa": 45.0}})
    assert {v.claim.split(".")[0]: v for v in check_claims(Tables(tables))}["1"].verdict == FAILS
    out = write_claims(tables, "demo", tmp_path / "claims.md")
    assert "demo profile" in out[0].read_text() and json.loads(out[1].read_text())[0]["verdict"] == FAILS


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figures_draw_from_cells(name, tmp_path):
    from copa.report.figures import save_figure
    from copa.report.tables import Cell

    grid = load_grid(name)
    cells = {r.label: {column: Cell(float(i + 1), None, 1) for column in grid.columns} for i, r in enumerate(grid.rows)}
    first = save_figure(FIGURES[name](grid, cells, "note"), tmp_path / "a")
    again = save_figure(FIGURES[name](grid, cells, "note"), tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]  # byte-stable


def test_stage_times_sum_the_benchmark_files_per_rule(tmp_path, capsys):
    from copa.cli import main
    from copa.report.stage_times import busy_seconds, stage_times

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for name, seconds, rss in (("pretrain/a", 600.0, 900.0), ("pretrain/b", 300.0, 1200.0), ("synth", 60.0, "-")):
        path = tmp_path / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t0\t0\n")
    times = stage_times(tmp_path)
    assert [(t.rule, t.jobs, t.seconds, t.longest_job, t.max_rss_mib) for t in times] == [
        ("pretrain", 2, 900.0, "a", 1200.0), ("synth", 1, 60.0, "synth", None)]
    # a (10 min) and b (5 min) side by side, synth (1 min) an hour later: 11 minutes with a job running
    for name, end in (("pretrain/a", 7200), ("pretrain/b", 7000), ("synth", 10800)):
        os.utime(tmp_path / f"{name}.tsv", (end, end))
    assert busy_seconds(tmp_path) == 660.0
    assert main(["--profile", "fixture", "stage-times", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| pretrain | 2 | 15.0 | 10.0 | a | 1200 |" in out and "with a job running: 11.0 min" in out
    (tmp_path / "broken.tsv").write_text("not\ta benchmark\n")
    assert main(["--profile", "fixture", "stage-times", str(tmp_path)]) == 2
    assert "broken.tsv: not a Snakemake benchmark file" in capsys.readouterr().err


def test_readme_results_section_is_written_from_the_files(tmp_path, monkeypatch, capsys):
    from copa.cli import main
    from copa.report.readme import BEGIN, END

    results, figures = tmp_path / "results" / "fixture", tmp_path / "figures" / "fixture"
    for name in available_grids():
        if name not in FIGURES:
            (results / "tables").mkdir(parents=True, exist_ok=True)
            (results / "tables" / f"{name}.md").write_text(f"**{name} caption.**\n\n| a |\n| --- |\n| {name} value |\n")
    figures.mkdir(parents=True)
    for name in FIGURES:
        (figures / f"{name}.png").write_bytes(b"png")
    (results / "claims.md").write_text("# Claims title\n\n| claim | verdict |\n")
    (results / "targets.md").write_text("| what | target | measured | |\n")
    (results / "instruments.md").write_text("| run | rows | ITC |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{BEGIN}\nold numbers\n{END}\n\nafter\n")
    monkeypatch.chdir(tmp_path)  # README.md, results/ and figures/ of the working folder
    cli = ["--profile", "fixture", "--params-dir", str(REPO / "params"), "readme-results"]
    assert main(cli + ["--check"]) == 1  # typed numbers: out of date
    assert main(cli) == 0
    text = readme.read_text()
    assert text.startswith("intro\n\n" + BEGIN) and text.endswith(END + "\n\nafter\n") and "old numbers" not in text
    assert text.index("table9 value") < text.index("table10 value") and "![figure3](figures/fixture/figure3.png)" in text
    assert "| claim | verdict |" in text and "Claims title" not in text
    assert text.index("| what | target | measured |") < text.index("| run | rows | ITC |") < text.index("table9 value")  # the targets, the instruments first
    assert main(cli + ["--check"]) == 0
    readme.write_text("no markers\n")
    assert main(cli) == 2
    assert "no results section marked" in capsys.readouterr().err


def test_readme_shows_the_committed_demo_results():
    """The README's results section is the demo's files as the last run wrote them, not typed."""
    from copa.report.readme import replace_block, results_block

    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert replace_block(text, results_block("demo", REPO), readme) == text


def test_the_full_grid_trains_every_row_and_anchor(params_dir, tmp_path):
    """report.cells all (the full grid): every row and anchor of a grid is trained, whatever its
    `trained` says for the profile; the default, trained, keeps to what it names."""
    from copa.report.grids import anchor_result, trained_labels

    _write(params_dir, "mine", GOOD.replace("trained:", "anchors:\n  - {label: film, model: vqa_scratch}\ntrained:"))
    grid = load_grid("mine", params_dir)
    demo, full = load_params("demo", params_dir=params_dir), load_params("demo", ["report.cells=all"], params_dir=params_dir)
    assert trained_labels(grid, demo) == {"a"} and trained_labels(grid, full) == {"a", "b", "film"}
    results = tmp_path / "results"
    b = row_run(grid.row("b"), demo, 0)
    assert result_path(results, "vqa", b) not in grid_inputs(grid, demo, results, [0])
    assert {result_path(results, "vqa", b), anchor_result(grid.anchors[0], results, 0)} <= set(grid_inputs(grid, full, results, [0]))
    with pytest.raises(ParamsError, match="report.cells"):
        load_params("demo", ["report.cells=some"], params_dir=params_dir)


def test_the_perception_bracket_trains_on_the_synthetic_world_only():
    """Table 10's bracket reads the scenes' perfect image tokens: on real data the full grid and `all` leave it "not trained"."""
    from copa.report.grids import trained_labels

    grid = load_grid("table10")
    bracket = {a.label for a in grid.anchors if a.model == "perception_oracle"}
    assert len(bracket) == 1
    assert bracket <= trained_labels(grid, load_params("demo"))
    assert not bracket & trained_labels(grid, load_params("paper"))
    assert not bracket & trained_labels(grid, load_params("demo", ["data.source=real", "report.cells=all"]))


def test_a_target_bar_is_met_at_its_value():
    from copa.report.targets import Bar

    assert Bar(75).met(75) and not Bar(75).met(74.9)
    assert Bar(2, at_most=True).met(2) and not Bar(2, at_most=True).met(3)
    assert str(Bar(90, " min", at_most=True)) == "<= 90 min" and str(Bar(0.45)) == ">= 0.45"


def test_outcome_targets_read_the_default_runs_records(tmp_path, monkeypatch, capsys):
    """Each target from its record: met, not met, not run (file missing); a record without a target's key names it."""
    from copa.cli import main
    from copa.report.grids import params_run_name
    from copa.report.targets import TARGETS
    from copa.run_layout import RunLayout

    layout, run = RunLayout("fixture"), params_run_name(load_params("fixture"))
    monkeypatch.chdir(tmp_path)  # the layout's relative paths: results/ and logs/ of the working folder
    cli = ["--profile", "fixture", "--params-dir", str(REPO / "params"), "targets"]

    def write(path: Path, record) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    write(layout.finetune_result(run, "vqa"), {"overall": 80.0, "per_answer_type": {"other": 60.0},
                                               "controls": {"swapped_image": {"overall": 50.0, "answers_changed": 0.4}}})
    write(layout.finetune_result(run, "retrieval"), {"tr_r1": 45.0, "ir_r1": 20.0, "coarse": {"tr_r1": 50.0, "ir_r1": 30.0},
                                                     "fit_oracle": {"tr_r1": 92.6, "ir_r1": 95.3}})
    write(layout.anchor_result("vqa_scratch", "seed0"), {"overall": 79.0, "per_answer_type": {"other": 81.5}})
    recall = {name: [{"keep_ratio": 0.3, "micro": value}] for name, value in
              (("tpd", 0.7), ("cls_attention", 0.5), ("oracle", 1.0), ("random", 0.3))}
    write(layout.pretrain_eval(run), {"checkpoints": [{"itm": {"hard": {"balanced": 0.9, "auc": 0.95}, "constant": 0.5},
                                                       "patch_detection": {"score_ap": {"text": 0.5, "other_text": 0.2}},
                                                       "same_image_contrast": {"contrast": {"estimate": 0.2, "low": -0.01, "high": 0.4}},
                                                       "target_recall": {"selectors": recall}}]})
    write(layout.claims_json, [{"verdict": UNMEASURABLE}, {"verdict": HOLDS}])
    assert main(cli) == 0
    rows = {r["what"]: r for r in json.loads(layout.targets.with_suffix(".json").read_text())}
    assert [rows[t.what]["met"] for t in TARGETS] == [
        True, False, True, True, True, False,  # VQA 80, other 60, 80 - 50 = 30, ITM 90%, AP 0.5, contrast's interval reaches 0
        True, False, None, True, None]  # recall 0.7 - 0.5, IR@1 20 < 25, no grounding record, 1 of 2, no benchmarks
    assert [rows[t.what]["target"] for t in TARGETS] == [  # the bars, written from the numbers compared
        ">= 75", ">= 70", ">= 20 points", ">= 85%", ">= 0.45", ">= 0.15 AP, interval above 0", ">= 0.15", ">= 40 / >= 25",
        ">= 70 each", "<= 2", "<= 90 min"]
    assert rows["VQA overall minus swapped-image control"]["measured"].startswith("30.0 (80.0 - 50.0; 40% of answers change)")
    assert rows["VQA overall, COPA run"]["measured"] == "80.0; FiLM from scratch (VQA data only) 79.0"  # the bracket did not run
    assert rows["ITM held-out accuracy, balanced, hard negatives"]["measured"] == "90.0% (constant predictor 50%), AUC 0.950"
    assert rows["retrieval TR@1 / IR@1 (Karpathy-style test split)"]["measured"] == \
        "45.0 / 20.0; ITC stage alone 50.0 / 30.0; caption-fit oracle 92.6 / 95.3"
    assert rows["workflow time, 2 cores"]["measured"].startswith("not run (logs/fixture/benchmarks: no Snakemake benchmark files")
    assert "6 of 11 targets met." in layout.targets.read_text()
    # a part of the workflow (the data stage alone) is no workflow time; its training jobs make it one
    benchmark = "s\th:m:s\n600\t0:10:00\n"
    (layout.benchmarks / "synth.tsv").parent.mkdir(parents=True)
    (layout.benchmarks / "synth.tsv").write_text(benchmark)
    assert main(cli) == 0
    rows = {r["what"]: r for r in json.loads(layout.targets.with_suffix(".json").read_text())}
    assert "no benchmark of the pretrain, finetune, evaluate rules" in rows["workflow time, 2 cores"]["measured"]
    # 30-minute jobs ending at minutes 30, 60, 90 and 90, the last two side by side: 90 min with a job
    # running meets the bar, where the 120 summed would not
    for rule, end in (("synth", 1800), ("pretrain", 3600), ("finetune", 5400), ("evaluate", 5400)):
        path = layout.benchmarks / (f"{rule}.tsv" if rule == "synth" else f"{rule}/job.tsv")
        path.parent.mkdir(exist_ok=True)
        path.write_text("s\th:m:s\n1800\t0:30:00\n")
        os.utime(path, (end, end))
    assert main(cli) == 0
    rows = {r["what"]: r for r in json.loads(layout.targets.with_suffix(".json").read_text())}
    assert rows["workflow time, 2 cores"]["measured"] == "90 min with a job running (120 summed over the jobs)"
    assert rows["workflow time, 2 cores"]["met"]
    write(layout.finetune_result(run, "grounding"), {"splits": {"val": {"acc@0.5": 71.0, "centre_r": {"x": 0.9, "y": None}},
                                                                 "testA": {"acc@0.5": 69.0, "centre_r": {"x": 0.8, "y": 0.7}}}})
    assert main(cli) == 0
    rows = {r["what"]: r for r in json.loads(layout.targets.with_suffix(".json").read_text())}
    grounding = rows["grounding acc@0.5, each split (val / testA / testB)"]
    assert grounding["measured"] == "val 71.0 / testA 69.0; centre r x / y val 0.90 / n/a, testA 0.80 / 0.70" and grounding["met"] is False
    write(layout.finetune_result(run, "grounding"), {"splits": {"val": {"acc@0.5": 71.0}}})  # a record from before centre_r
    assert main(cli) == 0
    rows = {r["what"]: r for r in json.loads(layout.targets.with_suffix(".json").read_text())}
    assert rows["grounding acc@0.5, each split (val / testA / testB)"]["measured"] == "val 71.0"
    write(layout.finetune_result(run, "grounding"), {"selection": "tpd", "keep_ratio": 0.1, "pta_weight": 1.0,
                                                     "splits": {"val": {"acc@0.5": 71.0}}})  # the fine-tune's departures
    assert main(cli) == 0
    rows = {r["what"]: r for r in json.loads(layout.targets.with_suffix(".json").read_text())}
    assert rows["grounding acc@0.5, each split (val / testA / testB)"]["measured"] == \
        "val 71.0; fine-tuned with tpd keeping 10%, PTA on the referred box (weight 1)"
    write(layout.finetune_result(run, "retrieval"), {"tr_r1": 45.0})
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert f"'retrieval TR@1 / IR@1 (Karpathy-style test split)': {layout.finetune_result(run, 'retrieval')}: no 'ir_r1'" in err


def test_instruments_show_each_trained_runs_probes(tmp_path, monkeypatch, capsys):
    """A row per dual-stream run the grids train (the default run first, no single-stream run), each
    instrument measured as its target is; a run without records says "not run", a record without
    an instrument's key names its file."""
    from copa.cli import main
    from copa.report.grids import available_grids, instrumented_runs, load_grid, params_run_name
    from copa.report.instruments import INSTRUMENTS
    from copa.run_layout import RunLayout

    params = load_params("fixture")
    runs = instrumented_runs([load_grid(name) for name in available_grids()], params)
    default = params_run_name(params)
    assert list(runs)[0] == default and runs[default][0] == "Table 10 COPA"
    assert {labels[0] for labels in runs.values()} == {"Table 10 COPA", "Table 10 w/o PTA", "Table 10 w/o TPD", "Table 10 mPLUG"}
    assert not any(run.startswith("single") for run in runs)  # Table 6's single-stream runs: the probes do not read them
    without_pta = next(run for run, labels in runs.items() if labels[0] == "Table 10 w/o PTA")

    layout = RunLayout("fixture")
    monkeypatch.chdir(tmp_path)
    probes = {"retrieval": {"r_mean": 43.45, "tr_r1": 21.0, "ir_r1": 14.7},
              "itm": {"hard": {"balanced": 0.5, "auc": 0.56}, "constant": 0.5},
              "patch_detection": {"score_ap": {"text": 0.7, "other_text": 0.45}},
              "same_image_contrast": {"contrast": {"estimate": 0.37, "low": 0.35, "high": 0.39}},
              "target_recall": {"selectors": {name: [{"keep_ratio": 0.3, "micro": value}] for name, value in
                                              (("tpd", 0.66), ("cls_attention", 0.31), ("oracle", 0.96), ("random", 0.3))}}}
    blind = {**probes, "patch_detection": {"selection": "cls_attention"},
             "same_image_contrast": {"note": "not measured: no detector"}}
    for run, record in ((default, probes), (without_pta, blind)):
        path = layout.pretrain_eval(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"checkpoints": [record]}))
    cli = ["--profile", "fixture", "--params-dir", str(REPO / "params"), "instruments"]
    assert main(cli) == 0
    rows = {r["run"]: r for r in json.loads(layout.instruments.with_suffix(".json").read_text())}
    assert list(rows) == list(runs)
    itc, swap, itm, ap, contrast, recall = (t.what for t in INSTRUMENTS)
    assert rows[default][itc] == "43.5 (21.0 / 14.7)"
    assert rows[default][itm] == "50.0% (constant predictor 50%), AUC 0.560"
    assert rows[default][contrast] == "0.370 [0.350, 0.390]"
    assert rows[default][recall].startswith("+0.350 (tpd 0.660, [CLS] attention 0.310")
    assert rows[default][swap].startswith("not run (") and "vqa" in rows[default][swap]
    assert rows[without_pta][ap] == "no TPD scores (selection cls_attention)"
    assert rows[without_pta][contrast] == "not measured: no detector"
    assert all(cell.startswith("not run (") for run in rows if run not in (default, without_pta) for cell in
               (rows[run][c] for c in (itc, itm, ap)))
    table = layout.instruments.read_text()
    assert f"| `{default}` | Table 10 COPA (+" in table and "| 43.5 (21.0 / 14.7) |" in table
    assert rows[default]["missing"] == [str(layout.finetune_result(default, "vqa"))]
    assert f"{layout.pretrain_eval(list(runs)[-1])}" in table.split("\nnot run: ")[1]  # the files once, below the table

    del probes["retrieval"]["r_mean"]
    layout.pretrain_eval(default).write_text(json.dumps({"checkpoints": [probes]}))
    assert main(cli) == 2
    assert f"{layout.pretrain_eval(default)}: no 'r_mean'" in capsys.readouterr().err
