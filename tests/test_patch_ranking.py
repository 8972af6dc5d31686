"""Average precision of patch rankings and its references (copa.eval.patch_ranking)."""

from __future__ import annotations

import math

import pytest
import torch

from copa.eval.patch_ranking import annotation_references, average_precision, chance_average_precision


def test_average_precision_hand_case() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2]])
    labels = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    ap = average_precision(scores, labels)
    assert ap[0].item() == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ap[1].item() == pytest.approx(1 / 4)  # the one positive ranked last
    assert math.isnan(ap[2].item())  # no positive: undefined, not 0


@pytest.mark.parametrize("n,k", [(8, 1), (8, 3), (64, 8), (5, 5)])
def test_chance_average_precision_matches_random_rankings(n: int, k: int) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(20_000, n)
    labels[:, :k] = 1
    scores = torch.rand(labels.shape, generator=generator)
    simulated = average_precision(scores, labels).mean().item()
    assert chance_average_precision(torch.tensor([k]), n).item() == pytest.approx(simulated, abs=0.005)


def test_annotation_references_tell_same_text_boxes_apart() -> None:
    # one image, 8 patches: two "circle" boxes (patches 0-1, 2-3) and a "star" box (4-5)
    labels = torch.zeros(3, 8)
    labels[0, 0:2] = labels[1, 2:4] = labels[2, 4:6] = 1
    images, texts = ["a.jpg"] * 3, ["This is a circle.", "This is a circle.", "This is a star."]
    refs = annotation_references(labels, images, texts)
    # the star's text singles it out (AP 1); each circle shares a tier with the other circle (AP < 1)
    assert refs["chance"] < refs["all_boxes"] < refs["same_text_boxes"] < 1.0
    assert refs["same_text_boxes"] > (1.0 + 2 * refs["chance"]) / 3
    # boxes of another image do not count as objects of this one
    other_image = annotation_references(labels, ["a.jpg", "b.jpg", "c.jpg"], texts)
    assert other_image["all_boxes"] == other_image["same_text_boxes"] == 1.0
