"""RefCOCO+ (UNC split): ``refs(unc).p`` + ``instances.json`` (https://github.com/lichengunc/refer).

``refs(unc).p`` is a pickled list of dicts {ref_id, ann_id, image_id, category_id, split,
file_name, sent_ids, sentences: [{sent_id, sent, raw, tokens}]}; splits are train / val /
testA / testB. ``instances.json`` is a COCO instances file over the referred images; each ref's
box is its ``ann_id``'s bbox there. A ref whose box is unusable (non-finite, not of positive size,
outside its image) is dropped and counted by reason (``RefCOCO.dropped``; validate-data lists them). The pickle is read with an unpickler that refuses every
class, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from copa.data.annotation_checks import box_defect
from copa.data.formats import coco
from copa.data.formats.records import Box, FormatError, claim_id, list_records

REFS_FILE = "refs(unc).p"
INSTANCES_FILE = "instances.json"
SPLITS = ("train", "val", "testA", "testB")


@dataclass(frozen=True)
class Ref:
    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sentences: tuple[str, ...]  # the normalised ``sent`` of each sentence
    box: Box  # the bbox of ``ann_id`` in instances.json


# a ref's box must be usable: finite, of positive size, inside its image (no minimum area: small referents are the task)
REF_BOX_MIN_AREA = 0.0


@dataclass(frozen=True)
class RefCOCO:
    refs: list[Ref]  # the usable ones
    instances: coco.CocoInstances
    dropped: dict[str, list[int]]  # a box defect (copa.data.annotation_checks) -> the ids of the refs dropped for it


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only plain containers and scalars: refs files need nothing else."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a refs file holds plain data only")


def read_refs(path: Path) -> list:
    try:
        with open(path, "rb") as f:
            # latin1 decodes the Python 2 byte strings of the original release losslessly.
            data = _PlainDataUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    except Exception as exc:
        # No class can load, so whatever fails is the data's fault: a corrupted file can raise
        # AttributeError, OverflowError, MemoryError, ... besides UnpicklingError and EOFError.
        raise FormatError(path, f"not a readable refs pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, list):
        raise FormatError(path, f"expected a pickled list of refs, got {type(data).__name__}")
    return data


def read_refcoco(refcoco_dir: Path, image_dir: Path, check_files: bool = True) -> RefCOCO:
    instances = coco.read_instances(refcoco_dir / INSTANCES_FILE, image_dir, check_files)
    boxes = {obj.ann_id: obj for obj in instances.objects}
    path = refcoco_dir / REFS_FILE
    refs, seen, dropped = [], set(), {}
    for rec in list_records(read_refs(path), path, "refs", id_field="ref_id"):
        split = rec.string("split")
        if split not in SPLITS:
            raise rec.error("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
        ann_id, image_id = rec.integer("ann_id"), rec.integer("image_id")
        if ann_id not in boxes:
            raise rec.error("ann_id", f"annotation id {ann_id} is not in {INSTANCES_FILE}")
        if boxes[ann_id].image_id != image_id:
            raise rec.error("image_id", f"annotation {ann_id} belongs to image {boxes[ann_id].image_id}, not {image_id}")
        sentences = tuple(s.string("sent") for s in list_records(rec.array("sentences"), path, f"{rec.label}.sentences", "sent_id"))
        if not sentences:
            raise rec.error("sentences", "a ref needs at least one sentence")
        ref = Ref(rec.integer("ref_id"), ann_id, image_id, rec.integer("category_id"), split, sentences, boxes[ann_id].box)
        claim_id(seen, ref.ref_id, rec, "ref_id", "ref id")
        image = instances.images[image_id]
        defect = box_defect(ref.box, image.width, image.height, REF_BOX_MIN_AREA)
        if defect is None:
            refs.append(ref)
        else:
            dropped.setdefault(defect, []).append(ref.ref_id)
    return RefCOCO(refs, instances, dropped)


def write_refs(path: Path, refs: list[Ref], raw_sentences: dict[int, tuple[str, ...]] | None = None) -> None:
    """Pickle protocol 2, as the original (Python 2) release; ``raw`` defaults to ``sent``."""
    entries, sent_id = [], 0
    for ref in refs:
        raws = (raw_sentences or {}).get(ref.ref_id, ref.sentences)
        sentences = []
        for sent, raw in zip(ref.sentences, raws):
            sentences.append({"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent})
            sent_id += 1
        entries.append(
            {
                "sent_ids": [s["sent_id"] for s in sentences],
                "file_name": f"{coco.file_name('train2014', ref.image_id)[:-4]}_{ref.ann_id}.jpg",
                "ann_id": ref.ann_id,
                "ref_id": ref.ref_id,
                "image_id": ref.image_id,
                "split": ref.split,
                "sentences": sentences,
                "category_id": ref.category_id,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entries, f, protocol=2)
