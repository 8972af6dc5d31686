"""PTA (COPA §3.3 eq. 3): the patch-text alignment loss on the TPD's scores, and the detection
metrics of the TPD (Figure 5, Appendix C.1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _per_sample_mean(bce: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over each sample's valid patches, then over samples that have one."""
    if mask is None:
        return bce.mean(1).mean()
    mask = mask.to(bce.dtype)  # (B, N)
    n = mask.sum(1)  # (B,)
    per_sample = (bce * mask).sum(1) / n.clamp(min=1)  # (B,)
    has = (n > 0).to(bce.dtype)
    return (per_sample * has).sum() / has.sum().clamp(min=1)


def pta_loss(scores: Tensor, labels: Tensor, mask: Tensor | None = None, eps: float = 1e-7) -> Tensor:
    """COPA eq. 3 with its minus sign restored: BCE of the TPD scores a_i against patch labels Y_i.

    ``scores`` (B, N) are sigmoid outputs; ``labels`` (B, N) in {0, 1}; ``mask`` (B, N) marks
    the patches that count (all when None). Reduction: eq. 3's 1/e sum over the e patches of a
    sample, then the mean over samples (the paper does not say; with no mask this equals
    ``F.binary_cross_entropy(..., reduction='mean')``). Scores are clamped to [eps, 1 - eps]
    in float32 so scores of exactly 0 or 1 give a finite loss and zero, not NaN, gradient.
    Prefer :func:`pta_loss_from_logits` when the TPD can return logits.
    """
    a = scores.float().clamp(eps, 1 - eps)
    y = labels.float()
    bce = -(y * torch.log(a) + (1 - y) * torch.log1p(-a))  # (B, N) COPA eq. 3
    return _per_sample_mean(bce, mask)


def pta_loss_from_logits(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """:func:`pta_loss` on pre-sigmoid logits F_theta(h_i) (COPA §3.2): stable, autocast-safe."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return _per_sample_mean(bce, mask)


def num_kept(n: int, keep_ratio: float) -> int:
    """K = round(n * keep_ratio) (Python's round), within [0, n]."""
    return min(max(round(n * keep_ratio), 0), n)


class PatchCounts(NamedTuple):
    tp: Tensor  # () detected and labelled 1
    fp: Tensor  # () detected and labelled 0
    fn: Tensor  # () not detected and labelled 1
    tn: Tensor  # () not detected and labelled 0


@torch.no_grad()
def detected_patches(scores: Tensor, keep_ratio: float | None = None, threshold: float = 0.5) -> Tensor:
    """(B, N) bool: score > threshold, or, with ``keep_ratio``, among the top-K of the row."""
    if keep_ratio is None:
        return scores > threshold
    k = num_kept(scores.shape[1], keep_ratio)
    top = scores.float().topk(k, dim=1).indices  # (B, K)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)


@torch.no_grad()
def patch_confusion(
    scores: Tensor, labels: Tensor, keep_ratio: float | None = None, threshold: float = 0.5
) -> PatchCounts:
    """Patch-level confusion counts summed over the batch, to accumulate over a dataset."""
    return mask_confusion(detected_patches(scores, keep_ratio, threshold), labels)


@torch.no_grad()
def mask_confusion(detected: Tensor, labels: Tensor) -> PatchCounts:
    """Confusion counts of a (B, N) bool detection against (B, N) 0/1 labels."""
    det, pos = detected.bool(), labels.bool()
    return PatchCounts((det & pos).sum(), (det & ~pos).sum(), (~det & pos).sum(), (~det & ~pos).sum())


@torch.no_grad()
def kept_mask(kept: Tensor, n: int) -> Tensor:
    """(B, N) bool of the patches a selector kept, from its (B, K) indices (-1: none, e.g. a token
    fused at an earlier selection layer)."""
    hits = torch.zeros(kept.shape[0], n + 1, dtype=torch.long, device=kept.device)
    hits.scatter_add_(1, kept.long() + 1, torch.ones_like(kept, dtype=torch.long))  # -1 lands in column 0
    return hits[:, 1:] > 0


class PatchMetrics(NamedTuple):
    precision: Tensor  # () tp / (tp + fp), 0 when nothing is detected
    recall: Tensor  # () tp / (tp + fn), 0 when no patch is labelled 1
    accuracy: Tensor  # () (tp + tn) / all patches
    f1: Tensor  # () 2 tp / (2 tp + fp + fn), the harmonic mean of precision and recall


def metrics_from_counts(c: PatchCounts) -> PatchMetrics:
    """Micro-averaged precision, recall, accuracy, F1; 0/0 is 0 (sklearn's zero_division=0)."""
    tp, fp, fn, tn = (x.double() for x in c)

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))

    return PatchMetrics(ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(tp + tn, tp + fp + fn + tn), ratio(2 * tp, 2 * tp + fp + fn))


@torch.no_grad()
def patch_precision_recall(
    scores: Tensor, labels: Tensor, keep_ratio: float | None = None, threshold: float = 0.5
) -> PatchMetrics:
    """TPD detection quality over the patches of a batch (Figure 5: accuracy and recall).

    "Detected" is ``score > threshold`` by default, or "kept among the top-K" with K =
    round(N * keep_ratio) when ``keep_ratio`` is given: the two readings Figure 5 allows.
    ``scores``, ``labels`` (B, N). For a dataset, sum :func:`patch_confusion` over batches and
    call :func:`metrics_from_counts`.
    """
    return metrics_from_counts(patch_confusion(scores, labels, keep_ratio, threshold))
