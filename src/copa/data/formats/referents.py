"""What each text refers to: the synthetic world's sidecar ``referents.json`` (no official counterpart).

Written beside the official files, without changing them, so that target-patch recall can be
measured: which boxes each VQA question, COCO caption and RefCOCO+ ref is about. One JSON object:
``{"info": {...}, "questions": [R], "captions": [R], "refs": [R]}`` with R =
``{<id field>: int, "image_id": int, "image": str, "boxes": [{"bbox": [x, y, w, h], "ann_id": int | null}]}``;
the id field is ``question_id`` (VQA v2), ``caption_id`` (the caption's annotation id in
captions_<split>.json) or ``ref_id`` (refs(unc).p). ``image`` is relative to the data root; boxes
are in the image's pixels; ``ann_id`` is the object's COCO instance annotation (null where the
split has none: test2015). A ref has exactly one box, its ``ann_id``'s. A question may refer to no
box ("is there a red star?" answered no; "how many stars?" answered 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copa.data.formats.records import Box, Record, claim_id, dump_json, list_records, load_json, records

ID_FIELD = {"questions": "question_id", "captions": "caption_id", "refs": "ref_id"}


@dataclass(frozen=True)
class ReferredBox:
    box: Box
    ann_id: int | None  # the COCO instance annotation, where there is one


@dataclass(frozen=True)
class Referred:
    text_id: int  # question_id, caption_id or ref_id
    image_id: int
    image: str  # relative to the data root
    boxes: tuple[ReferredBox, ...]


@dataclass(frozen=True)
class Referents:
    questions: dict[int, Referred]
    captions: dict[int, Referred]
    refs: dict[int, Referred]


def read_referents(path: Path) -> Referents:
    data = load_json(path)
    kinds = {}
    for kind, id_field in ID_FIELD.items():
        found, seen = {}, set()
        for rec in records(data, kind, path, id_field):
            referred = Referred(rec.integer(id_field), rec.integer("image_id"), rec.string("image"), _boxes(rec, path))
            if kind == "refs" and (len(referred.boxes) != 1 or referred.boxes[0].ann_id is None):
                raise rec.error("boxes", f"a ref refers to exactly one annotated box, got {len(referred.boxes)} box(es)")
            claim_id(seen, referred.text_id, rec, id_field, id_field.replace("_", " "))
            found[referred.text_id] = referred
        kinds[kind] = found
    return Referents(**kinds)


def _boxes(rec: Record, path: Path) -> tuple[ReferredBox, ...]:
    out = []
    for b in list_records(rec.array("boxes"), path, f"{rec.label}.boxes"):
        box = b.xywh("bbox")
        if not (box.w > 0 and box.h > 0):
            raise b.error("bbox", f"expected a positive width and height, got {box.as_list()}")
        out.append(ReferredBox(box, b.integer("ann_id", optional=True)))
    return tuple(out)


def write_referents(path: Path, referents: Referents) -> None:
    """Records in id order: the same world gives the same bytes."""
    data: dict = {"info": {"description": "the boxes each text of the synthetic world refers to"}}
    for kind, id_field in ID_FIELD.items():
        found: dict[int, Referred] = getattr(referents, kind)
        data[kind] = [
            {
                id_field: r.text_id, "image_id": r.image_id, "image": r.image,
                "boxes": [{"bbox": b.box.as_list(), "ann_id": b.ann_id} for b in r.boxes],
            }
            for _, r in sorted(found.items())
        ]
    dump_json(data, path)

