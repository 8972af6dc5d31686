"""The reliability module (issue 22): bad inputs and faults, each with its exact outcome.

Bad inputs through the command line (item 10): every user error -- a missing, empty, malformed or
wrong-kind file, a folder where a file goes or the reverse, a run folder of the wrong kind, an
unknown name, a value out of range, an output path that cannot be written -- stops `copa` with exit
status 2 and one line on stderr naming what is wrong, never a traceback (``--debug`` shows it).
Each case runs ``copa.cli.main`` in this process, which prints what the console script prints
(test_the_console_script_prints_what_main_prints); the runs and data they corrupt are copies of one
fixture world and pretraining run, built once for the module.

Faults (the ``test_fault_`` cases): a process killed at a drawn point of the filter, of pretraining
and of a Snakemake run, then run again, ends exactly as an uninterrupted run; an output on a full
disk, in a read-only folder or under a regular file stops `copa` with exit status 2 and one line,
and leaves what the case says on disk. The kill points are drawn with ``random.Random(22)`` (the
same point on every run), among the points each test's docstring names. The fine-tuning kill at a
fixed step between two checkpoints is
tests/test_finetune_common.py::test_killed_finetuning_resumes_to_the_same_weights.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import HANG_GUARD_S, PARAMS_DIR, assert_states_equal, final_state, logged
from copa.cli import main
from copa.cli.common import is_user_error, one_line
from copa.config import load_params
from copa.data.synth.ownership import SNAKEMAKE_MARKER, files_under, staging_folder, world_files
from copa.train.engine import train
from engine_toy import ToyTask, engine_config
from test_workflow import FIXTURE, copy_workflow, snakemake

F = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR)]


def unwritable_folder(tmp: Path) -> Path | None:
    """A folder this process cannot create files in: a chmod 555 one, or for root (whom the mode
    does not stop) /sys; None where neither refuses."""
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / "copa-probe").mkdir()
        except OSError:
            return candidate
        (candidate / "copa-probe").rmdir()
    return None


@pytest.fixture(scope="module")
def where(fixture_world: Path, fixture_pretraining_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The placeholders of the cases' arguments: the fixture world and pretraining run, and under
    ``bad`` the broken copies and odd paths the cases give."""
    bad = tmp_path_factory.mktemp("bad_inputs")
    (bad / "afile").write_text("not a folder\n")
    (bad / "emptydir").mkdir()
    # parameters: a base.yaml that is not YAML
    shutil.copytree(PARAMS_DIR, bad / "params_badyaml")
    (bad / "params_badyaml" / "base.yaml").write_text("model: [unclosed\n")
    # data: a world without Visual Genome, one whose VG attributes are not JSON, one whose oracle boxes are not JSON
    for name in ("w_novg", "w_badvg", "w_badoracle"):
        shutil.copytree(fixture_world, bad / name)
    shutil.rmtree(bad / "w_novg" / "vg")
    (bad / "w_badvg" / "vg" / "attributes.json").write_text("{oops")
    (bad / "w_badoracle" / "reference_boxes" / "oracle.jsonl").write_text("{oops\n")
    # filtered annotations with a line that is not JSON / lacks its 'elems'
    annotations = fixture_pretraining_run.parent / "annotations"
    for name, line in (("ann_notjson", "{broken"), ("ann_wrong", '{"image": "x.jpg"}')):
        shutil.copytree(annotations, bad / name)
        with open(bad / name / "coco_objects.jsonl", "a") as f:
            f.write(line + "\n")
    (bad / "ref_notjson.jsonl").write_text("{oops\n")
    # run folders: resolved params that are not JSON / have no 'params'; a VQA fine-tuning run (its pretrained.json)
    for name, text in (("run_badjson", "{oops"), ("run_noparams", '{"a": 1}')):
        (bad / name).mkdir()
        (bad / name / "resolved_params.json").write_text(text)
    shutil.copytree(fixture_pretraining_run, bad / "finetuned", ignore=shutil.ignore_patterns("encoder_init"))
    (bad / "finetuned" / "pretrained.json").write_text(json.dumps({"task": "vqa", "checkpoint": str(fixture_pretraining_run / "checkpoints" / "last.pt")}))
    # results: Figure 5's inputs not JSON / without 'checkpoints'; every file table9 reads not JSON
    for name, text in (("res_notjson", "{oops"), ("res_wrong", '{"a": 1}')):
        (bad / name / "pretrain").mkdir(parents=True)
        (bad / name / "pretrain" / "r.json").write_text(text)
    from copa.report.grids import load_grid
    from copa.report.tables import grid_inputs

    params = load_params("fixture", params_dir=PARAMS_DIR)
    for path in grid_inputs(load_grid("table9", PARAMS_DIR), params, bad / "res_table", params.report.seeds):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{oops")
    # tables for the claims check: a CSV without its 'row' column, one with a cell that is no number
    (bad / "tables_norow").mkdir()
    (bad / "tables_norow" / "table9.csv").write_text("a,b\n1,2\n")
    (bad / "tables_badvalue").mkdir()
    (bad / "tables_badvalue" / "table10.csv").write_text("row,vqa\nCOPA,abc\n")
    (bad / "bench").mkdir()
    (bad / "bench" / "x.tsv").write_text("not a benchmark\n")
    ro = unwritable_folder(bad)
    return {"world": str(fixture_world), "run": str(fixture_pretraining_run), "ann": str(annotations), "bad": str(bad),
            "ro": str(ro) if ro else ""}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """`copa argv`'s exit status and stderr, run in this process."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    return status, capsys.readouterr().err


def subcommand(argv: list[str]) -> str:
    """The subcommand of ``argv``: its first word past the global options."""
    words = iter(argv)
    for word in words:
        if word in ("--profile", "--set", "--params-dir"):
            next(words)
        elif word != "--debug":
            return word
    raise ValueError(f"no subcommand in {argv}")


def copa_command() -> list[str]:
    """The console script installed beside this Python, else ``python -m copa`` (the same ``main``)."""
    script = Path(sys.executable).parent / "copa"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "copa"]


# (id, the arguments after `copa`, what the one line names); {placeholders} from ``where``. The
# comment says what `copa` did at 653847d, where that was a defect.
CASES = [
    # parameters and options
    ("params-dir-is-a-file", [*F, "--params-dir", "{bad}/afile", "params"], ["{bad}/afile"]),  # traceback
    ("base-yaml-not-yaml", [*F, "--params-dir", "{bad}/params_badyaml", "params"], ["{bad}/params_badyaml/base.yaml", "not valid YAML"]),  # 7 lines
    ("unknown-profile", ["--profile", "nosuch", "--params-dir", str(PARAMS_DIR), "params"], ["'nosuch'"]),
    ("set-unknown-key", [*F, "--set", "model.nosuch=1", "params"], ["'model.nosuch'"]),
    ("set-wrong-type", [*F, "--set", "model.vision_dim=abc", "params"], ["'model.vision_dim'", "'abc'"]),
    ("set-out-of-range", [*F, "--set", "pretrain.batch_size=-1", "params"], ["'pretrain.batch_size'", ">= 1"]),  # accepted
    ("set-without-value", [*F, "--set", "pretrain.batch_size", "params"], ["'pretrain.batch_size'", "KEY=VALUE"]),
    ("unknown-task", [*F, "finetune", "--task", "nosuch", "--pretrained", "{run}", "--out", "{bad}/o"], ["argument --task", "'nosuch'"]),  # 4 lines
    ("workers-zero", [*F, "filter", "--root", "{world}", "--workers", "0"], ["argument --workers", "0 is not >= 1"]),  # accepted
    ("ratio-above-one", [*F, "detected-patches", "--run", "{run}", "--root", "{world}", "--figure", "{bad}/f", "--ratios", "1.5"],
     ["argument --ratios", "1.5 is not in (0, 1]"]),  # accepted, a 1.5 ratio drawn
    ("questions-zero", [*F, "detected-patches", "--run", "{run}", "--root", "{world}", "--figure", "{bad}/f", "--questions", "0"],
     ["argument --questions"]),  # "no questions in the VQA split"
    ("batch-size-zero", [*F, "evaluate", "--task", "vqa", "--run", "{run}", "--batch-size", "0"], ["argument --batch-size", "0 is not >= 1"]),
    ("grid-unknown", [*F, "efficiency", "--grid", "nosuch"], ["'nosuch'", "grids/nosuch.yaml"]),
    ("grid-without-figure", [*F, "figure", "table9", "--results", "{bad}/emptydir"], ["'table9'", "has no figure"]),
    # data roots and dataset files
    ("validate-root-missing", [*F, "validate-data", "{bad}/nosuch"], ["{bad}/nosuch"]),
    ("validate-root-empty", [*F, "validate-data", "{bad}/emptydir"], ["{bad}/emptydir", "none of the sources"]),  # "valid", exit 0
    ("validate-json-is-a-folder", [*F, "validate-data", "{world}", "--json", "{bad}/emptydir"], ["{bad}/emptydir", "Is a directory"]),  # traceback
    ("validate-json-unwritable", [*F, "validate-data", "{world}", "--json", "{ro}/summary.json"], ["{ro}"]),  # traceback
    ("filter-root-is-a-file", [*F, "filter", "--root", "{bad}/afile", "--out", "{bad}/f1", "--report", "{bad}/f1.json", "--quiet"],
     ["{bad}/afile"]),  # traceback
    ("filter-vg-missing", [*F, "filter", "--root", "{bad}/w_novg", "--out", "{bad}/f2", "--report", "{bad}/f2.json", "--quiet", "--workers", "1"],
     ["{bad}/w_novg/vg/image_data.json", "file not found"]),
    ("filter-vg-not-json", [*F, "filter", "--root", "{bad}/w_badvg", "--out", "{bad}/f3", "--report", "{bad}/f3.json", "--quiet", "--workers", "1"],
     ["{bad}/w_badvg/vg/attributes.json", "not valid JSON"]),
    ("filter-out-unwritable", [*F, "filter", "--root", "{world}", "--out", "{ro}/annotations", "--report", "{bad}/f4.json", "--quiet", "--workers", "1"],
     ["{ro}/annotations"]),  # traceback
    ("filter-report-is-a-folder", [*F, "filter", "--root", "{world}", "--out", "{bad}/f5", "--report", "{bad}/emptydir", "--quiet", "--workers", "1"],
     ["{bad}/emptydir", "Is a directory"]),  # traceback
    ("labels-line-not-json", [*F, "patch-labels", "--annotations", "{bad}/ann_notjson", "--out", "{bad}/l1/store", "--root", "{world}", "--workers", "1"],
     ["{bad}/ann_notjson/coco_objects.jsonl", "record line", "not valid JSON"]),
    ("labels-line-without-elems", [*F, "patch-labels", "--annotations", "{bad}/ann_wrong", "--out", "{bad}/l2/store", "--root", "{world}", "--workers", "1"],
     ["{bad}/ann_wrong/coco_objects.jsonl", "field 'elems'"]),
    ("labels-out-unwritable", [*F, "patch-labels", "--annotations", "{ann}", "--out", "{ro}/labels/store", "--root", "{world}", "--workers", "1"],
     ["{ro}/labels"]),  # traceback
    ("reference-out-is-a-folder", [*F, "reference-boxes", "--root", "{world}", "--out", "{bad}/emptydir", "--summary", "{bad}/r.json", "--quiet"],
     ["{bad}/emptydir", "Is a directory"]),  # traceback
    ("reference-oracle-not-json", [*F, "reference-boxes", "--root", "{bad}/w_badoracle", "--out", "{bad}/r.jsonl", "--summary", "{bad}/r.json", "--quiet"],
     ["{bad}/w_badoracle/reference_boxes/oracle.jsonl", "not valid JSON"]),
    ("pretrain-annotations-not-json", [*F, "pretrain", "--root", "{world}", "--annotations", "{bad}/ann_notjson", "--out", "{bad}/p1"],
     ["{bad}/ann_notjson/coco_objects.jsonl", "record line"]),
    ("pretrain-steps-zero", [*F, "--set", "pretrain.steps_per_epoch=0", "pretrain", "--root", "{world}", "--annotations", "{ann}", "--out", "{bad}/p2"],
     ["pretrain.steps_per_epoch"]),  # traceback
    ("pretrain-out-is-a-file", [*F, "--set", "pretrain.steps_per_epoch=1", "pretrain", "--root", "{world}", "--annotations", "{ann}", "--out", "{bad}/afile"],
     ["{bad}/afile"]),  # traceback
    # run folders
    ("resolved-params-not-json", [*F, "pretrain-eval", "--run", "{bad}/run_badjson", "--root", "{world}", "--quiet"],
     ["{bad}/run_badjson/resolved_params.json", "not valid JSON"]),  # traceback
    ("resolved-params-without-params", [*F, "efficiency", "--run", "{bad}/run_noparams", "--no-timing", "--json", "{bad}/e.json"],
     ["{bad}/run_noparams/resolved_params.json", "'params'"]),  # traceback
    ("start-resolved-params-not-json", [*F, "finetune", "--task", "vqa", "--pretrained", "{bad}/run_badjson", "--out", "{bad}/t1", "--root", "{world}"],
     ["{bad}/run_badjson/resolved_params.json"]),  # traceback
    ("start-from-a-finetuning-run", [*F, "finetune", "--task", "vqa", "--pretrained", "{bad}/finetuned", "--out", "{bad}/t2", "--root", "{world}"],
     ["{bad}/finetuned", "pretrained.json", "starts from a pretraining run"]),  # accepted: fine-tuned again
    ("cider-from-a-pretraining-run", [*F, "finetune", "--task", "captioning_cider", "--pretrained", "{run}", "--out", "{bad}/t3", "--root", "{world}"],
     ["{run}", "continues the captioning run"]),
    ("finetune-out-is-a-file", [*F, "finetune", "--task", "vqa", "--pretrained", "{run}", "--out", "{bad}/afile", "--root", "{world}"],
     ["{bad}/afile"]),  # traceback
    ("finetune-set-unread", [*F, "--set", "model.dropout=0.0", "finetune", "--task", "vqa", "--pretrained", "{run}", "--out", "{bad}/t4",
                             "--root", "{world}"], ["model.dropout=0.0", "not read", "{run}"]),  # fine-tuned, the override ignored
    ("evaluate-set-unread", [*F, "--set", "finetune.vqa.epochs=2", "evaluate", "--task", "vqa", "--run", "{bad}/finetuned", "--root", "{world}",
                             "--json", "{bad}/v.json", "--quiet"], ["finetune.vqa.epochs=2", "not read", "{bad}/finetuned"]),  # evaluated, ignored
    ("evaluate-a-pretraining-run", [*F, "evaluate", "--task", "vqa", "--run", "{run}", "--root", "{world}", "--json", "{bad}/v.json", "--quiet"],
     ["{run}/pretrained.json", "fine-tuning run"]),
    ("evaluate-as-another-task", [*F, "evaluate", "--task", "retrieval", "--run", "{bad}/finetuned", "--root", "{world}", "--json", "{bad}/v.json", "--quiet"],
     ["{bad}/finetuned is a vqa run", "pretrained.json"]),  # accepted: a VQA model scored as retrieval
    ("figure4-set-unread", [*F, "--set", "model.selection.keep_ratio=0.3", "detected-patches", "--run", "{bad}/finetuned", "--root", "{world}",
                            "--figure", "{bad}/d"], ["model.selection.keep_ratio=0.3", "not read", "{bad}/finetuned"]),  # drawn, ignored
    ("figure4-of-a-pretraining-run", [*F, "detected-patches", "--run", "{run}", "--root", "{world}", "--figure", "{bad}/d"],
     ["{run}/pretrained.json", "fine-tuning run"]),  # accepted: drawn from the pretraining checkpoint
    ("reference-not-json", [*F, "patch-detection", "--run", "{run}", "--reference", "{bad}/ref_notjson.jsonl", "--root", "{world}", "--quiet"],
     ["{bad}/ref_notjson.jsonl", "record line 1"]),
    ("reference-is-a-folder", [*F, "patch-detection", "--run", "{run}", "--reference", "{bad}/emptydir", "--root", "{world}", "--quiet"],
     ["{bad}/emptydir", "Is a directory"]),  # traceback
    # results, tables, the README
    ("figure5-result-not-json", [*F, "figure5", "--run", "r", "--results", "{bad}/res_notjson", "--out", "{bad}/f5", "--figure", "{bad}/f5"],
     ["{bad}/res_notjson/pretrain/r.json", "not valid JSON"]),  # the message named no file
    ("figure5-result-without-checkpoints", [*F, "figure5", "--run", "r", "--results", "{bad}/res_wrong", "--out", "{bad}/f5", "--figure", "{bad}/f5"],
     ["{bad}/res_wrong/pretrain/r.json", "'checkpoints'"]),  # traceback
    ("table-result-not-json", [*F, "table", "table9", "--results", "{bad}/res_table", "--out", "{bad}/t9"], ["{bad}/res_table/", "not valid JSON"]),
    ("claims-tables-missing", [*F, "claims", "--tables", "{bad}/nosuch", "--out", "{bad}/c.md"], ["{bad}/nosuch"]),  # accepted
    ("claims-table-without-row", [*F, "claims", "--tables", "{bad}/tables_norow", "--out", "{bad}/c.md"],
     ["{bad}/tables_norow/table9.csv", "'row'"]),  # traceback
    ("claims-cell-not-a-number", [*F, "claims", "--tables", "{bad}/tables_badvalue", "--out", "{bad}/c.md"],
     ["{bad}/tables_badvalue/table10.csv", "record 'COPA'", "field 'vqa'", "'abc'"]),  # traceback
    ("stage-times-not-a-benchmark", [*F, "stage-times", "{bad}/bench"], ["{bad}/bench/x.tsv"]),
    ("readme-missing", [*F, "readme-results", "--readme", "{bad}/nosuch.md"], ["{bad}/nosuch.md"]),
    ("readme-is-a-folder", [*F, "readme-results", "--readme", "{bad}/emptydir"], ["{bad}/emptydir", "Is a directory"]),  # traceback
]


@pytest.mark.parametrize("argv, names", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_a_user_error_is_one_line_and_exit_2(argv, names, where, capsys) -> None:
    if any("{ro}" in a for a in argv) and not where["ro"]:
        pytest.skip("no folder here refuses this process's writes")
    argv, names = [a.format(**where) for a in argv], [n.format(**where) for n in names]
    status, err = run_cli(argv, capsys)
    assert status == 2, err
    assert err.startswith(f"copa {subcommand(argv)}: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert all(name in err for name in names), err


def test_the_console_script_prints_what_main_prints(where, capsys) -> None:
    """`copa` in its own process: the same one line and exit status as ``main`` in this one (an
    OSError on a path, a usage error), and with --debug the traceback instead."""
    cases = [[*F, "readme-results", "--readme", f"{where['bad']}/emptydir"], [*F, "filter", "--workers", "0"]]
    for argv in cases:
        done = subprocess.run([*copa_command(), *argv], capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert (done.returncode, done.stderr) == run_cli(argv, capsys)
    debug = subprocess.run([*copa_command(), "--debug", *cases[0]], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and debug.stderr.rstrip().endswith(f"Is a directory: '{where['bad']}/emptydir'")


def test_only_user_errors_become_one_line() -> None:
    """An OSError on a named path is the user's; one without a path, or any other error, is an
    internal one and keeps its traceback."""
    from copa.cli.common import is_user_error  # (not at 653847d: imported here, so that each test fails alone there)

    assert is_user_error(PermissionError(13, "Permission denied", "/x")) and is_user_error(IsADirectoryError(21, "Is a directory", "/x"))
    assert not is_user_error(OSError("no path")) and not is_user_error(KeyError("params")) and not is_user_error(ValueError("x"))


# ================================================================================ faults

ROOT_IGNORES_MODES = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder: the case needs another user")

# `copa *argv` in a process that SIGKILLs itself on the N-th call of a function, before that call runs.
_KILLER = """
import importlib, os, signal, sys
from copa.cli import main
module, _, name = sys.argv[1].partition(":")
owner = importlib.import_module(module)
*path, attribute = name.split(".")
for part in path:
    owner = getattr(owner, part)
original, calls = getattr(owner, attribute), [0]
def counted(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner, attribute, counted)
sys.exit(main(sys.argv[3:]))
"""


def copa_killed_at_call(target: str, call: int, argv: list[str]) -> subprocess.CompletedProcess:
    """`copa argv` in a subprocess, SIGKILLed when ``target`` ("module:Class.function") is called
    the ``call``-th time (1-based), before that call runs."""
    return subprocess.run([sys.executable, "-c", _KILLER, target, str(call), *argv], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative POSIX path, hidden ones included) -> its bytes."""
    return {path: (folder / path).read_bytes() for path in files_under(folder)}


# ------------------------------------------------------------------------ kills, then a rerun
def test_fault_killed_filter_reruns_to_the_same_files(fixture_world, tmp_path, monkeypatch, capsys) -> None:
    """`copa filter` SIGKILLed before it filters its N-th image (N drawn among every image it
    filters, over all sources), then run again: every output file and the report are the bytes of
    an uninterrupted run's, and no part file of the killed run is left."""
    from copa.data import filtering

    def argv(folder: Path) -> list[str]:
        return [*F, "filter", "--root", str(fixture_world), "--out", str(folder / "annotations"),
                "--report", str(folder / "report.json"), "--quiet", "--workers", "1"]

    # the uninterrupted run, noting the files of its out folder as each image is reached
    whole, original, listed_at_call = tmp_path / "whole", filtering.filter_group, []

    def noted(*args, **kwargs):
        listed_at_call.append(sorted(os.listdir(whole / "annotations")))
        return original(*args, **kwargs)

    monkeypatch.setattr(filtering, "filter_group", noted)
    assert main(argv(whole)) == 0
    monkeypatch.undo()
    capsys.readouterr()
    expected = tree_bytes(whole)
    assert sorted(expected) == ["annotations/coco_objects.jsonl", "annotations/dropped.tsv", "annotations/vg_objects.jsonl",
                                "annotations/vg_regions.jsonl", "report.json", "report.md"]

    call = random.Random(22).randint(1, len(listed_at_call))
    folder = tmp_path / "killed"
    killed = copa_killed_at_call("copa.data.filtering:filter_group", call, argv(folder))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    # killed mid-way: the uninterrupted run's files at that image (a source's part of dropped.tsv among
    # them), no report
    left = sorted(os.listdir(folder / "annotations"))
    assert left == listed_at_call[call - 1] and any(name.startswith(".dropped.tsv.") for name in left), (call, left)
    assert sorted(os.listdir(folder)) == ["annotations"]

    assert main(argv(folder)) == 0
    assert tree_bytes(folder) == expected


def test_fault_killed_pretraining_resumes_to_the_uninterrupted_run(fixture_world, fixture_pretraining_run, tmp_path) -> None:
    """`copa pretrain` SIGKILLed inside Algorithm 1's step K (after the update, before the momentum
    update and the step's checkpoint), K drawn among the steps after the first checkpoint (steps 2
    and 3 of 3: one before it would rerun from scratch); the run checkpoints every step. Run again,
    it resumes from step K - 1 and ends with bit-for-bit the weights, optimizer state, logs and
    metrics of the uninterrupted run (conftest's fixture_pretraining_run: same steps, checkpoints at
    its end only). Both start from that run's contrastive encoder init (--encoder-init, read only)."""
    steps = 3
    out = tmp_path / "run"
    argv = [*F, "--set", f"pretrain.steps_per_epoch={steps}", "--set", "pretrain.checkpoint_every=1", "pretrain",
            "--root", str(fixture_world), "--annotations", str(fixture_pretraining_run.parent / "annotations"),
            "--out", str(out), "--encoder-init", str(fixture_pretraining_run / "encoder_init")]
    kill_step = random.Random(22).randint(2, steps)
    killed = copa_killed_at_call("copa.train.pretrain:PretrainTask.after_step", kill_step, argv)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (kill_step - 1, 0, kill_step - 1)
    assert not (out / "metrics.json").exists()

    assert main(argv) == 0
    assert_states_equal(final_state(out), final_state(fixture_pretraining_run))
    resumed, reference = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (out, fixture_pretraining_run))
    assert resumed["optimizer"]["state"].keys() == reference["optimizer"]["state"].keys()
    for key in reference["optimizer"]["state"]:
        assert_states_equal(resumed["optimizer"]["state"][key], reference["optimizer"]["state"][key])
    assert resumed["scheduler"] == reference["scheduler"] and resumed["step"] == reference["step"] == steps
    for name in ("train/loss", "train/itc", "train/pta"):
        assert logged(out, name) == logged(fixture_pretraining_run, name)
    metrics = [{k: v for k, v in json.loads((r / "metrics.json").read_text()).items() if not k.startswith("perf/")}
               for r in (out, fixture_pretraining_run)]
    assert metrics[0] == metrics[1]
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_000.pt", "last.pt"]  # no partial save left


def test_fault_killed_snakemake_synth_leaves_no_partial_world(fixture_world, tmp_path) -> None:
    """A Snakemake run of the fixture profile SIGKILLed, with its jobs (the process group: a machine
    that goes down), once the synth job has written N files of its world (N drawn among the first
    quarter: the kill must land well before the job ends). The world is drawn beside the data root, so the
    root is absent; the next run meets Snakemake's lock (`--unlock` removes it), then makes the world:
    valid, the bytes of the fixture world, holding exactly the files its manifest lists, no staging
    folder left."""
    workdir = copy_workflow(tmp_path)
    target = ["results/fixture/data_validation.json", "--cores", "2", *FIXTURE]
    root = workdir / "data" / "synthetic-fixture"
    stage = staging_folder(root)
    written = random.Random(22).randint(1, len(files_under(fixture_world)) // 4)
    run = subprocess.Popen([sys.executable, "-m", "snakemake", *target], cwd=workdir, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while run.poll() is None and time.monotonic() < deadline and not (stage.is_dir() and len(files_under(stage)) >= written):
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):  # none left: Snakemake ended before the kill
            os.killpg(run.pid, signal.SIGKILL)
        output = run.communicate(timeout=HANG_GUARD_S)[0]
    assert run.returncode == -signal.SIGKILL, output[-4000:]
    assert stage.is_dir() and not root.exists() and not (workdir / "results").exists(), output[-4000:]

    locked = snakemake(workdir, *target)
    assert locked.returncode == 1 and "Directory cannot be locked" in locked.stdout and "--unlock" in locked.stdout, locked.stdout[-4000:]
    assert snakemake(workdir, "--unlock", *FIXTURE).returncode == 0
    rerun = snakemake(workdir, *target)
    assert rerun.returncode == 0, rerun.stdout[-4000:]

    assert json.loads((workdir / "results" / "fixture" / "data_validation.json").read_text())["ok"] is True
    assert set(files_under(root)) == world_files(root) and not stage.exists()
    world = tree_bytes(root)
    assert world.pop(SNAKEMAKE_MARKER) == b"" and world == tree_bytes(fixture_world)


# -------------------------------------------------------------------------- full disks
def full_disk_file(folder: Path, name: str) -> Path:
    """``folder/name``, a link to /dev/full: every write into it fails with ENOSPC, as on a full disk.
    (A link, not /dev/full itself: a writer that replaces its output by a rename replaces the link.)"""
    path = folder / name
    path.symlink_to("/dev/full")
    return path


@pytest.mark.parametrize("command", ["validate-data", "filter"])
def test_fault_output_on_a_full_disk_is_one_line(command, fixture_world, tmp_path, capsys) -> None:
    out = full_disk_file(tmp_path, "out.json")
    argv = {"validate-data": [*F, "validate-data", str(fixture_world), "--json", str(out)],
            "filter": [*F, "filter", "--root", str(fixture_world), "--out", str(tmp_path / "annotations"),
                       "--report", str(out), "--quiet", "--workers", "1"]}[command]
    status, err = run_cli(argv, capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"copa {command}: error: No space left on device while writing an output"), err
    assert sorted(os.listdir(tmp_path)) == sorted(["out.json"] + (["annotations"] if command == "filter" else []))


def fill_disk_at_save(monkeypatch: pytest.MonkeyPatch, save: int) -> list[int]:
    """Make the ``save``-th torch.save (1-based) write half its bytes, then fail as a full disk does
    (OSError ENOSPC, no file name); the saves before it succeed. Returns the count of saves so far."""
    real_save, saves = torch.save, [0]

    def save_until_full(obj, f, *args, **kwargs):
        saves[0] += 1
        if saves[0] != save:
            return real_save(obj, f, *args, **kwargs)
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_until_full)
    return saves


TOY_PARAMS = {"toy": {"dropout": 0.1, "n": 40}}  # engine_toy's defaults, as tests/test_engine.py passes them


def test_fault_full_disk_at_a_checkpoint_keeps_the_last_one_resumable(tmp_path, monkeypatch) -> None:
    """The engine's checkpoint save at step 6 fails with ENOSPC (the toy run of tests/test_engine.py:
    checkpoints at steps 3, 5 (last.pt and epoch_000.pt), 6, 9, 10): the run stops with that error;
    last.pt is still step 5's and loads, no temporary file is left; with space again the run resumes
    and ends as an uninterrupted one."""
    reference = tmp_path / "reference"
    train(ToyTask(), engine_config(), reference, TOY_PARAMS)
    run = tmp_path / "run"
    saves = fill_disk_at_save(monkeypatch, save=4)  # 1: step 3, 2-3: step 5, 4: step 6
    with pytest.raises(OSError) as caught:
        train(ToyTask(), engine_config(), run, TOY_PARAMS)
    assert caught.value.errno == errno.ENOSPC and saves[0] == 4
    monkeypatch.undo()
    assert sorted(os.listdir(run / "checkpoints")) == ["epoch_000.pt", "last.pt"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (5, 1, 0)
    assert not (run / "metrics.json").exists()

    train(ToyTask(), engine_config(), run, TOY_PARAMS)
    assert_states_equal(final_state(run), final_state(reference))
    assert logged(run) == logged(reference)


def test_fault_full_disk_at_a_checkpoint_is_a_user_error_naming_it(tmp_path, monkeypatch) -> None:
    """What `copa pretrain` / `copa finetune` print for the failed save of the case above: one line
    naming the checkpoint (``copa.cli.common.one_line``), as a user error (exit status 2)."""
    fill_disk_at_save(monkeypatch, save=1)
    with pytest.raises(OSError) as caught:
        train(ToyTask(), engine_config(), tmp_path, TOY_PARAMS)
    assert is_user_error(caught.value)
    assert one_line(caught.value) == f"{tmp_path / 'checkpoints' / 'last.pt'}: No space left on device"


# ---------------------------------------------------- read-only folders, a file for a folder
def output_case(case: str, world: Path, annotations: Path, blocked: Path, scratch: Path) -> list[str]:
    """The `copa` arguments of ``case``, its output in ``blocked`` (a folder nothing can be created
    in, or a regular file); ``scratch`` takes the outputs that are not the case's."""
    return {
        "synth-root": [*F, "synth", "--root", str(blocked / "world"), "--quiet", "--workers", "1"],
        "filter-report": [*F, "filter", "--root", str(world), "--out", str(scratch / "annotations"), "--report",
                          str(blocked / "report.json"), "--quiet", "--workers", "1"],
        "pretrain-out": [*F, "--set", "pretrain.steps_per_epoch=1", "pretrain", "--root", str(world), "--annotations",
                         str(annotations), "--out", str(blocked / "run")],
    }[case]


OUTPUT_CASES = {"synth-root": "synth", "filter-report": "filter", "pretrain-out": "pretrain"}  # case -> its subcommand


@ROOT_IGNORES_MODES
@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_fault_output_in_a_read_only_folder_is_one_line(case, fixture_world, fixture_pretraining_run, tmp_path, capsys) -> None:
    """An output inside a chmod 555 folder: exit 2, one line naming a path inside the folder and the
    refusal; the folder stays empty (the synth's staging folder, beside its root, included), and
    nothing else is written but the filter's annotations (it writes its report last)."""
    blocked = tmp_path / "read-only"
    blocked.mkdir()
    blocked.chmod(0o555)
    try:
        argv = output_case(case, fixture_world, fixture_pretraining_run.parent / "annotations", blocked, tmp_path)
        status, err = run_cli(argv, capsys)
        assert status == 2 and err.count("\n") == 1, err
        assert err.startswith(f"copa {OUTPUT_CASES[case]}: error: {blocked}") and err.endswith(": Permission denied\n"), err
        assert os.listdir(blocked) == []
        assert sorted(os.listdir(tmp_path)) == sorted(["read-only"] + (["annotations"] if case == "filter-report" else []))
    finally:
        blocked.chmod(0o755)


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_fault_output_under_a_regular_file_is_one_line(case, fixture_world, fixture_pretraining_run, tmp_path, capsys) -> None:
    """An output whose parent folder is a regular file (any user, root too): exit 2, one line naming
    that file or a path under it; the file is left as it was, and nothing else is written but the
    filter's annotations (it writes its report last)."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder\n")
    argv = output_case(case, fixture_world, fixture_pretraining_run.parent / "annotations", blocked, tmp_path)
    status, err = run_cli(argv, capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"copa {OUTPUT_CASES[case]}: error: {blocked}"), err
    assert blocked.read_text() == "not a folder\n"
    assert sorted(os.listdir(tmp_path)) == sorted(["a-file"] + (["annotations"] if case == "filter-report" else []))
