"""ITM with hard negatives (ALBEF §3.2, COPA Appendix B): in-batch negatives sampled by ITC
similarity, the pairs they make, the loss.

The sampler can never hand ``torch.multinomial`` an invalid distribution (an upstream lesson,
DESIGN.md: float32, epsilon, a batch-size-1 guard).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from copa.models.objectives.draws import draw_device

NO_NEGATIVE = -1  # sample_hard_negatives' index for a row that has no valid negative
_SIM_CLAMP = 1e4  # |similarity| bound before the softmax of the hard-negative sampler


@torch.no_grad()
def negative_weights(
    sim: Tensor, ids: Tensor | None = None, eps: float = 1e-6, sharpness: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Sampling weights (B, B) over in-batch negatives, and which rows have one (B,) bool.

    softmax(sharpness x sim) in float32 over the allowed columns (not the diagonal, not a column
    with the row's id), plus ``eps`` on allowed columns only, so the positive is never drawn and
    every row with a negative has a positive, finite sum. ``sharpness`` 1 is ALBEF's draw, 0 a
    uniform one (random negatives), in between a softer preference for the similar ones. NaN
    similarities count as the lowest and +-inf are clamped (after the sharpness), so
    ``torch.multinomial`` always gets a valid distribution. A row with no allowed column gets a
    dummy uniform row (its sample must be discarded: see ``has_neg``).
    """
    b = sim.shape[0]
    logits = torch.nan_to_num(sim.float(), nan=-_SIM_CLAMP, posinf=_SIM_CLAMP, neginf=-_SIM_CLAMP)
    logits = (logits * sharpness).clamp(-_SIM_CLAMP, _SIM_CLAMP)  # (B, B); finite x finite: never NaN, overflow clamped
    if ids is None:
        allowed = ~torch.eye(b, dtype=torch.bool, device=sim.device)  # (B, B)
    else:
        allowed = ids[:, None] != ids[None, :]  # (B, B): also drops duplicates of the same image
    has_neg = allowed.any(1)  # (B,)
    logits = logits.masked_fill(~allowed, float("-inf"))
    logits = torch.where(has_neg[:, None], logits, torch.zeros_like(logits))  # no all -inf rows
    weights = (logits.softmax(1) + eps) * allowed  # (B, B)
    weights = torch.where(has_neg[:, None], weights, torch.ones_like(weights))
    return weights, has_neg


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    generator: torch.Generator | None = None,
    ids: Tensor | None = None,
    sharpness: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """One hard negative per row, drawn with probability softmax(sharpness x similarity)
    (ALBEF §3.2: sharpness 1; see :func:`negative_weights`).

    ``sim_i2t``/``sim_t2i`` are (B, N) with N >= B, e.g. :class:`ItcOutput`'s (B, B+Q); only
    the first B (in-batch) columns are used. Returns ``neg_text_idx`` (B,), a negative text
    for each image, and ``neg_image_idx`` (B,), a negative image for each text. A row with no
    possible negative (batch size 1, or every sample shares its id) gets ``NO_NEGATIVE`` (-1):
    the caller drops it from ITM, which :func:`itm_pairs` does. Never raises on the values.
    """
    b = sim_i2t.shape[0]
    if sim_t2i.shape[0] != b or min(sim_i2t.shape[1], sim_t2i.shape[1]) < b:
        raise ValueError(
            f"similarities must be (B, N >= B) with the same B, got {tuple(sim_i2t.shape)} "
            f"and {tuple(sim_t2i.shape)}"
        )
    idx = []
    for sim in (sim_i2t[:, :b], sim_t2i[:, :b]):
        weights, has_neg = negative_weights(sim, ids, sharpness=sharpness)
        drawn = torch.multinomial(weights.to(draw_device(generator, weights.device)), 1, generator=generator)
        drawn = drawn.squeeze(1).to(weights.device)  # (B,)
        idx.append(torch.where(has_neg, drawn, torch.full_like(drawn, NO_NEGATIVE)))
    return idx[0], idx[1]


def itm_pairs(neg_text_idx: Tensor, neg_image_idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Image index, text index and label (1 match, 0 not) of every ITM example, in ALBEF order.

    Rows: the B positives (b, b); then (neg_image_idx[b], b) for each text; then
    (b, neg_text_idx[b]) for each image; rows whose negative is ``NO_NEGATIVE`` are dropped.
    Shapes (B + n_neg,) each.
    """
    b = neg_text_idx.shape[0]
    ar = torch.arange(b, device=neg_text_idx.device)
    ok_i, ok_t = neg_image_idx >= 0, neg_text_idx >= 0
    image_idx = torch.cat([ar, neg_image_idx[ok_i], ar[ok_t]])
    text_idx = torch.cat([ar, ar[ok_i], neg_text_idx[ok_t]])
    labels = torch.cat([torch.ones(b), torch.zeros(int(ok_i.sum()) + int(ok_t.sum()))]).long()
    return image_idx, text_idx, labels.to(ar.device)


def itm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the ITM head's (n, 2) logits against (n,) labels (ALBEF)."""
    return F.cross_entropy(logits, labels)
