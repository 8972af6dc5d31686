"""Issue 19 instruments: VQA controls on every VQA table (majority answer per question type, images
swapped within a question type), paired differences to a grid's baseline row in the tables,
per-example records of retrieval and grounding, and Figure 4's paired panel (one image, two
questions: do the kept patches move?)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from copa.config import ParamsError, load_params
from copa.data.downstream import VQAExample
from copa.data.formats.records import Box
from copa.report.grids import load_grid, result_path, row_run
from copa.report.tables import NOT_TRAINED, write_table
from copa.tasks.vqa import majority_baselines, swap_images

REPO = Path(__file__).parents[1]


def _question(qid: int, image: str, question_type: str, answer: str = "yes", answer_type: str = "yes/no") -> VQAExample:
    return VQAExample(qid, Path(f"{image}.jpg"), f"q{qid}", (answer,) * 10, answer_type, question_type)


# ----------------------------------------------------------------------- swapped-image control
def test_swapped_images_stay_within_the_question_type() -> None:
    # "what color is the" over four images (two questions on image a), "how many" over three, "is there a" on one image only
    questions = ([_question(i, img, "what color is the") for i, img in enumerate("aabcd")]
                 + [_question(10 + i, img, "how many") for i, img in enumerate("xyz")] + [_question(20, "solo", "is there a")])
    swapped = swap_images(questions)
    assert [q.question_id for q in swapped] == [q.question_id for q in questions]
    for kind in ("what color is the", "how many", "is there a"):  # a permutation of the type's own images
        before = [q.image for q in questions if q.question_type == kind]
        after = [s.image for s, q in zip(swapped, questions) if q.question_type == kind]
        assert Counter(after) == Counter(before)
    # no question keeps its own image where its type has another one
    assert all(s.image != q.image for s, q in zip(swapped, questions) if q.question_type != "is there a")
    assert swapped[-1].image == questions[-1].image  # the one image of its type


def test_swapped_images_keep_as_few_own_images_as_possible() -> None:
    # image a holds 4 of the type's 5 questions: at least 4 - 1 = 3 must keep it, and no more do
    questions = [_question(i, img, "what shape is the") for i, img in enumerate("aaaab")]
    kept = sum(s.image == q.image for s, q in zip(swap_images(questions), questions))
    assert kept == 3


def test_majority_answer_per_question_type() -> None:
    train = ([_question(i, "t", "what color is the", "red", "other") for i in range(3)]
             + [_question(3, "t", "what color is the", "blue", "other")]
             + [_question(4 + i, "t", "what shape is the", "circle", "other") for i in range(2)])
    test = [_question(10, "u", "what color is the", "red", "other"), _question(11, "u", "what shape is the", "circle", "other"),
            _question(12, "u", "how many", "2", "number")]  # a type the training questions lack: the overall majority
    baselines = majority_baselines(train, test)
    typed = baselines["majority_per_question_type"]
    assert typed["answers"] == {"what color is the": "red", "what shape is the": "circle"}
    assert typed["overall"] == pytest.approx(200 / 3)  # red and circle right, "red" for "how many" wrong
    assert baselines["majority_answer"]["answer"] == "red" and baselines["majority_answer"]["overall"] == pytest.approx(100 / 3)
    assert baselines["majority_per_answer_type"]["answers"] == {"other": "red"}
    assert typed["per_question_type"] == {"how many": 0.0, "what color is the": 100.0, "what shape is the": 100.0}
    assert baselines["majority_answer"]["per_question_type"] == {"how many": 0.0, "what color is the": 100.0, "what shape is the": 0.0}


# ----------------------------------------------------------------------- tables
GRID = """title: t
columns: [vqa, gmacs]
baseline: base
rows:
  - {label: a, method: tpd, location: 6, keep: 0.5, paper: {vqa: 1.0}}
  - {label: base, method: none, location: 6, keep: 1.0, paper: {}}
  - {label: c, method: cls_attention, location: 6, keep: 0.5, paper: {}}
trained: {paper: all, demo: [a, base], fixture: []}
"""


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "params", tmp_path / "params")
    return tmp_path / "params"


def _vqa_result(per_question: list[float], majority: float, swapped: float) -> dict:
    overall = 100.0 * sum(per_question) / len(per_question)
    return {"overall": overall, "questions": len(per_question),
            "baselines": {"majority_answer": {"overall": 1.0}, "majority_per_question_type": {"overall": majority}},
            "controls": {"swapped_image": {"overall": swapped}},
            "per_question": {str(i): s for i, s in enumerate(per_question)}}


def _write_result(results: Path, source: str, run: str, record: dict) -> None:
    path = result_path(results, source, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_vqa_table_shows_the_controls_and_the_paired_difference(params_dir: Path, tmp_path: Path) -> None:
    from copa.eval.paired import paired_bootstrap
    from copa.report.tables import BASELINE

    (params_dir / "grids" / "mine.yaml").write_text(GRID)
    grid, demo = load_grid("mine", params_dir), load_params("demo", params_dir=params_dir)
    assert grid.columns == ("vqa", "vqa_majority", "vqa_swapped", "gmacs")  # the controls follow VQA accuracy by themselves
    results = tmp_path / "results"
    a_scores = [1.0, 1.0, 0.0, 1.0, 0.6, 1.0, 0.3, 1.0]
    base_scores = [1.0, 0.0, 0.0, 1.0, 0.3, 0.0, 0.3, 1.0]
    for label, scores, majority, swapped in (("a", a_scores, 30.0, 40.0), ("base", base_scores, 31.0, 35.0)):
        _write_result(results, "vqa", row_run(grid.row(label), demo, 0), _vqa_result(scores, majority, swapped))
    for label in ("a", "base", "c"):
        _write_result(results, "efficiency", row_run(grid.row(label), demo, 0),
                      {"flops": {"gmacs": {"total": 0.2}}, "device": {"device": "cpu", "cpu": "test", "threads": 1}})
    paths, cells, _ = write_table(grid, demo, results, [0], tmp_path / "tables" / "mine")
    frame = pd.read_csv(paths[0]).set_index("row")
    assert frame.at["a", "vqa_majority"] == 30.0 and frame.at["a", "vqa_swapped"] == 40.0 and frame.at["base", "vqa_swapped"] == 35.0
    expected = paired_bootstrap(a_scores, base_scores).scaled(100.0)
    assert expected.estimate == pytest.approx(100 * 2.3 / 8)
    assert frame.at["a", "vqa_vs_baseline"] == pytest.approx(expected.estimate, abs=1e-4)
    assert frame.at["a", "vqa_vs_baseline_low"] == pytest.approx(expected.low, abs=1e-4)
    assert frame.at["a", "vqa_vs_baseline_high"] == pytest.approx(expected.high, abs=1e-4)
    assert expected.low < expected.estimate < expected.high
    assert pd.isna(frame.at["base", "vqa_vs_baseline"]) and frame.at["c", "vqa_status"] == NOT_TRAINED
    markdown = paths[1].read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| model"))
    assert ("| VQA accuracy | VQA accuracy (paper) | VQA accuracy: Δ vs base [95% CI] | majority answer per question type | "
            "VQA accuracy, images swapped within question type | FLOPs") in header  # controls: no paper column
    d = cells["a"]["vqa"].difference
    assert f"| a | 73.75 | 1 | {d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | 30.00 | 40.00 | 0.200 |" in markdown
    assert f"| base | 45.00 |  | {BASELINE} | 31.00 | 35.00 |" in markdown and "paired bootstrap" in markdown
    assert r"$\Delta$" in paths[2].read_text()



def test_an_anchor_row_fills_its_tasks_columns_paired_with_the_baseline(params_dir: Path, tmp_path: Path) -> None:
    """A grid's anchor (the from-scratch VQA model, copa vqa-scratch) is read from its own result per seed,
    in the VQA columns and their controls, with its paired difference to the baseline row; the costs are
    not measured for it, the paper has no number for it, and a profile that does not name it leaves it
    not trained (no result file asked)."""
    from copa.eval.paired import paired_bootstrap
    from copa.report.grids import anchor_result
    from copa.report.tables import NOT_MEASURED, grid_inputs

    text = GRID.replace("trained: {paper: all, demo: [a, base], fixture: []}",
                        "anchors:\n  - {label: film, model: vqa_scratch}\ntrained: {paper: all, demo: [a, base, film], fixture: [a]}")
    (params_dir / "grids" / "mine.yaml").write_text(text)
    grid, demo, fixture = load_grid("mine", params_dir), load_params("demo", params_dir=params_dir), load_params("fixture", params_dir=params_dir)
    results = tmp_path / "results"
    assert anchor_result(grid.anchors[0], results, 0) == results / "vqa_scratch" / "seed0.json"
    assert anchor_result(grid.anchors[0], results, 0) in grid_inputs(grid, demo, results, [0])
    assert not [p for p in grid_inputs(grid, fixture, results, [0]) if "vqa_scratch" in str(p)]
    film_scores, base_scores = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0, 0.3, 0.0, 0.3, 1.0]
    for label, scores in (("a", base_scores), ("base", base_scores)):
        _write_result(results, "vqa", row_run(grid.row(label), demo, 0), _vqa_result(scores, 31.0, 35.0))
    for label in ("a", "base", "c"):
        _write_result(results, "efficiency", row_run(grid.row(label), demo, 0),
                      {"flops": {"gmacs": {"total": 0.2}}, "device": {"device": "cpu", "cpu": "test", "threads": 1}})
    film = anchor_result(grid.anchors[0], results, 0)
    film.parent.mkdir(parents=True)
    film.write_text(json.dumps(_vqa_result(film_scores, 31.0, 20.0)))
    paths, cells, _ = write_table(grid, demo, results, [0], tmp_path / "tables" / "mine")
    frame = pd.read_csv(paths[0]).set_index("row")
    assert frame.at["film", "vqa"] == pytest.approx(87.5) and frame.at["film", "vqa_swapped"] == 20.0
    assert frame.at["film", "method"] == "anchor: vqa_scratch" and pd.isna(frame.at["film", "vqa_paper"])
    assert frame.at["film", "gmacs_status"] == NOT_MEASURED and pd.isna(frame.at["film", "gmacs"])
    expected = paired_bootstrap(film_scores, base_scores).scaled(100.0)
    assert frame.at["film", "vqa_vs_baseline"] == pytest.approx(expected.estimate, abs=1e-4)
    d = cells["film"]["vqa"].difference
    assert f"| film | 87.50 |  | {d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | 31.00 | 20.00 | {NOT_MEASURED} |" in paths[1].read_text()
    bad = text.replace("columns: [vqa, gmacs]", "columns: [gmacs]").replace(", paper: {vqa: 1.0}", ", paper: {}")
    (params_dir / "grids" / "mine.yaml").write_text(bad)
    with pytest.raises(ParamsError, match="anchors\\[0\\]'.*answers vqa, a column the grid does not have"):
        load_grid("mine", params_dir)
    (params_dir / "grids" / "mine.yaml").write_text(text.replace("model: vqa_scratch", "model: film"))
    with pytest.raises(ParamsError, match=r"anchors\[0\].model': unknown anchor 'film' \(known: vqa_scratch, perception_oracle\)"):
        load_grid("mine", params_dir)

def test_rows_scored_on_other_examples_are_refused(params_dir: Path, tmp_path: Path) -> None:
    (params_dir / "grids" / "mine.yaml").write_text(GRID)
    grid, demo = load_grid("mine", params_dir), load_params("demo", params_dir=params_dir)
    results = tmp_path / "results"
    _write_result(results, "vqa", row_run(grid.row("a"), demo, 0), _vqa_result([1.0, 0.0], 1.0, 1.0))
    _write_result(results, "vqa", row_run(grid.row("base"), demo, 0), _vqa_result([1.0, 0.0, 1.0], 1.0, 1.0))
    for label in ("a", "base", "c"):
        _write_result(results, "efficiency", row_run(grid.row(label), demo, 0), {"flops": {"gmacs": {"total": 0.2}}})
    with pytest.raises(ValueError, match="rows 'a' and 'base', column 'vqa': not evaluated on the same examples"):
        write_table(grid, demo, results, [0], tmp_path / "t")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("baseline: base", "baseline: nobody"), "key 'baseline' names no row: 'nobody'"),
    (lambda t: t.replace("[vqa, gmacs]", "[vqa, vqa_swapped, gmacs]"), "column 'vqa_swapped' in 'columns' is a control"),
])
def test_bad_baseline_or_listed_control_is_refused(params_dir: Path, edit, message) -> None:
    (params_dir / "grids" / "mine.yaml").write_text(edit(GRID))
    with pytest.raises(ParamsError, match="mine.yaml") as error:
        load_grid("mine", params_dir)
    assert message in str(error.value)


def test_every_vqa_grid_shows_the_controls_and_has_a_baseline() -> None:
    for name in ("table1", "table4", "table5", "table6", "table9", "table10", "figure1a"):
        grid = load_grid(name)
        at = grid.columns.index("vqa")
        assert grid.columns[at + 1:at + 3] == ("vqa_majority", "vqa_swapped")
        assert grid.baseline in {r.label for r in grid.rows}
    for name in ("table2", "table3"):
        assert load_grid(name).baseline == "mPLUG"


# ----------------------------------------------------------------------- retrieval and grounding records
def test_retrieval_record_keeps_each_query_s_hits(monkeypatch) -> None:
    from copa.data.heldout import RetrievalSet
    from copa.tasks import retrieval

    # 3 images, 4 texts (text j describes image text_image[j]); rows: images, columns: texts
    sim = torch.tensor([[0.9, 0.1, 0.0, 0.2], [0.8, 0.7, 0.1, 0.0], [0.0, 0.3, 0.2, 0.6]])
    data = RetrievalSet((Path("0.jpg"), Path("1.jpg"), Path("2.jpg")), ("t0", "t1", "t2", "t3"), (0, 1, 1, 2))
    monkeypatch.setattr(retrieval, "encode_retrieval_set", lambda *a, **k: (torch.zeros(3, 3, 4, 4), sim, torch.zeros(4, 2, 8), None, torch.eye(4)))
    monkeypatch.setattr(retrieval, "two_stage_scores", lambda coarse, k, rerank: (sim, sim))
    result, _ = retrieval.evaluate_retrieval(None, None, data, 2, 4, 8, progress=False)
    hits = result["per_query"]
    # image 1's best text is t0 (image 0's): a TR@1 miss; text t2 (image 1) ranks image 2 first: an IR@1 miss
    assert hits["tr_r1"] == {"0": 1, "1": 0, "2": 1} and hits["ir_r1"] == {"0": 1, "1": 1, "2": 0, "3": 1}
    assert hits["tr_r5"] == {"0": 1, "1": 1, "2": 1}
    for key in ("tr_r1", "ir_r1", "tr_r5"):
        assert result[key] == pytest.approx(100 * np.mean(list(hits[key].values())))


def test_grounding_record_keeps_each_expression_s_hit(monkeypatch, tmp_path: Path) -> None:
    from copa.data.downstream import AnnotatedBox, GroundingExample
    from copa.tasks import grounding

    square, circle = AnnotatedBox("square", Box(0, 0, 40, 40)), AnnotatedBox("circle", Box(50, 50, 30, 30))
    # ref 7 has two sentences, ref 8 one
    examples = [GroundingExample(ref, Path("x.jpg"), 100, 100, sentence, obj.box, (square, circle))
                for ref, sentence, obj in ((7, "the square", square), (7, "the top left square", square), (8, "the circle", circle))]
    monkeypatch.setattr(grounding, "grounding_examples", lambda layout, split: examples)

    def predict(model, tokenizer, examples, params, layout, box_head=None, batch_size=64, progress=True):
        boxes = torch.stack([grounding.relative_xyxy(e) for e in examples])  # the true boxes ...
        boxes[1] = torch.tensor([0.98, 0.98, 1.0, 1.0])  # ... but a far corner sliver for the second expression
        return boxes, None  # no TPD scores

    monkeypatch.setattr(grounding, "predict_boxes", predict)
    params = load_params("fixture", ["finetune.grounding.head=tokens"])
    run = SimpleNamespace(model=None, params=params, tokenizer=None)
    record, _, _ = grounding.evaluate_grounding(run, params.evaluate.grounding, tmp_path, "val", progress=False)
    split = record["splits"]["val"]
    assert split["per_expression"] == {"7.0": 1, "7.1": 0, "8.0": 1}  # <ref_id>.<sentence>: IoU >= 0.5
    assert split["acc@0.5"] == pytest.approx(200 / 3)


# ----------------------------------------------------------------------- Figure 4's paired panel
def _referred(qid: int, *boxes: Box):
    from copa.data.formats.referents import ReferredBox, Referred

    return Referred(qid, 1, "img.jpg", tuple(ReferredBox(b, None) for b in boxes))


def test_figure4_pairs_two_questions_of_one_image_about_different_objects() -> None:
    from copa.data.formats.referents import Referents
    from copa.report.detected_patches import pick_question_pairs

    red, blue = Box(0, 0, 10, 10), Box(20, 20, 10, 10)
    questions = [_question(1, "one", "what color is the"), _question(2, "one", "what shape is the"),
                 _question(3, "one", "how many"), _question(4, "two", "what color is the"), _question(5, "three", "how many"),
                 _question(6, "three", "is there a"), _question(7, "three", "what shape is the")]
    referents = Referents({1: _referred(1, red), 2: _referred(2, red), 3: _referred(3, blue), 5: _referred(5, red, blue),
                           6: _referred(6), 7: _referred(7, blue)}, {}, {})
    pairs = pick_question_pairs(questions, 5, referents)
    # image one: questions 1 and 2 are about the same box, 1 and 3 not; image two has one question;
    # image three: question 6 is about nothing, 5 and 7 about different boxes
    assert [(a.question_id, b.question_id) for a, b in pairs] == [(1, 3), (5, 7)]
    assert all(a.image == b.image for a, b in pairs)
    assert [(a.question_id, b.question_id) for a, b in pick_question_pairs(questions, 5)] == [(1, 2), (5, 6)]  # no referents
    assert len(pick_question_pairs(questions, 1)) == 1


def test_figure4_kept_set_overlap() -> None:
    from copa.report.detected_patches import Detection, kept_change, pair_summary

    first = np.array([[True, True], [False, False]])
    second = np.array([[True, False], [True, False]])
    assert kept_change(first, second) == (pytest.approx(1 / 3), 0.5)  # 1 shared of 3 kept by either; 1 of 2 moved
    assert kept_change(first, first) == (1.0, 0.0)
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    a, b = (Detection(_question(q, "one", "t"), "yes", pixels, {0.5: kept}) for q, kept in ((1, first), (2, second)))
    summary = pair_summary([(a, b), (a, a)], 0.5)
    assert summary["mean_iou"] == pytest.approx((1 / 3 + 1) / 2) and summary["mean_moved"] == pytest.approx(0.25)
    assert summary["pairs"][0]["question_ids"] == [1, 2] and summary["pairs"][0]["kept"] == 2
