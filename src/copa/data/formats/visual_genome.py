"""Visual Genome v1.2/1.4: ``image_data.json``, ``objects.json``, ``attributes.json``,
``region_descriptions.json`` (https://homes.cs.washington.edu/~ranjay/visualgenome/api.html).

Boxes are stored as separate ``x, y, w, h`` fields (``width``/``height`` for regions). Image files
live under the folder named in each image's ``url`` (``VG_100K`` or ``VG_100K_2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from copa.data.formats.records import (
    INTEGER,
    LIST,
    NUMBER,
    STRING,
    Box,
    Record,
    iter_json_list,
    record_values,
    Image,
    claim_id,
    dump_json,
    list_records,
    load_json,
    require_known_image,
    top_level_list,
)
from copa.data.images import image_file_problem

URL_PREFIX = "https://cs.stanford.edu/people/rak248/"
IMAGE_FOLDER = "VG_100K"


@dataclass(frozen=True)
class VGImage(Image):
    coco_id: int | None = None
    flickr_id: int | None = None


class VGObject(NamedTuple):  # tuples: VG has 3.8M objects and 5.4M regions
    object_id: int
    image_id: int
    box: Box
    names: tuple[str, ...]
    synsets: tuple[str, ...]
    attributes: tuple[str, ...] = ()  # only in attributes.json


class VGRegion(NamedTuple):
    region_id: int
    image_id: int
    box: Box
    phrase: str


OBJECT_FIELDS = (("object_id", INTEGER), ("x", NUMBER), ("y", NUMBER), ("w", NUMBER), ("h", NUMBER), ("names", LIST))
REGION_FIELDS = (("region_id", INTEGER), ("image_id", INTEGER), ("x", NUMBER), ("y", NUMBER), ("width", NUMBER), ("height", NUMBER), ("phrase", STRING))


# --------------------------------------------------------------------------- reading
def read_image_data(path: Path, vg_dir: Path, check_files: bool = True) -> dict[int, VGImage]:
    images: dict[int, VGImage] = {}
    for rec in list_records(top_level_list(load_json(path), path), path, "images", id_field="image_id"):
        image_id = rec.integer("image_id")
        if image_id in images:
            raise rec.error("image_id", f"duplicate image id {image_id}")
        url = rec.string("url", optional=True)
        # The folder is the second-to-last URL component (VG_100K or VG_100K_2).
        parts = url.rstrip("/").split("/") if url else []
        folder = parts[-2] if len(parts) >= 2 else IMAGE_FOLDER
        width, height = rec.integer("width"), rec.integer("height")
        if width <= 0 or height <= 0:
            raise rec.error("width" if width <= 0 else "height", f"image size must be positive, got {width}x{height}")
        image = VGImage(
            image_id,
            vg_dir / folder / f"{image_id}.jpg",
            width,
            height,
            coco_id=rec.integer("coco_id", optional=True),
            flickr_id=rec.integer("flickr_id", optional=True),
        )
        if check_files and (problem := image_file_problem(image.path, (width, height))[0]):
            raise rec.error("url" if url else "image_id", str(problem))
        images[image_id] = image
    return images


def _entries(path: Path, id_field: str) -> Iterator[Record]:
    """The per-image entries of a VG file as records, streamed (the files take GBs parsed whole)."""
    for i, obj in enumerate(iter_json_list(path)):
        yield Record(obj, path, "images", i, id_field)


def _strings(obj: dict, field: str, path: Path, name: str, index: int, optional: bool = False) -> tuple[str, ...]:
    """A list-of-strings field of an object already checked to be a dict."""
    values = obj.get(field)
    if values is None and optional:
        return ()
    if type(values) is not list or not all(type(v) is str for v in values):
        return tuple(Record(obj, path, name, index, "object_id").strings(field))  # raises, naming the problem
    return tuple(values)


def _iter_objects(path: Path, images: dict[int, VGImage], list_field: str, check_references: bool) -> Iterator[tuple[int, list[VGObject]]]:
    seen: set[int] = set()
    for entry in _entries(path, "image_id"):
        image_id = entry.integer("image_id")
        if check_references:
            require_known_image(image_id, images, entry)
        objects, name = [], f"{entry.label}.{list_field}"
        for i, obj in enumerate(entry.array(list_field)):
            object_id, x, y, w, h, _ = record_values(obj, OBJECT_FIELDS, path, name, i, "object_id")
            if object_id in seen:  # the Record (for the message) only for a duplicate
                claim_id(seen, object_id, Record(obj, path, name, i, "object_id"), "object_id", "object id")
            seen.add(object_id)
            names, synsets = _strings(obj, "names", path, name, i), _strings(obj, "synsets", path, name, i, optional=True)
            attributes = _strings(obj, "attributes", path, name, i, optional=True) if list_field == "attributes" else ()
            objects.append(VGObject(object_id, image_id, Box(x, y, w, h), names, synsets, attributes))
        yield image_id, objects


def iter_objects(path: Path, images: dict[int, VGImage], with_attributes: bool = False, check_references: bool = True) -> Iterator[tuple[int, list[VGObject]]]:
    """(image id, its objects) per entry of ``objects.json``, or of ``attributes.json`` with
    ``with_attributes``. ``check_references=False`` yields entries of unknown images too."""
    return _iter_objects(path, images, "attributes" if with_attributes else "objects", check_references)


def read_objects(path: Path, images: dict[int, VGImage]) -> list[VGObject]:
    return [o for _, objects in iter_objects(path, images) for o in objects]


def read_attributes(path: Path, images: dict[int, VGImage]) -> list[VGObject]:
    """``attributes.json``: the objects again, each with its ``attributes`` list."""
    return [o for _, objects in iter_objects(path, images, with_attributes=True) for o in objects]


def iter_regions(path: Path, images: dict[int, VGImage], check_references: bool = True) -> Iterator[tuple[int, list[VGRegion]]]:
    """(image id, its regions) per entry of ``region_descriptions.json``."""
    seen: set[int] = set()
    for entry in _entries(path, "id"):
        image_id = entry.integer("id")
        if check_references:
            require_known_image(image_id, images, entry, field="id")
        regions, name = [], f"{entry.label}.regions"
        for i, obj in enumerate(entry.array("regions")):
            region_id, region_image, x, y, w, h, phrase = record_values(obj, REGION_FIELDS, path, name, i, "region_id")
            if region_image != image_id:
                raise Record(obj, path, name, i, "region_id").error("image_id", f"region belongs to image {region_image} but is listed under image {image_id}")
            if region_id in seen:
                claim_id(seen, region_id, Record(obj, path, name, i, "region_id"), "region_id", "region id")
            seen.add(region_id)
            regions.append(VGRegion(region_id, image_id, Box(x, y, w, h), phrase))
        yield image_id, regions


def read_regions(path: Path, images: dict[int, VGImage]) -> list[VGRegion]:
    return [r for _, regions in iter_regions(path, images) for r in regions]


# --------------------------------------------------------------------------- writing
def write_image_data(path: Path, images: list[VGImage]) -> None:
    dump_json(
        [
            {
                "width": im.width,
                "url": f"{URL_PREFIX}{im.path.parent.name}/{im.image_id}.jpg",
                "height": im.height,
                "image_id": im.image_id,
                "coco_id": im.coco_id,
                "flickr_id": im.flickr_id,
            }
            for im in images
        ],
        path,
    )


def _by_image(images: list[VGImage], items: list) -> dict[int, list]:
    grouped: dict[int, list] = {im.image_id: [] for im in images}
    for item in items:
        grouped[item.image_id].append(item)
    return grouped


def _object_entry(obj: VGObject, with_attributes: bool) -> dict:
    entry = {
        "synsets": list(obj.synsets),
        "h": obj.box.h,
        "object_id": obj.object_id,
        "names": list(obj.names),
        "w": obj.box.w,
        "y": obj.box.y,
        "x": obj.box.x,
    }
    if with_attributes:
        entry["attributes"] = list(obj.attributes)
    return entry


def write_objects(path: Path, images: list[VGImage], objects: list[VGObject]) -> None:
    grouped = _by_image(images, objects)
    dump_json(
        [
            {
                "image_id": im.image_id,
                "objects": [_object_entry(o, False) for o in grouped[im.image_id]],
                "image_url": f"{URL_PREFIX}{im.path.parent.name}/{im.image_id}.jpg",
            }
            for im in images
        ],
        path,
    )


def write_attributes(path: Path, images: list[VGImage], objects: list[VGObject]) -> None:
    grouped = _by_image(images, objects)
    dump_json(
        [{"image_id": im.image_id, "attributes": [_object_entry(o, True) for o in grouped[im.image_id]]} for im in images],
        path,
    )


def write_regions(path: Path, images: list[VGImage], regions: list[VGRegion]) -> None:
    grouped = _by_image(images, regions)
    dump_json(
        [
            {
                "regions": [
                    {
                        "region_id": r.region_id,
                        "width": r.box.w,
                        "height": r.box.h,
                        "image_id": r.image_id,
                        "phrase": r.phrase,
                        "y": r.box.y,
                        "x": r.box.x,
                    }
                    for r in grouped[im.image_id]
                ],
                "id": im.image_id,
            }
            for im in images
        ],
        path,
    )
