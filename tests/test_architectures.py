"""The architecture registry (copa.train.architectures): an architecture registered in one place
runs through the public commands; unknown names and missing heads are refused in one line; the
registry stays cheap to import (the rules and grids read it at parse time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from copa.cli import main
from copa.config import ParamsError
from copa.report.grids import run_name
from copa.train.architectures import ARCHITECTURES, architecture, architecture_of_run, register
from toy_architecture import TOY

PARAMS_DIR = Path(__file__).parents[1] / "params"
BASE = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR)]
TOY_SET = ["--set", "architecture=toy", "--set", "model.selection.method=none", "--set", "model.selection.keep_ratio=1.0"]


@pytest.fixture
def toy():
    register(TOY)  # the one place the toy architecture is added
    yield TOY
    del ARCHITECTURES[TOY.name]


def test_a_registered_architecture_is_costed_and_pretrained(toy, fixture_world, fixture_pretraining_run, tmp_path, capsys):
    out = tmp_path / "toy.json"
    assert main(BASE + TOY_SET + ["efficiency", "--from-params", "--device", "cpu", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["name"] == "toy-none-loc2-keep1.0-seed0" == run_name("none", [2], 1.0, 0, "toy")
    assert record["model"]["architecture"] == "toy" and record["model"]["hidden"] == 16
    assert record["flops"]["gflops"]["mlp"] == record["flops"]["gflops"]["total"] > 0  # the toy's own forward, its own parts
    assert "2-layer MLP" in record["conventions"]["flops"] and record["throughput"]["pairs_per_s"] > 0
    memory = record["training_memory"]
    assert memory["step"].startswith("ToyPretraining forward + backward (ITM)") and memory["saved_bytes"] > 0
    assert "by_itm_guidance" not in memory  # the dual-stream record's encodings are the entry's flag, not the toy's

    run = tmp_path / "toy-none"
    annotations = fixture_pretraining_run.parent / "annotations"
    one_step = ["--set", "pretrain.steps_per_epoch=1", "--set", "pretrain.epochs=1"]
    assert main(BASE + TOY_SET + one_step + ["pretrain", "--root", str(fixture_world), "--annotations", str(annotations),
                                             "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 1 and metrics["train/itm"] > 0
    assert json.loads((run / "resolved_params.json").read_text())["params"]["architecture"] == "toy"
    assert not (run / "encoder_init").exists()  # its own initialise ran, not the dual-stream encoder init

    # (c) no head: refused naming the run and its architecture; the probes read only instrumented architectures
    capsys.readouterr()
    finetune = ["finetune", "--task", "vqa", "--pretrained", str(run), "--root", str(fixture_world), "--out", str(tmp_path / "vqa")]
    assert main(BASE + finetune) == 2
    assert capsys.readouterr().err.strip() == f"copa finetune: error: {run} is a toy run: it has no vqa head (it has: none)"
    assert main(BASE + ["pretrain-eval", "--run", str(run), "--root", str(fixture_world)]) == 2
    assert "is a toy run: `copa pretrain-eval` reads runs of the architectures dual_stream only" in capsys.readouterr().err


def test_an_unknown_architecture_exits_2_with_one_line(capsys):
    assert main(BASE + ["--set", "architecture=triple_stream", "params"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("copa params: error: ")
    assert "key 'architecture' = 'triple_stream': must be one of dual_stream, single_stream" in err
    with pytest.raises(ParamsError, match="triple_stream"):
        architecture("triple_stream")


def test_a_selection_the_architecture_does_not_take_is_refused_before_work(capsys):
    assert main(BASE + ["--set", "architecture=single_stream", "--set", "model.selection.method=text_attention", "params"]) == 2
    assert "'model.selection.method' = text_attention: must be one of none, tpd, cls_attention in a single_stream model" \
        in capsys.readouterr().err
    assert main(BASE + ["--set", "architecture=single_stream", "--set", "model.selection.method=cls_attention",
                        "--set", "model.selection.location=[1, 2]", "params"]) == 2
    assert "must be at most 1 layer(s) in a single_stream model" in capsys.readouterr().err


def test_runs_are_told_apart_by_their_prefix(toy):
    assert architecture_of_run("single-tpd-loc2-keep0.5-seed0").name == "single_stream"
    assert architecture_of_run("toy-none-loc2-keep1.0-seed0").name == "toy"
    assert architecture_of_run("tpd-loc2-keep0.5-seed0").name == "dual_stream"
    with pytest.raises(ValueError, match="already"):
        register(TOY)


def test_the_registry_imports_no_torch():
    code = "import copa.train.architectures, sys; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
