"""Issue 19: the synthetic world's sidecar says which boxes each VQA question, COCO caption and
RefCOCO+ ref refers to; its reader round-trips and names what is wrong in a malformed file."""

import json
import re
from pathlib import Path

import pytest

from copa.data.formats import coco, refcoco, vqa
from copa.data.formats.records import FormatError, load_json
from copa.data.formats.referents import read_referents, write_referents
from copa.data.layout import DataLayout
from copa.data.synth.world import POOLS, scene_of


def _scene(root: Path, pool: str, image_id: int):
    params = load_json(DataLayout(root).manifest)["params"]
    return scene_of(params["seed"], tuple(params["image_side"]), tuple(params["objects_per_image"]), pool, image_id - POOLS[pool][0])


def test_questions_refer_to_the_objects_they_ask_about(fixture_world):
    lay = DataLayout(fixture_world)
    sidecar = read_referents(lay.referents)
    instances = coco.read_instances(lay.coco_instances("val2014"), lay.coco_images("val2014"))
    ann_box = {o.ann_id: o.box for o in instances.objects}
    split = vqa.read_split(lay.vqa, "val2014")
    checked = {"colour": 0, "count": 0, "relation": 0}
    for q in split.questions:
        referred = sidecar.questions[q.question_id]
        assert referred.image_id == q.image_id and (fixture_world / referred.image).is_file()
        assert all(ann_box[b.ann_id] == b.box for b in referred.boxes)  # val2014 objects have instances
        humans = split.answers[q.question_id]  # the truth: 3+ of the 10 humans give it, whatever the noise
        colour_of = {o.box: o.colour for o in _scene(fixture_world, "coco_val2014", q.image_id).objects}
        if q.question.startswith("what color is the"):
            assert len(referred.boxes) == 1 and humans.answers.count(colour_of[referred.boxes[0].box]) >= 3
            checked["colour"] += 1
        elif re.fullmatch(r"how many \w+( objects)? are there\?", q.question):
            assert humans.answers.count(str(len(referred.boxes))) >= 3
            checked["count"] += 1
        elif humans.question_type == "is the":
            assert len(referred.boxes) == 2
            checked["relation"] += 1
    assert all(checked.values()), checked
    assert set(sidecar.questions) == {q.question_id for s in ("train2014", "val2014", "test2015") for q in vqa.read_questions(lay.vqa_questions(s))}
    test_ids = {q.question_id for q in vqa.read_questions(lay.vqa_questions("test2015"))}
    assert all(b.ann_id is None for i in test_ids for b in sidecar.questions[i].boxes)  # test2015 has no instances


def test_refs_and_captions_refer_to_annotated_boxes(fixture_world):
    lay = DataLayout(fixture_world)
    sidecar = read_referents(lay.referents)
    refs = refcoco.read_refcoco(lay.refcoco, lay.coco_images("train2014")).refs
    assert refs and set(sidecar.refs) == {r.ref_id for r in refs}
    for ref in refs:
        (box,) = sidecar.refs[ref.ref_id].boxes
        assert box.box == ref.box and box.ann_id == ref.ann_id
    for split in ("train2014", "val2014"):
        caps = coco.read_captions(lay.coco_captions(split), lay.coco_images(split)).captions
        instances = coco.read_instances(lay.coco_instances(split), lay.coco_images(split))
        boxes = {(o.ann_id, o.image_id, o.box) for o in instances.objects}
        for cap in caps:
            referred = sidecar.captions[cap.caption_id]
            assert referred.boxes and all((b.ann_id, cap.image_id, b.box) in boxes for b in referred.boxes)


def test_reader_round_trips_and_names_a_malformed_record(fixture_world, tmp_path):
    path = DataLayout(fixture_world).referents
    sidecar = read_referents(path)
    write_referents(tmp_path / "again.json", sidecar)
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    assert read_referents(tmp_path / "again.json") == sidecar

    data = json.loads(path.read_text())
    data["questions"][1]["boxes"] = [{"bbox": [1, 2, 3], "ann_id": None}]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"bad\.json, record questions\[1\] \(question_id 2\)\.boxes\[0\], field 'bbox': expected \[x, y"):
        read_referents(tmp_path / "bad.json")

    data = json.loads(path.read_text())
    data["refs"][0]["boxes"] = data["refs"][0]["boxes"] * 2
    (tmp_path / "two.json").write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"record refs\[0\] \(ref_id 0\), field 'boxes': a ref refers to exactly one"):
        read_referents(tmp_path / "two.json")

    del data["captions"]
    (tmp_path / "no_captions.json").write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"field 'captions': missing"):
        read_referents(tmp_path / "no_captions.json")
