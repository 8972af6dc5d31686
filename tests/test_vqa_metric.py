"""The official VQA accuracy (copa.eval.vqa) on hand-made cases and against a closed form."""

from __future__ import annotations

import random

import pytest

from copa.eval.vqa import (
    CONTRACTIONS,
    normalize_punctuation,
    normalize_words,
    official_result_file,
    question_accuracy,
    vqa_accuracy,
)


@pytest.mark.parametrize(("prediction", "humans", "expected"), [
    ("Yes.", ["yes"] * 10, 1.0),  # case and the final period
    ("yes", ["no"] * 10, 0.0),
    ("two", ["2"] * 10, 1.0),  # number words become digits
    ("a dog", ["dog"] * 5 + ["cat"] * 5, 1.0),  # articles dropped
    ("red", ["red"] * 3 + ["blue"] * 7, (3 * 2 / 3 + 7 * 1) / 10),  # 3 matching humans: 0.9
    ("red", ["red"] * 2 + ["blue"] * 8, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # 2 matching humans: 0.6
    ("red", ["red"] * 1 + ["blue"] * 9, (1 * 0 + 9 * 1 / 3) / 10),  # 1 matching human: 0.3
    ("dont know", ["don't know"] * 4 + ["no"] * 6, 1.0),  # contraction restored
    ("hot dog", ["hot-dog"] * 4 + ["pizza"] * 6, 1.0),  # humans' hyphen becomes a space when they disagree
    ("hot dog", ["hot-dog"] * 10, 0.0),  # ... and is left alone when they all agree (official quirk)
    ("1,000", ["1000"] * 10, 1.0),  # comma between digits deleted
    ("  yes\n", ["yes"] * 10, 1.0),
])
def test_hand_made_cases(prediction: str, humans: list[str], expected: float) -> None:
    assert question_accuracy(prediction, humans) == pytest.approx(expected)


def test_normalisation_steps() -> None:
    assert normalize_punctuation("what? yes!") == "what yes "  # "?" is next to a space: deleted; "!" is not: a space
    assert normalize_punctuation("left/right") == "left right"  # otherwise it becomes a space
    assert normalize_punctuation("2.5") == "2.5" and normalize_punctuation("end.") == "end"
    assert normalize_words("The Three cats") == "3 cats"
    assert normalize_words("im") == "im"  # the official table spells the pronoun "I": no match after lower-casing
    assert CONTRACTIONS["couldnt've"] == CONTRACTIONS["couldntve"] == CONTRACTIONS["couldn'tve"] == "couldn't've"


def _closed_form(prediction: str, humans: list[str]) -> float:
    """Independent formula: with m of n humans matching, a left-out matching human leaves m - 1,
    a left-out other one leaves m."""
    answer = normalize_words(normalize_punctuation(prediction.strip()))
    if len(set(humans)) > 1:
        humans = [normalize_punctuation(h) for h in humans]
    n, m = len(humans), sum(h == answer for h in humans)
    return (m * min(1.0, (m - 1) / 3) + (n - m) * min(1.0, m / 3)) / n


def test_result_file_against_the_closed_form() -> None:
    rng = random.Random(0)
    vocab = ["yes", "no", "2", "3", "red", "blue", "hot-dog", "hot dog", "tennis"]
    questions, predictions = {}, {}
    for qid in range(500):
        answer_type = rng.choice(["yes/no", "number", "other"])
        questions[qid] = ([rng.choice(vocab) for _ in range(10)], answer_type)
        predictions[qid] = rng.choice(vocab + ["Yes.", "two", "the tennis", "Red!"])
    result = vqa_accuracy(predictions, questions)
    expected = {qid: _closed_form(predictions[qid], answers) for qid, (answers, _) in questions.items()}
    assert result["per_question"] == pytest.approx(expected)
    assert result["overall"] == pytest.approx(100 * sum(expected.values()) / len(expected))
    for answer_type, value in result["per_answer_type"].items():
        ids = [q for q, (_, t) in questions.items() if t == answer_type]
        assert value == pytest.approx(100 * sum(expected[q] for q in ids) / len(ids))
    rows = official_result_file(predictions)
    assert rows[0] == {"question_id": 0, "answer": predictions[0]} and len(rows) == 500


def test_incomplete_result_files_are_refused() -> None:
    questions = {1: (["yes"] * 10, "yes/no"), 2: (["no"] * 10, "yes/no")}
    with pytest.raises(ValueError, match="1 questions have no predicted answer \\(first ids: \\[2\\]\\)"):
        vqa_accuracy({1: "yes"}, questions)
    with pytest.raises(ValueError, match="not in the question set"):
        vqa_accuracy({1: "yes", 2: "no", 3: "no"}, questions)
