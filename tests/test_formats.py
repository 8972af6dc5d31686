"""Official-format readers: round trips through the writers, bad-input errors, ``copa validate-data``.

Every bad-input case corrupts one record of a private copy of the fixture world and expects a
FormatError naming the file, the record and the field (never a KeyError/TypeError traceback).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image as PILImage

from copa.cli import main
from copa.data.formats import coco, karpathy, refcoco, reference_boxes, visual_genome, vqa, web_pairs
from copa.data.formats.records import Box, FormatError, dump_json, load_json
from copa.data.layout import COCO_ANNOTATED_SPLITS, VQA_SPLITS, DataLayout
from copa.data.validate import validate_data_root

PARAMS_DIR = Path(__file__).parents[1] / "params"

@pytest.fixture
def world(fixture_world: Path, tmp_path: Path) -> DataLayout:
    """A private copy of the fixture world (~2 MB), free to corrupt."""
    root = tmp_path / "world"
    shutil.copytree(fixture_world, root)
    return DataLayout(root)


@pytest.fixture
def lay(fixture_world: Path) -> DataLayout:
    """The shared fixture world, read-only."""
    return DataLayout(fixture_world)


def assert_same_bytes(original: Path, rewritten: Path) -> None:
    assert rewritten.read_bytes() == original.read_bytes(), f"{rewritten} differs from {original}"


def description(coco_file: Path) -> str:
    return load_json(coco_file)["info"]["description"]


# =========================================================================== round trips
# read -> write elsewhere -> read again gives equal records; the synthetic world was written by
# these writers, so writing what was read also reproduces the original bytes.


@pytest.mark.parametrize("split", COCO_ANNOTATED_SPLITS)
def test_coco_instances_round_trip(lay: DataLayout, tmp_path: Path, split: str) -> None:
    src, out = lay.coco_instances(split), tmp_path / "instances.json"
    first = coco.read_instances(src, lay.coco_images(split))
    assert first.objects and first.categories
    coco.write_instances(out, list(first.images.values()), list(first.categories.values()), first.objects, description(src))
    assert coco.read_instances(out, lay.coco_images(split)) == first
    assert_same_bytes(src, out)


@pytest.mark.parametrize("split", COCO_ANNOTATED_SPLITS)
def test_coco_captions_round_trip(lay: DataLayout, tmp_path: Path, split: str) -> None:
    src, out = lay.coco_captions(split), tmp_path / "captions.json"
    first = coco.read_captions(src, lay.coco_images(split))
    assert first.captions
    coco.write_captions(out, list(first.images.values()), first.captions, description(src))
    assert coco.read_captions(out, lay.coco_images(split)) == first
    assert_same_bytes(src, out)


def test_coco_image_info_round_trip(lay: DataLayout, tmp_path: Path) -> None:
    src, out, image_dir = lay.coco_image_info("test2015"), tmp_path / "image_info.json", lay.coco_images("test2015")
    images = coco.read_image_info(src, image_dir)
    categories = coco.read_categories(load_json(src), src)
    coco.write_image_info(out, list(images.values()), list(categories.values()), description(src))
    assert coco.read_image_info(out, image_dir) == images
    assert_same_bytes(src, out)


def test_visual_genome_round_trip(lay: DataLayout, tmp_path: Path) -> None:
    out = DataLayout(tmp_path)
    images = visual_genome.read_image_data(lay.vg_image_data, lay.vg)
    objects = visual_genome.read_objects(lay.vg_objects, images)
    attributes = visual_genome.read_attributes(lay.vg_attributes, images)
    regions = visual_genome.read_regions(lay.vg_regions, images)
    assert objects and regions and all(o.attributes for o in attributes)

    image_list = list(images.values())
    visual_genome.write_image_data(out.vg_image_data, image_list)
    visual_genome.write_objects(out.vg_objects, image_list, objects)
    visual_genome.write_attributes(out.vg_attributes, image_list, attributes)
    visual_genome.write_regions(out.vg_regions, image_list, regions)

    # Image paths are <vg_dir>/<url folder>/<id>.jpg: read the copy against the original image folders.
    again = visual_genome.read_image_data(out.vg_image_data, lay.vg)
    assert again == images
    assert visual_genome.read_objects(out.vg_objects, again) == objects
    assert visual_genome.read_attributes(out.vg_attributes, again) == attributes
    assert visual_genome.read_regions(out.vg_regions, again) == regions
    for name in ("vg_image_data", "vg_objects", "vg_attributes", "vg_regions"):
        assert_same_bytes(getattr(lay, name), getattr(out, name))


@pytest.mark.parametrize("split", VQA_SPLITS)
def test_vqa_round_trip(lay: DataLayout, tmp_path: Path, split: str) -> None:
    out = DataLayout(tmp_path)
    first = vqa.read_split(lay.vqa, split)
    assert first.questions and first.answers
    vqa.write_questions(out.vqa_questions(split), split, first.questions)
    vqa.write_annotations(out.vqa_annotations(split), split, list(first.answers.values()))
    assert vqa.read_split(out.vqa, split) == first
    assert_same_bytes(lay.vqa_questions(split), out.vqa_questions(split))
    assert_same_bytes(lay.vqa_annotations(split), out.vqa_annotations(split))


def test_refcoco_round_trip(lay: DataLayout, tmp_path: Path) -> None:
    out, image_dir = DataLayout(tmp_path), lay.coco_images("train2014")
    first = refcoco.read_refcoco(lay.refcoco, image_dir)
    assert first.refs and {r.split for r in first.refs} <= set(refcoco.SPLITS)
    inst = first.instances
    coco.write_instances(
        out.refcoco_instances, list(inst.images.values()), list(inst.categories.values()), inst.objects, description(lay.refcoco_instances)
    )
    refcoco.write_refs(out.refcoco_refs, first.refs)
    # The images are COCO train2014's, wherever the refs folder is.
    assert refcoco.read_refcoco(out.refcoco, image_dir) == first
    assert_same_bytes(lay.refcoco_instances, out.refcoco_instances)
    assert_same_bytes(lay.refcoco_refs, out.refcoco_refs)


@pytest.mark.parametrize("dataset", ["coco", "flickr30k"])
def test_karpathy_round_trip(lay: DataLayout, tmp_path: Path, dataset: str) -> None:
    src, image_dir = {"coco": (lay.karpathy_coco, lay.coco), "flickr30k": (lay.karpathy_flickr, lay.flickr_images)}[dataset]
    name, images = karpathy.read_karpathy(src, image_dir)
    assert name == dataset and images
    out = tmp_path / src.name
    # filepath/filename are relative to the image folder, not to the JSON file's folder.
    karpathy.write_karpathy(out, name, images, image_dir)
    assert karpathy.read_karpathy(out, image_dir) == (name, images)
    assert_same_bytes(src, out)


@pytest.mark.parametrize("split", ["train", "val"])
def test_web_pairs_round_trip(lay: DataLayout, tmp_path: Path, split: str) -> None:
    src = lay.cc3m_tsv(split)
    pairs = web_pairs.read_web_pairs(src)
    assert pairs
    # Image paths are relative to the TSV's folder: move the images along with the TSV.
    shutil.copytree(lay.cc3m / "images" / split, tmp_path / "images" / split)
    moved = [dataclasses.replace(p, path=tmp_path / p.path.relative_to(lay.cc3m)) for p in pairs]
    out = tmp_path / src.name
    web_pairs.write_web_pairs(out, moved)
    assert web_pairs.read_web_pairs(out) == moved
    assert_same_bytes(src, out)


def test_reference_boxes_round_trip(lay: DataLayout, tmp_path: Path) -> None:
    src, out = lay.oracle_reference_boxes, tmp_path / "boxes.jsonl"
    pairs = reference_boxes.read_reference_boxes(src, data_root=lay.root)
    assert pairs and all(p.source == reference_boxes.ORACLE_SOURCE for p in pairs)
    reference_boxes.write_reference_boxes(out, pairs)
    # ``image`` is relative to the data root, not to the JSONL's folder.
    assert reference_boxes.read_reference_boxes(out, data_root=lay.root) == pairs
    assert_same_bytes(src, out)


AWKWARD_TEXT = "line\u2028separator, next\x85line, form\x0cfeed, vertical\x0btab, \x1cfile separator, ünïcödé"


def test_line_formats_round_trip_text_with_unicode_line_breaks(tmp_path: Path) -> None:
    """str.splitlines() splits at these characters; the line-based readers must not."""
    image = tmp_path / "a.jpg"
    PILImage.new("RGB", (32, 32)).save(image)
    pairs = [web_pairs.WebPair(1, AWKWARD_TEXT, image), web_pairs.WebPair(2, "plain", image)]
    web_pairs.write_web_pairs(tmp_path / "pairs.tsv", pairs)
    assert web_pairs.read_web_pairs(tmp_path / "pairs.tsv") == pairs

    box = reference_boxes.DetectedBox(Box(1, 2, 3, 4), 0.5, AWKWARD_TEXT)
    refs = [reference_boxes.ReferencePair("p1", "a.jpg", AWKWARD_TEXT, 10, 10, "oracle", (box,))]
    reference_boxes.write_reference_boxes(tmp_path / "boxes.jsonl", refs)
    assert reference_boxes.read_reference_boxes(tmp_path / "boxes.jsonl", data_root=tmp_path) == refs


@pytest.mark.parametrize("caption", ["tab\there", "new\nline", "carriage\rreturn"])
def test_web_pairs_writer_refuses_captions_that_break_the_tsv(tmp_path: Path, caption: str) -> None:
    with pytest.raises(ValueError, match="contains a tab"):
        web_pairs.write_web_pairs(tmp_path / "pairs.tsv", [web_pairs.WebPair(1, caption, tmp_path / "a.jpg")])


@pytest.mark.parametrize("url", ["", "1.jpg", "VG_100K/", "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg"])
def test_vg_image_folder_defaults_when_the_url_names_none(tmp_path: Path, url: str) -> None:
    path = tmp_path / "image_data.json"
    dump_json([{"width": 8, "url": url, "height": 8, "image_id": 1}], path)
    images = visual_genome.read_image_data(path, tmp_path, check_files=False)
    assert images[1].path == tmp_path / visual_genome.IMAGE_FOLDER / "1.jpg"


# =========================================================================== bad input
# A case names a source (the file to corrupt and how to read it), an edit of that file in the
# private world copy, and the expected record label (without its "(id …)" parts), field and
# problem. record/field None: the error is about the whole file.

Edit = Callable[[Path, DataLayout], None]


def _load(path: Path) -> Any:
    if path.suffix == ".p":
        return refcoco.read_refs(path)
    if path.suffix == ".tsv":
        return [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n")[:-1]]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]
    return load_json(path)


def _dump(data: Any, path: Path) -> None:
    if path.suffix == ".p":
        path.write_bytes(pickle.dumps(data, protocol=2))
    elif path.suffix == ".tsv":
        path.write_text("".join("\t".join(columns) + "\n" for columns in data), encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(obj) + "\n" for obj in data), encoding="utf-8")
    else:
        dump_json(data, path)


_DELETE = object()


def _change(keys: tuple, value: Any) -> Edit:
    def apply(path: Path, _: DataLayout) -> None:
        data = _load(path)
        *parents, last = keys
        node = data
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value(data) if callable(value) else value
        _dump(data, path)

    return apply


def drop(*keys: Any) -> Edit:
    """Delete ``data[k1][k2]...``."""
    return _change(keys, _DELETE)


def put(*keys: Any, value: Any) -> Edit:
    """Set ``data[k1][k2]...`` to ``value``, or to ``value(data)`` when it is callable."""
    return _change(keys, value)


def raw(change: Callable[[bytes], bytes]) -> Edit:
    """Rewrite the file's bytes."""
    return lambda path, _: path.write_bytes(change(path.read_bytes()))


def break_line(number: int) -> Edit:
    """Cut the end off line ``number`` (1-based) of a text file."""

    def apply(path: Path, _: DataLayout) -> None:
        lines = path.read_text(encoding="utf-8").split("\n")
        lines[number - 1] = lines[number - 1][:-3]
        path.write_text("\n".join(lines), encoding="utf-8")

    return apply


def delete_image(locate: Callable[[DataLayout, Any], Path]) -> Edit:
    """Delete the image file ``locate(layout, data of the file)`` names; the file itself stays good."""

    def apply(path: Path, lay: DataLayout) -> None:
        image = locate(lay, _load(path))
        assert image.is_file()
        image.unlink()

    return apply


@dataclasses.dataclass(frozen=True)
class Source:
    file: Callable[[DataLayout], Path]  # the file the cases corrupt
    read: Callable[[DataLayout], Any]  # reads it (with whatever it depends on)


def _vg_images(lay: DataLayout) -> dict:
    return visual_genome.read_image_data(lay.vg_image_data, lay.vg)


def _vqa_train(lay: DataLayout) -> vqa.VQASplit:
    known = set(coco.read_instances(lay.coco_instances("train2014"), lay.coco_images("train2014")).images)
    return vqa.read_split(lay.vqa, "train2014", known)


SOURCES = {
    "coco instances": Source(
        lambda lay: lay.coco_instances("train2014"), lambda lay: coco.read_instances(lay.coco_instances("train2014"), lay.coco_images("train2014"))
    ),
    "coco captions": Source(
        lambda lay: lay.coco_captions("val2014"), lambda lay: coco.read_captions(lay.coco_captions("val2014"), lay.coco_images("val2014"))
    ),
    "coco image info": Source(
        lambda lay: lay.coco_image_info("test2015"), lambda lay: coco.read_image_info(lay.coco_image_info("test2015"), lay.coco_images("test2015"))
    ),
    "vg image data": Source(lambda lay: lay.vg_image_data, _vg_images),
    "vg objects": Source(lambda lay: lay.vg_objects, lambda lay: visual_genome.read_objects(lay.vg_objects, _vg_images(lay))),
    "vg attributes": Source(lambda lay: lay.vg_attributes, lambda lay: visual_genome.read_attributes(lay.vg_attributes, _vg_images(lay))),
    "vg regions": Source(lambda lay: lay.vg_regions, lambda lay: visual_genome.read_regions(lay.vg_regions, _vg_images(lay))),
    "vqa questions": Source(lambda lay: lay.vqa_questions("train2014"), _vqa_train),
    "vqa annotations": Source(lambda lay: lay.vqa_annotations("train2014"), _vqa_train),
    "refcoco+ refs": Source(lambda lay: lay.refcoco_refs, lambda lay: refcoco.read_refcoco(lay.refcoco, lay.coco_images("train2014"))),
    "karpathy": Source(lambda lay: lay.karpathy_coco, lambda lay: karpathy.read_karpathy(lay.karpathy_coco, lay.coco)),
    "web pairs": Source(lambda lay: lay.cc3m_tsv("train"), lambda lay: web_pairs.read_web_pairs(lay.cc3m_tsv("train"))),
    "reference boxes": Source(
        lambda lay: lay.oracle_reference_boxes, lambda lay: reference_boxes.read_reference_boxes(lay.oracle_reference_boxes, lay.root)
    ),
}


def case(source: str, edit: Edit, record: str | None, field: str | None, problem: str, id: str):
    return pytest.param(source, edit, record, field, problem, id=f"{source}: {id}")


UNKNOWN_ID = 987_654_321
TEST2015_IMAGE = 900_001  # an image of another COCO split

BAD_INPUTS = [
    # ---- COCO instances
    case("coco instances", raw(lambda b: b[:-1]), None, None, "not valid JSON", "truncated file"),
    case("coco instances", raw(lambda b: b"[1, 2, 3]"), None, None, "expected a JSON object at the top level", "top-level list"),
    case("coco instances", drop("annotations"), None, "annotations", "missing", "no annotations list"),
    case("coco instances", drop("annotations", 3, "bbox"), "annotations[3]", "bbox", "missing", "missing bbox"),
    case("coco instances", put("annotations", 3, "bbox", value=[1, 2, 3]), "annotations[3]", "bbox", "4 numbers", "bbox of 3 numbers"),
    case("coco instances", put("annotations", 4, "area", value="big"), "annotations[4]", "area", "expected a number", "area a string"),
    case("coco instances", put("annotations", 5, "id", value="6"), "annotations[5]", "id", "expected an integer", "id a string"),
    case("coco instances", put("annotations", 2, "image_id", value=UNKNOWN_ID), "annotations[2]", "image_id", "not in the file's images", "unknown image_id"),
    case("coco instances", put("annotations", 7, "category_id", value=99), "annotations[7]", "category_id", "not in the file's categories", "unknown category_id"),
    case("coco instances", put("annotations", 3, "id", value=lambda d: d["annotations"][1]["id"]), "annotations[3]", "id", "duplicate annotation id", "duplicate annotation id"),
    case("coco instances", put("images", 2, "width", value=0), "images[2]", "width", "must be positive", "image width 0"),
    case("coco instances", put("images", 3, "id", value=lambda d: d["images"][0]["id"]), "images[3]", "id", "duplicate image id", "duplicate image id"),
    case("coco instances", put("annotations", 0, "segmentation", value=[[1, "a"]]), "annotations[0]", "segmentation", "polygons", "bad segmentation"),
    case("coco instances", delete_image(lambda lay, d: lay.coco_images("train2014") / d["images"][5]["file_name"]), "images[5]", "file_name", "does not exist", "missing image file"),
    # ---- COCO captions and image info
    case("coco captions", put("annotations", 2, "caption", value=42), "annotations[2]", "caption", "expected a string", "caption not a string"),
    case("coco captions", drop("annotations", 2, "image_id"), "annotations[2]", "image_id", "missing", "missing image_id"),
    case("coco captions", put("annotations", 6, "image_id", value=TEST2015_IMAGE), "annotations[6]", "image_id", "not in the file's images", "unknown image_id"),
    case("coco captions", put("annotations", 1, "id", value=lambda d: d["annotations"][0]["id"]), "annotations[1]", "id", "duplicate caption id", "duplicate caption id"),
    case("coco image info", raw(lambda b: b"\xff" + b), None, None, "not UTF-8", "not UTF-8"),
    case("coco image info", put("images", 1, "file_name", value=None), "images[1]", "file_name", "expected a string", "file_name null"),
    # ---- Visual Genome
    case("vg image data", raw(lambda b: b'{"images": []}'), None, None, "expected a JSON list at the top level", "top-level object"),
    case("vg image data", put(2, "width", value=0), "images[2]", "width", "must be positive", "width 0"),
    case("vg image data", put(3, "height", value=12.5), "images[3]", "height", "expected an integer", "height a float"),
    case("vg image data", put(1, "coco_id", value="12"), "images[1]", "coco_id", "expected an integer", "coco_id a string"),
    case("vg image data", delete_image(lambda lay, d: lay.vg / visual_genome.IMAGE_FOLDER / f"{d[4]['image_id']}.jpg"), "images[4]", "url", "does not exist", "missing image file"),
    case("vg objects", drop(0, "objects", 1, "x"), "images[0].objects[1]", "x", "missing", "object without x"),
    case("vg objects", put(1, "objects", 0, "names", value="circle"), "images[1].objects[0]", "names", "expected a list", "names not a list"),
    case("vg objects", put(1, "image_id", value=UNKNOWN_ID), "images[1]", "image_id", "not in the file's images", "unknown image_id"),
    case("vg objects", put(2, "objects", 0, "object_id", value=lambda d: d[0]["objects"][0]["object_id"]), "images[2].objects[0]", "object_id", "duplicate object id", "duplicate object_id"),
    case("vg objects", raw(lambda b: b"[" * 100_000), None, None, "nested too deeply", "absurdly nested"),
    case("vg attributes", put(0, "attributes", 0, "attributes", value="red"), "images[0].attributes[0]", "attributes", "expected a list", "attributes not a list"),
    case("vg regions", put(0, "regions", 0, "image_id", value=lambda d: d[1]["id"]), "images[0].regions[0]", "image_id", "listed under image", "region under the wrong image"),
    case("vg regions", drop(1, "regions", 2, "phrase"), "images[1].regions[2]", "phrase", "missing", "region without phrase"),
    case("vg regions", put(0, "regions", 3, "width", value=[4]), "images[0].regions[3]", "width", "expected a number", "width a list"),
    case("vg regions", put(0, "regions", 1, "region_id", value=lambda d: d[0]["regions"][0]["region_id"]), "images[0].regions[1]", "region_id", "duplicate region id", "duplicate region_id"),
    # ---- VQA v2
    case("vqa questions", raw(lambda b: b"[]"), None, None, "expected a JSON object at the top level", "top-level list"),
    case("vqa questions", put("questions", 1, "image_id", value=TEST2015_IMAGE), "questions[1]", "image_id", "not an image of this split", "image of another split"),
    case("vqa questions", drop("questions", 0, "question"), "questions[0]", "question", "missing", "missing question text"),
    case("vqa questions", put("questions", 3, "question_id", value=lambda d: d["questions"][2]["question_id"]), "questions[3]", "question_id", "duplicate question id", "duplicate question_id"),
    case("vqa annotations", drop("annotations", 0, "answers", -1), "annotations[0]", "answers", "expected 10 human answers, got 9", "9 answers"),
    case("vqa annotations", put("annotations", 2, "answer_type", value="maybe"), "annotations[2]", "answer_type", "expected one of yes/no, number, other", "bad answer_type"),
    case("vqa annotations", drop("annotations", 4), "questions[4]", "question_id", "has no annotation", "question without annotation"),
    case("vqa annotations", put("annotations", 1, "question_id", value=UNKNOWN_ID), "annotations[1]", "question_id", "not in the questions file", "unknown question_id"),
    case("vqa annotations", put("annotations", 3, "image_id", value=lambda d: d["annotations"][3]["image_id"] + 1), "annotations[3]", "image_id", "differs from the question's", "image_id differs"),
    case("vqa annotations", put("annotations", 5, "answers", 2, "answer", value=7), "annotations[5].answers[2]", "answer", "expected a string", "answer not a string"),
    # ---- RefCOCO+ (the refs pickle; its instances.json is a COCO instances file)
    case("refcoco+ refs", raw(lambda b: b[: len(b) // 2]), None, None, "not a readable refs pickle", "truncated pickle"),
    case("refcoco+ refs", raw(lambda b: b"\x80\x02)K\x01a."), None, None, "not a readable refs pickle", "APPEND to a tuple"),
    case("refcoco+ refs", raw(lambda b: pickle.dumps({"refs": []}, protocol=2)), None, None, "expected a pickled list", "not a list"),
    case("refcoco+ refs", put(3, "ann_id", value=UNKNOWN_ID), "refs[3]", "ann_id", "not in instances.json", "unknown ann_id"),
    case("refcoco+ refs", put(0, "split", value="testC"), "refs[0]", "split", "expected one of train, val, testA, testB", "bad split"),
    case("refcoco+ refs", put(2, "image_id", value=lambda d: d[2]["image_id"] + 1), "refs[2]", "image_id", "belongs to image", "image_id of another image"),
    case("refcoco+ refs", put(1, "sentences", value=[]), "refs[1]", "sentences", "at least one sentence", "no sentences"),
    case("refcoco+ refs", drop(4, "sentences", 0, "sent"), "refs[4].sentences[0]", "sent", "missing", "sentence without sent"),
    case("refcoco+ refs", put(5, "ref_id", value=lambda d: d[0]["ref_id"]), "refs[5]", "ref_id", "duplicate ref id", "duplicate ref_id"),
    case("refcoco+ refs", put(6, value="a ref"), "refs[6]", None, "expected a JSON object", "ref not a dict"),
    # ---- Karpathy splits
    case("karpathy", drop("dataset"), None, "dataset", "string field 'dataset'", "no dataset name"),
    case("karpathy", put("images", 0, "split", value="training"), "images[0]", "split", "expected one of train, restval, val, test", "bad split"),
    case("karpathy", put("images", 1, "sentences", 0, "sentid", value=lambda d: d["images"][0]["sentences"][0]["sentid"]), "images[1].sentences[0]", "sentid", "duplicate sentence id", "duplicate sentid"),
    case("karpathy", put("images", 2, "sentences", 1, "tokens", value="a b c"), "images[2].sentences[1]", "tokens", "expected a list", "tokens a string"),
    case("karpathy", drop("images", 3, "filename"), "images[3]", "filename", "missing", "missing filename"),
    case("karpathy", delete_image(lambda lay, d: lay.coco / d["images"][2]["filepath"] / d["images"][2]["filename"]), "images[2]", "filename", "does not exist", "missing image file"),
    # ---- CC3M-style web pairs (TSV)
    case("web pairs", put(1, value=["a caption", "images/train/00000001.jpg", "extra"]), "line 2", None, "expected 2 tab-separated columns", "3 columns"),
    case("web pairs", put(2, 0, value="   "), "line 3", "caption", "empty caption", "empty caption"),
    case("web pairs", put(0, 1, value="https://example.com/x.jpg"), "line 1", "image", "is a URL", "URL instead of a path"),
    case("web pairs", delete_image(lambda lay, d: lay.cc3m / d[3][1]), "line 4", "image", "does not exist", "missing image file"),
    case("web pairs", raw(lambda b: b.replace(b"e", b"\xe9", 1)), None, None, "not UTF-8", "Latin-1 text"),
    # ---- reference boxes (JSON lines)
    case("reference boxes", put(0, "boxes", 1, "bbox", value=[1, 2, 3]), "line 1.boxes[1]", "bbox", "4 numbers", "bbox of 3 numbers"),
    case("reference boxes", break_line(3), "line 3", None, "not valid JSON", "invalid JSON line"),
    case("reference boxes", put(1, value=[1, 2]), "line 2", None, "expected a JSON object", "line not an object"),
    case("reference boxes", put(4, "width", value="86"), "line 5", "width", "expected an integer", "width a string"),
    case("reference boxes", drop(5, "caption"), "line 6", "caption", "missing", "missing caption"),
    case("reference boxes", delete_image(lambda lay, d: lay.root / d[1]["image"]), "line 2", "image", "does not exist", "missing image file"),
    case("reference boxes", raw(lambda b: b"\xff" + b), None, None, "not UTF-8", "not UTF-8"),
]


def _without_ids(text: str) -> str:
    """``images[0] (image_id 1).objects[2] (object_id 7)`` -> ``images[0].objects[2]``."""
    return re.sub(r" \([^()]*\)", "", text)


@pytest.mark.parametrize("source, edit, record, field, problem", BAD_INPUTS)
def test_reader_error_names_file_record_and_field(world: DataLayout, source: str, edit: Edit, record, field, problem) -> None:
    src = SOURCES[source]
    path = src.file(world)
    edit(path, world)
    with pytest.raises(FormatError) as caught:
        src.read(world)
    err, message = caught.value, str(caught.value)
    assert err.path == str(path) and message.startswith(str(path)), message
    assert (err.record and _without_ids(err.record)) == record, message
    assert err.field == field, message
    if record is not None:
        assert f"record {record}" in _without_ids(message), message
    if field is not None:
        assert f"field '{field}'" in message, message
    assert problem in err.problem, message


def test_every_source_has_a_bad_input_case() -> None:
    assert {p.values[0] for p in BAD_INPUTS} == set(SOURCES)


class _RunsCode:
    """Unpickling this with ``pickle.load`` would run a shell command (protocol 2: a REDUCE of os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_refs_pickle_with_a_class_reference_is_refused_without_running_it(world: DataLayout, tmp_path: Path) -> None:
    marker = tmp_path / "the-pickle-ran-code"
    refs = refcoco.read_refs(world.refcoco_refs)
    refs[0]["sentences"][0]["sent"] = _RunsCode(marker)
    world.refcoco_refs.write_bytes(pickle.dumps(refs, protocol=2))
    assert b"system" in world.refcoco_refs.read_bytes()  # the class reference is really in the file
    with pytest.raises(FormatError, match=r"refusing to load (posix|nt|os)\.system") as caught:
        refcoco.read_refcoco(world.refcoco, world.coco_images("train2014"))
    assert str(caught.value).startswith(str(world.refcoco_refs))
    assert not marker.exists()


def test_missing_file_is_a_format_error(tmp_path: Path) -> None:
    for read in (
        lambda p: coco.read_instances(p, tmp_path),
        lambda p: refcoco.read_refs(p),
        lambda p: web_pairs.read_web_pairs(p),
        lambda p: reference_boxes.read_reference_boxes(p),
    ):
        with pytest.raises(FormatError, match="file not found"):
            read(tmp_path / "nowhere")


# =========================================================================== validate-data
def test_validate_good_world(lay: DataLayout) -> None:
    result = validate_data_root(lay.root)
    assert result.ok, result.to_dict()
    assert len(result.sources) == 15 and all(s.status == "ok" for s in result.sources)
    assert result.defects and not result.defect_mismatches
    assert all(v["manifest"] == v["found"] for kinds in result.defects.values() for v in kinds.values())


# (edit, file, the (source, split) validate reports as broken, the reader that gives the same error)
BROKEN_SOURCES = [
    pytest.param(
        drop("annotations", 3, "bbox"), lambda lay: lay.coco_instances("val2014"), ("coco instances", "val2014"),
        lambda lay: coco.read_instances(lay.coco_instances("val2014"), lay.coco_images("val2014")), id="coco instances",
    ),
    pytest.param(
        put(0, "regions", 0, "image_id", value=lambda d: d[1]["id"]), lambda lay: lay.vg_regions, ("visual genome", "all"),
        lambda lay: visual_genome.read_regions(lay.vg_regions, _vg_images(lay)), id="vg regions",
    ),
    pytest.param(
        put(2, 0, value=""), lambda lay: lay.cc3m_tsv("val"), ("cc3m web pairs", "val"),
        lambda lay: web_pairs.read_web_pairs(lay.cc3m_tsv("val")), id="web pairs",
    ),
    pytest.param(
        put(0, "split", value="testC"), lambda lay: lay.refcoco_refs, ("refcoco+", "all"),
        lambda lay: refcoco.read_refcoco(lay.refcoco, lay.coco_images("train2014")), id="refcoco+",
    ),
]


@pytest.mark.parametrize("edit, file, key, read", BROKEN_SOURCES)
def test_validate_reports_only_the_broken_source(world: DataLayout, edit: Edit, file, key, read) -> None:
    edit(file(world), world)
    with pytest.raises(FormatError) as caught:
        read(world)
    result = validate_data_root(world.root)
    assert not result.ok
    assert len(result.sources) == 15
    broken = [s for s in result.sources if s.status != "ok"]
    assert [(s.source, s.split, s.status) for s in broken] == [(*key, "error")]
    assert broken[0].error == str(caught.value)


def test_validate_absent_source_is_not_an_error(world: DataLayout) -> None:
    shutil.rmtree(world.vg)
    result = validate_data_root(world.root)
    assert len(result.sources) == 15
    assert [(s.source, s.status) for s in result.sources if s.status != "ok"] == [("visual genome", "absent")]
    assert result.ok, result.to_dict()


def test_validate_unreadable_manifest_is_a_mismatch_not_a_crash(world: DataLayout) -> None:
    raw(lambda b: b[:-2])(world.manifest, world)
    result = validate_data_root(world.root)
    assert all(s.status == "ok" for s in result.sources)
    assert not result.ok
    assert len(result.defect_mismatches) == 1 and result.defect_mismatches[0].startswith(f"{world.manifest}: not valid JSON")


def _first_coco_train_image(lay: DataLayout) -> Path:
    return lay.coco_images("train2014") / load_json(lay.coco_instances("train2014"))["images"][0]["file_name"]


def _first_web_image(lay: DataLayout) -> Path:
    return lay.cc3m_tsv("train").parent / lay.cc3m_tsv("train").read_text(encoding="utf-8").split("\n")[0].split("\t")[1]


@pytest.mark.parametrize(
    "image_of, damage, problem",
    [
        (_first_coco_train_image, lambda p: PILImage.new("RGB", (1, 1)).save(p, "JPEG"), r"is 1x1, (its annotation says \d+x\d+|under 16 px a side)"),
        (_first_coco_train_image, lambda p: PILImage.new("RGB", (40, 30)).save(p, "JPEG"), r"is 40x30, its annotation says \d+x\d+"),
        (_first_coco_train_image, lambda p: p.write_bytes(b"<html>not found</html>"), r"is not a readable image \(UnidentifiedImageError"),
        (_first_web_image, lambda p: PILImage.new("RGB", (1, 1)).save(p, "JPEG"), r"is 1x1, under 16 px a side"),
    ],
    ids=["1x1", "wrong-size", "not-an-image", "web-1x1"],
)
def test_validate_checks_each_image_file_against_its_annotation(world: DataLayout, image_of, damage, problem) -> None:
    """Images enter through validation: each file's header is read, its size compared with its
    annotation (where the format has one) and with a minimum; a bad one is an error naming it."""
    image = image_of(world)
    damage(image)
    result = validate_data_root(world.root)
    broken = [s for s in result.sources if s.status == "error"]
    assert not result.ok and broken
    assert all(f"image file {image} " in s.error for s in broken), [s.error for s in broken]
    assert all(re.search(problem, s.error) for s in broken), [s.error for s in broken]


def test_validate_refuses_an_image_over_the_pixel_limit(world: DataLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decompression bomb is refused by its header (PIL's limit, here lowered to the fixture's sizes)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    result = validate_data_root(world.root)
    assert not result.ok and all("DecompressionBombError" in s.error for s in result.sources if s.status == "error")


def test_validate_without_image_check_ignores_missing_images(world: DataLayout) -> None:
    delete_image(lambda lay, d: lay.coco_images("val2014") / d["images"][0]["file_name"])(world.coco_instances("val2014"), world)
    assert not validate_data_root(world.root).ok
    assert validate_data_root(world.root, check_files=False).ok


def test_cli_validate_data_exit_status(world: DataLayout, capsys: pytest.CaptureFixture) -> None:
    argv = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "validate-data", str(world.root)]
    assert main(argv) == 0
    assert capsys.readouterr().out.rstrip().endswith("valid")

    drop("annotations", 3, "bbox")(world.coco_instances("val2014"), world)
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out
    assert f"{world.coco_instances('val2014')}, record annotations[3]" in out and "field 'bbox': missing" in out


def test_a_format_error_survives_pickling_with_its_file_record_and_field():
    """How an error leaves a worker process (filtering, patch labels): rebuilt from its arguments."""
    import pickle

    error = pickle.loads(pickle.dumps(FormatError("coco/instances.json", "expected a number", "annotations[3]", "bbox")))
    assert isinstance(error, FormatError) and str(error) == "coco/instances.json, record annotations[3], field 'bbox': expected a number"
    assert (error.path, error.problem, error.record, error.field) == ("coco/instances.json", "expected a number", "annotations[3]", "bbox")


def test_refs_with_unusable_boxes_are_dropped_and_counted(world: DataLayout, tmp_path: Path) -> None:
    """RefCOCO+ boxes come from instances.json: a NaN, a coordinate beyond float range (10**400 as JSON
    digits) or a box outside the image used to pass, and grounding then trained to loss nan."""
    from copa.data.downstream import grounding_examples
    from copa.data.validate import format_summary, validate_data_root

    before = refcoco.read_refcoco(world.refcoco, world.coco_images("train2014"))
    assert not before.dropped
    val = [r for r in before.refs if r.split == "val"][:3]
    text = world.refcoco_instances.read_text()
    data = json.loads(text)
    bad = {val[0].ann_id: [float("nan"), 1.0, 5.0, 5.0], val[1].ann_id: [10**400, 1.0, 5.0, 5.0], val[2].ann_id: [1.0, 1.0, 1e5, 5.0]}
    for ann in data["annotations"]:
        ann["bbox"] = bad.get(ann["id"], ann["bbox"])
    world.refcoco_instances.write_text(json.dumps(data))
    after = refcoco.read_refcoco(world.refcoco, world.coco_images("train2014"))
    assert after.dropped == {"non_finite_box": [val[0].ref_id, val[1].ref_id], "outside_image": [val[2].ref_id]}
    assert [r.ref_id for r in after.refs] == [r.ref_id for r in before.refs if r.ref_id not in {v.ref_id for v in val}]
    result = validate_data_root(world.root)
    source = next(s for s in result.sources if s.source == "refcoco+")
    assert source.status == "ok" and source.dropped == {"non_finite_box": 2, "outside_image": 1}
    assert "    dropped as unusable: non_finite_box 2, outside_image 1" in format_summary(result)
    with pytest.warns(UserWarning, match=r"3 refs left out for unusable boxes \(non_finite_box 2, outside_image 1"):
        examples = grounding_examples(world, "val")
    assert not {e.ref_id for e in examples} & {v.ref_id for v in val}


def test_a_coordinate_beyond_float_range_is_a_non_finite_box() -> None:
    from copa.data.annotation_checks import box_defect

    assert box_defect(Box(10**400, 0, 5, 5), 100, 100) == "non_finite_box"  # was an OverflowError traceback
    assert box_defect(Box(1, 1, 5, -(10**400)), 100, 100) == "non_finite_box"
