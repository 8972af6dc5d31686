"""What makes an object/region annotation unusable for training, decided per record or per image.

The filtering stage counts and drops records by these checks; the synthetic world injects
defects that each check recognises exactly, so the expected counts are known.
"""

from __future__ import annotations

import math
import string
from typing import Literal

from copa.data.formats.records import Box

# Checked in this order; a box gets the first that applies.
BOX_DEFECTS = ("non_finite_box", "non_positive_size", "negative_coordinates", "outside_image", "too_small")
# Punctuation separates words like spaces do ("circle." is "circle").
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


def check_box(box: Box, width: int, height: int, min_area_fraction: float = 0.01, tolerance: float = 1.0) -> tuple[str | None, Box]:
    """(the first defect of :data:`BOX_DEFECTS` that ``box`` has in a ``width`` x ``height`` image,
    or None; the box cut to the image).

    ``tolerance``: pixels a box may stick out of the image (rounding in real annotations) before
    it counts as ``negative_coordinates`` or ``outside_image``; within it, the box is usable once
    cut to the image, and its area is judged after that cut.
    """
    try:
        x, y, w, h = (float(v) for v in box)
    except OverflowError:  # an integer beyond float range (JSON allows 1e400 as digits)
        return "non_finite_box", box
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h)):
        return "non_finite_box", box
    if w <= 0 or h <= 0:
        return "non_positive_size", box
    if x < -tolerance or y < -tolerance:
        return "negative_coordinates", box
    x1, y1 = x + w, y + h
    if x1 > width + tolerance or y1 > height + tolerance:
        return "outside_image", box
    if x < 0 or y < 0 or x1 > width or y1 > height:
        x, y = max(x, 0), max(y, 0)
        box = Box(x, y, min(x1, width) - x, min(y1, height) - y)
    if box.w * box.h < min_area_fraction * width * height:
        return "too_small", box
    return None, box


def box_defect(box: Box, width: int, height: int, min_area_fraction: float = 0.01, tolerance: float = 1.0) -> str | None:
    """The defect part of :func:`check_box`."""
    return check_box(box, width, height, min_area_fraction, tolerance)[0]


def normalise_text(text: str) -> str:
    """Whitespace collapsed and stripped: what 'empty after normalisation' and duplicates compare."""
    return " ".join(text.split())


def words(text: str) -> set[str]:
    """Lower-cased words of a phrase, punctuation removed."""
    return set(text.lower().translate(_PUNCTUATION_TO_SPACE).split())


def phrase_overlap(a: str, b: str) -> float:
    """Token Jaccard overlap |A ∩ B| / |A ∪ B| of two phrases, in [0, 1] (1.0 for two empty phrases)."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


OverlapMeasure = Literal["jaccard", "containment"]


def near_duplicates(texts: list[str], threshold: float = 0.75, measure: OverlapMeasure = "jaccard") -> list[int | None]:
    """For phrases of one image in file order: the index of the earlier kept phrase that each one
    overlaps by more than ``threshold`` (so it is a near-duplicate), or None (it is kept).

    Overlap is over word sets: ``jaccard`` |A∩B|/|A∪B|, ``containment`` |A∩B|/min(|A|,|B|). The
    earlier phrase stays; a phrase is compared with kept phrases only (those sharing a word with
    it, found through an inverted index), so a chain a~b~c where a and c differ keeps a and c.
    """
    token_sets = [words(t) for t in texts]
    result: list[int | None] = [None] * len(texts)
    postings: dict[str, list[int]] = {}  # word -> kept phrases that have it
    for i, a in enumerate(token_sets):
        candidates = {j for w in a for j in postings.get(w, ())}
        for j in sorted(candidates):
            b = token_sets[j]
            shared = len(a & b)
            score = shared / (len(a) + len(b) - shared) if measure == "jaccard" else shared / min(len(a), len(b))
            if score > threshold:
                result[i] = j
                break
        else:
            for w in a:
                postings.setdefault(w, []).append(i)
    return result


def near_duplicate_ids(phrases: list[tuple[int, int, str]], threshold: float = 0.75, measure: OverlapMeasure = "jaccard") -> dict[int, int]:
    """``phrases``: (record id, image id, text) in file order -> {near-duplicate id: id it duplicates}."""
    by_image: dict[int, list[tuple[int, str]]] = {}
    for record_id, image_id, text in phrases:
        by_image.setdefault(image_id, []).append((record_id, text))
    duplicates = {}
    for items in by_image.values():
        for (record_id, _), source in zip(items, near_duplicates([t for _, t in items], threshold, measure)):
            if source is not None:
                duplicates[record_id] = items[source][0]
    return duplicates
