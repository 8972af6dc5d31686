"""The step profile (issue 21 item 5): counted FLOPs, the objectives' shares and the benchmark's CLI."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils import flop_counter

from copa.eval.flops import flop_counter_mode
from copa.eval.step_profile import profile_steps
from copa.models.objectives import objective_scope
from copa.report.step_profile import step_profile_markdown

ROOT = Path(__file__).resolve().parents[1]
BATCH, SMALL, LARGE = 16, 32, 256


class TwoObjectives(nn.Module):
    """An "itc" term with 64x the matmul work of an "itm" term; inputs need no gradient. With ``frozen_itm``
    the "itm" term has no backward at all, which tells the attribution of backward nodes apart from a swap."""

    def __init__(self, frozen_itm: bool = False):
        super().__init__()
        self.large = nn.Linear(LARGE, LARGE)
        self.small = nn.Linear(SMALL, SMALL).requires_grad_(not frozen_itm)

    def forward(self, batch):
        with objective_scope("itc"):
            itc = self.large(batch["large"]).square().mean()
        with objective_scope("itm"):
            itm = self.small(batch["small"]).square().mean()
        return {"loss": itc + itm}


def toy_batches():
    generator = torch.Generator().manual_seed(0)
    while True:
        yield {"large": torch.randn(BATCH, LARGE, generator=generator), "small": torch.randn(BATCH, SMALL, generator=generator)}


def test_the_profile_counts_the_steps_flops_and_attributes_the_backward_to_each_objective():
    model = TwoObjectives()
    steps = []
    record = profile_steps(model, torch.optim.AdamW(model.parameters()), toy_batches(), steps.append, rounds=3, warmup=1)
    # a linear whose input needs no gradient: forward x W^T and backward dW, 2 * B * in * out FLOPs each
    exact = sum(2 * 2 * BATCH * n * n for n in (LARGE, SMALL))
    assert record["gflop"]["median"] * 1e9 == pytest.approx(exact)
    assert steps == [0, 1, 2, 3, 4]  # warm-up, rounds and the profiled step, each followed by after_step
    assert record["ratio"]["median"] > 0 and record["matmul"]["gflop_per_s"]["median"] > 0
    shares = {o["scope"]: o for o in record["profile"]["objectives"]}
    assert {"itc", "itm"} <= set(shares)
    assert shares["itc"]["backward_ms"] > 0 and shares["itm"]["backward_ms"] > 0
    assert not any(op["op"].startswith("objective:") for op in record["profile"]["top_ops"])  # scopes are not operators
    assert record["profile"]["matmul_kernels"]["self_ms"] > 0
    markdown = step_profile_markdown({"settings": {"profile": "toy", "threads": torch.get_num_threads(), "commit": None,
                                                   "torch": torch.__version__, "date": "today", "batch": "16", "root": "-",
                                                   "rounds": 3, "warmup": 1},
                                      "widths": [{"width": LARGE, **record}]})
    assert "| itc |" in markdown and "| itm |" in markdown and f"| {LARGE} |" in markdown


def test_a_backward_node_is_charged_to_the_objective_whose_forward_made_it():
    # times are not compared (a stall in either scope would decide); a term without backward nodes is
    model = TwoObjectives(frozen_itm=True)
    record = profile_steps(model, torch.optim.AdamW(model.large.parameters()), toy_batches(), lambda step: None,
                           rounds=2, warmup=0)
    shares = {o["scope"]: o for o in record["profile"]["objectives"]}
    assert shares["itc"]["backward_ms"] > 0 and shares["itm"]["forward_ms"] > 0
    assert shares["itm"]["backward_ms"] == 0


def test_a_step_needs_enough_rounds_and_batches():
    model = TwoObjectives()
    with pytest.raises(ValueError, match="rounds >= 2"):
        profile_steps(model, torch.optim.AdamW(model.parameters()), toy_batches(), lambda step: None, rounds=1, warmup=0)
    with pytest.raises(StopIteration):
        profile_steps(model, torch.optim.AdamW(model.parameters()), itertools.islice(toy_batches(), 3), lambda step: None,
                      rounds=3, warmup=0)


def test_an_unknown_objective_scope_is_refused():
    with pytest.raises(ValueError, match="unknown objective scope 'itx'"):
        objective_scope("itx")


def test_the_cpu_attention_backward_is_counted():
    """torch's counter has no formula for the CPU attention kernel's backward: a training step's count
    would miss it (the forward's formula was added before)."""
    q, k, v = (torch.randn(2, 2, 8, 16, requires_grad=True) for _ in range(3))
    with flop_counter_mode() as counter:
        nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    shape = (2, 2, 8, 16)
    assert counter.get_total_flops() == (flop_counter.sdpa_flop_count(shape, shape, shape)
                                         + flop_counter.sdpa_backward_flop_count(shape, shape, shape, shape))


def _benchmark():
    spec = importlib.util.spec_from_file_location("step_profile", ROOT / "benchmarks" / "step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def threads():
    """The benchmark fixes torch's thread count: the test's own is put back after it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_benchmark_profiles_the_real_step_at_two_widths(fixture_pretraining_run, fixture_world, tmp_path, threads):
    annotations = fixture_pretraining_run.parent / "annotations"
    argv = ["--profile", "fixture", "--root", str(fixture_world), "--annotations", str(annotations), "--rounds", "2",
            "--warmup", "0", "--threads", "1", "--widths", "64", "--out", str(tmp_path)]
    assert _benchmark().main(argv) == 0
    record = json.loads((tmp_path / "step.json").read_text(encoding="utf-8"))
    assert [w["width"] for w in record["widths"]] == [32, 64]  # the fixture's own, then the wider one
    assert record["widths"][1]["gflop"]["median"] > 2 * record["widths"][0]["gflop"]["median"]
    assert {"shared", "itc", "itm", "mlm", "prefix", "pta"} <= {o["scope"] for o in record["widths"][0]["profile"]["objectives"]}
    assert (tmp_path / "step.md").read_text(encoding="utf-8") == step_profile_markdown(record)


def test_the_benchmark_names_a_missing_world_in_one_line(tmp_path, capsys, threads):
    missing = tmp_path / "no-world"
    assert _benchmark().main(["--root", str(missing), "--annotations", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"step_profile: {missing}: no data root (run `make demo`, or `snakemake --cores all filter_annotations`)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["100", "128,abc", "0"])
def test_the_benchmark_refuses_widths_that_are_not_multiples_of_a_head(text):
    with pytest.raises(SystemExit):
        _benchmark().parser().parse_args(["--widths", text])


def test_the_readme_table_is_the_committed_step_profile():
    committed = (ROOT / "results" / "demo-cpu" / "step.md").read_text(encoding="utf-8")
    assert committed == step_profile_markdown(json.loads((ROOT / "results" / "demo-cpu" / "step.json").read_text(encoding="utf-8")))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    copy = readme.split("<!-- demo-cpu step: a copy of results/demo-cpu/step.md -->\n", 1)[1].split("\n<!-- end of demo-cpu step -->", 1)[0]
    assert copy.strip() == committed.split("\n\n", 1)[1].strip()  # the whole file, its title aside
