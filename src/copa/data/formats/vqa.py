"""VQA v2: ``v2_OpenEnded_mscoco_{split}_questions.json`` and ``v2_mscoco_{split}_annotations.json``
(https://visualqa.org/download.html). Each question has 10 human answers; ``answer_type`` is
``yes/no``, ``number`` or ``other``. The official test split ships questions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copa.data.formats.records import FormatError, claim_id, dump_json, list_records, load_json, records

ANSWER_TYPES = ("yes/no", "number", "other")
ANSWERS_PER_QUESTION = 10


def questions_file(split: str) -> str:
    return f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotations_file(split: str) -> str:
    return f"v2_mscoco_{split}_annotations.json"


@dataclass(frozen=True)
class Question:
    question_id: int
    image_id: int
    question: str


@dataclass(frozen=True)
class Answers:
    question_id: int
    image_id: int
    question_type: str  # the first words of the question, e.g. "what color is the"
    answer_type: str
    multiple_choice_answer: str  # the most frequent human answer
    answers: tuple[str, ...]  # the 10 human answers


@dataclass(frozen=True)
class VQASplit:
    split: str
    questions: list[Question]
    answers: dict[int, Answers] | None  # by question id; None where the split has no annotations


def read_questions(path: Path, known_images: set[int] | None = None) -> list[Question]:
    data = load_json(path)
    questions, seen = [], set()
    for rec in records(data, "questions", path, id_field="question_id"):
        q = Question(rec.integer("question_id"), rec.integer("image_id"), rec.string("question"))
        if known_images is not None and q.image_id not in known_images:
            raise rec.error("image_id", f"image id {q.image_id} is not an image of this split")
        claim_id(seen, q.question_id, rec, "question_id", "question id")
        questions.append(q)
    return questions


def read_annotations(path: Path, questions: list[Question]) -> dict[int, Answers]:
    by_id = {q.question_id: q for q in questions}
    answers: dict[int, Answers] = {}
    for rec in records(load_json(path), "annotations", path, id_field="question_id"):
        qid = rec.integer("question_id")
        if qid not in by_id:
            raise rec.error("question_id", f"question id {qid} is not in the questions file")
        if qid in answers:
            raise rec.error("question_id", f"duplicate annotation for question {qid}")
        image_id = rec.integer("image_id")
        if image_id != by_id[qid].image_id:
            raise rec.error("image_id", f"image id {image_id} differs from the question's {by_id[qid].image_id}")
        answer_type = rec.string("answer_type")
        if answer_type not in ANSWER_TYPES:
            raise rec.error("answer_type", f"expected one of {', '.join(ANSWER_TYPES)}, got {answer_type!r}")
        human = [a.string("answer") for a in list_records(rec.array("answers"), path, f"{rec.label}.answers", "answer_id")]
        if len(human) != ANSWERS_PER_QUESTION:
            raise rec.error("answers", f"expected {ANSWERS_PER_QUESTION} human answers, got {len(human)}")
        answers[qid] = Answers(qid, image_id, rec.string("question_type"), answer_type, rec.string("multiple_choice_answer"), tuple(human))
    missing = [(i, q.question_id) for i, q in enumerate(questions) if q.question_id not in answers]
    if missing:
        i, qid = missing[0]
        raise FormatError(
            path,
            f"question {qid} of the questions file has no annotation here ({len(missing)} question(s) have none)",
            f"questions[{i}] (question_id {qid})",
            "question_id",
        )
    return answers


def read_split(vqa_dir: Path, split: str, known_images: set[int] | None = None) -> VQASplit:
    questions = read_questions(vqa_dir / questions_file(split), known_images)
    ann_path = vqa_dir / annotations_file(split)
    answers = read_annotations(ann_path, questions) if ann_path.exists() else None
    return VQASplit(split, questions, answers)


def _header(split: str) -> dict:
    return {
        "info": {"description": "copa-repro synthetic world in the VQA v2 format", "version": "2.0", "year": 2017},
        "license": {"url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0 (synthetic)"},
        "data_subtype": split,
        "data_type": "mscoco",
    }


def write_questions(path: Path, split: str, questions: list[Question]) -> None:
    data = {**_header(split), "task_type": "Open-Ended"}
    data["questions"] = [{"image_id": q.image_id, "question": q.question, "question_id": q.question_id} for q in questions]
    dump_json(data, path)


def write_annotations(path: Path, split: str, answers: list[Answers]) -> None:
    data = _header(split)
    data["annotations"] = [
        {
            "question_type": a.question_type,
            "multiple_choice_answer": a.multiple_choice_answer,
            "answers": [{"answer": text, "answer_confidence": "yes", "answer_id": i + 1} for i, text in enumerate(a.answers)],
            "image_id": a.image_id,
            "answer_type": a.answer_type,
            "question_id": a.question_id,
        }
        for a in answers
    ]
    dump_json(data, path)
