"""Issue 19 (defect 7): the claims check's verdict rule on paired intervals, the paired bootstrap
(copa.eval.paired), per-question VQA scores in the result files, and the rule in claims.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from copa.config import load_params
from copa.report.claims import FAILS, HOLDS, UNMEASURABLE, Tables, check_claims, claims_markdown, write_claims
from copa.report.grids import load_grid, row_result

REPO = Path(__file__).parents[1]


# ---------------------------------------------------------------- the rule
def _difference(estimate: float, se: float):
    from copa.eval.paired import PairedDifference

    return PairedDifference.from_se(estimate, se)


@pytest.mark.parametrize(("estimate", "se", "minimal", "paper", "expected"), [
    (1.0, 0.2, 0.25, 0.72, HOLDS),  # [0.61, 1.39]: excludes zero, above m
    (1.0, 0.2, 0.25, None, HOLDS),
    (0.2, 0.05, 0.25, None, UNMEASURABLE),  # excludes zero but below the minimal effect
    (0.2, 0.05, 0.25, 0.72, FAILS),  # ... and excludes the paper's effect
    (0.4, 0.1, 0.25, 0.72, HOLDS),  # an effect shown in the paper's direction, smaller than the paper's: holds first
    (1.31, 1.03, 0.25, 0.72, UNMEASURABLE),  # the demo's claim 1: [-0.70, 3.32]
    (0.1, 0.1, 0.25, 0.72, FAILS),  # [-0.10, 0.30] excludes +0.72
    (0.1, 0.1, 0.25, None, UNMEASURABLE),  # ... direction only: contains zero
    (-0.5, 0.1, 0.25, None, FAILS),  # excludes zero in the opposite direction
    (-0.005, 0.0035, 0.01, None, UNMEASURABLE),  # issue 19's 6b: a margin of -0.005 +- 0.0035 (SE) is no margin
])
def test_judge(estimate, se, minimal, paper, expected):
    from copa.report.claims import judge

    assert judge(_difference(estimate, se), minimal, paper) == expected


def test_judge_issue_margin_as_half_width_and_detectable_difference():
    from copa.eval.paired import PairedDifference
    from copa.report.claims import judge

    # -0.005 +- 0.0035 read as the interval's half-width: below zero throughout
    assert judge(PairedDifference(-0.005, -0.0085, -0.0015, 0.0018, 0.005), 0.01) == FAILS
    unit = _difference(0.0, 1.0)
    assert unit.high == pytest.approx(1.96, abs=0.005) and unit.detectable == pytest.approx(2.80, abs=0.01)  # 5% two-sided, 80% power


def test_cost_verdicts():
    from copa.report.claims import combined, exact_verdict, timing_verdict

    assert exact_verdict(0.02) == HOLDS and exact_verdict(0.005) == FAILS and exact_verdict(-0.1) == FAILS
    assert timing_verdict({"estimate": 1.3, "low": 1.02, "high": 1.5}) == HOLDS  # a paired speedup's interval above 1
    assert timing_verdict({"estimate": 1.3, "low": 0.98, "high": 1.5}) == UNMEASURABLE
    assert timing_verdict({"estimate": 0.8, "low": 0.7, "high": 0.95}) == FAILS
    assert combined([HOLDS, UNMEASURABLE]) == UNMEASURABLE and combined([HOLDS, FAILS]) == FAILS and combined([HOLDS, HOLDS]) == HOLDS


# ---------------------------------------------------------------- the paired bootstrap
def _correlated(n: int = 2000, effect: float = 0.02, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two systems' scores on the same examples: a shared difficulty and a little noise each."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    return difficulty + effect + 0.05 * rng.standard_normal(n), difficulty + 0.05 * rng.standard_normal(n)


def test_paired_bootstrap_estimate_and_determinism():
    from copa.eval.paired import paired_bootstrap

    a, b = _correlated()
    d = paired_bootstrap(a, b, seed=3)
    assert d.estimate == pytest.approx(a.mean() - b.mean(), abs=1e-12) and d.examples == len(a)
    assert d.low < d.estimate < d.high and d.detectable > d.high - d.estimate
    assert paired_bootstrap(a, b, seed=3) == d and paired_bootstrap(a, b, seed=4) != d
    assert paired_bootstrap(a, b, seed=3).scaled(100).estimate == pytest.approx(100 * d.estimate)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(a, b[:-1])


def test_paired_interval_is_narrower_than_unpaired_on_correlated_examples():
    from copa.eval.paired import paired_bootstrap

    a, b = _correlated(effect=0.01)
    paired = paired_bootstrap(a, b, seed=0)
    rng = np.random.default_rng(0)  # unpaired: each system's examples drawn on their own
    draws = [a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean() for _ in range(1000)]
    unpaired_se = np.std(draws, ddof=1)
    assert paired.se < unpaired_se / 5  # the shared difficulty (sd 0.29) cancels; the noise (sd 0.07) stays
    assert paired.low > 0 and a.mean() - b.mean() - 1.96 * unpaired_se < 0  # only the paired interval resolves the effect


# ---------------------------------------------------------------- claim 6: against chance
def _figure5(folder: Path, first: tuple[float, float], last: tuple[float, float], se: float, chance: float = 0.5) -> None:
    rows = []
    for n, (acc, rec) in enumerate((first, last)):
        row = {"row": f"epoch {n + 1}", "epoch": n + 1}
        for m, v, v0 in (("accuracy", acc, first[0]), ("recall", rec, first[1])):
            row.update({f"ood_kept_{m}": v, f"ood_chance_{m}": chance, f"ood_kept_{m}_change": v - v0, f"ood_kept_{m}_change_se": se,
                        f"ood_kept_{m}_over_chance": v - chance, f"ood_kept_{m}_over_chance_se": se})
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "figure5.csv", index=False)


def test_a_rise_from_below_chance_to_chance_does_not_hold(tmp_path):
    """Issue 19: 0.45 -> 0.50 with chance 0.50 is a significant rise, to chance: not 'holds'."""
    _figure5(tmp_path, (0.45, 0.45), (0.5, 0.5), se=0.0035)
    claims = {v.claim[:2]: v for v in check_claims(Tables(tmp_path))}
    assert claims["6a"].verdict == UNMEASURABLE and claims["6b"].verdict == UNMEASURABLE
    _figure5(tmp_path, (0.40, 0.40), (0.45, 0.45), se=0.0035)  # a rise that ends below chance
    claims = {v.claim[:2]: v for v in check_claims(Tables(tmp_path))}
    assert claims["6a"].verdict == FAILS and claims["6b"].verdict == FAILS
    _figure5(tmp_path, (0.45, 0.45), (0.6, 0.6), se=0.0035)  # and one that ends above it
    claims = {v.claim[:2]: v for v in check_claims(Tables(tmp_path))}
    assert claims["6a"].verdict == HOLDS and claims["6b"].verdict == HOLDS


def test_a_below_minimal_margin_over_chance_does_not_hold(tmp_path):
    """A significant margin under the minimal effect (0.01) is not 'holds'."""
    _figure5(tmp_path, (0.45, 0.45), (0.505, 0.505), se=0.001)
    claims = {v.claim[:2]: v for v in check_claims(Tables(tmp_path))}
    assert claims["6b"].verdict == UNMEASURABLE and claims["6a"].verdict == UNMEASURABLE


# ---------------------------------------------------------------- paired VQA claims from per-question scores
QUESTIONS = 2400


def _vqa_results(tmp_path: Path, better: list[float], worse: list[float]) -> tuple[Path, object]:
    """Table 10's COPA and w/o PTA rows with their VQA result files (per-question scores) in the demo profile."""
    params = load_params("demo")
    results = tmp_path / "results" / "demo"
    grid = load_grid("table10")
    lines = []
    for label, scores in (("COPA", better), ("w/o PTA", worse)):
        path = row_result(grid.row(label), "vqa", params, results, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"overall": 100 * float(np.mean(scores)), "questions": len(scores),
                  "per_question": {str(9000 + i): s for i, s in enumerate(scores)}}
        path.write_text(json.dumps(record))
        lines.append({"row": label, "vqa": record["overall"], "vqa_std": None, "vqa_seeds": 1, "vqa_examples": len(scores),
                      "vqa_paper": grid.row(label).paper["vqa"]})
    (results / "tables").mkdir(parents=True)
    pd.DataFrame(lines).to_csv(results / "tables" / "table10.csv", index=False)
    return results, params


def test_vqa_claim_is_paired_over_questions(tmp_path):
    """+2 points on 48 of 2,400 questions, the rest answered alike: within two unpaired (binomial)
    standard errors (2.9 points), far outside the paired interval."""
    rng = np.random.default_rng(0)
    worse = [float(s) for s in rng.integers(0, 2, QUESTIONS)]
    better = [1.0 if i < 48 else s for i, s in enumerate(worse)]
    for i in range(48):
        worse[i] = 0.0
    results, params = _vqa_results(tmp_path, better, worse)
    unpaired = {v.claim[:2]: v for v in check_claims(Tables(results / "tables"))}["1."]
    assert unpaired.verdict == UNMEASURABLE and "unpaired" in unpaired.measured
    out = write_claims(results / "tables", "demo", tmp_path / "claims.md", params)
    claim = json.loads(out[1].read_text())[0]
    assert claim["verdict"] == HOLDS and "paired over 2,400 questions" in claim["measured"]
    part = claim["parts"][0]
    assert part["paired"] and part["estimate"] == pytest.approx(2.0) and part["low"] > 1.0
    assert part["minimal"] == 0.25 and part["paper"] == pytest.approx(77.84 - 77.12)


def test_per_question_scores_must_match_the_result(tmp_path):
    results, params = _vqa_results(tmp_path, [1.0, 0.0] * 50, [0.0, 1.0] * 50)
    path = row_result(load_grid("table10").row("COPA"), "vqa", params, results, 0)
    record = json.loads(path.read_text())
    record["overall"] = 75.0
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\") + ".*per_question"):
        check_claims(Tables(results / "tables", params))


def test_vqa_record_keeps_per_question_scores():
    from copa.data.downstream import VQAExample
    from copa.tasks.vqa import vqa_record

    examples = [VQAExample(i, Path(f"{i}.jpg"), "q", ("yes",) * 10 if i % 2 else ("no",) * 10, "yes/no", "is the" if i < 4 else "is there a")
                for i in range(1, 5)]
    record, _, _ = vqa_record(lambda qs: {q.question_id: "yes" for q in qs}, examples, examples, "val2014", 128, "generate", True)
    assert record["per_question"] == {"1": 1.0, "2": 0.0, "3": 1.0, "4": 0.0}
    assert record["overall"] == pytest.approx(100 * np.mean(list(record["per_question"].values())))
    # per question type, for the model and its swapped-image control (an answer that ignores the image: the same)
    assert record["per_question_type"] == record["controls"]["swapped_image"]["per_question_type"] == {"is the": pytest.approx(200 / 3),
                                                                                                        "is there a": 0.0}


# ---------------------------------------------------------------- the rule in the file
def test_claims_file_states_the_rule(tmp_path):
    text = claims_markdown(check_claims(Tables(tmp_path)), "demo")
    header = text.split("| claim |")[0]
    for phrase in ("**holds**: lo > 0", "minimal effect m", "**does not hold**: the interval excludes the paper's effect: hi < p",
                   "hi < 0", "**not measurable at this scale**", "MDD = 2.80 SE", "paired bootstrap", "the paired speedup of the rows timed together",
                   "above chance"):
        assert phrase in header, phrase
