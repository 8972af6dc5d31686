"""Draws a :class:`~copa.data.synth.scene.Scene` into pixels, and gives each shape's outline.

Every shape's outline is scaled so that its drawn pixels span exactly its box: a box
``(x, y, w, h)`` covers pixel columns ``x .. x+w-1`` and rows ``y .. y+h-1``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from copa.data.synth.scene import COLOURS, IN_DOMAIN_BACKGROUNDS, WEB_BACKGROUNDS, Scene, SceneObject


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Outline in [0, 1] x [0, 1] (y down); circles and rings as 32-gons, the semicircle's flat side down."""
    if shape in ("circle", "ring"):
        return [(0.5 + 0.5 * math.cos(t), 0.5 + 0.5 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 32, endpoint=False)]
    if shape == "semicircle":
        return [(0.5 + 0.5 * math.cos(t), 1.0 - math.sin(t)) for t in np.linspace(0, math.pi, 17)]
    if shape == "square":
        return [(0, 0), (1, 0), (1, 1), (0, 1)]
    if shape == "triangle":
        return [(0.5, 0), (1, 1), (0, 1)]
    if shape == "diamond":
        return [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = 1.0 if k % 2 == 0 else 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return [((px - min(xs)) / (max(xs) - min(xs)), (py - min(ys)) / (max(ys) - min(ys))) for px, py in points]
    if shape == "cross":
        a, b = 1 / 3, 2 / 3
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    raise ValueError(f"unknown shape {shape!r}")


def outline(obj: SceneObject) -> list[float]:
    """The shape's polygon in image pixels, flattened ``[x1, y1, x2, y2, ...]`` (COCO segmentation)."""
    b = obj.box
    flat: list[float] = []
    for u, v in _unit_outline(obj.shape):
        flat += [round(b.x + u * (b.w - 1), 2), round(b.y + v * (b.h - 1), 2)]
    return flat


def _shape_mask(obj: SceneObject) -> Image.Image:
    b = obj.box
    w, h = int(b.w), int(b.h)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    local = [(u * (w - 1), v * (h - 1)) for u, v in _unit_outline(obj.shape)]
    draw.polygon(local, fill=255)
    if obj.shape == "ring":  # punch the hole: half the outer diameter
        draw.ellipse([w * 0.25, h * 0.25, w * 0.75 - 1, h * 0.75 - 1], fill=0)
    return mask


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices, (h, 1) and (1, w): what ``np.mgrid`` gives, broadcast instead of filled
    (the world's pixels are the same; drawing them takes less time)."""
    return np.arange(h)[:, None], np.arange(w)[None, :]


def _texture(obj: SceneObject, rng: np.random.Generator) -> np.ndarray:
    w, h = int(obj.box.w), int(obj.box.h)
    base = np.array(COLOURS[obj.colour], dtype=np.float32)
    pixels = np.broadcast_to(base, (h, w, 3)).copy()
    yy, xx = _grid(h, w)
    period = max(4, min(w, h) // 4)
    if obj.texture == "striped":
        pixels[((xx + yy) // max(2, period // 2)) % 2 == 1] *= 0.55
    elif obj.texture == "dotted":
        dots = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 <= (period / 4) ** 2
        pixels[dots] = pixels[dots] * 0.3 + 255 * 0.7
    pixels += 6 * rng.standard_normal(pixels.shape, dtype=np.float32)
    return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    h, w = scene.height, scene.width
    yy, xx = _grid(h, w)
    if scene.domain == "in_domain":
        pixels = np.broadcast_to(np.array(IN_DOMAIN_BACKGROUNDS[scene.background], np.float32), (h, w, 3)).copy()
        if scene.background_texture == "stripes":
            pixels[(yy[:, 0] // 6) % 2 == 1] *= 0.93  # whole rows
        elif scene.background_texture == "checker":
            pixels[((xx // 10) + (yy // 10)) % 2 == 1] *= 0.92
        noise = 15 if scene.background_texture == "noise" else 4
        pixels += noise * rng.standard_normal(pixels.shape, dtype=np.float32)
    else:  # web: a gradient between two dark colours, heavy noise
        start = np.array(WEB_BACKGROUNDS[scene.background], np.float32)
        end = np.array(WEB_BACKGROUNDS[str(rng.choice(list(WEB_BACKGROUNDS)))], np.float32)
        t = ((xx / max(1, w - 1) + yy / max(1, h - 1)) / 2)[..., None].astype(np.float32)
        pixels = start * (1 - t) + end * t + 22 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)


def _clutter(image: Image.Image, scene: Scene, rng: np.random.Generator) -> None:
    """Unannotated strokes and specks: the web split's 'real-world' mess."""
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = rng.uniform(0, scene.width), rng.uniform(0, scene.height)
        x1, y1 = x0 + rng.normal(0, scene.width / 4), y0 + rng.normal(0, scene.height / 4)
        colour = tuple(int(c) for c in rng.integers(60, 200, size=3))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(5, 15))):
        x, y, r = rng.uniform(0, scene.width), rng.uniform(0, scene.height), rng.uniform(1, 2.5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(80, 230, size=3)))


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    image = Image.fromarray(_background(scene, rng), "RGB")
    if scene.domain == "web":
        _clutter(image, scene, rng)
    for obj in scene.objects:
        image.paste(Image.fromarray(_texture(obj, rng), "RGB"), (int(obj.box.x), int(obj.box.y)), _shape_mask(obj))
    return image
