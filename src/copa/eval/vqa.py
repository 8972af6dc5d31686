r"""VQA accuracy exactly as the official VQA evaluation computes it.

The reference is one named revision of the official tool: GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at commit a013f0043c1e (2021-03-11, "Fixed
processing answers bug", the newest revision of that file), as it runs under Python 2.7. For a
predicted answer and the human answers of a question (10 in VQA v2):

1. Newlines and tabs become spaces and both ends are stripped, in the prediction and in every
   human answer.
2. Only if the human answers (after step 1) are not all identical, the prediction and every human
   answer are normalised (:func:`normalize_answer`): punctuation (:func:`normalize_punctuation`),
   then words (:func:`normalize_words`). When the humans agree, the texts are compared as they
   are: "Yes" or "two" score 0 against ten "yes" or ten "2".
3. acc = mean over the human answers h of min(1, #other human answers equal to the prediction / 3),
   i.e. the average over the leave-one-out subsets.

Quirks of the official code, kept so that numbers are comparable with published ones:

- Punctuation: each mark of :data:`PUNCTUATION` is deleted everywhere if it stands next to a space
  anywhere in the text, or if the text has a comma between two digits; otherwise it becomes a
  space. Each test reads the text as given, not as the other marks left it. The other ASCII marks
  (``'``, ``:``, ``*``, ``#``, ``$``, ``%``, ``&``, ``^``, ``|``, ``~``) are not in the list and stay.
- Periods not followed by a digit are deleted (not replaced by a space: "a.b" -> "ab"). The
  pattern's ``(?!<=\d)`` is a negative lookahead, not a lookbehind, so a period after a digit
  ("2.") goes too; and the official call passes ``re.UNICODE`` (32) where the count goes, so at
  most 32 periods are deleted.
- Under Python 2 the patterns were compiled without ``re.UNICODE``, so ``\d`` means 0-9 only:
  reproduced with ``re.ASCII`` (a period before "٣" is deleted, "١,٠" is no digit-comma).
- Words: lower-cased, split on whitespace (runs of spaces collapse), number words "none" and
  "zero" to "ten" become digits, then the articles a / an / the are dropped, then each word found
  in :data:`CONTRACTIONS` (the official table, 120 entries, as data) is replaced. The table only
  holds what it holds: real words such as "well", "were", "wed", "shed", "lets", "shes" are not in
  it and stay as they are; "wont", "cant", "hed", "hes" are and get apostrophes; four keys
  ("Im", "Ive", "Id've", "I'dve") are capitalised and never match a lower-cased word;
  "somebody'd" maps to "somebodyd" (backwards); "let's" and "she's" map to themselves. As the
  prediction and the humans get the same normalisation, a real word always matches itself.
- Lower-casing and whitespace follow Python 3's Unicode tables: the same as Python 2.7's on ASCII
  text, different for a few non-ASCII letters ("İ", a word-final "Σ").
- The official tool leaves out one answer record at a time (records differ by answer id); here
  one list position at a time, the same thing. Accuracies are in percent, overall and per answer
  type (yes/no, number, other), not rounded (the official tool rounds to 2 decimals).

The previous revision (458a8b2, 2016-10-08, the same tables and patterns) normalised the
prediction always, and the human answers (not whitespace-cleaned) only by punctuation and only
when they disagreed; a013f0043c1e is the official tool as published now.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern: "(?!<=" is a lookahead, so "2." loses its period too. ASCII: Python 2's \d.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_PERIODS_DELETED = 32  # the official call passes re.UNICODE (= 32) as the count
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)", re.ASCII)

# The official contractions table (vqaEval.py at a013f0043c1e), entry for entry, quirks included.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def normalize_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see the module docstring)."""
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIODS_DELETED)


def normalize_words(text: str) -> str:
    """The official ``processDigitArticle``: number words, articles, then contractions, word by word."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    return normalize_words(normalize_punctuation(text))


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy (0-1) of one answer against a question's human answers (10 in VQA v2)."""
    if not human_answers:
        raise ValueError("a question needs at least one human answer")
    humans = [_clean_whitespace(a) for a in human_answers]
    answer = _clean_whitespace(prediction)
    if len(set(humans)) > 1:  # official: normalise only when the humans disagree
        humans = [normalize_answer(h) for h in humans]
        answer = normalize_answer(answer)
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
