"""What makes an object/region annotation unusable for training, decided one record at a time.

The filtering stage counts and drops records by these checks; the synthetic world injects
defects that each check recognises exactly, so the expected counts are known.
"""

from __future__ import annotations

import re

from copa.data.formats.records import Box

# Checked in this order; a box gets the first that applies.
BOX_DEFECTS = ("non_positive_size", "negative_coordinates", "outside_image", "too_small")
_WORD = re.compile(r"[a-z0-9]+")


def box_defect(box: Box, width: int, height: int, min_area_fraction: float = 0.01, tolerance: float = 1.0) -> str | None:
    """The first defect of :data:`BOX_DEFECTS` that ``box`` has in a ``width`` x ``height`` image, or None.

    ``tolerance``: pixels a box may stick out of the image (rounding in real annotations)
    before it counts as ``negative_coordinates`` or ``outside_image``.
    """
    if box.w <= 0 or box.h <= 0:
        return "non_positive_size"
    if box.x < -tolerance or box.y < -tolerance:
        return "negative_coordinates"
    if box.x + box.w > width + tolerance or box.y + box.h > height + tolerance:
        return "outside_image"
    if box.w * box.h < min_area_fraction * width * height:
        return "too_small"
    return None


def words(text: str) -> set[str]:
    """Lower-cased alphanumeric tokens of a phrase."""
    return set(_WORD.findall(text.lower()))


def phrase_overlap(a: str, b: str) -> float:
    """Token Jaccard overlap |A ∩ B| / |A ∪ B| of two phrases, in [0, 1] (1.0 for two empty phrases)."""
    return _jaccard(words(a), words(b))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def near_duplicate_ids(phrases: list[tuple[int, int, str]], threshold: float = 0.75) -> dict[int, int]:
    """Phrases of one image that overlap an earlier kept phrase of that image by more than ``threshold``.

    ``phrases``: (record id, image id, text). Phrases are visited in record-id order and the
    earlier one stays, so the result maps each near-duplicate's id to the id it duplicates.
    """
    kept: dict[int, list[tuple[int, set[str]]]] = {}
    duplicates: dict[int, int] = {}
    for record_id, image_id, text in sorted(phrases):
        tokens = words(text)
        for kept_id, kept_tokens in kept.get(image_id, []):
            if _jaccard(tokens, kept_tokens) > threshold:
                duplicates[record_id] = kept_id
                break
        else:
            kept.setdefault(image_id, []).append((record_id, tokens))
    return duplicates
