"""Caption metrics (copa.eval.captioning) equal COCOEvalCap's on the same captions (SPICE left
out: it needs Stanford CoreNLP, which is not installable offline)."""

from __future__ import annotations

import pytest
from pycocoevalcap import eval as coco_eval
from pycocotools.coco import COCO

from copa.eval.captioning import caption_metrics, spice_unavailable_reason

REFERENCES = {
    1: ["A red circle next to a blue star.", "a red circle and a star", "Two shapes: a circle, a star."],
    2: ["Three green triangles.", "three triangles in green", "green triangles, three of them"],
    3: ["A striped square above a ring.", "a square over a ring", "the square is above the ring"],
}
PREDICTIONS = {1: "a red circle next to a star", 2: "three green triangles", 3: "a ring below a square"}


class _NoSpice:
    def method(self) -> str:
        return "SPICE (left out)"

    def compute_score(self, gts, res):
        return 0.0, [0.0] * len(gts)


def test_scores_equal_cocoevalcap(monkeypatch) -> None:
    both = caption_metrics({"ours": PREDICTIONS, "first reference": {i: refs[0] for i, refs in REFERENCES.items()}}, REFERENCES, spice=("ours",))
    ours = both["ours"]
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in REFERENCES],
                    "annotations": [{"id": 10 * i + k, "image_id": i, "caption": c} for i, refs in REFERENCES.items() for k, c in enumerate(refs)]}
    coco.createIndex()
    results = coco.loadRes([{"image_id": i, "caption": c} for i, c in PREDICTIONS.items()])
    monkeypatch.setattr(coco_eval, "Spice", _NoSpice)
    evaluator = coco_eval.COCOEvalCap(coco, results)
    evaluator.evaluate()
    names = {"bleu_1": "Bleu_1", "bleu_2": "Bleu_2", "bleu_3": "Bleu_3", "bleu_4": "Bleu_4", "meteor": "METEOR", "rouge_l": "ROUGE_L", "cider": "CIDEr"}
    for ours_name, theirs in names.items():
        assert ours[ours_name] == pytest.approx(evaluator.eval[theirs], abs=1e-9), ours_name
    assert 0 < ours["cider"] and 0 < ours["bleu_4"] < 1
    if spice_unavailable_reason() is not None:  # offline: reported as unavailable, never as 0
        assert ours["spice"] is None and "CoreNLP" in ours["spice_unavailable"]
    assert both["first reference"]["meteor"] > ours["meteor"]  # the scorers serve each set apart
    assert both["first reference"]["spice_unavailable"] == "not asked for"


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="1 images without a caption"):
        caption_metrics({"a": {1: "a"}}, {1: ["a"], 2: ["b"]})
    with pytest.raises(ValueError, match="no reference caption"):
        caption_metrics({"a": {1: "a"}}, {1: []})
