"""What the world's texts say about a scene: which objects a description fits.

A description names a shape (or "object": any shape) and some attribute values; it fits every
object of that shape with those values. What it leaves unsaid constrains nothing, so "the circle"
fits a small and a medium circle alike. Medium size and solid texture go unsaid unless a text must
say them (``explicit``) to single its object out.

A relation description "X <relation> Y" fits the pairs (x, y) of distinct objects with x fitting X,
y fitting Y and the relation holding (:func:`copa.data.synth.scene.holds`). The generator
(language.py) keeps only texts that fit their object(s) alone; the checker (ambiguity.py) reads the
written texts back with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from copa.data.synth.scene import COLOURS, RELATIONS, SHAPES, SIZES, TEXTURES, Scene, SceneObject, holds

ATTRIBUTE_ORDER = ("size", "texture", "colour")
UNSAID = frozenset({("texture", "solid"), ("size", "medium")})  # defaults, not said unless needed
ANY_SHAPE = "object"
ARTICLES = ("the", "a", "an")
_ATTRIBUTE_OF_WORD = {word: attr for attr, values in (("size", SIZES), ("texture", TEXTURES), ("colour", COLOURS)) for word in values}


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
