"""The VQA accuracy (copa.eval.vqa) agrees with the official evaluation (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py at a013f0043c1e) on a corpus of answer pairs.

Each case's expected score is reasoned from the official code: answers are cleaned of newlines, tabs and
outer spaces; only when the human answers then differ are the prediction and the humans normalised
(punctuation, lower case, number words, articles, contractions); acc = mean over the human answers of
min(1, #other humans equal to the prediction / 3). The corpus covers every contractions-table entry,
every punctuation mark (and the ASCII marks that are not punctuation to the tool), the digit-comma and
period rules, number words, articles, whitespace, the agreement condition, the leave-one-out average,
and real words that merely look like contractions.
"""

from __future__ import annotations

import string
from typing import NamedTuple

import pytest

from copa.eval.vqa import CONTRACTIONS, official_result_file, question_accuracy, vqa_accuracy

# The official contractions table as spelling=contraction pairs (the expected data, kept apart from the module's).
OFFICIAL_CONTRACTIONS = dict(pair.split("=") for pair in """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
    hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
    howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
    it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
    mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've
    oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
    shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've
    shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
    somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've
    someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
    somethingd've=something'd've something'dve=something'd've somethingll=something'll thats=that's
    thered=there'd thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
    theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't
    wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's
    whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
    who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
    wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
    y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
    you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())
OFFICIAL_MARKS = ';/[]"{}()=+\\_-><@`,?!'  # deleted or replaced by a space; "." has its own rule
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
REAL_WORDS = {  # English words spelt like a contraction without its apostrophe -> that contraction
    "well": "we'll", "were": "we're", "wed": "we'd", "shed": "she'd", "lets": "let's", "shes": "she's",
    "ill": "i'll", "hell": "he'll", "shell": "she'll", "its": "it's", "id": "i'd",
}


class Case(NamedTuple):
    prediction: str
    humans: list[str]
    expected: float
    why: str


def disagreeing(answer: str, n: int = 4) -> list[str]:
    """n humans give ``answer``, the others "other": the humans differ, so every answer gets normalised,
    and a normalised prediction equal to ``answer``'s scores min(1, (n - 1) / 3) = 1 for n >= 4."""
    return [answer] * n + ["other"] * (10 - n)


def contraction_cases() -> list[Case]:
    cases = []
    for spelling, contraction in OFFICIAL_CONTRACTIONS.items():
        # Words are lower-cased before the look-up: the four capitalised keys ("Im", ...) never match.
        mapped = 1.0 if spelling == spelling.lower() else 0.0
        cases += [
            Case(spelling, disagreeing(contraction), mapped, "table entry, prediction side"),
            Case(contraction, disagreeing(spelling), mapped, "table entry, human side"),
            Case(spelling, [contraction] * 10, 1.0 if spelling == contraction else 0.0, "humans agree: no table"),
        ]
    for word, contraction in REAL_WORDS.items():
        cases += [
            Case(word, disagreeing(word), 1.0, "real word, not in the table"),
            Case(word, [word] * 10, 1.0, "real word, humans agree"),
            Case(word, disagreeing(contraction), 0.0, "real word is not the contraction"),
        ]
    return cases + [
        Case("wont", disagreeing("wont"), 1.0, "in the table: both sides become won't"),
        Case("cant", disagreeing("can't"), 1.0, "in the table"),
        Case("hed", disagreeing("he'd"), 1.0, "in the table"),
        Case("somebodyd", disagreeing("somebody'd"), 1.0, "the table maps somebody'd to somebodyd"),
        Case("somebody'd", disagreeing("somebodyd"), 1.0, "the table maps somebody'd to somebodyd"),
        Case("im", disagreeing("Im"), 1.0, "both lower-cased to im, no entry"),
        Case("im", disagreeing("i'm"), 0.0, "the table's key is Im"),
        Case("dont know", disagreeing("don't know"), 1.0, "word by word"),
        Case("DONT", disagreeing("don't"), 1.0, "lower-cased first"),
    ]


def punctuation_cases() -> list[Case]:
    cases = []
    for mark in OFFICIAL_MARKS:
        cases += [
            Case(f"left{mark}right", disagreeing("left right"), 1.0, f"{mark!r} not next to a space: a space"),
            Case(f"left{mark}right", disagreeing("leftright"), 0.0, f"{mark!r} not next to a space: a space"),
            Case(f"left{mark}right {mark}end", disagreeing("leftright end"), 1.0, f"{mark!r} after a space: deleted"),
            Case(f"left{mark}right{mark} end", disagreeing("leftright end"), 1.0, f"{mark!r} before a space: deleted"),
            Case(f"left{mark}right 1,5", disagreeing("leftright 15"), 1.0, f"{mark!r} with a digit comma: deleted"),
            Case(f"left{mark}right", [f"left{mark}right"] * 10, 1.0, f"{mark!r}: humans agree"),
            Case(f"left{mark}right", ["left right"] * 10, 0.0, f"{mark!r}: humans agree, no punctuation step"),
        ]
    for mark in sorted(set(string.punctuation) - set(OFFICIAL_MARKS) - {"."}):
        cases += [
            Case(f"left{mark}right", disagreeing(f"left{mark}right"), 1.0, f"{mark!r} is kept"),
            Case(f"left{mark}right", disagreeing("left right"), 0.0, f"{mark!r} is kept"),
            Case(f"left{mark}right", disagreeing("leftright"), 0.0, f"{mark!r} is kept"),
        ]
    return cases + [
        Case("left-right ?end", disagreeing("left right end"), 1.0, "each mark decided on its own"),
        Case("left-right -end", disagreeing("leftright end"), 1.0, "one occurrence next to a space deletes all"),
        Case("1,000", disagreeing("1000"), 1.0, "digit comma"),
        Case("1,a", disagreeing("1 a"), 1.0, "comma between a digit and a letter: a space"),
        Case("left-right ١,٥", disagreeing("left right ١ ٥"), 1.0, "non-ASCII digits: no digit comma (Python 2 \\d)"),
        Case("left-right ١,٥", disagreeing("leftright ١٥"), 0.0, "non-ASCII digits: no digit comma (Python 2 \\d)"),
        Case("end.", disagreeing("end"), 1.0, "final period deleted"),
        Case("a.b", disagreeing("ab"), 1.0, "period deleted, not a space"),
        Case("u.s.a.", disagreeing("usa"), 1.0, "every period"),
        Case("end . now", disagreeing("end now"), 1.0, "period between spaces"),
        Case("2.5", disagreeing("2.5"), 1.0, "period before a digit kept"),
        Case("2.5", disagreeing("25"), 0.0, "period before a digit kept"),
        Case(".5", disagreeing(".5"), 1.0, "period before a digit kept"),
        Case("2.", disagreeing("2"), 1.0, "(?!<= is a lookahead: a period after a digit goes"),
        Case("3.٥", disagreeing("3٥"), 1.0, "period before a non-ASCII digit deleted (Python 2 \\d)"),
        Case("1,000.50", disagreeing("1000.50"), 1.0, "digit comma and decimal period"),
        Case("wait" + "." * 32, disagreeing("wait"), 1.0, "at most 32 periods deleted (re.UNICODE as count)"),
        Case("wait" + "." * 33, disagreeing("wait"), 0.0, "at most 32 periods deleted (re.UNICODE as count)"),
        Case("wait" + "." * 33, disagreeing("wait" + "." * 33), 1.0, "both keep their 33rd period"),
        Case("yes.", ["yes"] * 10, 0.0, "humans agree: no punctuation step"),
        Case("o'clock", disagreeing("oclock"), 1.0, "apostrophe kept, oclock -> o'clock"),
    ]


def word_cases() -> list[Case]:
    cases = [Case(word, disagreeing(digit), 1.0, "number word") for word, digit in NUMBER_WORDS.items()]
    cases += [Case(digit, disagreeing(word), 1.0, "number word, human side") for word, digit in NUMBER_WORDS.items()]
    return cases + [
        Case("Two", disagreeing("2"), 1.0, "lower-cased first"),
        Case("two dogs", disagreeing("2 dogs"), 1.0, "word by word"),
        Case("eleven", disagreeing("11"), 0.0, "only none, zero ... ten"),
        Case("no", disagreeing("0"), 0.0, "no is not a number word"),
        Case("two", ["2"] * 10, 0.0, "humans agree: no number words"),
        Case("a dog", disagreeing("dog"), 1.0, "article"),
        Case("an apple", disagreeing("apple"), 1.0, "article"),
        Case("The Dog", disagreeing("dog"), 1.0, "article, lower-cased first"),
        Case("dog", disagreeing("the dog"), 1.0, "article, human side"),
        Case("a", disagreeing("the"), 1.0, "both empty"),
        Case("this dog", disagreeing("dog"), 0.0, "only a, an, the"),
        Case("a dog", ["dog"] * 10, 0.0, "humans agree: no articles"),
    ]


def whitespace_and_agreement_cases() -> list[Case]:
    return [
        Case("  yes\n", ["yes"] * 10, 1.0, "prediction stripped"),
        Case("yes", [" yes\t"] * 10, 1.0, "humans stripped"),
        Case("yes\tno", ["yes no"] * 10, 1.0, "tab becomes a space"),
        Case("yes\nno", ["yes no"] * 10, 1.0, "newline becomes a space"),
        Case("yes  no", ["yes no"] * 10, 0.0, "humans agree: spaces not collapsed"),
        Case("yes  no", disagreeing("yes no"), 1.0, "normalised: spaces collapse"),
        Case("yes\rno", ["yes no"] * 10, 0.0, "carriage return is not replaced"),
        Case("yes\rno", disagreeing("yes no"), 1.0, "normalised: split on any whitespace"),
        Case("Yes", ["yes"] * 5 + ["yes "] * 5, 0.0, "agreement judged after stripping"),
        Case("Yes", ["yes"] * 5 + ["Yes"] * 5, 1.0, "humans differ in case: all normalised"),
        Case("Yes", ["yes"] * 10, 0.0, "humans agree: compared as given"),
        Case("Yes", ["yes"] * 9 + ["no"], 1.0, "humans differ: normalised"),
        Case("yes", ["Yes"] * 10, 0.0, "humans agree: compared as given"),
        Case("yes", ["yes"] * 10, 1.0, "identical"),
    ]


def leave_one_out_cases() -> list[Case]:
    # m of 10 humans match: a left-out match leaves m - 1, a left-out other leaves m; so
    # m = 1: 9 * 1/3 / 10, m = 2: (2 * 1/3 + 8 * 2/3) / 10, m = 3: (3 * 2/3 + 7) / 10, m >= 4: 1
    expected = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0}
    cases = [Case("red", ["red"] * m + ["blue"] * (10 - m), expected[min(m, 4)], f"{m} of 10 match") for m in range(11)]
    return cases + [
        Case("red", ["red", "blue", "blue"], 2 / 9, "3 humans: (0 + 1/3 + 1/3) / 3"),
        Case("red", ["red"], 0.0, "one human: leaving it out leaves no match"),
    ]


CORPUS = (contraction_cases() + punctuation_cases() + word_cases() + whitespace_and_agreement_cases()
          + leave_one_out_cases())


def test_corpus_agrees_with_the_official_evaluation() -> None:
    wrong = [(c.prediction, c.humans, c.expected, question_accuracy(c.prediction, c.humans), c.why) for c in CORPUS
             if question_accuracy(c.prediction, c.humans) != pytest.approx(c.expected)]
    assert not wrong, f"{len(wrong)} of {len(CORPUS)} cases differ (prediction, humans, official, ours, why): {wrong}"


def test_contractions_table_is_the_official_one() -> None:
    assert len(OFFICIAL_CONTRACTIONS) == 120
    assert CONTRACTIONS == OFFICIAL_CONTRACTIONS


def test_accuracy_per_answer_type_and_result_file() -> None:
    questions = {
        1: (["yes"] * 10, "yes/no"),
        2: (["2"] * 10, "number"),
        3: (["red"] * 2 + ["blue"] * 8, "other"),
        4: (["red"] * 3 + ["blue"] * 7, "other"),
    }
    predictions = {1: "yes", 2: "two", 3: "red", 4: "Red."}  # 1, 0 (humans agree), 0.6, 0.9
    result = vqa_accuracy(predictions, questions)
    assert result["per_question"] == pytest.approx({1: 1.0, 2: 0.0, 3: 0.6, 4: 0.9})
    assert result["overall"] == pytest.approx(62.5)
    assert result["per_answer_type"] == pytest.approx({"number": 0.0, "other": 75.0, "yes/no": 100.0})
    assert result["questions"] == 4
    assert official_result_file(predictions) == [{"question_id": q, "answer": a} for q, a in predictions.items()]


def test_incomplete_result_files_are_refused() -> None:
    questions = {1: (["yes"] * 10, "yes/no"), 2: (["no"] * 10, "yes/no")}
    with pytest.raises(ValueError, match="1 questions have no predicted answer \\(first ids: \\[2\\]\\)"):
        vqa_accuracy({1: "yes"}, questions)
    with pytest.raises(ValueError, match="not in the question set"):
        vqa_accuracy({1: "yes", 2: "no", 3: "no"}, questions)
