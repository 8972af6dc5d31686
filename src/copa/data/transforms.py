"""Geometric augmentation that keeps a box, and so its patch labels (COPA §3.3), true.

X-VLM's region pipeline (dataset/pretrain_dataset.py, RegionTextJsonDataset) is followed:
a random crop that contains the chosen box, a square resize to the pretraining resolution, and
a horizontal flip with p = 0.5 unless the text says "left" or "right". Other boxes of the image
survive the crop if more than half of their area stays inside (X-VLM's ``min_perc_in_image``),
clipped to it. Boxes are :class:`Box` (x, y, w, h) in pixels of the image they belong to.
The order here is crop -> resize -> flip (X-VLM flips before resizing: the same geometry).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from copa.data.formats.records import Box

# Whole words only: "leftover" or "righteous" say nothing about a side.
_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def resize_box(box: Box, size: tuple[int, int], new_size: tuple[int, int]) -> Box:
    """Scale a box from an image of ``size`` (w, h) to one of ``new_size`` (w, h)."""
    (w0, h0), (w1, h1) = size, new_size
    # Multiply before dividing: an integer coordinate on a patch boundary then maps exactly onto it.
    return Box(box.x * w1 / w0, box.y * h1 / h0, box.w * w1 / w0, box.h * h1 / h0)


def crop_box(box: Box, crop: Box, min_visible: float = 0.5) -> Box | None:
    """The part of ``box`` inside ``crop``, in the crop's pixels; None if it is dropped.

    Kept when that part has a positive area larger than ``min_visible`` of the box's area
    (X-VLM: ``> min_perc_in_image``, 0.5, for the other boxes of the image); ``min_visible=0``
    keeps any box that overlaps the crop. A box of zero area is always dropped.
    """
    x0, y0 = max(box.x, crop.x), max(box.y, crop.y)
    x1, y1 = min(box.x + box.w, crop.x + crop.w), min(box.y + box.h, crop.y + crop.h)
    if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) <= min_visible * box.area:
        return None
    return Box(x0 - crop.x, y0 - crop.y, x1 - x0, y1 - y0)


def hflip_box(box: Box, width: float) -> Box:
    """The box mirrored in an image of ``width`` px."""
    return Box(width - box.x - box.w, box.y, box.w, box.h)


def sample_crop(rng: np.random.Generator, width: int, height: int, box: Box, scale: tuple[float, float] = (0.5, 1.0)) -> Box:
    """An integer crop window (x, y, w, h) that contains ``box`` entirely (X-VLM's random crop).

    Each side of the crop is drawn as a fraction ``scale`` of the image's side, raised to the
    box's span where that is larger; its position is uniform among those that keep the box
    inside. (X-VLM draws the two edges uniformly on each side of the box instead, with no lower
    bound on how much of the image is cut away.)
    """
    if not (box.w > 0 and box.h > 0 and box.x >= 0 and box.y >= 0 and box.x + box.w <= width and box.y + box.h <= height):
        raise ValueError(f"the chosen box must have a positive size and lie inside the {width}x{height} image, got {box}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    x, w = _crop_span(rng, width, box.x, box.w, scale)
    y, h = _crop_span(rng, height, box.y, box.h, scale)
    return Box(x, y, w, h)


def _crop_span(rng: np.random.Generator, side: int, start: float, length: float, scale: tuple[float, float]) -> tuple[int, int]:
    first, last = math.floor(start), min(math.ceil(start + length), side)  # whole pixels the box touches
    size = min(max(round(rng.uniform(*scale) * side), last - first), side)
    offset = rng.integers(max(0, last - size), min(first, side - size), endpoint=True)
    return int(offset), size


def should_flip(text: str, rng: np.random.Generator, p: float = 0.5) -> bool:
    """Flip with probability ``p``, never when the text names a side (X-VLM's ``careful_hflip``)."""
    draw = rng.random() < p  # drawn either way: later draws do not depend on the text
    return draw and not _SIDE_WORD.search(text)


@dataclass(frozen=True)
class Geometry:
    """One sampled augmentation: crop window (original px) -> square ``size`` -> maybe flip."""

    crop: Box
    size: int
    flip: bool

    def box(self, box: Box, min_visible: float = 0.5) -> Box | None:
        """A box of the original image in output pixels; None if the crop drops it."""
        inside = crop_box(box, self.crop, min_visible)
        if inside is None:
            return None
        out = resize_box(inside, (self.crop.w, self.crop.h), (self.size, self.size))
        return hflip_box(out, self.size) if self.flip else out

    def image(self, image: Image.Image, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
        c = self.crop
        out = image.crop((c.x, c.y, c.x + c.w, c.y + c.h)).resize((self.size, self.size), resample)
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.flip else out


@dataclass(frozen=True)
class BoxAugmentation:
    """Crop containing the box -> resize to ``image_size`` -> maybe flip, on the image and the box."""

    image_size: int
    scale: tuple[float, float] = (0.5, 1.0)
    flip_p: float = 0.5
    resample: Image.Resampling = Image.Resampling.BICUBIC  # X-VLM resizes with bicubic

    def sample(self, rng: np.random.Generator, width: int, height: int, box: Box, text: str) -> Geometry:
        return Geometry(sample_crop(rng, width, height, box, self.scale), self.image_size, should_flip(text, rng, self.flip_p))

    def __call__(self, image: Image.Image, box: Box, text: str, rng: np.random.Generator) -> tuple[Image.Image, Box]:
        geometry = self.sample(rng, image.width, image.height, box, text)
        # min_visible=0: the crop contains the chosen box, so it comes through whole.
        return geometry.image(image, self.resample), geometry.box(box, min_visible=0.0)
