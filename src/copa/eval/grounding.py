"""Visual grounding accuracy (RefCOCO+ protocol of X-VLM, mPLUG, COPA): a prediction is correct
when its IoU with the ground-truth box is at least 0.5. Boxes are xywh in pixels.

Two instruments beside it: the correlation of the predicted boxes' centres with the true ones'
(per axis). A model that reads only the expression can learn a box's size from it ("large") but
not where the object lies: at acc@0.5 near its baselines, a centre correlation near 0 says the
model does not localise at all, one well above 0 that it localises too coarsely. And the pointing
game (Zhang et al., "Top-down neural attention by excitation backprop", 2016) of a patch scorer
such as the TPD: where its highest-scoring patch lies (``pointed_centres``, ``points_inside``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def box_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise IoU (N,) of xywh boxes (N, 4). Negative widths or heights count as empty; two
    empty boxes have IoU 0 (there is no area to agree on), never NaN."""
    pred, target = pred.double(), target.double()
    p_wh, t_wh = pred[:, 2:].clamp(min=0), target[:, 2:].clamp(min=0)
    top_left = torch.maximum(pred[:, :2], target[:, :2])
    bottom_right = torch.minimum(pred[:, :2] + p_wh, target[:, :2] + t_wh)
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = p_wh.prod(dim=1) + t_wh.prod(dim=1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def grounding_hits(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """Each prediction's hit (N,) bool: IoU with its ground truth >= ``threshold``."""
    if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] != 4:
        raise ValueError(f"boxes must both be (N, 4) xywh, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if len(pred) == 0:
        raise ValueError("no boxes to score")
    return box_iou(pred, target) >= threshold


def grounding_accuracy(pred: Tensor, target: Tensor, threshold: float = 0.5) -> float:
    """Percent of predictions with IoU >= ``threshold``."""
    return 100.0 * grounding_hits(pred, target, threshold).double().mean().item()


CONSTANT_STD = 1e-9  # relative to the image side: centres that vary less are one constant box


def centre_correlation(pred: Tensor, target: Tensor, sizes: Tensor) -> tuple[float | None, float | None]:
    """Pearson r of the predicted and true box centres (xywh, pixels), x and y, each relative to its
    image's side (``sizes``: (N, 2) width, height, so images of several sizes compare); None for an
    axis where either side is constant (r is undefined)."""
    def centres(boxes: Tensor) -> Tensor:
        return (boxes[:, :2].double() + boxes[:, 2:].double() / 2) / sizes.double()

    p, t = centres(pred), centres(target)
    out = []
    for axis in range(2):
        # a constant relative box comes back from pixels with rounding noise (std ~1e-17), whose r means nothing
        if len(p) < 2 or p[:, axis].std() <= CONSTANT_STD or t[:, axis].std() <= CONSTANT_STD:
            out.append(None)
        else:
            out.append(torch.corrcoef(torch.stack([p[:, axis], t[:, axis]]))[0, 1].item())
    return out[0], out[1]


def pointed_centres(scores: Tensor) -> Tensor:
    """(N, n) scores of a square grid's n patches, row-major -> (N, 2) the relative x, y of the centre
    of each row's highest-scoring patch (the first of equal ones)."""
    if scores.ndim != 2 or math.isqrt(scores.shape[1]) ** 2 != scores.shape[1]:
        raise ValueError(f"scores must be (N, n) over a square grid of patches, got {tuple(scores.shape)}")
    side, best = math.isqrt(scores.shape[1]), scores.argmax(dim=1)
    return (torch.stack([best % side, best // side], dim=1).double() + 0.5) / side


def points_inside(points: Tensor, boxes: Tensor, sizes: Tensor) -> Tensor:
    """(N,) bool: each relative point (N, 2) inside its xywh box in pixels (N, 4), edges included, on an
    image of ``sizes`` (N, 2) width, height."""
    xy = points.double() * sizes.double()
    top_left, bottom_right = boxes[:, :2].double(), boxes[:, :2].double() + boxes[:, 2:].double()
    return ((xy >= top_left) & (xy <= bottom_right)).all(dim=1)


def patch_centre_share(boxes: Tensor, sizes: Tensor, side: int) -> Tensor:
    """(N,) the share of a side x side grid's patch centres inside each xywh box in pixels, on images of
    ``sizes`` (N, 2) width, height."""
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    xs, ys = centres.repeat(side), centres.repeat_interleave(side)  # row-major, as the patches
    points = torch.stack([xs, ys], dim=1)
    return torch.stack([points_inside(points, box.expand(len(points), 4), size.expand(len(points), 2)).double().mean()
                        for box, size in zip(boxes, sizes)])
