"""The Snakemake workflow: lint-clean, run control validated, bad parameters caught at parse time,
and the fixture DAG run end to end with the rerun triggers that matter (params, not other sections).

Every run happens in a copy of the workflow under tmp_path, never in the repository's data/.
"""

import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import HANG_GUARD_S

REPO = Path(__file__).parents[1]
# src/ too: the rules list the copa sources as inputs (Snakemake's code trigger misses imports).
WORKFLOW_FILES = ("Snakefile", "workflow", "profiles", "params", "src")
# The fixture: its workflow profile (threads and resources per rule, and `profile: fixture`).
FIXTURE = ("--workflow-profile", "profiles/fixture")


def copy_workflow(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake of this interpreter's environment; stdout and stderr together in .stdout."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=HANG_GUARD_S,
    )


def dry_runs(workdir: Path, overrides: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    """The fixture DAG's dry run under each `--config set=[...]` override, all at once (they only
    read the workdir: `--nolock`); name -> the run, as `snakemake` returns it."""
    started = {name: subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "-n", "--nolock", *FIXTURE,
                                       "--config", f'set=["{override}"]'],
                                      cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name, override in overrides.items()}
    return {name: _finished(proc) for name, proc in started.items()}


def _finished(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, _ = proc.communicate(timeout=HANG_GUARD_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def test_lint_is_clean(workdir):
    run = snakemake(workdir, "--lint")
    assert run.returncode == 0, run.stdout
    assert "Lints for" not in run.stdout
    assert "Congratulations, your workflow is in a good condition!" in run.stdout


@pytest.mark.parametrize("options", [["--cores", "2"], ["--workflow-profile", "profiles/default"]], ids=["cores", "default-profile"])
def test_dry_run_schedules_the_data_rules(workdir, options):
    run = snakemake(workdir, *options, "-n")
    assert run.returncode == 0, run.stdout
    assert "rule synth:" in run.stdout and "rule validate_data:" in run.stdout
    assert "rule efficiency:" in run.stdout  # the default run's cost is a target of rule all
    assert "output: results/demo/data_validation.json" in run.stdout  # demo: the profile params/base.yaml names
    assert not (workdir / "data").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        (["profil=fixture"], "Additional properties are not allowed ('profil' was unexpected)"),
        (["profile=big"], "'big' is not one of ['fixture', 'demo', 'paper']"),
        (["set=synth.seed=1"], "'synth.seed=1' is not of type 'array'"),
    ],
)
def test_run_control_is_validated(workdir, config, message):
    run = snakemake(workdir, "--cores", "1", "-n", "--config", *config)
    assert run.returncode != 0
    assert "Error validating config file" in run.stdout and message in run.stdout


def test_bad_override_fails_at_parse_time(workdir):
    run = snakemake(workdir, "--cores", "1", "-n", "--config", 'set=["synth.sed=1"]')
    assert run.returncode != 0
    assert "--set: unknown key 'synth.sed'; did you mean 'synth.seed'?" in run.stdout


ODD_ROOT = "data/w o'r;l\"d-\u00e9 $(touch INJECTED) `touch INJECTED`"  # a space, quotes, a semicolon, non-ASCII, substitutions


def test_a_data_root_with_shell_characters_is_one_quoted_path(workdir):
    """Every path and value reaches the shell quoted: the world is made and validated under the odd
    root itself, and no command hidden in it runs (a `;` in the root once ran one)."""
    (workdir / "odd.yaml").write_text(yaml.safe_dump({"profile": "fixture", "set": [f"data.root={ODD_ROOT}"]}, allow_unicode=True),
                                      encoding="utf-8")
    run = snakemake(workdir, "results/fixture/data_validation.json", "--cores", "2", *FIXTURE, "--configfile", "odd.yaml")
    assert run.returncode == 0, run.stdout
    validation = json.loads((workdir / "results" / "fixture" / "data_validation.json").read_text(encoding="utf-8"))
    assert validation["ok"] and validation["root"] == ODD_ROOT and (workdir / ODD_ROOT / "synthetic_manifest.json").is_file()
    assert not list(workdir.rglob("INJECTED")) and not (Path.cwd() / "INJECTED").exists()


def test_a_data_root_holding_other_files_is_refused(workdir):
    """The synth rule's output is the whole data root, which Snakemake deletes to rerun it: a root
    with files the world did not write (here a user's, beside an old world's) stops the parse, intact."""
    root = workdir / "data" / "mine"
    (root / "coco").mkdir(parents=True)
    (root / "coco" / "mynotes.txt").write_text("keep me")
    run = snakemake(workdir, "--cores", "1", "-n", *FIXTURE, "--config", 'set=["data.root=data/mine"]')
    assert run.returncode == 2
    assert "data root data/mine holds files with no synthetic_manifest.json" in run.stdout and "coco/mynotes.txt" in run.stdout
    assert "Traceback" not in run.stdout and (root / "coco" / "mynotes.txt").read_text() == "keep me"


def test_bad_params_file_fails_at_parse_time(workdir):
    profile = workdir / "params" / "profiles" / "fixture.yaml"
    profile.write_text(profile.read_text().replace("  seed: 0", "  sed: 0"))
    run = snakemake(workdir, "--cores", "1", "-n", *FIXTURE)
    assert run.returncode != 0
    assert "params/profiles/fixture.yaml: unknown key 'synth.sed'" in run.stdout
    assert "Traceback" not in run.stdout


@pytest.mark.longest
def test_fixture_dag_end_to_end(workdir):
    # At profiles/default's job rate limit: Snakemake's own process 28 CPU-s instead of 54 at the fixture
    # profile's (Snakemake's default, kept there for the short runs), 320 s instead of 335 alone on 2 cores.
    run = snakemake(workdir, "--cores", "2", "--max-jobs-per-timespan", "1000/10s", *FIXTURE)
    assert run.returncode == 0, run.stdout
    validation = json.loads((workdir / "results" / "fixture" / "data_validation.json").read_text())
    assert validation["ok"] and validation["root"] == "data/synthetic-fixture"
    assert {s["status"] for s in validation["sources"]} == {"ok"}
    assert (workdir / "logs" / "fixture" / "synth.log").read_text().startswith("synthetic world (fixture, seed 0)")
    report = json.loads((workdir / "results" / "fixture" / "filter_report.json").read_text())
    assert report["sources"]["vg_regions"]["dropped"]["near_duplicate"] > 0
    assert "VG regions" in (workdir / "results" / "fixture" / "filter_report.md").read_text()
    assert json.loads((workdir / "results" / "fixture" / "patch_labels.json").read_text())["boxes"] == sum(s["kept"] for s in report["sources"].values())
    assert (workdir / "data" / "processed" / "fixture" / "patch_labels.npz").is_file()
    assert (workdir / "figures" / "fixture" / "patch_labels.png").is_file() and (workdir / "figures" / "fixture" / "patch_labels.pdf").is_file()
    # the profile's default pretraining run, with its held-out probes and figure
    run = "tpd-loc2-keep0.5-seed0"
    metrics = json.loads((workdir / "runs" / "fixture" / "pretrain" / run / "metrics.json").read_text())
    assert metrics["step"] > 0 and metrics["train/loss"] > 0
    assert (workdir / "runs" / "fixture" / "pretrain" / run / "checkpoints" / "epoch_000.pt").is_file()
    probes = json.loads((workdir / "results" / "fixture" / "pretrain" / f"{run}.json").read_text())
    assert probes["run"] == run and probes["checkpoints"][-1]["step"] == metrics["step"]
    assert (workdir / "figures" / "fixture" / "pretrain" / f"{run}.png").is_file()
    # ...fine-tuned for retrieval and evaluated
    finetuned = workdir / "results" / "fixture" / "finetune" / run  # the run's fine-tuned results, one file per task
    retrieval = json.loads((finetuned / "retrieval.json").read_text())
    assert retrieval["task"] == "retrieval" and 0 <= retrieval["tr_r1"] <= 100
    for task in ("vqa", "captioning", "captioning_cider", "grounding"):  # every task, with its predictions
        assert json.loads((finetuned / f"{task}.json").read_text())["task"] == task
        assert json.loads((finetuned / f"{task}_predictions.json").read_text())
    # ...captioning, then its CIDEr optimisation continuing the captioning run
    from copa.eval.captioning import spice_unavailable_reason

    captioning = json.loads((finetuned / "captioning.json").read_text())
    for key in ("bleu_4", "meteor", "rouge_l", "cider"):
        assert 0.0 <= captioning[key] and 0.0 <= captioning["baselines"]["constant_caption"][key]
    if spice_unavailable_reason() is not None:  # no CoreNLP jars here: reported as unavailable, never as 0
        assert captioning["spice"] is None and captioning["spice_unavailable"]
    captions = json.loads((finetuned / "captioning_predictions.json").read_text())
    assert len(captions) == captioning["images"] and all(set(p) == {"image_id", "caption"} for p in captions)
    cider_run = workdir / "runs" / "fixture" / "finetune" / run / "captioning_cider"
    assert json.loads((cider_run / "pretrained.json").read_text())["finetuned_run"] == f"runs/fixture/finetune/{run}/captioning"
    reward = json.loads((cider_run / "metrics.json").read_text())["train/reward"]
    assert math.isfinite(reward) and reward >= 0
    assert json.loads((finetuned / "captioning_cider.json").read_text())["images"] == captioning["images"]
    # ...and the cost of its model (FLOPs, throughput, latency, training memory)
    cost = json.loads((workdir / "results" / "fixture" / "efficiency" / f"{run}.json").read_text())
    assert cost["name"] == run and cost["flops"]["gmacs"]["total"] > 0 and cost["training_memory"]["saved_bytes"] > 0
    # every table and figure of params/grids/, and the claims check
    from copa.config import load_params
    from copa.report.grid_figures import FIGURES
    from copa.report.grids import available_grids, load_grid, trained_labels

    tables = workdir / "results" / "fixture" / "tables"
    for name in available_grids():
        grid = load_grid(name)
        frame = pd.read_csv(tables / f"{name}.csv")
        assert list(frame["row"]) == [r.label for r in (*grid.rows, *grid.anchors, *grid.reference)], name
        trained = trained_labels(grid, load_params("fixture"))
        for column in grid.columns:  # trained rows measured (SPICE aside: no jars here), the others marked
            status = dict(zip(frame["row"], frame[f"{column}_status"]))
            assert all(status[label] in ("measured", "not measured") for label in trained), (name, column, status)
        assert (tables / f"{name}.md").read_text().startswith(f"**{grid.title}.")
        assert json.loads((tables / f"{name}.json").read_text())
        assert r"\end{tabular}" in (tables / f"{name}.tex").read_text()
        if name in FIGURES:
            assert (workdir / "figures" / "fixture" / f"{name}.png").stat().st_size > 0
            assert (workdir / "figures" / "fixture" / f"{name}.pdf").stat().st_size > 0
    verdicts = json.loads((workdir / "results" / "fixture" / "claims.json").read_text())
    assert len(verdicts) >= 7 and all(v["verdict"] for v in verdicts)
    assert "| claim | paper | measured here | verdict |" in (workdir / "results" / "fixture" / "claims.md").read_text()
    # Table 10's COPA row and Table 9's default cell are one run: one pretraining per run name
    # (and Table 6's single-stream COPA-S and ViLT)
    assert sorted(p.name for p in (workdir / "runs" / "fixture" / "pretrain").iterdir()) == sorted(
        {"tpd-loc2-keep0.5-seed0", "tpd-loc2-keep1.0-seed0", "cls_attention-loc2-keep0.5-seed0", "none-loc2-keep1.0-seed0",
         "single-tpd-loc2-keep0.5-seed0", "single-none-loc2-keep1.0-seed0"})
    # Table 10's anchors, the from-scratch VQA model and the perception bracket: each trained once, in the VQA columns
    table10 = pd.read_csv(tables / "table10.csv").set_index("row")
    for anchor in load_grid("table10").anchors:
        assert table10.at[anchor.label, "vqa_status"] == "measured" and table10.at[anchor.label, "gmacs_status"] == "not measured"
        assert [p.name for p in (workdir / "runs" / "fixture" / anchor.model).iterdir()] == ["seed0"]
    bracket = json.loads((workdir / "results" / "fixture" / "perception_oracle" / "seed0.json").read_text())
    assert bracket["perception"] == "oracle" and bracket["run"].endswith("perception_oracle/seed0")
    single = json.loads((workdir / "results" / "fixture" / "finetune" / "single-tpd-loc2-keep0.5-seed0" / "vqa.json").read_text())
    assert single["inference"] == "classifier"
    assert json.loads((workdir / "results" / "fixture" / "efficiency" / "single-none-loc2-keep1.0-seed0.json").read_text())["model"]["architecture"] \
        == "single_stream"
    assert list(pd.read_csv(tables / "table6.csv")["location"]) == ["2", "-", "2", "-"]
    # ...all started from the one selection-free encoder init
    assert (workdir / "runs" / "fixture" / "encoder_init" / "seed0" / "metrics.json").is_file()
    assert not any((workdir / "runs" / "fixture" / "pretrain" / r / "encoder_init").exists() for r in ("tpd-loc2-keep0.5-seed0",))
    # Table 5: mPLUG's VQA fine-tuned at its row's resolution (the paper's 384 px: 96 at the fixture's 64;
    # 256 px is the default fine-tune); every row's cost at the paper's px (as Table 4's at 224), trained or not
    mplug = "none-loc2-keep1.0-seed0"
    assert json.loads((workdir / "results" / "fixture" / "finetune" / mplug / "vqa-96px.json").read_text())["image_size"] == 96
    for paper_px, costed in ((384, mplug), (512, run)):
        cost = json.loads((workdir / "results" / "fixture" / "efficiency" / f"{costed}-{paper_px}px.json").read_text())
        assert cost["flops"]["image_size"] == paper_px
    # Figure 4: the default run's TPD detections over VQA images
    assert (workdir / "figures" / "fixture" / "figure4.png").stat().st_size > 0 and (workdir / "figures" / "fixture" / "figure4.pdf").is_file()
    # Figure 5: the world's oracle boxes on web pairs, the default run's TPD per epoch against them
    reference = json.loads((workdir / "results" / "fixture" / "reference_boxes.json").read_text())
    assert reference["source"] == "oracle" and reference["pairs"] == 20 and reference["boxes"] > 0
    detection = json.loads((workdir / "results" / "fixture" / "patch_detection" / f"{run}.json").read_text())
    assert [c["checkpoint"] for c in detection["checkpoints"]] == [c["checkpoint"] for c in probes["checkpoints"]]
    assert list(pd.read_csv(tables / "figure5.csv")["row"])[:-1] == [f"epoch {c['epoch']}" for c in probes["checkpoints"]]
    assert (workdir / "figures" / "fixture" / "figure5.png").stat().st_size > 0 and (workdir / "figures" / "fixture" / "figure5.pdf").is_file()
    assert {v["claim"][:2] for v in verdicts} >= {"6a", "6b"}
    # every job's Snakemake benchmark, summed per rule by `copa stage-times`
    benchmarks = workdir / "logs" / "fixture" / "benchmarks"
    assert (benchmarks / "synth.tsv").is_file() and (benchmarks / "pretrain" / f"{run}.tsv").is_file()
    times = subprocess.run([sys.executable, "-m", "copa", "--profile", "fixture", "stage-times", str(benchmarks)],
                           stdout=subprocess.PIPE, text=True, check=True).stdout
    assert "| pretrain | 6 |" in times and "| finetune |" in times
    # issue 23's outcome targets, read from the records this run wrote: every one measured
    subprocess.run([sys.executable, "-m", "copa", "--profile", "fixture", "targets"], cwd=workdir, check=True, stdout=subprocess.PIPE)
    rows = json.loads((workdir / "results" / "fixture" / "targets.json").read_text())
    assert len(rows) == 11 and all(r["met"] is not None for r in rows), rows
    # the instruments of every dual-stream run the grids train (Table 10's four), each probed
    instruments = json.loads((workdir / "results" / "fixture" / "instruments.json").read_text())
    assert [r["rows"][0] for r in instruments] == ["Table 10 COPA", "Table 10 w/o PTA", "Table 10 w/o TPD", "Table 10 mPLUG"], instruments
    assert not any(r["missing"] or any(cell.startswith("not run") for cell in r.values() if isinstance(cell, str)) for r in instruments)
    report = snakemake(workdir, *FIXTURE, "--report", "report.html")
    assert report.returncode == 0, report.stdout
    html = (workdir / "report.html").read_text()
    assert all(name in html for name in ("table10", "table5", "figure3", "figure4", "figure5", "claims", "instruments"))

    again = snakemake(workdir, "--cores", "2", "-n", *FIXTURE)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout
    _fresh_clone_after_pull_retrains_nothing(workdir)

    # A rule reruns for its own params sections only: the seed picks the figure's examples and
    # names another pretraining run...
    runs = dry_runs(workdir, {  # all at once (each about 10 s of parsing): the overrides below, by name
        "seeded": "seed=5", "lr": "pretrain.lr_text=2.0e-4", "ft": "finetune.retrieval.lr_text=2.0e-4",
        "cider": "finetune.captioning.lr_text=2.0e-4", "k": "evaluate.retrieval.k_test=2", "eff": "efficiency.latency.iterations=5",
        "size": "efficiency.text_length=12", "single": "single_stream.itm_swap_probability=0.3",
        "threshold": "filter.near_duplicate.threshold=0.9", "reseeded": "synth.seed=1", "scratch": "vqa_scratch.lr=2.0e-3"})
    seeded = runs["seeded"]
    assert seeded.returncode == 0, seeded.stdout
    assert _scheduled(seeded.stdout) == {"patch_labels", "encoder_init", "pretrain", "pretrain_eval", "finetune", "evaluate", "efficiency",
                                         *REPORT_RULES, *TPD_RULES, *PROBE_REPORT_RULES, "all"}
    assert "runs/fixture/pretrain/tpd-loc2-keep0.5-seed5/metrics.json" in seeded.stdout
    # ...a training knob reruns the run and its probes only...
    lr = runs["lr"]
    assert lr.returncode == 0, lr.stdout
    assert _scheduled(lr.stdout) == {"pretrain", "pretrain_eval", "finetune", "evaluate", "perception_oracle", *REPORT_RULES, *TPD_RULES,
                                     *PROBE_REPORT_RULES, "all"}  # not the shared init
    # ...a fine-tuning knob, the fine-tune and its evaluation only; an inference setting, the evaluation only...
    ft = runs["ft"]
    assert ft.returncode == 0, ft.stdout
    assert _scheduled(ft.stdout) == {"finetune", "evaluate", "table", "claims", "all"}
    assert re.findall(r"^    output: runs/fixture/finetune/\S+/(\w+)/metrics.json", ft.stdout, flags=re.MULTILINE) == ["retrieval"], ft.stdout
    cider = runs["cider"]
    assert sorted(re.findall(r"^    output: runs/fixture/finetune/\S+/(\w+)/metrics.json", cider.stdout, flags=re.MULTILINE)) == \
        ["captioning", "captioning_cider"], cider.stdout  # the CIDEr stage continues the captioning run
    k = runs["k"]
    assert k.returncode == 0, k.stdout
    assert _scheduled(k.stdout) == {"evaluate", "table", "claims", "all"}
    eff = runs["eff"]
    assert eff.returncode == 0, eff.stdout
    assert _scheduled(eff.stdout) == {"efficiency_paired", "table", "claims", "all"}  # the timing protocol: the tables' timings, not the runs' costs
    size = runs["size"]
    assert _scheduled(size.stdout) == {"efficiency", "efficiency_paired", *REPORT_RULES, "all"}  # the protocol's input: both
    # ...the single-stream section, the single-stream runs only (Table 6)...
    single = runs["single"]
    assert single.returncode == 0, single.stdout
    # (the costs are one job: every table and figure reading a cost reruns with it)
    assert _scheduled(single.stdout) == {"pretrain", "finetune", "evaluate", "efficiency", "efficiency_paired", *REPORT_RULES, "all"}
    rerun = re.findall(r"^    output: (?:runs|results)/fixture/(?:pretrain|finetune)/(\S+?)[/.]", single.stdout, flags=re.MULTILINE)
    assert rerun and all(name.startswith("single-") for name in rerun), rerun  # the costs: one job for every run
    assert re.findall(r"^    output: results/fixture/efficiency/paired/(\w+)\.json", single.stdout, flags=re.MULTILINE) == ["table6"]
    # ...a filtering threshold reruns filtering and what reads its output, not the world...
    threshold = runs["threshold"]
    assert threshold.returncode == 0, threshold.stdout
    assert _scheduled(threshold.stdout) == {"filter_annotations", "patch_labels", "pretrain", "pretrain_eval", "finetune", "evaluate",
                                            "perception_oracle", *REPORT_RULES, *TPD_RULES, *PROBE_REPORT_RULES, "all"}
    # ...a synth parameter regenerates the world and everything after it.
    reseeded = runs["reseeded"]
    assert reseeded.returncode == 0, reseeded.stdout
    assert "rule synth:" in reseeded.stdout and "Params have changed since last execution" in reseeded.stdout
    assert _scheduled(reseeded.stdout) == {"synth", "validate_data", "filter_annotations", "patch_labels", "encoder_init", "pretrain",
                                           "pretrain_eval", "finetune", "evaluate", "vqa_scratch", "perception_oracle", *REPORT_RULES, *TPD_RULES,
                                           *PROBE_REPORT_RULES, "reference_boxes",
                                           "all"}  # costs need no data
    # The from-scratch VQA anchor's knob reruns it and the tables that show it (Table 10), not a pretraining run
    scratch = runs["scratch"]
    assert scratch.returncode == 0, scratch.stdout
    assert _scheduled(scratch.stdout) == {"vqa_scratch", "table", "claims", "all"}
    assert re.findall(r"^    output: results/fixture/tables/(\w+)\.csv", scratch.stdout, flags=re.MULTILINE) == ["table10"]


REPORT_RULES = ("table", "figure", "claims")
TPD_RULES = ("figure4", "patch_detection", "figure5")  # the default run's TPD: its detections (Figure 4), against reference boxes (Figure 5)
PROBE_REPORT_RULES = ("instruments",)  # what reads every trained run's held-out probes (pretrain_eval)


def _fresh_clone_after_pull_retrains_nothing(workdir: Path) -> None:
    """What `make pull` does in a fresh clone, emulated: the outputs arrive (as from `dvc pull`)
    with new mtimes in no particular order, without .snakemake/ metadata, logs or the synthetic
    world (not cached: regenerated); then the world is regenerated and `--touch` marks the
    rest up to date. Snakemake must then see nothing to do: no retraining."""
    clone = workdir.parent / "clone"
    shutil.copytree(workdir, clone, ignore=shutil.ignore_patterns(".snakemake", "logs", "synthetic-fixture", "report.html"))
    files = sorted(p for p in clone.rglob("*") if p.is_file())
    for i, path in enumerate(reversed(files)):  # the newest first: downstream older than upstream
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
    world = snakemake(clone, "data/synthetic-fixture", "--cores", "2", *FIXTURE)
    assert world.returncode == 0, world.stdout
    touched = snakemake(clone, "--cores", "2", "--touch", *FIXTURE)
    assert touched.returncode == 0, touched.stdout
    after = snakemake(clone, "--cores", "2", "-n", *FIXTURE)
    assert after.returncode == 0 and "Nothing to be done" in after.stdout, after.stdout


def _scheduled(dry_run_output: str) -> set[str]:
    """The rules a dry run would execute."""
    return set(re.findall(r"^(?:local)?rule (\w+):", dry_run_output, flags=re.MULTILINE))


def test_slurm_profile_submits_every_rule_with_its_resources(workdir):
    """profiles/slurm through the SLURM executor plugin, dry: the fixture DAG, and a paper GPU job
    with the resources of profiles/paper and the CUDA_VISIBLE_DEVICES it sets (its data are not
    here: a cost job)."""
    fixture = snakemake(workdir, "-n", "--profile", "profiles/slurm", *FIXTURE)
    assert fixture.returncode == 0, fixture.stdout
    assert "rule pretrain:" in fixture.stdout and "slurm_partition=CHANGE-ME" in fixture.stdout
    target = "results/paper/efficiency/tpd-loc6-keep0.5-seed0.json"
    paper = snakemake(workdir, "-n", "--profile", "profiles/slurm", target, "--workflow-profile", "profiles/paper")
    assert paper.returncode == 0, paper.stdout
    assert "gpu=1" in paper.stdout and 'export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"; copa --profile paper' in paper.stdout
    assert "mem_mb=32000" in paper.stdout and "runtime=60" in paper.stdout and "slurm_account=CHANGE-ME" in paper.stdout


def _rules_of(path: Path) -> set[str]:
    return set(re.findall(r"^ *rule (\w+):", path.read_text(), flags=re.MULTILINE))


def test_threads_and_resources_live_in_the_workflow_profiles():
    """No rule sets its own threads or resources; each workflow profile sets them for rules that
    exist, the CPU ones for the same rules, and the paper one a GPU for every job that runs copa on
    a device (the rules that pass params.gpu)."""
    rule_files = sorted((REPO / "workflow" / "rules").glob("*.smk"))
    assert not [f.name for f in rule_files if re.search(r"^\s+(threads|resources):", f.read_text(), flags=re.MULTILINE)]
    rules = set().union(*map(_rules_of, rule_files))
    gpu_rules = {rule for f in rule_files for rule, body in re.findall(r"^ *rule (\w+):\n((?: {4,}.*\n|\n)*)", f.read_text(), flags=re.MULTILINE)
                 if "gpu=GPU_SHELL" in body}
    profiles = {name: yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text()) for name in ("default", "fixture", "paper")}
    for name, profile in profiles.items():
        assert set(profile["set-threads"]) <= rules and set(profile["set-resources"]) <= rules, name
        assert {rule for rule, res in profile["set-resources"].items() if "gpu" in res} == (gpu_rules if name == "paper" else set()), name
        assert gpu_rules <= set(profile["set-threads"]) and gpu_rules <= set(profile["set-resources"]), (name, "a torch rule without its lines")
    assert set(profiles["default"]["set-threads"]) == set(profiles["fixture"]["set-threads"])
    assert profiles["default"]["set-resources"] == profiles["fixture"]["set-resources"]
    assert set(profiles["paper"]["set-threads"]) == set(profiles["default"]["set-threads"]) - {"synth"}  # no world to draw
    assert len(gpu_rules) == 11


@pytest.mark.parametrize("options, message", [
    (("--config", "profile=paper"), "profile paper: its jobs' resources come from --workflow-profile profiles/paper, which this run does not use"),
    (("--workflow-profile", "profiles/paper", "--config", "profile=demo"),
     "profile demo: its jobs' resources come from a CPU workflow profile (profiles/default, profiles/fixture), which this run does not use"),
], ids=["paper-on-cpu-resources", "demo-on-gpu-resources"])
def test_a_profile_with_the_other_scales_resources_is_refused(workdir, options, message):
    run = snakemake(workdir, "-n", "--cores", "2", *options)
    assert run.returncode == 2 and run.stdout.splitlines()[-1] == message, run.stdout


def test_a_workflow_profile_selects_its_profile_and_keeps_set_overrides(workdir):
    """profiles/fixture names the fixture profile through a config file, which `--config set=...` merges into."""
    run = snakemake(workdir, "runs/fixture/pretrain/tpd-loc2-keep0.5-seed0/metrics.json", "-n", "-p", "--cores", "2", *FIXTURE,
                    "--config", 'set=["pretrain.lr_text=2.0e-4"]')
    assert run.returncode == 0, run.stdout
    assert "copa --profile fixture --set pretrain.lr_text=2.0e-4" in run.stdout
    pretrain_job = re.search(r"^rule pretrain:\n((?:    .*\n)+)", run.stdout, flags=re.MULTILINE)[1]
    assert "threads:" not in pretrain_job  # the fixture's torch threads: 1, which Snakemake does not print
    demo = snakemake(workdir, "runs/demo/pretrain/tpd-loc3-keep0.5-seed0/metrics.json", "-n", "--cores", "2")
    assert re.search(r"^rule pretrain:\n(?:    .*\n)*    threads: 2\n", demo.stdout, flags=re.MULTILINE), demo.stdout


def test_pretrain_rule_is_parameterised_by_run(workdir):
    target = "runs/fixture/pretrain/text_attention-loc1-3-keep0.7-seed2/metrics.json"
    dry = snakemake(workdir, target, "-n", "-p", "--cores", "2", *FIXTURE)
    assert dry.returncode == 0, dry.stdout
    assert "--set model.selection.method=text_attention --set 'model.selection.location=[1, 3]'" in dry.stdout
    assert "--set model.selection.keep_ratio=0.7 --set seed=2" in dry.stdout
    single = snakemake(workdir, "runs/fixture/pretrain/single-tpd-loc2-keep0.5-seed0/metrics.json", "-n", "-p", "--cores", "2",
                       *FIXTURE)
    assert single.returncode == 0 and "copa --profile fixture --set architecture=single_stream --set model.selection.method=tpd" in single.stdout
    bad = snakemake(workdir, "runs/fixture/pretrain/magic-loc2-keep0.5-seed0/metrics.json", "-n", "--cores", "1", *FIXTURE)
    assert bad.returncode != 0 and "MissingRuleException" in bad.stdout


def test_encoder_init_reads_the_filtered_boxes_only_when_its_objective_contrasts_them(workdir):
    """pretrain.encoder_init.objective captions_and_boxes: the shared encoder init waits for the filter
    and is told how PTA's object stream is drawn; the default (captions) needs neither."""
    target = "runs/fixture/encoder_init/seed0/metrics.json"
    default = snakemake(workdir, target, "-n", "-p", "--cores", "2", *FIXTURE)
    assert default.returncode == 0, default.stdout
    assert "filter_annotations" not in _scheduled(default.stdout)
    boxes = snakemake(workdir, target, "-n", "-p", "--cores", "2", *FIXTURE, "--config",
                      'set=["pretrain.encoder_init.objective=captions_and_boxes", "pretrain.object_batch_size=4"]')
    assert boxes.returncode == 0, boxes.stdout
    assert "filter_annotations" in _scheduled(boxes.stdout)
    assert "--set pretrain.encoder_init.objective=captions_and_boxes" in boxes.stdout
    assert "--set pretrain.object_batch_size=4" in boxes.stdout


# The rules' copa sources (copa.sources via common.smk's `sources`): each rule's code inputs are the
# closure of the modules its `copa` subcommand calls into, and dvc.yaml's stages list the same files.
RULE_COMMANDS = {  # the function of the CLI package (src/copa/cli/) behind each rule's `copa` subcommand
    "synth": "cmd_synth", "validate_data": "cmd_validate_data", "filter_annotations": "cmd_filter", "patch_labels": "cmd_patch_labels",
    "encoder_init": "cmd_encoder_init", "pretrain": "cmd_pretrain", "pretrain_eval": "cmd_pretrain_eval", "finetune": "cmd_finetune",
    "evaluate": "cmd_evaluate", "efficiency": "cmd_efficiency", "efficiency_paired": "_paired_efficiency", "reference_boxes": "cmd_reference_boxes",
    "patch_detection": "cmd_patch_detection", "figure5": "cmd_figure5", "table": "cmd_table", "figure": "cmd_table",
    "figure4": "cmd_detected_patches", "claims": "cmd_claims", "instruments": "cmd_instruments", "vqa_scratch": "cmd_vqa_scratch",
    "perception_oracle": ("cmd_finetune", "cmd_evaluate"),  # one job, two subcommands
}
DVC_STAGE_RULES = {  # the rules whose jobs each DVC stage's `snakemake` target runs beyond the earlier stages'
    "data": ("synth", "validate_data"), "filter": ("filter_annotations",), "patch_labels": ("patch_labels",),
    "runs": ("encoder_init", "pretrain", "pretrain_eval", "finetune", "evaluate", "vqa_scratch", "perception_oracle", "efficiency",
             "efficiency_paired"),
    "tables": ("table",), "figures": ("figure",), "figure4": ("figure4",), "figure5": ("reference_boxes", "patch_detection", "figure5"),
    "claims": ("claims",),
    "instruments": ("instruments",),
}


def _job_sources(dry_run_output: str) -> list[tuple[str, str, set[str]]]:
    """(rule, first output, src/ inputs) of each job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            inputs = re.search(r"^    input: (.*)$", block, flags=re.MULTILINE)
            output = re.search(r"^    output: ([^,\n]*)", block, flags=re.MULTILINE)
            jobs.append((rule[1], output[1] if output else "",
                         {p for p in (inputs[1].split(", ") if inputs else []) if p.startswith("src/")}))
    return jobs


@pytest.fixture(scope="module")
def demo_jobs(tmp_path_factory) -> list[tuple[str, str, set[str]]]:
    """Every job of the demo profile's full grid (the profile dvc.yaml runs; report.cells=all, so that
    every architecture's jobs are there: the demo itself trains the default run only), from a dry
    run in a copy of the workflow."""
    run = snakemake(copy_workflow(tmp_path_factory.mktemp("demo")), "-n", "--cores", "2", "--config", 'set=["report.cells=all"]')
    assert run.returncode == 0, run.stdout
    return _job_sources(run.stdout)


# the registries whose "module:function" strings a job follows for its run's architecture only (common.smk)
REGISTRIES = ("copa.train.architectures", "copa.tasks.registry")
RUN_RULES = {"pretrain": False, "pretrain_eval": False, "patch_detection": False, "finetune": True,
             "evaluate": True}  # the rules whose jobs run one run's architecture: whether they run its heads


def _closure(*entries: str) -> set[str]:
    from copa.sources import module_sources

    return {Path(p).relative_to(REPO).as_posix() for p in module_sources(entries, REPO / "src", REGISTRIES)}


def _cli_functions() -> dict[str, list["ast.FunctionDef"]]:
    """The module-level functions of the CLI package (src/copa/cli/*.py), by name."""
    functions: dict[str, list[ast.FunctionDef]] = {}
    for module in sorted((REPO / "src" / "copa" / "cli").glob("*.py")):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                functions.setdefault(node.name, []).append(node)
    return functions


def _command_imports(function: str) -> set[str]:
    """The copa modules a function of the CLI package imports inside it, with those of the CLI helpers
    it calls (by name: a helper a command calls is defined once in the package)."""
    import ast

    functions = _cli_functions()
    modules, pending, seen = set(), [function], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        assert len(functions[name]) == 1, f"{name} is defined in several modules of the CLI package: which one a call means is unclear"
        for node in ast.walk(functions[name][0]):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("copa."):
                modules.add(node.module)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
                pending.append(node.func.id)
    return modules


def test_rule_inputs_hold_what_their_subcommand_runs(demo_jobs):
    """Each rule's code inputs hold the closure of every module its `copa` subcommand imports; a job
    of a run adds the modules its run's architecture names (copa.train.architectures; fine-tuning and
    evaluation, its heads': copa.tasks.registry.HEADS), and no other architecture's."""
    from copa.tasks.registry import head_modules
    from copa.train.architectures import architecture, architecture_of_run, code_modules

    by_rule = {}
    for rule, _, code in demo_jobs:
        by_rule.setdefault(rule, set()).update(code)
    assert set(RULE_COMMANDS) == {rule for rule, code in by_rule.items() if code}  # every rule with code inputs is named
    for rule, functions in RULE_COMMANDS.items():
        functions = (functions,) if isinstance(functions, str) else functions
        missing = _closure(*(m for f in functions for m in _command_imports(f))) - by_rule[rule]
        assert not missing, f"rule {rule} (copa.cli {', '.join(functions)}): its inputs lack {sorted(missing)}: name the module in its sources(...)"
    for rule, output, code in demo_jobs:
        if rule in RUN_RULES:
            arch = architecture_of_run(Path(output).parts[3])  # runs/<profile>/<stage>/<run>..., results/<profile>/<stage>/<run>...
            own = _closure(*code_modules(arch), *(head_modules(arch.name) if RUN_RULES[rule] else ()))
            assert own <= code, f"{rule} job {output}: its inputs lack {sorted(own - code)} ({arch.name}'s code)"
    pretrain = {output: code for rule, output, code in demo_jobs if rule == "pretrain"}
    dual = [code for output, code in pretrain.items() if "/single-" not in output]
    single = [code for output, code in pretrain.items() if "/single-" in output]
    assert dual and single
    # pretraining runs the models and the engine; a dual-stream run's triggers are its own code,
    # a single-stream run's add its architecture's own modules
    assert {"src/copa/models/vit.py", "src/copa/train/engine.py"} <= dual[0]
    assert all(code == _closure("copa.train.pretrain", *code_modules(architecture("dual_stream"))) for code in dual)
    assert all(code > dual[0] for code in single) and all("src/copa/train/single_stream_pretrain.py" not in code for code in dual)
    finetune = [code for rule, output, code in demo_jobs if rule == "finetune" and "/single-" not in output]
    assert finetune and all("src/copa/tasks/single_stream_vqa.py" not in code for code in finetune)


def test_new_module_imported_lazily_is_an_input(workdir):
    """A module added to the package and imported only inside a function of a stage's entry module
    becomes an input (a rerun trigger) of that stage's jobs, without touching the rules."""
    package = workdir / "src" / "copa"
    (package / "train" / "added_helper.py").write_text("def helper():\n    return 1\n")
    entry = package / "train" / "pretrain.py"
    entry.write_text(entry.read_text() + "\n\ndef _uses_added_helper():\n    from copa.train.added_helper import helper\n\n    return helper()\n")
    dry = snakemake(workdir, "runs/fixture/pretrain/tpd-loc2-keep0.5-seed0/metrics.json", "-n", "--cores", "2", *FIXTURE)
    assert dry.returncode == 0, dry.stdout
    inputs = {rule: code for rule, _, code in _job_sources(dry.stdout)}
    assert "src/copa/train/added_helper.py" in inputs["pretrain"] and "src/copa/train/added_helper.py" in inputs["encoder_init"]
    assert "src/copa/train/added_helper.py" not in inputs["filter_annotations"]


def _files_under(dep: str) -> set[str]:
    """A dvc.yaml dep's files (a folder: every file in it, as DVC hashes them; .dvcignore drops __pycache__)."""
    path = REPO / dep
    if not path.is_dir():
        return {dep}
    return {f.relative_to(REPO).as_posix() for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts}


def _as_deps(files: set[str]) -> list[str]:
    """`files` as dvc.yaml deps: a folder where every file in it is one of them, else the files."""
    folders = {str(Path(f).parent) for f in files}
    folders |= {str(parent) for folder in folders for parent in Path(folder).parents if parent.parts[:2] == ("src", "copa")}
    covered = sorted(d for d in folders if _files_under(d) <= files)
    top = [d for d in covered if not any(Path(d).is_relative_to(other) and d != other for other in covered)]
    return sorted(top + [f for f in files if not any(Path(f).is_relative_to(d) for d in top)])


def test_dvc_source_deps_are_the_rules_sources(demo_jobs):
    """dvc.yaml's src/ deps of each stage cover exactly the code inputs of the jobs it runs (a
    folder dep only where each of its files is one); the failure message says what to write."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {rule for rule, _, code in demo_jobs if code} == {r for rules in DVC_STAGE_RULES.values() for r in rules}
    differences = []
    for stage, rules in DVC_STAGE_RULES.items():
        listed = [d for d in (stages[stage].get("do") or stages[stage])["deps"] if d.startswith("src/")]
        derived = set().union(*(code for rule, _, code in demo_jobs if rule in rules))
        covered = set().union(*map(_files_under, listed))
        if covered != derived:
            differences.append(f"stage {stage}: {sorted(covered - derived)} are not its sources, {sorted(derived - covered)} are missing;"
                               " its src deps:\n" + "".join(f"      - {d}\n" for d in _as_deps(derived)))
    assert not differences, "dvc.yaml:\n" + "\n".join(differences)
