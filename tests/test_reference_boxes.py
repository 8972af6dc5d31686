"""COPA Figure 5's stages: reference boxes (Grounding DINO on a tiny random model, or the synthetic
world's oracle), their patch labels, the TPD's detection metrics per checkpoint, the figure and
the claims it feeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from copa.cli import main
from copa.config import load_params
from copa.data.formats.records import Box
from copa.data.formats.reference_boxes import ORACLE_SOURCE, DetectedBox, ReferencePair, read_reference_boxes
from copa.data.formats.web_pairs import read_web_pairs
from copa.data.grounding_dino import prompt
from copa.data.layout import DataLayout
from copa.data.patch_labels import rasterise, resize_boxes
from copa.data.reference_boxes import reference_patch_labels
from copa.eval.patch_detection import bootstrap, chance, pair_counts, statistics
from copa.report.claims import FAILS, HOLDS, UNMEASURABLE, Tables, check_claims
from copa.report.figure5 import PAPER_ROW, write_figure5

from conftest import PARAMS_DIR

FIXTURE = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR)]
GROUNDING_DINO = ["--set", "reference_boxes.detector=grounding_dino", "--set", "reference_boxes.model=random-tiny"]


# ------------------------------------------------------------------ Grounding DINO, end to end
@pytest.fixture(scope="module")
def detected(fixture_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``copa reference-boxes`` on an untrained tiny Grounding DINO (box threshold 0: every query
    that lands in its image becomes a box), 6 of the fixture's web pairs in batches of 4."""
    out = tmp_path_factory.mktemp("reference") / "boxes.jsonl"
    summary = out.with_suffix(".json")
    args = [*FIXTURE, *GROUNDING_DINO, "--set", "reference_boxes.pairs=6", "--set", "reference_boxes.batch_size=4",
            "--set", "reference_boxes.box_threshold=0.0", "reference-boxes", "--root", str(fixture_world), "--out", str(out),
            "--summary", str(summary), "--device", "cpu", "--quiet"]
    assert main(args) == 0
    return out, json.loads(summary.read_text())


def test_grounding_dino_writes_the_documented_format(detected: tuple[Path, dict], fixture_world: Path) -> None:
    out, summary = detected
    pairs = read_reference_boxes(out, fixture_world)  # the format's reader: every field typed, every image present
    web = {f"cc3m/train/{p.line}": p for p in read_web_pairs(DataLayout(fixture_world).cc3m_tsv("train"))}
    assert len(pairs) == summary["pairs"] == 6 and summary["source"] == "grounding-dino:random-tiny"
    assert sum(len(p.boxes) for p in pairs) == summary["boxes"] > 0
    assert len({p.pair_id for p in pairs}) == 6
    for pair in pairs:
        assert pair.source == "grounding-dino:random-tiny"
        assert pair.caption == web[pair.pair_id].caption and (fixture_world / pair.image) == web[pair.pair_id].path
        assert len(pair.boxes) <= 20  # the tiny model's queries
        for b in pair.boxes:
            x, y, w, h = b.box
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= pair.width + 1e-6 and y + h <= pair.height + 1e-6
            assert 0.0 <= b.score <= 1.0 and "[SEP]" not in b.phrase
        assert [b.score for b in pair.boxes] == sorted((b.score for b in pair.boxes), reverse=True)
    labels = [reference_patch_labels(p, 64, 16) for p in pairs]  # the fixture's pretraining grid: 4 x 4
    assert all(lab.shape == (16,) and lab.any() == bool(p.boxes) for lab, p in zip(labels, pairs))


def test_detector_stage_is_repeatable(detected: tuple[Path, dict], fixture_world: Path, tmp_path: Path) -> None:
    out, _ = detected
    again = tmp_path / "again.jsonl"
    args = [*FIXTURE, *GROUNDING_DINO, "--set", "reference_boxes.pairs=6", "--set", "reference_boxes.batch_size=4",
            "--set", "reference_boxes.box_threshold=0.0", "reference-boxes", "--root", str(fixture_world), "--out", str(again),
            "--summary", str(tmp_path / "s.json"), "--quiet"]
    assert main(args) == 0
    assert again.read_text() == out.read_text()


def test_unreachable_model_is_a_clear_error(fixture_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [*FIXTURE, "--set", "reference_boxes.detector=grounding_dino", "--set", f"reference_boxes.model={tmp_path / 'nothing'}",
            "reference-boxes", "--root", str(fixture_world), "--out", str(tmp_path / "b.jsonl"), "--summary", str(tmp_path / "s.json")]
    assert main(args) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_prompt_convention() -> None:
    # a batch of texts without full stops would be merged by transformers into one prompt
    assert prompt("  Two Red Circles ") == "two red circles."
    assert prompt("a dog.") == "a dog."


# ------------------------------------------------------------------------- the oracle's sample
def test_oracle_sample(fixture_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def run(pairs: int) -> int:
        return main([*FIXTURE, "--set", f"reference_boxes.pairs={pairs}", "reference-boxes", "--root", str(fixture_world),
                     "--out", str(tmp_path / f"{pairs}.jsonl"), "--summary", str(tmp_path / f"{pairs}.json")])

    world = read_reference_boxes(DataLayout(fixture_world).oracle_reference_boxes)
    assert run(len(world)) == 0 and run(8) == 0
    assert read_reference_boxes(tmp_path / f"{len(world)}.jsonl") == world  # all of them, in file order
    some = read_reference_boxes(tmp_path / "8.jsonl")
    ids = [p.pair_id for p in world]
    assert len(some) == 8 and all(p.source == ORACLE_SOURCE for p in some)
    assert sorted(ids.index(p.pair_id) for p in some) == [ids.index(p.pair_id) for p in some]  # file order, a subset
    assert run(len(world) + 1) == 2
    assert "synth.oracle_pairs" in capsys.readouterr().err


# ------------------------------------------------------------------------- boxes -> patch labels
def _pair(width: int, height: int, *boxes: tuple[float, float, float, float]) -> ReferencePair:
    return ReferencePair("p", "i.jpg", "a caption", width, height, ORACLE_SOURCE, tuple(DetectedBox(Box(*b), 0.9, "x") for b in boxes))


def test_box_to_patch_labels_by_hand() -> None:
    # a 64 x 32 image resized to 32 x 32, patches of 16: x halves, y doubles... (2 x 2 grid)
    assert reference_patch_labels(_pair(64, 32), 32, 16).tolist() == [False] * 4  # no box: nothing
    assert reference_patch_labels(_pair(64, 32, (0, 0, 10, 10)), 32, 16).tolist() == [True, False, False, False]
    # ending exactly on the patch boundary (x 0..32 -> 0..16) does not reach the next patch
    assert reference_patch_labels(_pair(64, 32, (0, 0, 32, 8)), 32, 16).tolist() == [True, False, False, False]
    # one pixel further does; the union of two boxes
    assert reference_patch_labels(_pair(64, 32, (0, 0, 33, 8), (40, 20, 4, 4)), 32, 16).tolist() == [True, True, False, True]


def test_patch_labels_follow_the_pta_rule() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        w, h = (int(v) for v in rng.integers(40, 200, size=2))
        boxes = [(float(rng.uniform(0, w - 5)), float(rng.uniform(0, h - 5)), 4.0, 4.0) for _ in range(int(rng.integers(1, 4)))]
        expected = np.zeros(64, dtype=bool)
        for b in boxes:  # one box at a time through PTA's own conversion
            expected |= rasterise(resize_boxes(np.array([b]), np.array([w]), np.array([h]), 128), 128, 16)[0].reshape(-1)
        assert (reference_patch_labels(_pair(w, h, *boxes), 128, 16) == expected).all()


# ------------------------------------------------------------------------------ the metrics
@pytest.mark.parametrize(("detected", "counts", "expected"), [
    ([1, 1, 1, 1], [2, 2, 0, 0], {"precision": 0.5, "recall": 1.0, "accuracy": 0.5, "f1": 2 / 3, "detected_fraction": 1.0}),  # all
    ([0, 0, 0, 0], [0, 0, 2, 2], {"precision": 0.0, "recall": 0.0, "accuracy": 0.5, "f1": 0.0, "detected_fraction": 0.0}),  # none
    ([1, 0, 1, 0], [1, 1, 1, 1], {"precision": 0.5, "recall": 0.5, "accuracy": 0.5, "f1": 0.5, "detected_fraction": 0.5}),  # partial
    ([1, 1, 0, 0], [2, 0, 0, 2], {"precision": 1.0, "recall": 1.0, "accuracy": 1.0, "f1": 1.0, "detected_fraction": 0.5}),  # exact
])
def test_metric_definitions_by_hand(detected: list[int], counts: list[int], expected: dict) -> None:
    per_pair = pair_counts(torch.tensor([detected], dtype=torch.bool), torch.tensor([[1, 1, 0, 0]]))  # tp fp fn tn
    assert per_pair.tolist() == [counts]
    stats = statistics(per_pair.sum(0))
    assert {k: float(stats[k]) for k in expected} == pytest.approx(expected)
    assert float(stats["base_rate"]) == 0.5


def test_metrics_are_micro_averaged_over_pairs() -> None:
    # pair 1: 1 of 4 patches labelled, found; pair 2: 3 labelled, none found -> recall 1/4, not (1 + 0) / 2
    counts = pair_counts(torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool), torch.tensor([[1, 0, 0, 0], [0, 1, 1, 1]]))
    assert counts.tolist() == [[1, 0, 0, 3], [0, 1, 3, 0]]
    assert float(statistics(counts.sum(0))["recall"]) == pytest.approx(0.25)


def test_chance_levels() -> None:
    assert chance(0.2, 0.5) == pytest.approx({"accuracy": 0.5, "recall": 0.5})
    assert chance(0.1, 0.0) == pytest.approx({"accuracy": 0.9, "recall": 0.0})  # detect nothing: right on every 0


def test_bootstrap_change_and_margin() -> None:
    rng = np.random.default_rng(1)
    labels = torch.from_numpy(rng.random((200, 16)) < 0.25)
    random_pick = pair_counts(torch.from_numpy(rng.random((200, 16)) < 0.5), labels)
    perfect = pair_counts(labels, labels)
    same = bootstrap(random_pick, random_pick)
    assert all(v["change"] == 0 and v["se"] == 0 for v in same["since_first"].values())
    assert abs(same["over_chance"]["accuracy"]["margin"]) < 3 * same["over_chance"]["accuracy"]["se"]  # random is at chance
    better = bootstrap(random_pick, perfect)
    assert better["since_first"]["recall"]["change"] > 10 * better["since_first"]["recall"]["se"] > 0
    assert better["over_chance"]["accuracy"]["margin"] > 10 * better["over_chance"]["accuracy"]["se"] > 0


# ----------------------------------------------------- the stage on a real (tiny) TPD run
def test_patch_detection_of_a_pretraining_run(fixture_pretraining_run: Path, fixture_world: Path, tmp_path: Path) -> None:
    reference = DataLayout(fixture_world).oracle_reference_boxes
    out = tmp_path / "detection.json"
    args = [*FIXTURE, "patch-detection", "--run", str(fixture_pretraining_run), "--reference", str(reference), "--root",
            str(fixture_world), "--json", str(out), "--quiet"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    pairs = read_reference_boxes(reference)
    assert result["reference"]["pairs"] == len(pairs) and result["reference"]["source"] == ORACLE_SOURCE
    (checkpoint,) = result["checkpoints"]  # the fixture pretrains one epoch
    assert checkpoint["checkpoint"] == "epoch_000.pt" and checkpoint["epoch"] == 1
    assert checkpoint["kept"]["detected_fraction"] == pytest.approx(0.5)  # top-K at the run's keeping ratio, 8 of 16
    labelled = sum(reference_patch_labels(p, 64, 16).sum() for p in pairs)
    assert checkpoint["base_rate"] == pytest.approx(labelled / (16 * len(pairs)))
    for name in ("kept", "score_above_0.5"):
        assert all(0.0 <= checkpoint[name][m] <= 1.0 for m in ("precision", "recall", "accuracy", "f1"))
        assert checkpoint[f"{name}_since_first"]["accuracy"] == {"change": 0.0, "se": 0.0}


# ---------------------------------------------------------------- the figure and the claims
def _probe(epoch: int, accuracy: float, recall: float) -> dict:
    metrics = {"precision": 0.3, "recall": recall, "accuracy": accuracy, "f1": 0.4}
    return {"checkpoint": f"epoch_{epoch - 1:03d}.pt", "epoch": epoch, "step": 100 * epoch, "base_rate": 0.2, "keep_fraction": 0.5,
            "kept": metrics, "score_above_0.5": metrics}


def _results(tmp_path: Path, ood: list[tuple[float, float]], se: float) -> Path:
    results = tmp_path / "results"
    (results / "pretrain").mkdir(parents=True)
    (results / "patch_detection").mkdir()
    probes = [{**_probe(n + 1, 0.6, 0.6), "patch_detection": _probe(n + 1, 0.6, 0.6)} for n in range(len(ood))]
    (results / "pretrain" / "run.json").write_text(json.dumps({"checkpoints": probes}))
    checkpoints = []
    for n, (acc, rec) in enumerate(ood):
        c = _probe(n + 1, acc, rec)
        c["kept"] = {**c["kept"], "detected_fraction": 0.5}
        changes = {m: {"change": v - first, "se": se} for m, v, first in (("accuracy", acc, ood[0][0]), ("recall", rec, ood[0][1]))}
        margins = {m: {"margin": v - chance(0.2, 0.5)[m], "se": se} for m, v in (("accuracy", acc), ("recall", rec))}
        for name in ("kept", "score_above_0.5"):
            c[f"{name}_since_first"], c[f"{name}_over_chance"] = changes, margins
        checkpoints.append(c)
    record = {"run": "run", "profile": "fixture", "reference": {"source": ORACLE_SOURCE, "pairs": 10}, "checkpoints": checkpoints}
    (results / "patch_detection" / "run.json").write_text(json.dumps(record))
    return results


@pytest.mark.parametrize(("ood", "verdicts"), [
    ([(0.5, 0.5), (0.6, 0.6), (0.7, 0.8)], (HOLDS, HOLDS)),  # rising, ends above chance (0.5 / 0.5)
    ([(0.5, 0.5), (0.5, 0.52), (0.51, 0.5)], (UNMEASURABLE, UNMEASURABLE)),  # within two standard errors
    ([(0.7, 0.7), (0.6, 0.6), (0.4, 0.3)], (FAILS, FAILS)),  # falling to below chance
])
def test_figure5_and_its_claims(tmp_path: Path, ood: list, verdicts: tuple[str, str]) -> None:
    results = _results(tmp_path, ood, se=0.02)
    paths = write_figure5(results / "pretrain" / "run.json", results / "patch_detection" / "run.json", results / "tables" / "figure5",
                          tmp_path / "figure5")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths) and {p.suffix for p in paths} == {".csv", ".md", ".tex", ".json", ".png", ".pdf"}
    frame = pd.read_csv(results / "tables" / "figure5.csv").set_index("row")
    assert list(frame.index) == ["epoch 1", "epoch 2", "epoch 3", PAPER_ROW]
    assert frame.at["epoch 3", "ood_kept_accuracy"] == pytest.approx(ood[-1][0])
    assert frame.at["epoch 3", "ood_chance_accuracy"] == pytest.approx(0.5)
    assert frame.at[PAPER_ROW, "paper_ood_accuracy"] == 0.87 and pd.isna(frame.at[PAPER_ROW, "ood_kept_accuracy"])
    assert "ORACLE" in (results / "tables" / "figure5.md").read_text()
    claims = {v.claim[:2]: v for v in check_claims(Tables(results / "tables"))}
    assert (claims["6a"].verdict, claims["6b"].verdict) == verdicts


def test_claim6_without_figure5(tmp_path: Path) -> None:
    claims = {v.claim[:2]: v for v in check_claims(Tables(tmp_path))}
    assert claims["6a"].verdict == claims["6b"].verdict == UNMEASURABLE and "Figure 5 missing" in claims["6a"].measured


def test_reference_boxes_and_the_report_do_not_block_resuming_training() -> None:
    from copa.config import AFTER_TRAINING_SECTIONS, DOWNSTREAM_SECTIONS
    from copa.train.engine import changed_params

    before = load_params("fixture", params_dir=PARAMS_DIR).to_dict()
    after = load_params("fixture", ["reference_boxes.pairs=3", "reference_boxes.detector=grounding_dino", "report.cells=all",
                                    "report.seeds=[0, 1]"], PARAMS_DIR).to_dict()
    assert changed_params(after, before) == ["reference_boxes", "report"]
    assert changed_params(after, before, AFTER_TRAINING_SECTIONS) == changed_params(after, before, DOWNSTREAM_SECTIONS) == []
