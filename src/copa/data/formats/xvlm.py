"""X-VLM's object/region annotation layout: JSON Lines, one image per line.

X-VLM's released files (github.com/zengyan-97/X-VLM, data/finetune and pretraining json):
``{"image": path, "caption"?: str, "elems": [{"caption": str, "bb": [x, y, w, h], "attributes"?: [str]}]}``
with ``bb`` in pixels of the original image. The harness writes its filtered annotations in the
same layout, so X-VLM's files plug in directly; it adds fields X-VLM readers ignore:
``image_id``, ``width``, ``height``, ``source`` per line and ``id`` (the record id in the source
file) and ``text`` (the training text: a templated class label, or the region phrase) per elem.
``image`` is relative to the data root unless absolute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import orjson

from copa.data.formats.records import Box, FormatError, Record


class Elem(NamedTuple):  # a tuple: millions per file
    caption: str  # the class label (objects) or the phrase (regions)
    box: Box
    attributes: tuple[str, ...] = ()
    id: int | None = None  # record id in the source file (harness output only)
    text: str | None = None  # training text (harness output only)


@dataclass(frozen=True, slots=True)
class ImageAnnotations:
    image: str
    elems: tuple[Elem, ...]
    caption: str | None = None
    image_id: int | None = None
    width: int | None = None
    height: int | None = None
    source: str | None = None


def iter_xvlm(path: Path) -> Iterator[ImageAnnotations]:
    """Lines of an X-VLM file (X-VLM's own, or the harness's filtered output), validated."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    with f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            label = f"line {number}"
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise FormatError(path, f"not valid JSON ({exc})", label) from None
            rec = Record(obj, path, label)
            elems = [_elem(e, path, f"{label}.elems", i) for i, e in enumerate(rec.array("elems"))]
            yield ImageAnnotations(
                rec.string("image"), tuple(elems), rec.string("caption", optional=True), rec.integer("image_id", optional=True),
                rec.integer("width", optional=True), rec.integer("height", optional=True), rec.string("source", optional=True),
            )


def _elem(obj, path: Path, name: str, index: int) -> Elem:
    """Fast path for well-formed elems; anything unexpected goes through Record, which names it."""
    if type(obj) is dict:
        caption, bb = obj.get("caption"), obj.get("bb")
        attributes, record_id, text = obj.get("attributes", ()), obj.get("id"), obj.get("text")
        if (
            type(caption) is str
            and type(bb) is list and len(bb) == 4 and all(type(v) in (int, float) for v in bb)
            and (attributes == () or (type(attributes) is list and all(type(a) is str for a in attributes)))
            and (record_id is None or type(record_id) is int)
            and (text is None or type(text) is str)
        ):
            return Elem(caption, Box(*bb), tuple(attributes), record_id, text)
    e = Record(obj, path, name, index)
    attributes = e.strings("attributes", optional=True) or ()
    return Elem(e.string("caption"), e.xywh("bb"), tuple(attributes), e.integer("id", optional=True), e.string("text", optional=True))


def read_xvlm(path: Path) -> list[ImageAnnotations]:
    return list(iter_xvlm(path))


def encode_line(item: ImageAnnotations) -> bytes:
    """One JSON line (with its newline); optional fields left out when None."""
    elems = []
    for e in item.elems:
        elem = {"caption": e.caption, "bb": e.box.as_list(), "attributes": list(e.attributes)}
        if e.id is not None:
            elem["id"] = e.id
        if e.text is not None:
            elem["text"] = e.text
        elems.append(elem)
    obj = {"image": item.image}
    for key in ("image_id", "width", "height", "source", "caption"):
        if getattr(item, key) is not None:
            obj[key] = getattr(item, key)
    obj["elems"] = elems
    return orjson.dumps(obj) + b"\n"


def write_xvlm(path: Path, items) -> int:
    """Write ``items`` (any iterable of ImageAnnotations); returns the number of lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "wb") as f:
        for item in items:
            f.write(encode_line(item))
            count += 1
    return count
