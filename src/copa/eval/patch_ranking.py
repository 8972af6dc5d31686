"""How well a detector's scores rank a box's patches, threshold-free, with references to read it by.

The kept-patch precision of a selection is capped: keeping a fraction f of the patches, precision
cannot pass base_rate / f (0.24 for the demo's 0.12 at f = 0.5). Average precision (AP) of the
score ranking has no such cap, so it is what shows how far a detector is from chance and from
what annotations alone allow:

- ``chance``: the expected AP of a random ranking (closed form, per box);
- ``all_boxes``: every annotated patch of the image first, the rest after: the best a
  text-free detector that finds every object perfectly can do;
- ``same_text_boxes``: the patches of boxes with the same text first (several "This is a circle."
  boxes cannot be told apart by their text), then the other boxes: the best a text-aware one can do.
Ties inside a tier are broken by a seeded random order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
from torch import Tensor


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """(B,) AP of ranking each row's patches by score (highest first) against its 0/1 labels;
    NaN for a row without a positive. Ties keep the patch order (stable sort)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    hits = labels.float().gather(1, order)  # (B, n)
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=hits.dtype, device=hits.device)
    precision_at_hit = hits.cumsum(1) / ranks * hits
    return precision_at_hit.sum(1) / hits.sum(1)  # 0/0 -> NaN


def chance_average_precision(positives: Tensor, n: int) -> Tensor:
    """Expected AP of a uniformly random ranking of n patches with k positives (k >= 1):
    E[AP] = (n - k) / (n - 1) * H_n / n + (k - 1) / (n - 1), H_n the n-th harmonic number
    (a positive at rank r has expected precision (1 + (k - 1)(r - 1)/(n - 1)) / r)."""
    k = positives.double()
    harmonic = torch.arange(1, n + 1, dtype=torch.float64).reciprocal().sum()
    if n == 1:
        return torch.ones_like(k)
    return (n - k) / (n - 1) * harmonic / n + (k - 1) / (n - 1)


def reference_tiers(labels: Tensor, images: Sequence[str], texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(B, n) float64 0/1 tiers of each box's row: ``any_box``, the patches of every box of its
    image; ``same_text``, those of the boxes of its image with its text (``labels`` (B, n): each
    box's patch labels; ``images``/``texts``: its image and text)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[image].append(i)
    any_box = torch.zeros_like(labels, dtype=torch.float64)
    same_text = torch.zeros_like(labels, dtype=torch.float64)
    for members in groups.values():
        union = labels[members].amax(0).double()
        for i in members:
            any_box[i] = union
            same_text[i] = labels[[j for j in members if texts[j] == texts[i]]].amax(0).double()
    return any_box, same_text


def tie_jitter(shape: torch.Size, seed: int) -> Tensor:
    """Seeded random order inside a tier: added to 0/1 tiers, it never crosses a tier (< 0.5)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.5


def annotation_references(labels: Tensor, images: Sequence[str], texts: Sequence[str], seed: int = 0) -> dict[str, float]:
    """Mean AP of the three references of the module docstring over boxes with a positive patch.

    ``labels`` (B, n): each box's patch labels; ``images``/``texts``: its image and its text, so
    that the boxes of one image (all of the image's held-out boxes) can stand in for a detector.
    """
    any_box, same_text = reference_tiers(labels, images, texts)
    jitter = tie_jitter(labels.shape, seed)
    has_positive = labels.sum(1) > 0
    rows = {
        "chance": chance_average_precision(labels.sum(1), labels.shape[1]),
        "all_boxes": average_precision(any_box + jitter, labels),
        "same_text_boxes": average_precision(any_box + same_text + jitter, labels),
    }
    return {name: float(values[has_positive].mean()) for name, values in rows.items()}
