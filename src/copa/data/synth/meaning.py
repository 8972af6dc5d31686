"""What the world's texts say about a scene: which objects a description fits.

A description names a shape (or "object": any shape) and some attribute values; it fits every
object of that shape with those values. What it leaves unsaid constrains nothing, so "the circle"
fits a small and a medium circle alike. Medium size and solid texture go unsaid unless a text must
say them (``explicit``) to single its object out.

A relation description "X <relation> Y" fits the pairs (x, y) of distinct objects with x fitting X,
y fitting Y and the relation holding (:func:`copa.data.synth.scene.holds`). The generator
(language.py) keeps only texts that fit their object(s) alone; the checker (ambiguity.py) reads the
written texts back with the same rules.

A caption (:func:`read_caption`) fits a scene when all it says holds there: the objects it names are
distinct objects fitting their descriptions, its counts are exact ("ten": at least ten), its
background and "the largest shape" are the scene's, its relation holds. A caption may fit other
images than its own; the held-out ITM and retrieval sets ask which (copa.data.heldout).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

from copa.data.synth.scene import COLOURS, RELATIONS, SHAPES, SIZES, TEXTURES, Scene, SceneObject, holds

ATTRIBUTE_ORDER = ("size", "texture", "colour")
UNSAID = frozenset({("texture", "solid"), ("size", "medium")})  # defaults, not said unless needed
ANY_SHAPE = "object"
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")  # the last: ten or more
ARTICLES = ("the", "a", "an")
_ATTRIBUTE_OF_WORD = {word: attr for attr, values in (("size", SIZES), ("texture", TEXTURES), ("colour", COLOURS)) for word in values}


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


_SHAPE_OF_WORD = {word: shape for shape in SHAPES for word in (shape, plural(shape))}


@dataclass(frozen=True)
class Description:
    shape: str | None  # None: any shape ("object")
    said: tuple[tuple[str, str], ...]  # (attribute, value), in ATTRIBUTE_ORDER

    @property
    def text(self) -> str:
        return " ".join([value for _, value in self.said] + [self.shape or ANY_SHAPE])

    def fits(self, obj: SceneObject) -> bool:
        return (self.shape is None or obj.shape == self.shape) and all(getattr(obj, attr) == value for attr, value in self.said)


@dataclass(frozen=True)
class RelationDescription:
    subject: Description
    relation: str
    anchor: Description


def description(obj: SceneObject, attributes: tuple[str, ...], explicit: bool = False) -> Description:
    """``("size", "colour")`` -> small red circle; medium / solid said only when ``explicit``."""
    said = []
    for attr in ATTRIBUTE_ORDER:
        value = getattr(obj, attr)
        if attr in attributes and (explicit or (attr, value) not in UNSAID):
            said.append((attr, value))
    return Description(obj.shape, tuple(said))


def describe(obj: SceneObject, attributes: tuple[str, ...], explicit: bool = False) -> str:
    return description(obj, attributes, explicit).text


def fitting(desc: Description, scene: Scene) -> list[SceneObject]:
    return [o for o in scene.objects if desc.fits(o)]


def readings(rel: RelationDescription, scene: Scene) -> list[tuple[SceneObject, SceneObject]]:
    """The (subject, anchor) pairs of the scene the relation description fits."""
    return [(a, b) for a in fitting(rel.subject, scene) for b in fitting(rel.anchor, scene) if a is not b and holds(a, rel.relation, b)]


DISTINGUISHING = (("colour",), ("size",), ("texture",), ("size", "colour"), ("texture", "colour"), ("size", "texture"), ("size", "texture", "colour"))


def singling_out(target: SceneObject, scene: Scene, allowed: tuple[str, ...] = ATTRIBUTE_ORDER) -> list[tuple[tuple[str, ...], bool]]:
    """The ways (attributes, explicit) to describe ``target`` with only ``allowed`` attributes so that
    the description fits it alone, fewest words first; the bare shape first when it is unique; ``[]``
    when no way does (an identical twin)."""
    ways, texts = [], set()
    for attrs in ((),) + DISTINGUISHING:
        for explicit in (False, True):
            desc = description(target, attrs, explicit)
            if set(attrs) <= set(allowed) and desc.text not in texts and fitting(desc, scene) == [target]:
                ways.append((attrs, explicit))
                texts.add(desc.text)
    return ways


# --------------------------------------------------------------------------- reading texts back
def parse_description(text: str) -> Description | None:
    """``"the small red circle"`` -> its Description; None for words outside the vocabulary."""
    words = text.split()
    if words and words[0] in ARTICLES:
        words = words[1:]
    if not words or (words[-1] not in SHAPES and words[-1] != ANY_SHAPE):
        return None
    said = {}
    for word in words[:-1]:
        attr = _ATTRIBUTE_OF_WORD.get(word)
        if attr is None or attr in said:
            return None
        said[attr] = word
    shape = None if words[-1] == ANY_SHAPE else words[-1]
    return Description(shape, tuple((a, said[a]) for a in ATTRIBUTE_ORDER if a in said))


def parse_relation(text: str) -> RelationDescription | None:
    """``"[the] X <relation> [the] Y"`` -> its RelationDescription; None when it is not one."""
    for rel in RELATIONS:
        left, sep, right = text.partition(f" {rel} ")
        if sep:
            subject, anchor = parse_description(left), parse_description(right)
            return RelationDescription(subject, rel, anchor) if subject and anchor else None
    return None


# --------------------------------------------------------------------------- captions
_OTHERS = re.compile(r"(\w+) other shapes?")
_ITEMS = re.compile(r", | and ")  # what language._and joins a list with
_CAPTIONS = (  # language.caption's five kinds, each as its reading
    ("listing", re.compile(r"an image with (?P<listing>.+)\.")),
    ("count", re.compile(r"(?P<count>\w+) (?P<shape>\w+) in (?P<colours>.+) among (?P<total>\d+) shapes\.")),
    ("background", re.compile(r"(?P<named>.+) on an? (?P<background>\w+) background(?: with (?P<others>\w+) other shapes?)?\.")),
    ("largest", re.compile(r"the largest shape is (?P<named>.+), next to (?P<listing>.+)\.")),
    ("relation", re.compile(r"(?P<relation>.+)\.")),
)


def _count(word: str, text: str) -> int:
    if word not in NUMBER_WORDS:
        raise ValueError(f"caption {text!r}: {word!r} is not a number word")
    return NUMBER_WORDS.index(word)


def _counted(actual: int, said: int) -> bool:
    return actual >= said if said == len(NUMBER_WORDS) - 1 else actual == said


def _description(words: str, text: str) -> Description:
    desc = parse_description(words)
    if desc is None:
        raise ValueError(f"caption {text!r}: {words!r} is not a description")
    return desc


def _read_listing(listing: str, text: str) -> tuple[list[Description], int | None]:
    """``"a red circle, a star and two other shapes"`` -> (descriptions, 2); None: no "other shapes" tail."""
    items = _ITEMS.split(listing)
    others = _OTHERS.fullmatch(items[-1])
    named = items[:-1] if others else items
    return [_description(item, text) for item in named], (_count(others.group(1), text) if others else None)


def _distinct(descs: list[Description], objects: tuple[SceneObject, ...] | list[SceneObject]) -> bool:
    """Distinct objects fit the descriptions, one each."""
    return any(all(d.fits(o) for d, o in zip(descs, chosen)) for chosen in itertools.permutations(objects, len(descs)))


def read_caption(text: str) -> Callable[[Scene], bool]:
    """A COCO-style caption of the world (language.caption) as a test of a scene; ValueError for a
    text that is none of its kinds."""
    for kind, pattern in _CAPTIONS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        if kind == "listing":
            descs, others = _read_listing(m["listing"], text)
            return lambda scene: _counted(len(scene.objects) - len(descs), others or 0) and _distinct(descs, scene.objects)
        if kind == "count":
            if m["shape"] not in _SHAPE_OF_WORD:
                raise ValueError(f"caption {text!r}: {m['shape']!r} is not a shape")
            shape, count, total = _SHAPE_OF_WORD[m["shape"]], _count(m["count"], text), int(m["total"])
            colours = set(_ITEMS.split(m["colours"]))

            def counts(scene: Scene) -> bool:
                same = [o for o in scene.objects if o.shape == shape]
                return len(scene.objects) == total and _counted(len(same), count) and {o.colour for o in same} == colours
            return counts
        if kind == "background":
            named, others = _description(m["named"], text), _count(m["others"], text) if m["others"] else 0
            return lambda scene: (scene.background == m["background"] and _counted(len(scene.objects) - 1, others)
                                  and bool(fitting(named, scene)))
        if kind == "largest":
            named = _description(m["named"], text)
            # "next to" says no more than that the others are there: the writer takes the first two others
            descs, others = ([], 0) if m["listing"] == "nothing else" else _read_listing(m["listing"], text)
            if others not in (None, 0):
                raise ValueError(f"caption {text!r}: the largest shape's company has no \"other shapes\"")

            def largest(scene: Scene) -> bool:
                biggest = max(scene.objects, key=lambda o: o.box.area)  # as the writer picks it (the first of equal areas)
                rest = [o for o in scene.objects if o is not biggest]
                return named.fits(biggest) and (_distinct(descs, rest) if descs else not rest)
            return largest
        relation = parse_relation(m["relation"])
        if relation is not None:
            return lambda scene: bool(readings(relation, scene))
    raise ValueError(f"caption {text!r} is none of the world's caption kinds")
