"""The synthetic world: deterministic, in formats the official tools read, and true to its scenes."""

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from copa.config import load_params
from copa.data.annotation_checks import box_defect, phrase_overlap
from copa.data.formats import coco, refcoco, visual_genome, vqa
from copa.data.layout import DataLayout
from copa.data.synth import language
from copa.data.synth.render import _shape_mask, outline
from copa.data.synth.scene import SHAPES, sample_scene
from copa.data.synth.world import POOLS, _polygon_area, generate_world
from copa.data.validate import validate_data_root

PARAMS_DIR = Path(__file__).parents[1] / "params"


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _world(tmp_path: Path, name: str, *overrides: str) -> Path:
    params = load_params("fixture", list(overrides), PARAMS_DIR)
    generate_world(params.synth, tmp_path / name, progress=False)
    return tmp_path / name


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, fixture_world):
    again = _digests(_world(tmp_path, "again"))
    assert again == _digests(fixture_world)
    other = _digests(_world(tmp_path, "other", "synth.seed=1"))
    assert set(other) == set(again)  # same files...
    changed = [name for name in again if again[name] != other[name]]
    assert len(changed) > 0.9 * len(again)  # ...with other content


def test_changing_questions_leaves_images_alone(tmp_path, fixture_world):
    more = _digests(_world(tmp_path, "more_questions", "synth.questions_per_image=3"))
    base = _digests(fixture_world)
    assert {n for n in base if base[n] != more[n]} <= {
        "synthetic_manifest.json",
        "referents.json",  # it says what each question refers to
        *(f"vqa/{vqa.questions_file(s)}" for s in ("train2014", "val2014", "test2015")),
        *(f"vqa/{vqa.annotations_file(s)}" for s in ("train2014", "val2014", "test2015")),
    }


def test_pycocotools_reads_instances_and_captions_and_cocoeval_runs(fixture_world):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    lay = DataLayout(fixture_world)
    gt = COCO(str(lay.coco_instances("val2014")))
    caps = COCO(str(lay.coco_captions("val2014")))
    assert len(gt.getImgIds()) == 30 and len(gt.getCatIds()) == len(SHAPES)
    assert all(len(caps.getAnnIds(imgIds=[i])) == 5 for i in caps.getImgIds())
    # Ground truth given back as detections scores AP 1; shifted boxes score less.
    def ap(shift):
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": [a["bbox"][0] + shift * a["bbox"][2], *a["bbox"][1:]], "score": 1.0}
                for a in gt.loadAnns(gt.getAnnIds())]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
        return ev.stats[0]
    assert ap(0.0) == pytest.approx(1.0)
    assert ap(0.4) < 0.5


def test_drawn_pixels_span_exactly_each_box():
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = sample_scene(rng, (64, 160), (1, 10), "in_domain")
        for obj in scene.objects:
            w, h = int(obj.box.w), int(obj.box.h)
            assert _shape_mask(obj).getbbox() == (0, 0, w, h), obj
            xs, ys = outline(obj)[0::2], outline(obj)[1::2]
            assert min(xs) == obj.box.x and max(xs) == obj.box.x + w - 1
            assert box_defect(obj.box, scene.width, scene.height) is None  # clean boxes pass every filter


def test_polygon_area_is_exact_whatever_vertex_it_starts_from():
    """A demo world's semicircle (17 points) whose exact shoelace area is the tie 1523.865 (rounded half to even: 1523.86).
    Floating-point dot products gave 1523.87 or 1523.86 by the order they summed in, so the demo world's bytes
    hung on the BLAS kernel the CPU picked; the area must not depend on where the outline starts or its direction."""
    circle = [177.0, 42.0, 176.39, 35.95, 174.6, 30.14, 171.69, 24.78, 167.77, 20.08, 163.0, 16.22, 157.55, 13.36,
              151.65, 11.6, 145.5, 11.0, 139.35, 11.6, 133.45, 13.36, 128.0, 16.22, 123.23, 20.08, 119.31, 24.78,
              116.4, 30.14, 114.61, 35.95, 114.0, 42.0]
    pairs = [circle[i:i + 2] for i in range(0, len(circle), 2)]
    orders = [pairs[k:] + pairs[:k] for k in range(len(pairs))]
    orders += [list(reversed(order)) for order in orders]
    assert {_polygon_area([v for pair in order for v in pair]) for order in orders} == {1523.86}
    assert _polygon_area([0.0, 0.0, 10.0, 0.0, 10.0, 0.5, 0.0, 0.5]) == 5.0  # a 10 x 0.5 rectangle


def test_objects_never_overlap_and_stay_inside():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = sample_scene(rng, (64, 96), (1, 10), "web")
        boxes = [o.box for o in scene.objects]
        for i, a in enumerate(boxes):
            assert a.x >= 0 and a.y >= 0 and a.x + a.w <= scene.width and a.y + a.h <= scene.height
            for b in boxes[i + 1:]:
                assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y


def test_count_questions_agree_with_the_instances_file(fixture_world):
    lay = DataLayout(fixture_world)
    instances = coco.read_instances(lay.coco_instances("val2014"), lay.coco_images("val2014"))
    shapes_in = Counter((o.image_id, instances.categories[o.category_id].name) for o in instances.objects)
    split = vqa.read_split(lay.vqa, "val2014", set(instances.images))
    checked = 0
    for q in split.questions:
        m = re.fullmatch(r"how many (\w+) are there\?", q.question)
        if m and m.group(1) in {language.plural(s): s for s in SHAPES}:
            answers = split.answers[q.question_id]
            truth = Counter(answers.answers).most_common(1)[0][0]
            shape = {language.plural(s): s for s in SHAPES}[m.group(1)]
            assert truth == str(shapes_in[(q.image_id, shape)]) == answers.multiple_choice_answer
            checked += 1
    assert checked > 0


def test_vqa_answers_are_ten_with_the_configured_noise(fixture_world):
    lay = DataLayout(fixture_world)
    answers = [a for s in ("train2014", "val2014") for a in vqa.read_split(lay.vqa, s).answers.values()]
    disagree = sum(sum(h != a.multiple_choice_answer for h in a.answers) for a in answers) / (10 * len(answers))
    assert all(len(a.answers) == 10 for a in answers)
    assert 0.03 < disagree < 0.2  # answer_noise 0.1 in params/base.yaml
    assert {a.answer_type for a in answers} == {"yes/no", "number", "other"}


def test_referring_expressions_pick_one_object_among_similar_ones(fixture_world):
    lay = DataLayout(fixture_world)
    data = refcoco.read_refcoco(lay.refcoco, lay.coco_images("train2014"))
    by_image = {}
    for obj in data.instances.objects:
        by_image.setdefault(obj.image_id, []).append(obj)
    assert {r.split for r in data.refs} == set(refcoco.SPLITS)
    for ref in data.refs:
        same_category = [o for o in by_image[ref.image_id] if o.category_id == ref.category_id]
        assert len(same_category) >= 2 and ref.box in {o.box for o in same_category}
        shape = data.instances.categories[ref.category_id].name
        for sentence in ref.sentences:
            assert sentence.endswith(shape) and not re.search(r"\b(left|right|above|below|top|bottom)\b", sentence)


def test_region_phrases_of_an_image_are_not_near_duplicates():
    rng = np.random.default_rng(2)
    for _ in range(40):
        phrases = language.region_phrases(sample_scene(rng, (96, 128), (2, 10), "in_domain"), rng)
        for i, a in enumerate(phrases):
            assert all(phrase_overlap(a.text, b.text) <= language.MAX_REGION_OVERLAP for b in phrases[i + 1:])


def test_manifest_matches_the_files_and_every_injected_record_has_its_defect(fixture_world):
    lay = DataLayout(fixture_world)
    result = validate_data_root(fixture_world)
    assert result.ok and not result.defect_mismatches
    manifest = json.loads(lay.manifest.read_text())
    images = visual_genome.read_image_data(lay.vg_image_data, lay.vg)
    regions = {r.region_id: r for r in visual_genome.read_regions(lay.vg_regions, images)}
    entry = manifest["defects"]["vg/region_descriptions.json"]
    for kind in ("negative_coordinates", "outside_image", "too_small"):
        for rid in entry["injected"][kind]["ids"]:
            r = regions[rid]
            assert box_defect(r.box, images[r.image_id].width, images[r.image_id].height) == kind
    dups = entry["injected"]["near_duplicate_region"]
    assert dups["count"] > 0
    for dup, source in dups["sources"].items():
        assert phrase_overlap(regions[int(dup)].phrase, regions[source].phrase) > 0.75
    assert entry["clean"] + sum(v["count"] for v in entry["injected"].values()) == len(regions)


def test_web_split_looks_different(fixture_world):
    lay = DataLayout(fixture_world)
    brightness = lambda paths: np.mean([np.asarray(PILImage.open(p).convert("L")).mean() for p in paths])  # noqa: E731
    in_domain = brightness(sorted(lay.coco_images("train2014").glob("*.jpg"))[:20])
    web = brightness(sorted((lay.cc3m / "images" / "train").glob("*.jpg"))[:20])
    assert in_domain - web > 80


def test_captions_are_distinct_enough_for_retrieval(fixture_world):
    lay = DataLayout(fixture_world)
    caps = coco.read_captions(lay.coco_captions("train2014"), lay.coco_images("train2014"))
    texts = Counter(c.text for c in caps.captions)
    assert len(texts) > 0.8 * len(caps.captions)  # few captions are shared between images


def test_synth_cli_replaces_a_world_only_when_asked(tmp_path, capsys):
    """--overwrite deletes exactly the files the old world's manifest lists (a bigger world's extra
    images included); a file the user put anywhere in the root stops it, and is kept."""
    from copa.cli import main
    from copa.data.synth.ownership import SNAKEMAKE_MARKER, files_under, world_files

    root = tmp_path / "world"
    synth = ["synth", "--root", str(root), "--quiet", "--workers", "1"]
    base = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), *synth]
    assert main([*base[:-len(synth)], "--set", "synth.images.coco_train2014=70", *synth]) == 0
    extra = root / "coco" / "train2014" / coco.file_name("train2014", POOLS["coco_train2014"][0] + 69)
    assert extra.is_file()
    assert main(base) == 2
    assert "already holds a synthetic world: pass --overwrite" in capsys.readouterr().err
    assert main([*base, "--overwrite"]) == 0
    assert not extra.exists() and validate_data_root(root).ok
    assert {*files_under(root), SNAKEMAKE_MARKER} == world_files(root)  # nothing of the first world lingers
    for notes in (root / "my_notes.txt", root / "coco" / "mynotes.txt"):
        notes.write_text("keep me")
        assert main([*base, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "files the synthetic world did not write" in err
        assert notes.relative_to(root).as_posix() in err and notes.read_text() == "keep me"
        notes.unlink()


def test_a_killed_synth_leaves_no_partial_world(tmp_path):
    """The world is drawn beside the root and moved there finished: a killed run's staging folder is
    the generator's own, cleared by the next run; the root never holds half a world."""
    from copa.data.synth.ownership import staging_folder

    params = load_params("fixture", [], PARAMS_DIR).synth
    root = tmp_path / "world"
    stage = staging_folder(root)
    (stage / "coco").mkdir(parents=True)
    (stage / "coco" / "half-written.jpg").write_bytes(b"\xff\xd8")
    generate_world(params, root, progress=False)
    assert not stage.exists() and validate_data_root(root).ok
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate_world(params, root, progress=False)


def test_overwrite_never_deletes_outside_the_root(tmp_path):
    """A hand-edited manifest listing a path outside the root ("../x", absolute) deletes nothing there."""
    from copa.data.synth.ownership import MANIFEST_FILES, remove_world

    root, outside = tmp_path / "world", tmp_path / "outside.txt"
    generate_world(load_params("fixture", [], PARAMS_DIR).synth, root, progress=False)
    outside.write_text("keep me")
    manifest = DataLayout(root).manifest
    record = json.loads(manifest.read_text())
    record[MANIFEST_FILES] += ["../outside.txt", str(outside)]
    manifest.write_text(json.dumps(record))
    remove_world(root)
    assert not root.exists() and outside.read_text() == "keep me"
