"""The examples of the downstream tasks read from a data root in the official formats: VQA v2
questions with their human answers, and RefCOCO+ referring expressions with their boxes
(captioning and retrieval read the Karpathy splits through :mod:`copa.data.heldout`).

A split that is not there is an error naming the file and the split, never an empty set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copa.data.formats import coco, refcoco, vqa
from copa.data.formats.records import Box, FormatError
from copa.data.layout import VQA_SPLITS, DataLayout


@dataclass(frozen=True)
class VQAExample:
    question_id: int
    image: Path
    question: str
    answers: tuple[str, ...]  # the 10 human answers; () where the split has no annotations
    answer_type: str  # yes/no | number | other; "" without annotations
    question_type: str = ""  # the annotations' question_type: the question's first words ("what color is the"); "" without


def vqa_examples(layout: DataLayout, split: str, need_answers: bool = True) -> list[VQAExample]:
    """The questions of a VQA v2 split, in file order, with the COCO image each one asks about."""
    if split not in VQA_SPLITS:
        raise ValueError(f"unknown VQA split {split!r}: one of {', '.join(VQA_SPLITS)}")
    path = layout.vqa_questions(split)
    if not path.is_file():
        raise FormatError(path, f"file not found: the VQA split {split} is not in this data root")
    data = vqa.read_split(layout.vqa, split)
    if data.answers is None and need_answers:
        raise FormatError(layout.vqa_annotations(split), f"file not found: the VQA split {split} has no annotations here")
    image_dir = layout.coco_images(split)
    out = []
    for q in data.questions:
        answers = data.answers[q.question_id] if data.answers is not None else None
        out.append(VQAExample(q.question_id, image_dir / coco.file_name(split, q.image_id), q.question,
                              answers.answers if answers else (), answers.answer_type if answers else "",
                              answers.question_type if answers else ""))
    if not out:
        raise FormatError(path, f"the VQA split {split} has no questions")
    return out


@dataclass(frozen=True)
class AnnotatedBox:
    category: str  # the category's name in instances.json
    box: Box  # xywh in image pixels


@dataclass(frozen=True)
class GroundingExample:
    ref_id: int
    image: Path
    width: int
    height: int
    sentence: str
    box: Box  # xywh in image pixels
    objects: tuple[AnnotatedBox, ...]  # every annotated box of the image (the baselines pick from them)


def grounding_examples(layout: DataLayout, split: str) -> list[GroundingExample]:
    """One example per (ref, sentence) of a RefCOCO+ split, in file order; images from COCO train2014."""
    if split not in refcoco.SPLITS:
        raise ValueError(f"unknown RefCOCO+ split {split!r}: one of {', '.join(refcoco.SPLITS)}")
    data = refcoco.read_refcoco(layout.refcoco, layout.coco_images("train2014"), check_files=False)
    images, categories = data.instances.images, data.instances.categories
    objects: dict[int, list[AnnotatedBox]] = {}
    for obj in data.instances.objects:
        objects.setdefault(obj.image_id, []).append(AnnotatedBox(categories[obj.category_id].name, obj.box))
    per_image = {image_id: tuple(boxes) for image_id, boxes in objects.items()}  # one tuple shared by the image's examples
    out = [GroundingExample(ref.ref_id, images[ref.image_id].path, images[ref.image_id].width, images[ref.image_id].height, sentence, ref.box,
                            per_image[ref.image_id])
           for ref in data.refs if ref.split == split for sentence in ref.sentences]
    if not out:
        raise FormatError(layout.refcoco_refs, f"no ref of the RefCOCO+ split {split}")
    return out
