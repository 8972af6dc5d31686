"""The examples of the downstream tasks read from a data root in the official formats: VQA v2
questions with their human answers, and RefCOCO+ referring expressions with their boxes
(captioning and retrieval read the Karpathy splits through :mod:`copa.data.heldout`).

A split that is not there is an error naming the file and the split, never an empty set.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from copa.config import ParamsError
from copa.data.formats import coco, refcoco, vqa
from copa.data.formats.records import Box, FormatError
from copa.data.formats.referents import read_referents
from copa.data.layout import VQA_SPLITS, DataLayout
from copa.data.patch_labels import rasterise, resize_boxes


@dataclass(frozen=True)
class VQAExample:
    question_id: int
    image: Path
    question: str
    answers: tuple[str, ...]  # the 10 human answers; () where the split has no annotations
    answer_type: str  # yes/no | number | other; "" without annotations
    question_type: str = ""  # the annotations' question_type: the question's first words ("what color is the"); "" without

    @property
    def top_answer(self) -> str:
        """The most frequent human answer (the first seen on ties)."""
        return Counter(self.answers).most_common(1)[0][0]


def vqa_examples(layout: DataLayout, split: str, need_answers: bool = True) -> list[VQAExample]:
    """The questions of a VQA v2 split, in file order, with the COCO image each one asks about."""
    if split not in VQA_SPLITS:
        raise ParamsError(f"unknown VQA split {split!r}: one of {', '.join(VQA_SPLITS)}")
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
        raise ParamsError(f"unknown RefCOCO+ split {split!r}: one of {', '.join(refcoco.SPLITS)}")
    data = refcoco.read_refcoco(layout.refcoco, layout.coco_images("train2014"), check_files=False)
    if data.dropped:
        warnings.warn(f"{layout.refcoco_refs}: {sum(map(len, data.dropped.values()))} refs left out for unusable boxes "
                      f"({', '.join(f'{r} {len(ids)}' for r, ids in sorted(data.dropped.items()))}; copa validate-data lists them)",
                      stacklevel=2)
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


def referent_targets(layout: DataLayout, examples: Sequence[VQAExample], image_size: int, patch_size: int,
                     min_overlap: float = 0.0) -> Tensor:
    """(Q, n) bool, row q: the patches question q refers to, its referent boxes square-resized to
    ``image_size`` as the model's input and rasterised on its patch grid; all False for a question
    that refers to no box. ``layout.referents`` must name every question."""
    referents = read_referents(layout.referents).questions
    sizes: dict = {}
    n = (image_size // patch_size) ** 2
    targets = []
    for example in examples:
        referred = referents.get(example.question_id)
        if referred is None:
            raise FormatError(layout.referents, f"VQA question {example.question_id} ({example.image.name}) is not in it")
        if not referred.boxes:
            targets.append(np.zeros(n, dtype=bool))
            continue
        if example.image not in sizes:
            with Image.open(example.image) as im:  # the header only
                sizes[example.image] = im.size
        width, height = sizes[example.image]
        boxes = resize_boxes([b.box.as_list() for b in referred.boxes], np.array([width]), np.array([height]), image_size)
        targets.append(rasterise(boxes, image_size, patch_size, min_overlap).any(axis=0).reshape(-1))
    return torch.from_numpy(np.stack(targets)) if targets else torch.zeros(0, n, dtype=torch.bool)
