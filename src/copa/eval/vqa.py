"""VQA accuracy as the official VQA evaluation defines it (Antol et al. 2015; VQA v2 evaluation tools).

For a predicted answer and the 10 human answers of a question:

    acc = mean over the 10 leave-one-out subsets of 9 humans of min(1, #humans in the subset who gave the answer / 3)

as the official tool compares them: newlines and tabs become spaces and the ends are stripped
on both sides. The predicted answer is then normalised: punctuation (:func:`normalize_punctuation`)
and words (:func:`normalize_words`: lower-cased, number words up to ten become digits, the
articles a / an / the dropped, apostrophe-less contractions get their apostrophes, "dont" ->
"don't"). The human answers (already normalised in the VQA annotation files) only get the
punctuation step, and only when they are not all identical. These quirks are the official
tool's, kept so that numbers are comparable with published ones. Accuracies are in percent,
overall and per answer type (yes/no, number, other).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern; "(?!<=" is a lookahead, so "2." loses its period too
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")

# English contractions as written with apostrophes. The evaluation compares lower-cased words with
# every spelling of a contraction that drops some of its apostrophes; as in the official table,
# the pronoun "I" stays upper-case there, so "im" / "ive" never match (lower-cased words).
_CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's", "I'd", "I'd've", "I'm",
    "I've", "isn't", "it'd", "it'd've", "it'll", "let's", "ma'am", "mightn't", "mightn't've", "might've", "mustn't",
    "must've", "needn't", "not've", "o'clock", "oughtn't", "'ow's'at", "shan't", "she'd", "she'd've", "she's",
    "should've", "shouldn't", "shouldn't've", "somebody'd", "somebody'd've", "somebody'll", "somebody's",
    "someone'd", "someone'd've", "someone'll", "someone's", "something'd", "something'd've", "something'll",
    "that's", "there'd", "there'd've", "there're", "there's", "they'd", "they'd've", "they'll", "they're",
    "they've", "'twas", "wasn't", "we'd", "we'd've", "we'll", "we're", "we've", "weren't", "what'll", "what're",
    "what's", "what've", "when's", "where'd", "where's", "where've", "who'd", "who'd've", "who'll", "who's",
    "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll",
    "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)


def _apostrophe_free_spellings(word: str) -> set[str]:
    """Every spelling of ``word`` with at least one of its apostrophes left out."""
    parts = word.split("'")
    spellings = set()
    for keep in itertools.product((True, False), repeat=len(parts) - 1):
        if all(keep):
            continue
        spellings.add(parts[0] + "".join(("'" if k else "") + part for k, part in zip(keep, parts[1:])))
    return spellings


CONTRACTIONS = {spelling: word for word in _CONTRACTIONS for spelling in _apostrophe_free_spellings(word)}


def normalize_punctuation(text: str) -> str:
    """A mark next to a space, or any mark when the text has a comma between digits, is deleted;
    otherwise it becomes a space (each test reads the text as given); then periods are deleted
    unless followed by a digit, at most 32 (the official call passes re.UNICODE = 32 as the count)."""
    out = text
    for mark in PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _DIGIT_COMMA.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=32)


def normalize_words(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy (0-1) of one answer against a question's human answers (10 in VQA v2)."""
    if not human_answers:
        raise ValueError("a question needs at least one human answer")
    humans = [_clean(a) for a in human_answers]
    answer = normalize_words(normalize_punctuation(_clean(prediction)))
    if len(set(humans)) > 1:  # official: the human answers' punctuation only where they disagree
        humans = [normalize_punctuation(a) for a in humans]
    scores = []
    for left_out in range(len(humans)):
        matches = sum(1 for i, h in enumerate(humans) if i != left_out and h == answer)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def vqa_accuracy(predictions: Mapping[int, str], questions: Mapping[int, tuple[Sequence[str], str]]) -> dict:
    """``predictions``: question id -> answer; ``questions``: question id -> (human answers, answer type).

    Every question must have a prediction (the official tool refuses a result file that does not
    cover the question set). Returns percent accuracies overall and per answer type, and per question.
    """
    missing = [qid for qid in questions if qid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} questions have no predicted answer (first ids: {missing[:5]})")
    extra = [qid for qid in predictions if qid not in questions]
    if extra:
        raise ValueError(f"{len(extra)} predicted question ids are not in the question set (first: {extra[:5]})")
    per_question = {qid: question_accuracy(predictions[qid], answers) for qid, (answers, _) in questions.items()}
    by_type: dict[str, list[float]] = defaultdict(list)
    for qid, (_, answer_type) in questions.items():
        by_type[answer_type].append(per_question[qid])
    overall = 100 * sum(per_question.values()) / len(per_question) if per_question else 0.0
    return {
        "overall": overall,
        "per_answer_type": {t: 100 * sum(v) / len(v) for t, v in sorted(by_type.items())},
        "questions": len(per_question),
        "per_question": per_question,
    }


def official_result_file(predictions: Mapping[int, str]) -> list[dict]:
    """The result format of the VQA evaluation server and tools: [{"question_id", "answer"}]."""
    return [{"question_id": int(qid), "answer": answer} for qid, answer in sorted(predictions.items())]
