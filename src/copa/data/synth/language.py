"""Text about a scene: COCO captions, VG region phrases, VQA questions with 10 human answers,
RefCOCO+ referring expressions, and short noisy web captions. Everything is drawn from a
seeded ``numpy.random.Generator`` and is true of the scene (apart from the injected answer
noise, which imitates annotator disagreement).

Each text knows the objects it refers to. Region phrases, referring expressions and questions
that name an object use a description that fits that object alone (meaning.py), so each has one
right answer; relation questions answered "no" are asked only where the relation fails on every
reading (scene.clearly_not).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np

from copa.data.annotation_checks import phrase_overlap
from copa.data.synth.meaning import (
    ATTRIBUTE_ORDER, NUMBER_WORDS, Description, RelationDescription, describe, description, fitting, plural, readings, singling_out,
)
from copa.data.synth.scene import COLOURS, RELATIONS, SHAPES, Scene, SceneObject, clearly_not, relation, union_box
from copa.data.formats.records import Box

MAX_REGION_OVERLAP = 0.75  # clean phrases of one image stay at or under the filter's threshold


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------- COCO captions
def _listing(objs: list[SceneObject], rng: np.random.Generator, tail: str = "") -> str:
    """``"a red circle, a small blue star and <tail>"``; full descriptions where colour alone repeats."""
    short = [describe(o, ("colour",)) for o in objs]
    full = [describe(o, ("size", "texture", "colour")) for o in objs]
    names = full if len(set(short)) < len(short) or rng.random() < 0.4 else short
    return _and([f"{article(d)} {d}" for d in names] + ([tail] if tail else []))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@functools.lru_cache(maxsize=16)  # every caption and question of a scene asks again
def _related_pairs(scene: Scene) -> list[tuple[SceneObject, str, SceneObject]]:
    pairs = []
    for a in scene.objects:
        for b in scene.objects:
            if a is not b and (rel := relation(a, b)) is not None:
                pairs.append((a, rel, b))
    return pairs


@dataclass(frozen=True)
class Text:
    text: str
    referents: tuple[SceneObject, ...]  # the objects its words name


def caption(scene: Scene, rng: np.random.Generator) -> Text:
    objs = list(scene.objects)
    pairs = _related_pairs(scene)
    kind = str(rng.choice(["relation", "listing", "count", "background", "largest"] if pairs else ["listing", "count", "background", "largest"]))
    if kind == "relation":
        a, rel, b = pairs[int(rng.integers(len(pairs)))]
        da, db = describe(a, ("size", "colour")), describe(b, ("texture", "colour"))
        return Text(f"{article(da)} {da} {rel} {article(db)} {db}.", (a, b))
    if kind == "listing":
        chosen = [objs[i] for i in sorted(rng.choice(len(objs), size=min(3, len(objs)), replace=False))]
        more = len(objs) - len(chosen)
        tail = f"{NUMBER_WORDS[min(more, 10)]} other shape{'s' if more > 1 else ''}" if more else ""
        return Text(f"an image with {_listing(chosen, rng, tail)}.", tuple(chosen))
    if kind == "count":
        shape = Counter(o.shape for o in objs).most_common(1)[0][0]
        n = sum(o.shape == shape for o in objs)
        colours = sorted({o.colour for o in objs if o.shape == shape})
        what = plural(shape) if n > 1 else shape
        return Text(f"{NUMBER_WORDS[min(n, 10)]} {what} in {_and(colours)} among {len(objs)} shapes.", tuple(o for o in objs if o.shape == shape))
    if kind == "background":
        chosen = objs[int(rng.integers(len(objs)))]
        d = describe(chosen, ("size", "texture", "colour"))
        others = len(objs) - 1
        company = f" with {NUMBER_WORDS[min(others, 10)]} other shape{'s' if others > 1 else ''}" if others else ""
        return Text(f"{article(d)} {d} on a {scene.background} background{company}.", (chosen,))
    largest = max(objs, key=lambda o: o.box.area)
    d = describe(largest, ("texture", "colour"))
    neighbours = [o for o in objs if o is not largest][:2]
    return Text(f"the largest shape is {article(d)} {d}, next to {_listing(neighbours, rng) if neighbours else 'nothing else'}.", (largest, *neighbours))


def captions(scene: Scene, rng: np.random.Generator, count: int) -> list[Text]:
    """``count`` distinct captions (distinct as long as the scene allows; at most 50 draws)."""
    out: list[Text] = []
    for _ in range(50):
        text = caption(scene, rng)
        if text.text not in {t.text for t in out}:
            out.append(text)
        if len(out) == count:
            break
    while len(out) < count:  # a tiny scene may not have `count` distinct sentences
        out.append(out[len(out) % max(1, len(out))])
    return out


# --------------------------------------------------------------------------- VG regions
@dataclass(frozen=True)
class Phrase:
    text: str
    box: Box


def region_phrases(scene: Scene, rng: np.random.Generator, max_relations: int = 3) -> list[Phrase]:
    """One phrase per object plus a few relation phrases with the union box, each fitting its
    object (pair) alone; no two phrases of the image overlap more than :data:`MAX_REGION_OVERLAP`
    (token Jaccard)."""
    candidates = [phrase for o in scene.objects if (phrase := _object_phrase(o, scene)) is not None]
    pairs = _related_pairs(scene)
    for i in rng.permutation(len(pairs))[:max_relations]:
        a, rel, b = pairs[int(i)]
        if (said := _relation_description(a, rel, b, scene)) is not None:
            candidates.append(Phrase(f"{said.subject.text} {rel} {said.anchor.text}", union_box(a.box, b.box)))
    kept: list[Phrase] = []
    for cand in candidates:
        if all(phrase_overlap(cand.text, k.text) <= MAX_REGION_OVERLAP for k in kept):
            kept.append(cand)
    return kept


def _object_phrase(target: SceneObject, scene: Scene) -> Phrase | None:
    """"the <all its attributes>" (defaults said only where needed); for an identical twin, also
    where it is relative to another object; None when nothing singles it out."""
    for explicit in (False, True):
        full = description(target, ATTRIBUTE_ORDER, explicit)
        if fitting(full, scene) == [target]:
            return Phrase(f"the {full.text}", target.box)
    for other in scene.objects:
        if other is not target and (rel := relation(target, other)) is not None:
            anchor = _unique_description(other, scene)
            if anchor is not None and readings(RelationDescription(full, rel, anchor), scene) == [(target, other)]:
                return Phrase(f"the {full.text} {rel} the {anchor.text}", target.box)
    return None


def _unique_description(obj: SceneObject, scene: Scene) -> Description | None:
    """Its colour plus the first attributes that single it out; None for an identical twin."""
    ways = singling_out(obj, scene)
    return description(obj, ("colour",) + ways[0][0], ways[0][1]) if ways else None


def _relation_description(a: SceneObject, rel: str, b: SceneObject, scene: Scene) -> RelationDescription | None:
    """"<a> rel <b>" fitting the pair (a, b) alone: by colour where that suffices, else with the
    attributes that single each out, else with all attributes; None when nothing does."""
    options = [
        (description(a, ("colour",)), description(b, ("colour",))),
        (_unique_description(a, scene), _unique_description(b, scene)),
        (description(a, ATTRIBUTE_ORDER, True), description(b, ATTRIBUTE_ORDER, True)),
    ]
    for da, db in options:
        if da is not None and db is not None and readings(said := RelationDescription(da, rel, db), scene) == [(a, b)]:
            return said
    return None


# --------------------------------------------------------------------------- VQA
@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    answer_type: str  # yes/no | number | other
    question_type: str
    referents: tuple[SceneObject, ...]  # the objects it asks about (a count: all it counts)


def _colour_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    # Prefer small objects: their evidence is the easiest to lose by text-blind patch dropping.
    order = sorted(scene.objects, key=lambda o: (o.box.area, rng.random()))
    for target in order:
        ways = singling_out(target, scene, allowed=("size", "texture"))
        if ways:
            d = describe(target, *ways[0])
            return QA(f"what color is the {d}?", target.colour, "other", "what color is the", (target,))
    return None


def _shape_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    for target in rng.permutation(len(scene.objects)):
        obj = scene.objects[int(target)]
        said = Description(None, (("colour", obj.colour),))
        if fitting(said, scene) == [obj]:
            return QA(f"what shape is the {said.text}?", obj.shape, "other", "what shape is the", (obj,))
    return None


def _count_question(scene: Scene, rng: np.random.Generator) -> QA:
    if rng.random() < 0.5:
        shape = str(rng.choice(SHAPES))
        counted = fitting(Description(shape, ()), scene)
        return QA(f"how many {plural(shape)} are there?", str(len(counted)), "number", "how many", tuple(counted))
    colour = str(rng.choice(list(COLOURS)))
    counted = fitting(Description(None, (("colour", colour),)), scene)
    return QA(f"how many {colour} objects are there?", str(len(counted)), "number", "how many", tuple(counted))


def _exists_question(scene: Scene, rng: np.random.Generator) -> QA:
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[int(rng.integers(len(present)))]
        answer = "yes"
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        colour, shape = absent[int(rng.integers(len(absent)))]
        answer = "no"
    found = fitting(Description(shape, (("colour", colour),)), scene)
    return QA(f"is there {article(colour)} {colour} {shape}?", answer, "yes/no", "is there a", tuple(found))


def _relation_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    unique = {id(o): said for o in scene.objects if (said := _unique_description(o, scene)) is not None}
    pairs = [(a, rel, b) for a, rel, b in _related_pairs(scene) if id(a) in unique and id(b) in unique]
    if not pairs:
        return None
    a, rel, b = pairs[int(rng.integers(len(pairs)))]
    da, db = unique[id(a)].text, unique[id(b)].text
    if rng.random() < 0.5:
        return QA(f"is the {da} {rel} the {db}?", "yes", "yes/no", "is the", (a, b))
    # "no" only where no reading holds: never for a relation that holds on the other axis too.
    wrong = [r for r in RELATIONS if clearly_not(a, r, b)]
    return QA(f"is the {da} {wrong[int(rng.integers(len(wrong)))]} the {db}?", "no", "yes/no", "is the", (a, b))


QUESTION_KINDS = {
    "colour": _colour_question,
    "shape": _shape_question,
    "count": _count_question,
    "exists": _exists_question,
    "relation": _relation_question,
}


def questions(scene: Scene, rng: np.random.Generator, count: int) -> list[QA]:
    """Up to ``count`` distinct questions, each kind drawn in turn from a shuffled order."""
    out: list[QA] = []
    kinds = list(QUESTION_KINDS)
    for attempt in range(count * 6):
        if attempt % len(kinds) == 0:
            rng.shuffle(kinds)
        qa = QUESTION_KINDS[kinds[attempt % len(kinds)]](scene, rng)
        if qa is not None and qa.question not in {q.question for q in out}:
            out.append(qa)
        if len(out) == count:
            break
    return out


def wrong_answer(qa: QA, rng: np.random.Generator) -> str:
    if qa.answer_type == "yes/no":
        return "no" if qa.answer == "yes" else "yes"
    if qa.answer_type == "number":
        n = int(qa.answer)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    pool = list(COLOURS) if qa.answer in COLOURS else list(SHAPES)
    others = [p for p in pool if p != qa.answer]
    return others[int(rng.integers(len(others)))]


def human_answers(qa: QA, rng: np.random.Generator, noise: float, count: int = 10) -> list[str]:
    return [wrong_answer(qa, rng) if rng.random() < noise else qa.answer for _ in range(count)]


# --------------------------------------------------------------------------- RefCOCO+
def referring_expressions(target: SceneObject, scene: Scene) -> list[str]:
    """Expressions that identify ``target`` among same-shape objects, without location words
    (RefCOCO+'s rule), each fitting ``target`` alone; empty when the scene has no other object of
    its shape or nothing singles it out."""
    if sum(o.shape == target.shape for o in scene.objects) < 2:
        return []
    out = []
    for attrs, explicit in singling_out(target, scene)[:3]:
        d = describe(target, attrs, explicit)
        out.append(d if len(out) % 2 == 0 else f"the {d}")
    return out


# --------------------------------------------------------------------------- web captions
FILLERS = ("stock photo", "nice pic", "random stuff", "found this", "wallpaper", "my collection", "photo 2019", "so cool")


def web_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, list[tuple[str, SceneObject]]]:
    """A short noisy caption naming one or two objects, and the (phrase, object) pairs it names."""
    k = min(len(scene.objects), 1 if rng.random() < 0.6 else 2)
    named = [scene.objects[int(i)] for i in rng.choice(len(scene.objects), size=k, replace=False)]
    phrases = [describe(o, ("colour",)) for o in named]
    filler = str(rng.choice(FILLERS))
    style = int(rng.integers(4))
    if style == 0:
        text = f"{' and '.join(phrases)} on dark background"
    elif style == 1:
        text = f"check out this {' with '.join(phrases)}!!"
    elif style == 2:
        text = f"{filler}: {', '.join(phrases)}"
    else:
        text = f"{' + '.join(phrases)} #{filler.replace(' ', '')}"
    return text, list(zip(phrases, named))
