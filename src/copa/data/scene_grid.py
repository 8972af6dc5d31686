"""What the synthetic world draws under each patch: the inputs of the perception bracket (issue 23).

``finetune.vqa.perception: oracle`` (and ``finetune.grounding.perception``) fine-tunes and evaluates with
perfect image tokens instead of the ViT's (copa.models.scene_tokens): each patch of the square-resized image gets the attributes (shape,
colour, size, texture) of the scene object that covers it. The scenes are drawn again from the
manifest's seed (copa.data.synth.world.manifest_scene), as the linear probes' colours are
(copa.data.heldout), so only the synthetic world has them.

A patch belongs to the object whose box covers the largest part of it when that part is at least
``PATCH_SHARE`` of the patch (a box, not the drawn shape: a ring or a star does not fill its box). An
object too small for that gets, of the patches its box touches, the one it covers most among those
free or held by an object that keeps another patch, so that each object can be counted; only an
object whose every touched patch is another's last one stays unseen (measured: none of the 5,320
objects of 1,500 fixture scenes at 64 px, nor of the 8,130 of 1,500 demo scenes at 128 px).

Grounding's bracket can show the expression's object alone (``finetune.grounding.oracle_objects: named``,
:func:`named_object_grids`): its grid as if the scene held nothing else, so that writing its box needs
no lookup among the others.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from copa.data.formats import coco
from copa.data.formats.records import Box, FormatError, load_json
from copa.data.layout import VQA_SPLITS, DataLayout
from copa.data.patch_labels import grid_size, patch_coverage, resize_boxes
from copa.data.pretrain_data import PairDataset
from copa.data.synth.scene import COLOURS, SHAPES, SIZES, TEXTURES, Scene
from copa.data.synth.world import manifest_scene

# attribute -> its values; in a grid, value index len(values) means "no object here"
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "texture": TEXTURES}
PATCH_SHARE = 0.25


def scene_grid(scene: Scene, image_size: int, patch_size: int) -> np.ndarray:
    """(n, len(ATTRIBUTES)) int64: per patch of the ``image_size`` square resize, its object's attribute indices."""
    n = grid_size(image_size, patch_size) ** 2
    grid = np.tile(np.array([len(values) for values in ATTRIBUTES.values()]), (n, 1))
    if not scene.objects:
        return grid
    boxes = resize_boxes([o.box.as_list() for o in scene.objects], np.array([scene.width]), np.array([scene.height]), image_size)
    cover = patch_coverage(boxes, image_size, patch_size).reshape(len(boxes), n)  # (M, n) px²
    owner = np.where(cover.max(0) >= PATCH_SHARE * patch_size**2, cover.argmax(0), -1)
    for k in range(len(boxes)):
        if (owner == k).any():
            continue
        for patch in np.argsort(-cover[k], kind="stable"):
            if cover[k, patch] > 0 and (owner[patch] < 0 or (owner == owner[patch]).sum() > 1):
                owner[patch] = k
                break
    values = np.array([[ATTRIBUTES[a].index(getattr(o, a)) for a in ATTRIBUTES] for o in scene.objects])
    grid[owner >= 0] = values[owner[owner >= 0]]
    return grid


def _scene(layout: DataLayout, world: dict, path: Path) -> Scene:
    """The scene the synthetic world drew as the COCO image ``path`` (of a VQA split; RefCOCO+'s are train2014's)."""
    split = next((s for s in VQA_SPLITS if path.parent == layout.coco_images(s)), None)
    image_id = coco.image_id(split, path.name) if split else None
    if image_id is None:
        raise FormatError(path, f"not a COCO image of {', '.join(str(layout.coco_images(s)) for s in VQA_SPLITS)}: "
                                "the perception oracle has no scene for it")
    return manifest_scene(world, f"coco_{split}", image_id)


def _world(layout: DataLayout) -> dict:
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"{layout.manifest}: not found; the perception oracle (finetune.<task>.perception) reads the scenes the synthetic world "
                                "drew, which only its manifest describes")
    return load_json(layout.manifest)["params"]


def scene_grids(layout: DataLayout, images: Iterable[Path], image_size: int, patch_size: int) -> dict[Path, torch.Tensor]:
    """COCO image path (of a VQA split; RefCOCO+'s are train2014's) -> its ``scene_grid``, from the synthetic world's manifest."""
    world = _world(layout)
    return {path: torch.from_numpy(scene_grid(_scene(layout, world, path), image_size, patch_size)) for path in set(images)}


def named_object_grids(layout: DataLayout, images: Sequence[Path], boxes: Sequence[Box], image_size: int,
                       patch_size: int) -> list[torch.Tensor]:
    """Per (image, box): the ``scene_grid`` of the object with that box as if its scene held nothing else
    (the box is the object's annotation, as RefCOCO+'s are; one that is no object's is a FormatError)."""
    world, grids = _world(layout), []
    scenes = {path: _scene(layout, world, path) for path in set(images)}  # drawn once per image: several expressions share one
    for path, box in zip(images, boxes, strict=True):
        scene = scenes[path]
        named = [o for o in scene.objects if np.allclose(o.box.as_list(), box.as_list(), atol=0.01)]
        if len(named) != 1:
            raise FormatError(path, f"box {box.as_list()} is {'no' if not named else 'more than one'} object's of the scene the world drew")
        grids.append(torch.from_numpy(scene_grid(replace(scene, objects=tuple(named)), image_size, patch_size)))
    return grids


class SceneGridPairs(Dataset):
    """``pairs``'s (image, text) examples with a scene grid (n, len(ATTRIBUTES)) in place of each one's pixels."""

    def __init__(self, pairs: PairDataset, grids: Sequence[torch.Tensor]) -> None:
        """``grids``: one per pair, in order."""
        if len(grids) != len(pairs):
            raise ValueError(f"{len(grids)} scene grids for {len(pairs)} pairs: one per pair")
        self.pairs, self.grids, self.collate_fn = pairs, grids, pairs.collate_fn

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.grids[i], **self.pairs.tokens(self.pairs.pairs[i].text), "index": i}
