"""The paired timing protocol (copa.eval.paired_timing) and a table's models timed together
(copa.eval.efficiency.measure_paired_speed, `copa efficiency --grid`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from copa.cli import main
from copa.config import ParamsError, load_params
from copa.eval.efficiency import measure_paired_speed
from copa.eval.paired import paired_speedup
from copa.eval.paired_timing import interleaved_rounds, spread


def test_rounds_rotate_the_order_after_a_warm_up_of_each():
    calls = []
    seconds = interleaved_rounds({name: (lambda name=name: calls.append(name)) for name in "ABC"}, torch.device("cpu"), warmup=2,
                                 rounds=4, repeats=2)
    assert calls[:6] == list("AABBCC")  # the warm-up, each model's in turn
    rounds = ["".join(calls[6 + 6 * r: 12 + 6 * r:2]) for r in range(4)]
    assert rounds == ["ABC", "BCA", "CAB", "ABC"]  # no model always follows the same other one
    assert {name: len(s) for name, s in seconds.items()} == {"A": 4, "B": 4, "C": 4}


def test_a_load_shared_by_a_round_cancels_in_the_paired_speedup():
    load = 1 + 3 * np.random.default_rng(0).random(20)  # a machine whose speed varies 4-fold between rounds
    up = paired_speedup(0.6 * load, 0.3 * load)
    assert (up["estimate"], up["low"], up["high"], up["rounds"]) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0), 20)
    noisy = paired_speedup(0.6 * load * (1 + 0.05 * np.random.default_rng(1).standard_normal(20)), 0.3 * load)
    assert noisy["low"] < 2.0 < noisy["high"] and noisy["high"] - noisy["low"] < 0.2
    assert paired_speedup(0.6 * load, 0.3 * load, seed=3) == paired_speedup(0.6 * load, 0.3 * load, seed=3)


@pytest.mark.parametrize("baseline, variant, message", [
    ([1.0, 1.0], [1.0], "same rounds"), ([1.0], [1.0], "at least 2 rounds"), ([1.0, 0.0], [1.0, 1.0], "positive"),
])
def test_paired_speedup_refuses_what_it_cannot_pair(baseline, variant, message):
    with pytest.raises(ValueError, match=message):
        paired_speedup(baseline, variant)


def test_spread_is_the_median_and_quartiles():
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == {"median": 3.0, "q1": 2.0, "q3": 4.0}


def test_two_models_timed_together_get_paired_rounds_and_an_interval_around_their_estimate():
    """Both models get every round, and each its speedup over the baseline with an interval around
    the estimate. Whether the interval of two identical models holds 1 is a property of the machine
    (allocation, caches), not of the code: the protocol's statistics are tested on synthetic rounds
    above, and the real timings' values live in `copa efficiency`, never compared in an assertion here."""
    # at 64 px: the protocol, not the cost of 224 px forwards (10 per round and part)
    params = load_params("fixture", ["efficiency.timing.rounds=15", "efficiency.throughput.iterations=10", "efficiency.latency.iterations=10",
                                     "efficiency.image_size=64"])
    record = measure_paired_speed({"A": params, "A again": params}, params.model.vocab_size, "cpu", "A")
    for part in ("throughput", "latency"):
        rounds = [record["models"][name][part]["seconds_per_round"] for name in ("A", "A again")]
        assert [len(r) for r in rounds] == [15, 15] and min(map(min, rounds)) > 0
        up = record["models"]["A again"]["speedup"][part]
        assert up == paired_speedup(*rounds, seed=params.efficiency.timing.seed)  # each model's own rounds, paired
        assert up["low"] <= up["estimate"] <= up["high"] and up["rounds"] == 15, (part, up)
    assert record["models"]["A"]["speedup"]["throughput"] == {"estimate": 1.0, "low": 1.0, "high": 1.0, "rounds": 15, "level": 0.05}
    assert record["models"]["A again"]["throughput"]["rounds"] == 15 and record["baseline"] == "A"


def test_rounds_below_the_protocols_floor_are_refused():
    with pytest.raises(ParamsError, match=r"key 'efficiency.timing.rounds' = 14: must be >= 15"):
        load_params("fixture", ["efficiency.timing.rounds=14"])


def test_copa_efficiency_grid_times_the_grids_rows_together(tmp_path, capsys):
    out = tmp_path / "table10.json"
    assert main(["--profile", "fixture", "efficiency", "--grid", "table10", "--json", str(out), "--device", "cpu"]) == 0
    record = json.loads(out.read_text())
    assert list(record["models"]) == ["COPA", "w/o PTA", "w/o TPD", "mPLUG"] and record["baseline"] == "mPLUG"
    copa = record["models"]["COPA"]
    assert copa["model"]["selection"] == "tpd" and copa["model"]["keep_ratio"] == 0.5
    assert record["models"]["mPLUG"]["model"]["selection"] == "none"
    rounds = record["settings"]["timing"]["rounds"]
    assert all(len(m[part]["seconds_per_round"]) == rounds for m in record["models"].values() for part in ("throughput", "latency"))
    iqr = copa["throughput"]["pairs_per_s_iqr"]
    assert iqr[0] <= copa["throughput"]["pairs_per_s"] <= iqr[1]
    assert "speedup over mPLUG" in capsys.readouterr().out


def test_copa_efficiency_grid_without_a_baseline_is_refused(tmp_path, capsys):
    assert main(["--profile", "fixture", "efficiency", "--grid", "figure3", "--json", str(tmp_path / "t.json")]) == 2
    assert "grid figure3: no baseline row" in capsys.readouterr().err
