"""The paper-scale cost table (benchmarks/paper_costs.py, copa.report.paper_costs,
copa.eval.module_costs) and the GPU script's CPU-testable parts (benchmarks/gpu.sh,
benchmarks/ddp_step.py), at a tiny size: the fixture profile's models at 32 px, 2 timing rounds."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from copa.config import load_params
from copa.eval.cost_inputs import pair_inputs, protocol_model
from copa.eval.flops import forward_flops
from copa.eval.module_costs import MODULES, module_flops
from copa.report.paper_costs import (BASELINE, CALIBRATION, VARIANTS, CostSettings, cost_table_markdown, measure_cost_table,
                                     write_cost_table)

from conftest import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(profile="fixture", image_size=32, text_length=8, batch=2, rounds=2, warmup=1, answer_tokens=2)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def record() -> dict:
    torch.set_num_threads(1)
    return measure_cost_table(CostSettings(**TINY, calibration=True, memory=True), {"commit": "0" * 40})


def _variant(record: dict, label: str) -> dict:
    return next(v for v in record["variants"] if v["label"] == label)


def test_keep_one_and_without_tpd_cost_exactly_the_baseline(record: dict) -> None:
    mplug, without, copa, copa10 = (_variant(record, v.label) for v in VARIANTS)
    assert without["selection"] == {"method": "tpd", "location": [2], "keep_ratio": 1.0}
    assert mplug["gmacs"]["detector"] == without["gmacs"]["detector"] == 0  # the detector's MLP does not run
    assert without["gmacs"] == mplug["gmacs"]  # every module, the decoder included
    assert record["checks"] == {"w/o TPD": {"detector_gmacs": 0.0, "equals_baseline_gmacs": True}}
    assert copa["gmacs"]["detector"] > 0 and copa10["gmacs"]["detector"] > 0
    assert copa10["gmacs"]["total"] < copa["gmacs"]["total"] < mplug["gmacs"]["total"]
    assert copa10["gmacs"]["decoder"] < copa["gmacs"]["decoder"] < mplug["gmacs"]["decoder"]  # fewer fused states to attend to
    # 2 x 2 patches at 32 px: all 4 + [CLS]; keep 2 + [CLS] + the fused token; keep 0 (rounded): [CLS] + fused
    assert [v["image_tokens_into_fusion"] for v in record["variants"]] == [5, 5, 4, 2]


def test_module_gmacs_add_up_to_the_package_counter() -> None:
    for variant in VARIANTS:
        params = load_params("fixture", list(variant.overrides))
        protocol = dataclasses.replace(params.efficiency, image_size=32, text_length=8)
        model, forward, _ = protocol_model(params, params.model.vocab_size, protocol)
        inputs = pair_inputs(1, 32, 8, params.model.vocab_size, torch.device("cpu"))
        parts, whole = module_flops(model.eval(), *inputs, forward=forward), forward_flops(model, *inputs, forward=forward)
        assert parts["total"] == whole["total"] == sum(parts[m] for m in MODULES)
        assert parts["vit"] + parts["detector"] == whole["vision"] and parts["text"] == whole["text"]


def test_a_selector_that_splits_its_block_is_refused() -> None:
    params = load_params("fixture", ["model.selection.method=cls_attention"])
    protocol = dataclasses.replace(params.efficiency, image_size=32, text_length=8)
    model, forward, _ = protocol_model(params, params.model.vocab_size, protocol)
    with pytest.raises(ValueError, match="cls_attention"):
        module_flops(model, *pair_inputs(1, 32, 8, params.model.vocab_size, torch.device("cpu")), forward=forward)


def test_paired_timings_and_speedup_per_flop_ratio(record: dict) -> None:
    assert set(record["timings"]) == {"latency", "throughput", "with_decoder"}
    labels = [v.label for v in VARIANTS]
    assert list(record["timings"]["throughput"]["per_variant"]) == [*labels, CALIBRATION]
    assert record["settings"]["batch"] == record["timings"]["throughput"]["pairs_per_call"] == 2
    for kind, timing in record["timings"].items():
        total = "total_with_decoder" if kind == "with_decoder" else "total"
        for label in labels:
            entry = timing["per_variant"][label]
            assert len(entry["rounds_s"]) == 2 and entry["seconds"]["q1"] <= entry["seconds"]["median"] <= entry["seconds"]["q3"]
            if label == BASELINE:
                assert "speedup" not in entry
                continue
            ratio = _variant(record, BASELINE)["gmacs"][total] / _variant(record, label)["gmacs"][total]
            assert entry["flop_ratio"] == pytest.approx(ratio)
            assert entry["speedup_per_flop_ratio"]["estimate"] == pytest.approx(entry["speedup"]["estimate"] / ratio)
            assert entry["speedup"]["low"] <= entry["speedup"]["estimate"] <= entry["speedup"]["high"]
    assert record["calibration"]["gmacs"] > 0
    assert set(record["training_memory"]) == set(labels) and all(m["saved_mib"] > 0 for m in record["training_memory"].values())


def test_paper_values_are_a_labelled_reference(record: dict) -> None:
    papers = {v["label"]: v["paper"] for v in record["variants"]}
    assert papers["mPLUG"]["gmacs"] == 36.63 and "Table 4" in papers["mPLUG"]["source"]
    assert papers["COPA"]["gmacs"] == 19.84 and "Table 4" in papers["COPA"]["source"]
    assert papers["COPA 10%"]["gmacs"] == 16.51 and "Table 9" in papers["COPA 10%"]["source"]  # Table 4 has no such row
    markdown = cost_table_markdown(record)
    assert "paper FLOPs(G) (reference)" in markdown and "36.63 (Table 4: efficiency, row 'mPLUG')" in markdown
    assert "fewer than the protocol's 15" in markdown  # 2 rounds are flagged


def test_markdown_is_made_from_the_json(record: dict, tmp_path: Path) -> None:
    json_path, md_path = write_cost_table(record, tmp_path / "paper-cpu")
    stored = json.loads(json_path.read_text())
    assert md_path.read_text() == cost_table_markdown(stored) == cost_table_markdown(record)
    assert "| w/o TPD | tpd at [2], keep 1 | 5 |" in md_path.read_text()
    assert "w/o TPD: detector 0 GMACs, equal to mPLUG's total" in md_path.read_text()


def test_arguments() -> None:
    script = _script("paper_costs")
    args = script.parser().parse_args(["--batch", "auto", "--set", "seed=1", "--set", "model.text_layers=1", "--amp", "bf16"])
    settings = script.settings_of(args)
    assert settings.batch is None and settings.overrides == ("seed=1", "model.text_layers=1") and settings.amp == "bf16"
    assert script.settings_of(script.parser().parse_args([])) == CostSettings()  # the defaults: paper, 224 px, 40 tokens, batch 8
    with pytest.raises(SystemExit):
        script.parser().parse_args(["--batch", "0"])
    assert script.main(["--rounds", "1"]) == 2  # refused before anything is built


def test_ddp_step_under_torchrun_with_gloo(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "benchmarks" / "ddp_step.py"), "--profile", "fixture", "--device", "cpu", "--image-size", "32",
                           "--text-length", "8", "--pairs", "2", "--objects", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=HANG_GUARD_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    step = json.loads(out.read_text())
    assert (step["backend"], step["world_size"], step["device"]) == ("gloo", 2, "cpu")
    assert step["parameters_identical_on_ranks"] and torch.isfinite(torch.tensor(step["loss"]))


def test_gpu_script_parses_and_prints_its_commands(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    out = tmp_path / "gpu"
    dry = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, env={**os.environ, "OUT": str(out)})
    assert dry.returncode == 0, dry.stderr
    ddp, costs = dry.stdout.strip().splitlines()
    assert "torch.distributed.run" in ddp and "benchmarks/ddp_step.py --device cuda --amp bf16" in ddp
    for option in ("--device cuda", "--amp bf16", "--batch auto", "--calibration", "--memory", f"--ddp-step {out}/ddp_step.json"):
        assert option in costs
    assert not out.exists()  # a dry run runs nothing
    assert subprocess.run(["bash", str(script), "--bogus"], capture_output=True).returncode == 2


def test_the_readme_table_is_the_committed_result() -> None:
    """The README's paper-scale table is a copy of results/paper-cpu/costs.md, which is the
    Markdown of the committed costs.json."""
    root = Path(__file__).resolve().parents[1]
    committed = (root / "results" / "paper-cpu" / "costs.md").read_text(encoding="utf-8")
    assert committed == cost_table_markdown(json.loads((root / "results" / "paper-cpu" / "costs.json").read_text(encoding="utf-8")))
    readme = (root / "README.md").read_text(encoding="utf-8")
    copy = readme.split("<!-- paper-cpu costs: a copy of results/paper-cpu/costs.md -->\n", 1)[1].split("\n<!-- end of paper-cpu costs -->", 1)[0]
    assert copy.strip() == committed.split("\n\n", 1)[1].strip()  # the whole file, its title aside
