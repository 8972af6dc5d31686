"""What makes an object/region annotation unusable for training, decided per record or per image.

The filtering stage counts and drops records by these checks; the synthetic world injects
defects that each check recognises exactly, so the expected counts are known.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import numpy as np

from copa.data.formats.records import Box

# Checked in this order; a box gets the first that applies.
BOX_DEFECTS = ("non_finite_box", "non_positive_size", "negative_coordinates", "outside_image", "too_small")
_WORD = re.compile(r"[a-z0-9]+")


def box_defect(box: Box, width: int, height: int, min_area_fraction: float = 0.01, tolerance: float = 1.0) -> str | None:
    """The first defect of :data:`BOX_DEFECTS` that ``box`` has in a ``width`` x ``height`` image, or None.

    ``tolerance``: pixels a box may stick out of the image (rounding in real annotations) before
    it counts as ``negative_coordinates`` or ``outside_image``; such a box is usable once
    :func:`clip_box` has cut it to the image, and its area is judged after that cut.
    """
    if not all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h)):
        return "non_finite_box"
    if box.w <= 0 or box.h <= 0:
        return "non_positive_size"
    if box.x < -tolerance or box.y < -tolerance:
        return "negative_coordinates"
    if box.x + box.w > width + tolerance or box.y + box.h > height + tolerance:
        return "outside_image"
    clipped = clip_box(box, width, height)
    if clipped.w * clipped.h < min_area_fraction * width * height:
        return "too_small"
    return None


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` cut to the image (a no-op for boxes inside it)."""
    x0, y0 = max(box.x, 0), max(box.y, 0)
    x1, y1 = min(box.x + box.w, width), min(box.y + box.h, height)
    if (x0, y0, x1, y1) == (box.x, box.y, box.x + box.w, box.y + box.h):
        return box
    return Box(x0, y0, x1 - x0, y1 - y0)


def normalise_text(text: str) -> str:
    """Whitespace collapsed and stripped: what 'empty after normalisation' and duplicates compare."""
    return " ".join(text.split())


def words(text: str) -> set[str]:
    """Lower-cased alphanumeric tokens of a phrase."""
    return set(_WORD.findall(text.lower()))


def phrase_overlap(a: str, b: str) -> float:
    """Token Jaccard overlap |A ∩ B| / |A ∪ B| of two phrases, in [0, 1] (1.0 for two empty phrases)."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


OverlapMeasure = Literal["jaccard", "containment"]


def near_duplicates(texts: list[str], threshold: float = 0.75, measure: OverlapMeasure = "jaccard") -> list[int | None]:
    """For phrases of one image in file order: the index of the earlier kept phrase that each one
    overlaps by more than ``threshold`` (so it is a near-duplicate), or None (it is kept).

    Overlap is over word sets: ``jaccard`` |A∩B|/|A∪B|, ``containment`` |A∩B|/min(|A|,|B|). The
    earlier phrase stays; a phrase is compared with kept phrases only, so a chain a~b~c where a
    and c differ keeps a and c.
    """
    token_sets = [words(t) for t in texts]
    n = len(texts)
    if n < 2:
        return [None] * n
    vocab = {w: j for j, w in enumerate(sorted(set().union(*token_sets)))}
    incidence = np.zeros((n, max(1, len(vocab))), dtype=np.float32)
    for i, tokens in enumerate(token_sets):
        incidence[i, [vocab[w] for w in tokens]] = 1.0
    inter = incidence @ incidence.T  # (n, n) shared words
    sizes = incidence.sum(axis=1)
    if measure == "jaccard":
        denominator = sizes[:, None] + sizes[None, :] - inter
    else:
        denominator = np.minimum(sizes[:, None], sizes[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(denominator > 0, inter / np.maximum(denominator, 1e-9), 1.0)
    exceeds = np.tril(score > threshold, k=-1)  # [i, j]: i overlaps the earlier j
    result: list[int | None] = [None] * n
    if not exceeds.any():
        return result
    kept = np.ones(n, dtype=bool)
    for i in np.flatnonzero(exceeds.any(axis=1)):  # only rows that may be duplicates need the walk
        earlier = np.flatnonzero(exceeds[i] & kept)
        if earlier.size:
            kept[i] = False
            result[i] = int(earlier[0])
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
