"""MS COCO: ``instances_{split}.json``, ``captions_{split}.json``, ``image_info_{split}.json``.

Official layout (https://cocodataset.org/#format-data): a JSON object with ``info``,
``licenses``, ``images`` (id, file_name, width, height, ...), ``annotations`` and, for
instances, ``categories``. Image files are found as ``<image_dir>/<file_name>``.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from copa.data.formats.records import (
    Box,
    FormatError,
    Image,
    Record,
    claim_id,
    dump_json,
    load_json,
    records,
    require_known_image,
)
from copa.data.images import image_file_problem

LICENSE = {"url": "https://creativecommons.org/licenses/by/4.0/", "id": 1, "name": "CC BY 4.0 (synthetic)"}


@dataclass(frozen=True)
class Category:
    category_id: int
    name: str
    supercategory: str


class CocoObject(NamedTuple):  # a tuple: COCO has 860K objects
    ann_id: int
    image_id: int
    category_id: int
    box: Box
    area: float
    iscrowd: int
    segmentation: tuple[tuple[float, ...], ...]  # polygons, each [x1, y1, x2, y2, ...]


@dataclass(frozen=True)
class Caption:
    caption_id: int
    image_id: int
    text: str


@dataclass(frozen=True)
class CocoInstances:
    images: dict[int, Image]
    categories: dict[int, Category]
    objects: list[CocoObject]


@dataclass(frozen=True)
class CocoCaptions:
    images: dict[int, Image]
    captions: list[Caption]


def file_name(split: str, image_id: int) -> str:
    """``COCO_train2014_000000000042.jpg``, the official 2014/2015 naming."""
    return f"COCO_{split}_{image_id:012d}.jpg"


def image_id(split: str, name: str) -> int | None:
    """The id in an image file ``name`` of ``split`` (the inverse of :func:`file_name`); None for another name."""
    found = re.fullmatch(rf"COCO_{re.escape(split)}_(\d{{12}})\.jpg", name)
    return int(found.group(1)) if found else None


# --------------------------------------------------------------------------- reading
def read_images(data: dict, path: Path, image_dir: Path, check_files: bool = True) -> dict[int, Image]:
    images: dict[int, Image] = {}
    for rec in records(data, "images", path, id_field="id"):
        image_id = rec.integer("id")
        if image_id in images:
            raise rec.error("id", f"duplicate image id {image_id}")
        width, height = rec.integer("width"), rec.integer("height")
        if width <= 0 or height <= 0:
            raise rec.error("width" if width <= 0 else "height", f"image size must be positive, got {width}x{height}")
        image = Image(image_id, image_dir / rec.string("file_name"), width, height)
        if check_files and (problem := image_file_problem(image.path, (width, height))[0]):
            raise rec.error("file_name", str(problem))
        images[image_id] = image
    return images


def read_categories(data: dict, path: Path) -> dict[int, Category]:
    categories: dict[int, Category] = {}
    for rec in records(data, "categories", path, id_field="id"):
        cat = Category(rec.integer("id"), rec.string("name"), rec.string("supercategory"))
        if cat.category_id in categories:
            raise rec.error("id", f"duplicate category id {cat.category_id}")
        categories[cat.category_id] = cat
    return categories


def _segmentation(rec: Record) -> tuple[tuple[float, ...], ...]:
    value = rec.obj.get("segmentation")
    if isinstance(value, dict):  # RLE of crowd regions: not used by the harness, kept out of records
        return ()
    if not isinstance(value, list) or not all(
        isinstance(poly, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)
        for poly in value
    ):
        raise rec.error("segmentation", f"expected a list of polygons or an RLE object, got {value!r}")
    return tuple(tuple(poly) for poly in value)


def read_instances(path: Path, image_dir: Path, check_files: bool = True, check_references: bool = True) -> CocoInstances:
    """``check_references=False`` keeps objects of unknown images or categories (the filter
    stage counts them as drop reasons instead of failing the file)."""
    data = load_json(path)
    images = read_images(data, path, image_dir, check_files)
    categories = read_categories(data, path)
    objects, seen = [], set()
    for rec in records(data, "annotations", path, id_field="id"):
        obj = CocoObject(
            ann_id=rec.integer("id"),
            image_id=rec.integer("image_id"),
            category_id=rec.integer("category_id"),
            box=rec.xywh("bbox"),
            area=rec.number("area"),
            iscrowd=rec.integer("iscrowd"),
            segmentation=_segmentation(rec),
        )
        if check_references:
            require_known_image(obj.image_id, images, rec)
            if obj.category_id not in categories:
                raise rec.error("category_id", f"category id {obj.category_id} is not in the file's categories")
        claim_id(seen, obj.ann_id, rec, "id", "annotation id")
        objects.append(obj)
    return CocoInstances(images, categories, objects)


def read_captions(path: Path, image_dir: Path, check_files: bool = True) -> CocoCaptions:
    data = load_json(path)
    images = read_images(data, path, image_dir, check_files)
    captions, seen = [], set()
    for rec in records(data, "annotations", path, id_field="id"):
        cap = Caption(rec.integer("id"), rec.integer("image_id"), rec.string("caption"))
        require_known_image(cap.image_id, images, rec)
        claim_id(seen, cap.caption_id, rec, "id", "caption id")
        captions.append(cap)
    return CocoCaptions(images, captions)


def read_image_info(path: Path, image_dir: Path, check_files: bool = True) -> dict[int, Image]:
    """``image_info_test2015.json``: images (and categories) without annotations."""
    return read_images(load_json(path), path, image_dir, check_files)


# --------------------------------------------------------------------------- writing
def _info(description: str) -> dict:
    return {
        "description": description,
        "url": "",
        "version": "1.0",
        "year": 2014,
        "contributor": "copa-repro synthetic world",
        "date_created": "2014-01-01 00:00:00",
    }


def _image_entries(images: list[Image]) -> list[dict]:
    return [
        {
            "license": LICENSE["id"],
            "file_name": image.path.name,
            "coco_url": "",
            "height": image.height,
            "width": image.width,
            "date_captured": "2014-01-01 00:00:00",
            "flickr_url": "",
            "id": image.image_id,
        }
        for image in images
    ]


def _category_entries(categories: list[Category]) -> list[dict]:
    return [{"supercategory": c.supercategory, "id": c.category_id, "name": c.name} for c in categories]


def write_instances(
    path: Path, images: list[Image], categories: list[Category], objects: list[CocoObject], description: str
) -> None:
    annotations = [
        {
            "segmentation": [list(poly) for poly in obj.segmentation],
            "area": obj.area,
            "iscrowd": obj.iscrowd,
            "image_id": obj.image_id,
            "bbox": obj.box.as_list(),
            "category_id": obj.category_id,
            "id": obj.ann_id,
        }
        for obj in objects
    ]
    dump_json(
        {
            "info": _info(description),
            "licenses": [LICENSE],
            "images": _image_entries(images),
            "annotations": annotations,
            "categories": _category_entries(categories),
        },
        path,
    )


def write_captions(path: Path, images: list[Image], captions: list[Caption], description: str) -> None:
    annotations = [{"image_id": c.image_id, "id": c.caption_id, "caption": c.text} for c in captions]
    dump_json(
        {"info": _info(description), "licenses": [LICENSE], "images": _image_entries(images), "annotations": annotations},
        path,
    )


def write_image_info(path: Path, images: list[Image], categories: list[Category], description: str) -> None:
    dump_json(
        {
            "info": _info(description),
            "licenses": [LICENSE],
            "images": _image_entries(images),
            "categories": _category_entries(categories),
        },
        path,
    )


__all__ = [
    "Caption",
    "Category",
    "CocoCaptions",
    "CocoInstances",
    "CocoObject",
    "FormatError",
    "file_name",
    "read_captions",
    "read_image_info",
    "read_instances",
    "write_captions",
    "write_image_info",
    "write_instances",
]
