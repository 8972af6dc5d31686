"""The grounding baselines beside the model (issue 19): the largest annotated box of the image and
a seeded random annotated box of the shape the expression names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from copa.data.downstream import AnnotatedBox, GroundingExample, grounding_examples
from copa.data.formats.records import Box
from copa.data.layout import DataLayout
from copa.eval.grounding import patch_centre_share, pointed_centres
from copa.tasks.grounding import detector_pointing, largest_boxes, named_shape_boxes

CIRCLE_A, CIRCLE_B = AnnotatedBox("circle", Box(0, 0, 10, 10)), AnnotatedBox("circle", Box(50, 50, 12, 12))
SEMICIRCLE, SQUARE = AnnotatedBox("semicircle", Box(20, 0, 30, 15)), AnnotatedBox("square", Box(0, 30, 40, 40))


def _example(sentence: str, objects: tuple[AnnotatedBox, ...] = (CIRCLE_A, SEMICIRCLE, SQUARE, CIRCLE_B)) -> GroundingExample:
    return GroundingExample(1, Path("x.jpg"), 100, 100, sentence, objects[0].box, objects)


def _picked(boxes: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(b) for b in boxes.tolist()}


def test_largest_box_is_the_image_s_largest_annotation() -> None:
    assert largest_boxes([_example("red circle")]).tolist() == [[0.0, 30.0, 40.0, 40.0]]


def test_named_shape_box_draws_only_boxes_of_the_named_shape_seeded() -> None:
    circles = [_example("the red circle")] * 40  # "circle" must not match the semicircle
    picked = named_shape_boxes(circles, seed=0)
    assert _picked(picked) == {tuple(map(float, CIRCLE_A.box)), tuple(map(float, CIRCLE_B.box))}
    assert torch.equal(picked, named_shape_boxes(circles, seed=0))  # seeded
    assert not torch.equal(picked, named_shape_boxes(circles, seed=1))
    assert _picked(named_shape_boxes([_example("the striped SEMICIRCLE")] * 10, seed=0)) == {tuple(map(float, SEMICIRCLE.box))}
    # no shape of the image named: any annotated box of the image
    assert len(_picked(named_shape_boxes([_example("the blue one")] * 60, seed=0))) == 4


def test_examples_carry_their_image_s_annotations(fixture_world) -> None:
    """Each expression's box is one of its image's annotated boxes, and the synthetic expressions name
    their shape, so the named-shape baseline only draws boxes of the referred object's category."""
    examples = grounding_examples(DataLayout(fixture_world), "train")
    picked = named_shape_boxes(examples, seed=0).tolist()
    for e, box in zip(examples, picked):
        categories = {o.box: o.category for o in e.objects}
        assert e.box in categories and len(e.objects) >= 2
        assert categories[Box(*box)] == categories[e.box] and categories[e.box] in e.sentence


def _scores_pointing_at(cells: list[tuple[int, int]], side: int = 10) -> torch.Tensor:
    """(N, side^2) scores whose best patch is each (row, column) of ``cells``."""
    scores = torch.zeros(len(cells), side * side)
    for i, (row, column) in enumerate(cells):
        scores[i, row * side + column] = 1.0
    return scores


def test_pointed_centres_are_the_best_patch_centres() -> None:
    centres = pointed_centres(_scores_pointing_at([(0, 0), (2, 7)]))
    assert centres.tolist() == [[0.05, 0.05], [0.75, 0.25]]
    with pytest.raises(ValueError, match="square grid"):
        pointed_centres(torch.zeros(1, 10))


def test_detector_pointing_tells_the_referred_object_from_another_expression_s() -> None:
    """On a 100 px image of 10 px patches: patch (0, 0) lies in CIRCLE_A, (5, 5) in CIRCLE_B, (0, 3) in the
    semicircle, (9, 9) in no box (centres at 5, 15, ... px). Expressions 0 and 1 refer to CIRCLE_A, 2 to CIRCLE_B (same image)."""
    to_b = (CIRCLE_B, SEMICIRCLE, SQUARE, CIRCLE_A)
    test = [_example("the small circle"), _example("the small circle"), _example("the large circle", to_b), _example("a circle")]
    test[3] = GroundingExample(2, Path("y.jpg"), 100, 100, "a circle", CIRCLE_A.box, (CIRCLE_A,))  # alone: no other expression
    pointing = detector_pointing(test, _scores_pointing_at([(0, 0), (0, 3), (5, 5), (9, 9)]))
    assert pointing["referred"] == 50.0  # expressions 0 and 2
    # 0 and 1 take expression 2's point (in CIRCLE_B, not theirs); 2 takes 0's (in CIRCLE_A, not CIRCLE_B)
    assert pointing["another_expression"] == 0.0 and pointing["another_expression_n"] == 3
    assert pointing["named_shape"] == 50.0 and pointing["any_object"] == 75.0  # the semicircle is no circle
    assert pointing["chance"] == pytest.approx(1.0)  # each referred box holds one of the 100 patch centres (area: 1.11%)


def test_a_box_between_patch_centres_cannot_be_pointed_at() -> None:
    boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 100.0, 50.0], [0.0, 0.0, 20.0, 10.0]], dtype=torch.float64)
    shares = patch_centre_share(boxes, torch.tensor([[100, 100], [100, 100], [200, 100]]), side=10)
    assert shares.tolist() == [0.0, 0.5, 0.01]  # the last: 20 x 10 px of a 200 x 100 image, centres every 20 x 10 px
