"""Grounding IoU, acc@0.5 and the centre correlation (copa.eval.grounding) on hand-made boxes, degenerate ones included."""

from __future__ import annotations

import pytest
import torch

from copa.eval.grounding import box_iou, centre_correlation, grounding_accuracy


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


def test_centre_correlation_is_relative_to_each_images_side() -> None:
    sizes = torch.tensor([[100.0, 100.0], [200.0, 100.0], [100.0, 200.0], [200.0, 200.0]])
    target = torch.tensor([[10.0, 10.0, 20.0, 20.0], [100.0, 60.0, 40.0, 20.0], [40.0, 20.0, 10.0, 40.0], [20.0, 140.0, 20.0, 20.0]])
    rel_x = torch.tensor([0.2, 0.6, 0.45, 0.15])  # the true centres, relative
    # the same relative centres in each image, boxes of other sizes: x exact; y reversed
    pred = torch.stack([rel_x * sizes[:, 0] - 5, (1 - torch.tensor([0.2, 0.7, 0.2, 0.75])) * sizes[:, 1] - 5,
                        torch.full((4,), 10.0), torch.full((4,), 10.0)], dim=1)
    x, y = centre_correlation(pred, target, sizes)
    assert x == pytest.approx(1.0) and y == pytest.approx(-1.0)
    # in pixels, side - y is no linear map of y where the sides differ: the sides matter
    assert centre_correlation(pred, target, torch.ones(4, 2))[1] > -0.99
    constant = torch.tensor([[45.0, 45.0, 10.0, 10.0]]).expand(4, 4)
    assert centre_correlation(constant, target, torch.full((4, 2), 100.0)) == (None, None)  # undefined, not NaN


def test_a_constant_relative_box_on_images_of_several_sizes_has_no_correlation() -> None:
    """The same relative box in pixels on images of several sizes comes back with rounding noise (std ~1e-17
    at 1,000 bins): still one constant box, never an r of noise."""
    from copa.tasks.grounding import from_bins, to_pixels_xywh

    sizes = torch.tensor([[128, 128], [192, 160], [131, 173], [177, 139], [150, 181]])
    pred = to_pixels_xywh(from_bins(torch.tensor([[123, 456, 789, 999]]).expand(5, 4), 1000), sizes)
    centres = (pred[:, :2] + pred[:, 2:] / 2) / sizes.double()
    assert (centres.std(0) > 0).all()  # the noise this guards against is there
    target = torch.tensor([[1.0, 2, 30, 40], [50, 60, 20, 20], [5, 70, 30, 30], [90, 10, 40, 40], [20, 20, 50, 60]])
    assert centre_correlation(pred, target, sizes) == (None, None)
