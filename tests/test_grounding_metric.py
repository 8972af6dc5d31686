"""Grounding IoU and acc@0.5 (copa.eval.grounding) on hand-made boxes, degenerate ones included."""

from __future__ import annotations

import pytest
import torch

from copa.eval.grounding import box_iou, grounding_accuracy


def test_iou_hand_cases() -> None:
    pred = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 0, 0], [0, 0, 0, 10], [0, 0, -4, 10]], dtype=torch.float)
    target = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float)
    iou = box_iou(pred, target)
    expected = [1.0, 100 / 400, 50 / 150, 0.0, 0.0, 0.0, 0.0]  # same, inside, half overlap, disjoint, two empty, zero width, negative width
    assert iou.tolist() == pytest.approx(expected)
    assert not torch.isnan(iou).any()


def test_accuracy_threshold_is_inclusive() -> None:
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    # IoU exactly 0.5: a 10x5 box inside a 10x10 one; just below; just above
    pred = torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 4.99], [0.0, 0.0, 10.0, 5.01]])
    assert grounding_accuracy(pred, target) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="\\(N, 4\\)"):
        grounding_accuracy(pred[:, :3], target[:, :3])
