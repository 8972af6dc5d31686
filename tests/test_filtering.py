"""The filter stage: drops exactly the synthetic world's injected defects, counts every bad record
under its reason, and fails with file/record/field on files it cannot read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image as PILImage

from copa.cli import main
from copa.config import load_params
from copa.data.annotation_checks import near_duplicates
from copa.data.filtering import DROPPED_FILE, run_filter
from copa.data.formats import xvlm
from copa.data.formats.records import FormatError
from copa.data.layout import DataLayout

PARAMS_DIR = Path(__file__).parents[1] / "params"
# manifest file -> the filter source that reads it
SOURCE_OF = {"coco/annotations/instances_train2014.json": "coco_objects", "vg/attributes.json": "vg_objects", "vg/region_descriptions.json": "vg_regions"}
MANIFEST_REASON = {"near_duplicate_region": "near_duplicate"}


def _filter(root: Path, out: Path, *overrides: str) -> dict:
    return run_filter(root, load_params("fixture", list(overrides), PARAMS_DIR).filter, out, progress=False)


def _dropped(out: Path) -> dict[tuple[str, str], set[int]]:
    """(source, reason) -> dropped record ids, from dropped.tsv."""
    found: dict[tuple[str, str], set[int]] = {}
    for line in (out / DROPPED_FILE).read_text().splitlines()[1:]:
        source, record_id, _, reason = line.split("\t")
        found.setdefault((source, reason), set()).add(int(record_id))
    return found


@pytest.fixture
def world(fixture_world: Path, tmp_path: Path) -> DataLayout:
    root = tmp_path / "world"
    shutil.copytree(fixture_world, root)
    return DataLayout(root)


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_drops_exactly_the_injected_defects(fixture_world, tmp_path):
    report = _filter(fixture_world, tmp_path / "out")
    manifest = json.loads((fixture_world / "synthetic_manifest.json").read_text())["defects"]
    dropped = _dropped(tmp_path / "out")
    expected = {}
    for file, entry in manifest.items():
        if file in SOURCE_OF:
            for kind, injected in entry["injected"].items():
                expected[(SOURCE_OF[file], MANIFEST_REASON.get(kind, kind))] = set(injected["ids"])
            source = report["sources"][SOURCE_OF[file]]
            assert source["kept"] == entry["clean"] and source["clipped"] == 0
            assert source["dropped"] == {MANIFEST_REASON.get(k, k): v["count"] for k, v in entry["injected"].items() if v["count"]}
    assert dropped == {k: v for k, v in expected.items() if v}


def test_filtered_files_are_xvlm_lines_with_texts(fixture_world, tmp_path):
    _filter(fixture_world, tmp_path / "out", "filter.prepend_attribute=true")
    objects = xvlm.read_xvlm(tmp_path / "out" / "vg_objects.jsonl")
    regions = xvlm.read_xvlm(tmp_path / "out" / "vg_regions.jsonl")
    elem = objects[0].elems[0]
    assert elem.text == f"This is a {elem.attributes[0]} {elem.caption}."
    assert all(e.text == e.caption for item in regions for e in item.elems)
    assert all((fixture_world / item.image).is_file() and item.width and item.source == "vg_regions" for item in regions)


def test_bad_records_are_counted_under_their_reason(world, tmp_path):
    def edit_regions(data):
        regions = data[0]["regions"]
        regions[0]["x"] = float("nan")  # non_finite_box
        regions[1]["phrase"] = "   "  # empty_text
        regions.append({**regions[2], "region_id": 10_001})  # exact_duplicate of regions[2]
        regions.append({**regions[3], "region_id": 10_002, "phrase": regions[3]["phrase"].upper()})  # exact (case-insensitive)
        data[1]["id"] = data[1]["regions"][0]["image_id"] = 999_999  # unknown_image, for all its regions
        for r in data[1]["regions"]:
            r["image_id"] = 999_999

    _edit_json(world.vg_regions, edit_regions)
    regions_before = json.loads(world.vg_regions.read_text())
    unknown_image = len(regions_before[1]["regions"])

    def edit_coco(data):
        data["annotations"][0]["category_id"] = 77  # unknown_category
        first = data["annotations"][1]
        image = next(i for i in data["images"] if i["id"] == first["image_id"])
        first["bbox"] = [image["width"] - first["bbox"][2] + 0.6, *first["bbox"][1:]]  # sticks out 0.6 px: clipped, kept

    _edit_json(world.coco_instances("train2014"), edit_coco)
    (world.vg / "VG_100K" / "3.jpg").unlink()  # missing_image

    report = _filter(world.root, tmp_path / "out")
    regions, coco = report["sources"]["vg_regions"]["dropped"], report["sources"]["coco_objects"]
    assert regions["non_finite_box"] == 1 and regions["empty_text"] == 1 and regions["exact_duplicate"] == 2
    assert regions["unknown_image"] == unknown_image and regions["missing_image"] > 0
    assert report["sources"]["vg_objects"]["dropped"]["missing_image"] > 0
    assert coco["dropped"]["unknown_category"] == 1 and coco["clipped"] == 1
    for source in report["sources"].values():
        assert source["records"] == source["kept"] + sum(source["dropped"].values())


def test_image_size_mismatch_and_unreadable_image(world, tmp_path):
    _edit_json(world.vg_image_data, lambda data: (data[0].update(width=data[0]["width"] + 7), data[2].update(width=1, height=1)))
    (world.vg / "VG_100K" / "2.jpg").write_bytes(b"not a jpeg")
    PILImage.new("RGB", (1, 1)).save(world.vg / "VG_100K" / "3.jpg")  # as annotated, but a 1x1 placeholder
    dropped = _filter(world.root, tmp_path / "out")["sources"]["vg_regions"]["dropped"]
    assert dropped["image_size_mismatch"] > 0 and dropped["unreadable_image"] > 0 and dropped["image_too_small"] > 0
    # image_check=none trusts the annotated sizes and does not open files
    assert "image_size_mismatch" not in _filter(world.root, tmp_path / "out2", "filter.image_check=none")["sources"]["vg_regions"]["dropped"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_text(p.read_text()[:-200]), r"region_descriptions\.json: not valid JSON"),
        (lambda p: _edit_json(p, lambda d: d[0]["regions"][0].update(x="12")), r"region_descriptions\.json, record images\[0\] \(id 1\)\.regions\[0\] \(region_id \d+\), field 'x': expected a number, got '12'"),
        (lambda p: _edit_json(p, lambda d: d[0]["regions"][1].pop("phrase")), r"record images\[0\] \(id 1\)\.regions\[1\] \(region_id \d+\), field 'phrase': missing"),
    ],
    ids=["truncated", "string-coordinate", "missing-field"],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_unreadable_files_name_file_record_field(world, tmp_path, damage, message, workers):
    """Also from a worker process: the error crosses the process boundary intact (it broke the pool before)."""
    damage(world.vg_regions)
    with pytest.raises(FormatError, match=message):
        run_filter(world.root, load_params("fixture", [], PARAMS_DIR).filter, tmp_path / "out", progress=False, workers=workers)


def test_xvlm_files_are_a_source(fixture_world, tmp_path):
    """X-VLM's released layout: no image id, no size (read from the image header)."""
    regions = xvlm.read_xvlm(_filtered_regions(fixture_world, tmp_path))
    plain = [xvlm.ImageAnnotations(item.image, tuple(xvlm.Elem(e.caption, e.box, ()) for e in item.elems)) for item in regions]
    plain.append(xvlm.ImageAnnotations("vg/VG_100K/does-not-exist.jpg", (xvlm.Elem("a red circle", plain[0].elems[0].box),)))
    xvlm.write_xvlm(tmp_path / "xvlm_regions.json", plain)
    report = _filter(
        fixture_world, tmp_path / "out2", "filter.sources=[]",
        f'filter.xvlm_files=[{{name: xvlm_regions, path: "{tmp_path / "xvlm_regions.json"}", kind: region}}]',
    )
    source = report["sources"]["xvlm_regions"]
    assert source["kept"] == sum(len(i.elems) for i in regions) and source["dropped"] == {"missing_image": 1}
    kept = xvlm.read_xvlm(tmp_path / "out2" / "xvlm_regions.jsonl")
    assert [(k.width, k.height) for k in kept] == [(r.width, r.height) for r in regions]


def _filtered_regions(root: Path, tmp_path: Path) -> Path:
    _filter(root, tmp_path / "out")
    return tmp_path / "out" / "vg_regions.jsonl"


def test_near_duplicates_keep_the_earlier_and_compare_with_kept_only():
    texts = ["the red circle on the left", "the red circle on the left here", "a blue square", "red circle"]
    assert near_duplicates(texts) == [None, 0, None, None]
    assert near_duplicates(texts, measure="containment") == [None, 0, None, 0]
    # chain: b is a duplicate of a, c overlaps b but not a -> c stays
    a, b, c = "w1 w2 w3 w4 w5", "w1 w2 w3 w4 w5 w6", "w2 w3 w4 w5 w6 w7 w8"
    assert near_duplicates([a, b, c]) == [None, 0, None]
    assert near_duplicates(["A Red, circle.", "a red circle"]) == [None, 0]  # case and punctuation do not count
    assert near_duplicates([], 0.75) == [] and near_duplicates(["x"]) == [None]


def test_threshold_is_a_parameter(fixture_world, tmp_path):
    strict = _filter(fixture_world, tmp_path / "a", "filter.near_duplicate.threshold=0.99")["sources"]["vg_regions"]["dropped"]
    assert "near_duplicate" not in strict  # appended-word duplicates overlap by at most 6/7


def test_cli_writes_report_json_and_appendix_table(fixture_world, tmp_path, capsys):
    report = tmp_path / "results" / "filter_report.json"
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "filter", "--root", str(fixture_world), "--out", str(tmp_path / "out"), "--report", str(report), "--quiet"]
    assert main(args) == 0
    table = report.with_suffix(".md").read_text()
    data = json.loads(report.read_text())
    assert f"VG regions {data['sources']['vg_regions']['kept']:,} kept of {data['sources']['vg_regions']['records']:,}" in table
    assert "paper (reference, real data)" in table and "3,699,598 of 5,402,953" in table
    assert "kept of" in capsys.readouterr().out


def test_a_decompression_bomb_is_dropped_as_too_large(world, tmp_path, monkeypatch):
    """PIL refuses to open an image over twice its pixel limit: counted, not a traceback that names no file."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # the fixture's images are far below 2 x this
    Image.new("L", (600, 600)).save(world.vg / "VG_100K" / "3.jpg", format="JPEG")
    dropped = _filter(world.root, tmp_path / "out")["sources"]["vg_regions"]["dropped"]
    assert dropped["image_too_large"] > 0


def test_a_truncated_or_foreign_image_is_an_error_naming_it(tmp_path):
    import pickle

    from PIL import Image

    from copa.data.images import ImageError, read_rgb

    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 48), "red").save(good)
    cut, foreign = tmp_path / "cut.jpg", tmp_path / "notes.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    foreign.write_text("not an image")
    assert read_rgb(good).size == (64, 48)
    for path, why in ((cut, "OSError: Truncated File Read"), (foreign, "cannot identify image file")):
        with pytest.raises(ImageError, match=rf"^{path}: not a readable image \(.*{why}"):
            read_rgb(path)
    error = pickle.loads(pickle.dumps(ImageError(cut, "cut short")))  # crosses a worker's process boundary
    assert str(error) == f"{cut}: cut short"
