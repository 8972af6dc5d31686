"""Scenes of the synthetic world: coloured shapes with exact boxes on a background.

A scene is sampled from a seeded ``numpy.random.Generator``; it knows nothing of files or
pixels (render.py draws it, language.py describes it). Two image distributions:
``in_domain`` (COCO / VG / Flickr30K: light plain or lightly textured backgrounds) and
``web`` (the CC3M-style out-of-domain split: dark noisy gradients with unannotated clutter).

To make text-guided patch selection matter, about half of the scenes repeat one shape several
times in different colours, sizes or textures, so that a question or expression about one of
them needs the text to find the right one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from copa.data.formats.records import Box

SHAPES = ("circle", "ring", "semicircle", "square", "triangle", "diamond", "star", "cross")
CURVED_SHAPES = frozenset({"circle", "ring", "semicircle"})  # supercategory "curved", else "polygon"
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 205, 35),
    "purple": (135, 60, 180),
    "orange": (245, 135, 25),
    "pink": (240, 115, 185),
    "brown": (125, 80, 40),
}
TEXTURES = ("solid", "striped", "dotted")
# Object side as a fraction of sqrt(image area); "small" is never under the 1%-area filter.
SIZES = {"small": (0.13, 0.17), "medium": (0.20, 0.26), "large": (0.29, 0.36)}
IN_DOMAIN_BACKGROUNDS = {"white": (245, 245, 245), "grey": (205, 205, 205), "beige": (235, 225, 200), "sky": (205, 225, 240)}
WEB_BACKGROUNDS = {"night": (30, 30, 45), "forest": (35, 60, 35), "rust": (80, 45, 35), "slate": (60, 65, 75)}
MIN_AREA_FRACTION = 0.011  # clean boxes stay above the paper's 1% filter with a margin
GAP = 2  # pixels kept free between objects, so that boxes never touch

Domain = Literal["in_domain", "web"]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    texture: str
    box: Box  # integer pixels: the exact extent of the drawn shape

    @property
    def supercategory(self) -> str:
        return "curved" if self.shape in CURVED_SHAPES else "polygon"

    @property
    def centre(self) -> tuple[float, float]:
        return self.box.x + self.box.w / 2, self.box.y + self.box.h / 2


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    domain: Domain
    background: str
    background_texture: str  # plain | noise | stripes | checker (in domain); gradient (web)
    objects: tuple[SceneObject, ...]


def shape_aspect(shape: str) -> float:
    """Width / height of a shape's box."""
    return 2.0 if shape == "semicircle" else 1.0


def sample_scene(
    rng: np.random.Generator,
    side_range: tuple[int, int],
    count_range: tuple[int, int],
    domain: Domain,
) -> Scene:
    width, height = (int(v) for v in rng.integers(side_range[0], side_range[1] + 1, size=2))
    palette = IN_DOMAIN_BACKGROUNDS if domain == "in_domain" else WEB_BACKGROUNDS
    background = str(rng.choice(list(palette)))
    texture = str(rng.choice(["plain", "plain", "noise", "stripes", "checker"])) if domain == "in_domain" else "gradient"
    wanted = int(rng.integers(count_range[0], count_range[1] + 1))
    repeated = str(rng.choice(SHAPES)) if wanted >= 2 and rng.random() < 0.5 else None
    objects: list[SceneObject] = []
    for i in range(wanted):
        # The repeated shape takes up to 3 slots, the first ones, so it survives crowding.
        shape = repeated if repeated is not None and i < min(3, wanted) else str(rng.choice(SHAPES))
        obj = _place(rng, shape, width, height, objects)
        if obj is not None:
            objects.append(obj)
    return Scene(width, height, domain, background, texture, tuple(objects))


def _place(rng: np.random.Generator, shape: str, width: int, height: int, placed: list[SceneObject]) -> SceneObject | None:
    """An object at a free spot, or None when the image is too crowded (tried smaller sizes too)."""
    colour, texture = str(rng.choice(list(COLOURS))), str(rng.choice(TEXTURES))
    first = int(rng.integers(len(SIZES)))
    size_names = list(SIZES)[first::-1]  # fall back to smaller sizes when crowded
    aspect = shape_aspect(shape)
    for size in size_names:
        lo, hi = SIZES[size]
        for _ in range(30):
            area = (rng.uniform(lo, hi) ** 2) * width * height
            area = max(area, MIN_AREA_FRACTION * width * height)
            h = max(4, math.ceil(math.sqrt(area / aspect)))
            w = max(4, math.ceil(h * aspect))
            if w >= width - 2 or h >= height - 2:
                continue
            x, y = int(rng.integers(1, width - w)), int(rng.integers(1, height - h))
            if all(_apart(x, y, w, h, other.box) for other in placed):
                return SceneObject(shape, colour, size, texture, Box(x, y, w, h))
    return None


def _apart(x: int, y: int, w: int, h: int, b: Box) -> bool:
    """A box (x, y, w, h) at least GAP pixels away from b (the caller builds the Box only once a try fits)."""
    return x + w + GAP <= b.x or b.x + b.w + GAP <= x or y + h + GAP <= b.y or b.y + b.h + GAP <= y


# --------------------------------------------------------------------------- relations
RELATIONS = ("to the left of", "to the right of", "above", "below")


def holds(a: SceneObject, rel: str, b: SceneObject) -> bool:
    """The relation's definition: a's whole box on that side of b's box (left of: a's right edge at
    or before b's left edge). Both axes can hold at once (left of and above)."""
    if rel == "to the left of":
        return a.box.x + a.box.w <= b.box.x
    if rel == "to the right of":
        return b.box.x + b.box.w <= a.box.x
    if rel == "above":
        return a.box.y + a.box.h <= b.box.y
    if rel == "below":
        return b.box.y + b.box.h <= a.box.y
    raise ValueError(f"unknown relation {rel!r}")


def holds_loosely(a: SceneObject, rel: str, b: SceneObject) -> bool:
    """A looser reading a person may take: a's centre on that side of b's centre."""
    (ax, ay), (bx, by) = a.centre, b.centre
    return {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by, "below": ay > by}[rel]


def clearly_not(a: SceneObject, rel: str, b: SceneObject) -> bool:
    """The relation fails on every reading: a question about it has the one answer "no"."""
    return not holds(a, rel, b) and not holds_loosely(a, rel, b)


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """The clear spatial relation of a to b along the axis their centres differ most on, or None
    when that axis does not separate their boxes."""
    (ax, ay), (bx, by) = a.centre, b.centre
    candidates = ("to the left of", "to the right of") if abs(bx - ax) >= abs(by - ay) else ("above", "below")
    return next((rel for rel in candidates if holds(a, rel, b)), None)


def union_box(a: Box, b: Box) -> Box:
    x0, y0 = min(a.x, b.x), min(a.y, b.y)
    x1, y1 = max(a.x + a.w, b.x + b.w), max(a.y + a.h, b.y + b.h)
    return Box(x0, y0, x1 - x0, y1 - y0)
