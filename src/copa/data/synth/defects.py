"""Defective annotation records added to the object/region files at known rates.

Each defect is a copy of a clean record with a new id and one known fault, so the filtering
stage has exact expected counts and the clean records stay the scene's truth. Every injected box
is recognised by :func:`copa.data.annotation_checks.box_defect` as exactly its kind, and every
near-duplicate phrase overlaps its source by more than 0.75 (token Jaccard) with a box IoU above 0.75.
"""

from __future__ import annotations

import math

import numpy as np

from copa.data.formats.records import Box

BOX_DEFECT_KINDS = ("negative_coordinates", "outside_image", "too_small")
NEAR_DUPLICATE = "near_duplicate_region"
DUPLICATE_SUFFIXES = ("here", "shown", "visible", "pictured")


def defect_count(rate: float, clean: int) -> int:
    return int(round(rate * clean))


def corrupt_box(kind: str, box: Box, width: int, height: int, rng: np.random.Generator) -> Box:
    """``box`` moved or shrunk so that it has exactly the defect ``kind``."""
    if kind == "negative_coordinates":  # pushed 2+ px past the left or top edge
        shift = float(rng.uniform(2, max(3, box.w / 3)))
        return Box(-shift, box.y, box.w, box.h) if rng.random() < 0.5 else Box(box.x, -shift, box.w, box.h)
    if kind == "outside_image":  # sticks out 2+ px past the right or bottom edge
        over = float(rng.uniform(2, max(3, box.w / 2)))
        if rng.random() < 0.5:
            return Box(width - box.w + over, box.y, box.w, box.h)
        return Box(box.x, height - box.h + over, box.w, box.h)
    if kind == "too_small":  # under 1% of the image, inside it
        side = math.sqrt(0.01 * width * height) * float(rng.uniform(0.3, 0.8))
        return Box(round(min(box.x, width - side - 1), 2), round(min(box.y, height - side - 1), 2), round(side, 2), round(side, 2))
    raise ValueError(f"unknown box defect {kind!r}")


def near_duplicate(phrase: str, box: Box, width: int, height: int, rng: np.random.Generator) -> tuple[str, Box]:
    """A re-worded phrase (one new word appended: Jaccard n/(n+1) > 0.75 for n >= 4 distinct words) with a box
    jittered by at most 3% of its side, kept inside the image."""
    text = f"{phrase} {DUPLICATE_SUFFIXES[int(rng.integers(len(DUPLICATE_SUFFIXES)))]}"
    dx, dy = (int(round(v)) for v in rng.uniform(-0.03, 0.03, size=2) * (box.w, box.h))
    x = min(max(box.x + dx, 0), width - box.w)
    y = min(max(box.y + dy, 0), height - box.h)
    return text, Box(x, y, box.w, box.h)
