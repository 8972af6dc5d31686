"""Issue 19: every region description, question and referring expression of the synthetic world
has one right answer, and the checker that counts the ones that do not can fail."""

import pickle
import shutil

import numpy as np
import pytest

from copa.data.formats.records import Box
from copa.data.layout import DataLayout
from copa.data.synth import language
from copa.data.synth.scene import Scene, SceneObject
from copa.data.synth.world import CATEGORIES

TEXT_KINDS = ("region_descriptions", "colour_questions", "shape_questions", "relation_questions", "referring_expressions")


def _scene(*objects: tuple) -> Scene:
    """Objects as (shape, colour, size, texture, x, y, w, h)."""
    return Scene(200, 200, "in_domain", "white", "plain", tuple(SceneObject(s, c, z, t, Box(x, y, w, h)) for s, c, z, t, x, y, w, h in objects))


def _fits(text: str, scene: Scene) -> list[SceneObject]:
    """The objects a plain description fits, read literally: every word said is true of the object
    (written here independently of copa.data.synth.meaning, so that these tests run on any version)."""
    words = text.removeprefix("the ").split()
    return [o for o in scene.objects if o.shape == words[-1] and set(words[:-1]) <= {o.colour, o.size, o.texture}]


# medium + small squares of other colours: "the square" fits both
SQUARES = _scene(("square", "red", "medium", "solid", 10, 10, 50, 50), ("square", "blue", "small", "solid", 100, 100, 30, 30))


def test_referring_expressions_fit_their_object_alone():
    for target in SQUARES.objects:
        expressions = language.referring_expressions(target, SQUARES)
        assert expressions and all(_fits(e, SQUARES) == [target] for e in expressions), expressions


def test_colour_questions_name_one_object():
    # the smallest object (asked about first) is a medium circle beside a large one of another colour
    scene = _scene(("circle", "red", "medium", "solid", 10, 10, 50, 50), ("circle", "blue", "large", "solid", 100, 100, 80, 80))
    asked = 0
    for seed in range(20):
        for qa in language.questions(scene, np.random.default_rng(seed), 5):
            if qa.question.startswith("what color is the "):
                fits = _fits(qa.question.removeprefix("what color is the ").removesuffix("?"), scene)
                assert [o.colour for o in fits] == [qa.answer], qa
                asked += 1
    assert asked > 0


def test_relation_questions_answered_no_fail_on_every_reading():
    # the circle is left of the star (the clearer axis) and entirely above it too
    scene = _scene(("circle", "red", "medium", "solid", 10, 10, 40, 40), ("star", "blue", "medium", "solid", 80, 60, 40, 40))
    circle, star = scene.objects
    whole_box = {
        "to the left of": lambda a, b: a.box.x + a.box.w <= b.box.x, "to the right of": lambda a, b: b.box.x + b.box.w <= a.box.x,
        "above": lambda a, b: a.box.y + a.box.h <= b.box.y, "below": lambda a, b: b.box.y + b.box.h <= a.box.y,
    }
    noes = 0
    for seed in range(40):
        for qa in language.questions(scene, np.random.default_rng(seed), 5):
            if qa.question.startswith("is the ") and qa.answer == "no":
                rel = next(r for r in whole_box if f" {r} " in qa.question)
                a, b = (circle, star) if qa.question.index("circle") < qa.question.index("star") else (star, circle)
                assert not whole_box[rel](a, b), qa
                noes += 1
    assert noes > 0


def test_region_phrases_of_objects_fit_them_alone():
    # a medium solid red circle beside a small one: "the red circle" fits both
    scene = _scene(("circle", "red", "medium", "solid", 10, 10, 50, 50), ("circle", "red", "small", "solid", 120, 120, 30, 30))
    phrases = [p for p in language.region_phrases(scene, np.random.default_rng(0)) if " of " not in p.text and " above " not in p.text and " below " not in p.text]
    assert len(phrases) == 2
    for p in phrases:
        assert [o.box for o in _fits(p.text, scene)] == [p.box], p


def test_identical_twins_are_told_apart_by_a_relation_or_not_at_all():
    from copa.data.synth.ambiguity import referents

    twins = _scene(("star", "red", "small", "dotted", 10, 10, 30, 30), ("star", "red", "small", "dotted", 130, 10, 30, 30), ("ring", "blue", "large", "solid", 70, 100, 60, 60))
    first = twins.objects[0]
    assert language.referring_expressions(first, twins) == []  # RefCOCO+ has no location words
    for phrase in language.region_phrases(twins, np.random.default_rng(0)):
        assert len(referents(phrase.text, twins)) == 1, phrase


def test_checker_counts_what_fits_several_objects_or_has_several_answers():
    from copa.data.synth.ambiguity import outcome, referents, right_answers

    assert outcome(referents("the square", SQUARES), lambda o: True) == "several"
    assert outcome(referents("the medium square", SQUARES), lambda o: True) == "one"
    assert right_answers("what color is the square?", SQUARES) == ("colour_questions", {"red", "blue"})
    left_and_above = _scene(("circle", "red", "medium", "solid", 10, 10, 40, 40), ("star", "blue", "medium", "solid", 80, 60, 40, 40))
    assert right_answers("is the red circle above the blue star?", left_and_above) == ("relation_questions", {"yes"})
    assert outcome({"yes"}, lambda a: a == "no") == "wrong"
    # left by whole boxes no, by centres yes: a borderline question with two right answers
    overlapping = _scene(("circle", "red", "medium", "solid", 10, 10, 40, 40), ("star", "blue", "medium", "solid", 30, 80, 40, 40))
    assert right_answers("is the red circle to the left of the blue star?", overlapping)[1] == {"yes", "no"}


def test_generated_world_has_no_ambiguous_text(fixture_world):
    from copa.data.synth.ambiguity import ambiguity_report

    report = ambiguity_report(fixture_world)
    for kind in TEXT_KINDS:
        assert report[kind]["items"] > 0 and report[kind]["several"] == report[kind]["none"] == report[kind]["wrong"] == 0, (kind, report[kind])
    # class-label object texts: ambiguous unless the PTA labels take every instance (counted, not fixed here)
    coco = report["class_texts_with_several_instances/coco_objects"]
    assert 0 < coco["several"] < coco["items"]


def test_checker_finds_a_bare_shape_name_written_into_a_world(fixture_world, tmp_path):
    from copa.data.synth.ambiguity import ambiguity_report

    root = tmp_path / "world"
    shutil.copytree(fixture_world, root)
    path = DataLayout(root).refcoco_refs
    refs = pickle.loads(path.read_bytes())
    shape = next(c.name for c in CATEGORIES if c.category_id == refs[0]["category_id"])
    refs[0]["sentences"][0]["sent"] = f"the {shape}"  # every ref's image holds 2+ objects of its shape
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert ambiguity_report(root)["referring_expressions"]["several"] == 1


# ------------------------------------------------------------------------------------- captions
def test_every_caption_the_world_writes_is_true_of_its_scene():
    from copa.data.synth.meaning import read_caption
    from copa.data.synth.scene import sample_scene

    from copa.data.synth.meaning import _CAPTIONS

    kinds = set()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng, (96, 240), (1, 14), "in_domain")  # up to 13 others: "ten other shapes" too
        for text in language.captions(scene, rng, 5):
            assert read_caption(text.text)(scene), text.text
            kinds.add(next(kind for kind, pattern in _CAPTIONS if pattern.fullmatch(text.text)))
    assert kinds == {kind for kind, _ in _CAPTIONS}  # every kind written and read


def test_a_caption_is_false_where_any_of_what_it_says_fails():
    from copa.data.synth.meaning import read_caption

    # a large red circle left of a small dotted blue star, on white
    scene = _scene(("circle", "red", "large", "solid", 10, 10, 60, 60), ("star", "blue", "small", "dotted", 120, 20, 30, 30))
    true = ("an image with a red circle and one other shape.", "an image with a blue star and a red circle.",
            "one star in blue among 2 shapes.", "a large red circle on a white background with one other shape.",
            "the largest shape is a red circle, next to a dotted blue star.", "a large red circle to the left of a dotted blue star.")
    false = ("an image with a red circle.",  # no "other shapes": the circle alone
             "an image with a red circle and a red circle.",  # two objects, one each
             "two stars in blue among 2 shapes.", "one star in red among 2 shapes.", "one star in blue among 3 shapes.",
             "a large red circle on a grey background with one other shape.", "a small red circle on a white background with one other shape.",
             "the largest shape is a blue star, next to a red circle.", "the largest shape is a red circle, next to nothing else.",
             "a large red circle to the right of a dotted blue star.")
    assert all(read_caption(t)(scene) for t in true), [t for t in true if not read_caption(t)(scene)]
    assert not any(read_caption(t)(scene) for t in false), [t for t in false if read_caption(t)(scene)]
    # "ten" is ten or more
    def crowd(others: int) -> Scene:  # a large red circle and ``others`` blue stars
        return _scene(("circle", "red", "large", "solid", 0, 0, 20, 20), *(("star", "blue", "medium", "solid", 30 * i, 100, 20, 20) for i in range(others)))

    ten = read_caption("a large red circle on a white background with ten other shapes.")
    assert ten(crowd(12)) and ten(crowd(10)) and not ten(crowd(9))
    with pytest.raises(ValueError, match="'a cat on the mat' is none of the world's caption kinds"):
        read_caption("a cat on the mat")
    with pytest.raises(ValueError, match="'many' is not a number word"):
        read_caption("many stars in blue among 2 shapes.")
