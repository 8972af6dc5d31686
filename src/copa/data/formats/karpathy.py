"""Karpathy splits: ``dataset_coco.json`` and ``dataset_flickr30k.json``
(https://cs.stanford.edu/people/karpathy/deepimagesent/).

``{"dataset": "coco", "images": [{filepath?, filename, imgid, split, sentids, cocoid?,
sentences: [{tokens, raw, imgid, sentid}]}]}``; ``split`` is train / restval / val / test.
COCO images are found as ``<coco_dir>/<filepath>/<filename>``, Flickr30K images as
``<image_dir>/<filename>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copa.data.formats.records import FormatError, dump_json, list_records, load_json, records
from copa.data.images import image_file_problem

SPLITS = ("train", "restval", "val", "test")


@dataclass(frozen=True)
class KarpathyImage:
    imgid: int
    split: str
    path: Path
    sentences: tuple[str, ...]  # the ``raw`` text of each sentence
    cocoid: int | None = None


def read_karpathy(path: Path, image_dir: Path, check_files: bool = True) -> tuple[str, list[KarpathyImage]]:
    """Returns the ``dataset`` name and the images. ``image_dir``: the COCO root or the Flickr image folder."""
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("dataset"), str):
        raise FormatError(path, "expected a JSON object with a string field 'dataset'", field="dataset")
    images, seen_sent = [], set()
    for rec in records(data, "images", path, id_field="imgid"):
        split = rec.string("split")
        if split not in SPLITS:
            raise rec.error("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
        folder = rec.string("filepath", optional=True)
        image_path = (image_dir / folder if folder else image_dir) / rec.string("filename")
        sentences = []
        for srec in list_records(rec.array("sentences"), path, f"{rec.label}.sentences", "sentid"):
            sentid = srec.integer("sentid")
            if sentid in seen_sent:
                raise srec.error("sentid", f"duplicate sentence id {sentid}")
            seen_sent.add(sentid)
            srec.strings("tokens")
            sentences.append(srec.string("raw"))
        image = KarpathyImage(rec.integer("imgid"), split, image_path, tuple(sentences), rec.integer("cocoid", optional=True))
        if check_files and (problem := image_file_problem(image.path)[0]):
            raise rec.error("filename", str(problem))
        images.append(image)
    return data["dataset"], images


def tokenize(raw: str) -> list[str]:
    """Karpathy's tokens: lower-case words without punctuation."""
    return "".join(c if c.isalnum() or c.isspace() else " " for c in raw.lower()).split()


def write_karpathy(path: Path, dataset: str, images: list[KarpathyImage], image_dir: Path) -> None:
    entries, sentid = [], 0
    for im in images:
        sentences = []
        for raw in im.sentences:
            sentences.append({"tokens": tokenize(raw), "raw": raw, "imgid": im.imgid, "sentid": sentid})
            sentid += 1
        entry = {}
        relative = im.path.relative_to(image_dir)
        if len(relative.parts) > 1:
            entry["filepath"] = str(relative.parent)
        entry.update(
            {"sentids": [s["sentid"] for s in sentences], "filename": im.path.name, "imgid": im.imgid, "split": im.split, "sentences": sentences}
        )
        if im.cocoid is not None:
            entry["cocoid"] = im.cocoid
        entries.append(entry)
    dump_json({"images": entries, "dataset": dataset}, path)
