"""Box -> patch labels (COPA §3.3): the rasteriser against a brute-force definition, the store,
the label-preserving augmentation, and the ``patch-labels`` stage end to end on the fixture world.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from copa.cli import main
from copa.config import load_params
from copa.data.formats import coco, xvlm
from copa.data.formats.records import Box
from copa.data.layout import DataLayout
from copa.data.patch_labels import EDGE_TOL, PatchLabelStore, build_store, pack, rasterise, resize_boxes, run_patch_labels, unpack
from copa.data.transforms import BoxAugmentation, Geometry, crop_box, hflip_box, sample_crop, should_flip

PARAMS_DIR = Path(__file__).parents[1] / "params"


# =========================================================================== rasterise
def brute_force(box, image_size: int, patch_size: int, min_overlap: float) -> np.ndarray:
    """The definition, patch by patch: the box's intersection with the patch rectangle."""
    x, y, w, h = box
    grid = image_size // patch_size
    out = np.zeros((grid, grid), dtype=bool)
    for i in range(grid):
        for j in range(grid):
            ox = min(x + w, (j + 1) * patch_size) - max(x, j * patch_size)
            oy = min(y + h, (i + 1) * patch_size) - max(y, i * patch_size)
            if min_overlap > 0:
                out[i, j] = ox > 0 and oy > 0 and oy * ox >= min_overlap * patch_size**2
            else:  # any overlap, float noise under EDGE_TOL aside
                out[i, j] = ox > EDGE_TOL and oy > EDGE_TOL
    return out


def spans(patch: int, size: int):
    """[start, end) on one axis: edges on patch boundaries or anywhere (also past the image
    border), or a tiny span inside a patch; at least 1e-3 px of it inside the image."""
    edge = st.one_of(
        st.integers(0, size // patch).map(lambda k: float(k * patch)),
        st.floats(-patch, size + patch, allow_nan=False, allow_infinity=False),
    )
    pair = st.tuples(edge, edge).map(sorted)
    tiny = st.tuples(st.floats(0, size - 0.01), st.floats(1e-3, 0.01)).map(lambda t: (t[0], t[0] + t[1]))
    return st.one_of(pair, tiny).filter(lambda s: min(s[1], size) - max(s[0], 0) >= 1e-3)


@st.composite
def raster_cases(draw):
    patch = draw(st.sampled_from([1, 3, 7, 14, 16, 32]))
    size = patch * draw(st.integers(1, 12))
    boxes = []
    for _ in range(draw(st.integers(1, 6))):
        (x0, x1), (y0, y1) = draw(spans(patch, size)), draw(spans(patch, size))
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    if draw(st.booleans()):
        boxes.append((0.0, 0.0, float(size), float(size)))  # the whole image
    min_overlap = draw(st.one_of(st.just(0.0), st.sampled_from([0.25, 0.5, 1.0]), st.floats(0.001, 1.0)))
    return boxes, size, patch, min_overlap


@settings(max_examples=300, derandomize=True, deadline=None)
@given(raster_cases())
def test_rasterise_equals_brute_force(case):
    boxes, size, patch, min_overlap = case
    got = rasterise(np.array(boxes), size, patch, min_overlap)
    for box, labels in zip(boxes, got):
        np.testing.assert_array_equal(labels, brute_force(box, size, patch, min_overlap), err_msg=f"box {box}")


def columns(box, min_overlap=0.0, image_size=64, patch_size=16) -> list[int]:
    labels = rasterise(np.array([box]), image_size, patch_size, min_overlap)[0]
    return np.flatnonzero(labels.any(axis=0)).tolist()


@pytest.mark.parametrize(
    "box, min_overlap, expected",
    [
        ((0, 0, 16, 16), 0.0, [0]),  # ends exactly at x = 16: patch 1 only touched
        ((15.5, 0, 1, 16), 0.0, [0, 1]),
        ((16, 0, 16, 16), 0.0, [1]),
        ((0, 0, 64, 16), 0.0, [0, 1, 2, 3]),
        ((8, 0, 16, 16), 0.5, [0, 1]),  # exactly half of patches 0 and 1
        ((8, 0, 15, 16), 0.5, [0]),  # 8 px of patch 0, 7 px of patch 1
        ((8, 0, 16, 8), 0.5, []),  # a quarter of each patch
        ((20, 0, 1, 1), 0.0, [1]),  # tiny box inside one patch
        ((20, 0, 0, 0), 0.0, [1]),  # zero width: X-VLM still gives it its patch
        ((64, 0, 0, 0), 0.0, [3]),  # ... clamped into the grid
        ((32 - 4e-15, 0, 8, 16), 0.0, [2]),  # an ulp before a boundary (float noise): on it
    ],
)
def test_hand_made_cases(box, min_overlap, expected):
    assert columns(box, min_overlap) == expected


def test_rows_are_y_and_columns_are_x():
    labels = rasterise(np.array([[16, 32, 16, 16]]), 64, 16)[0]
    assert np.argwhere(labels).tolist() == [[2, 1]]  # token 2 * G + 1, as X-VLM numbers them


def test_rasterise_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        rasterise(np.zeros((1, 4)), 60, 16)
    with pytest.raises(ValueError, match=r"box 1 .*\[0.0, 0.0, -1.0, 2.0\]"):
        rasterise(np.array([[0, 0, 1, 1], [0, 0, -1, 2]]), 64, 16)
    with pytest.raises(ValueError, match="min_overlap"):
        rasterise(np.zeros((1, 4)), 64, 16, 1.5)


def test_rasterise_chunks_agree(monkeypatch):
    boxes = np.random.default_rng(0).uniform(0, 32, (1000, 4))
    whole = rasterise(boxes, 64, 16)
    monkeypatch.setattr("copa.data.patch_labels.CHUNK_CELLS", 16 * 7)  # 7 boxes per chunk
    np.testing.assert_array_equal(rasterise(boxes, 64, 16), whole)
    np.testing.assert_array_equal(unpack(pack(whole), 4), whole)


def test_resize_boxes_scales_from_each_image():
    boxes = resize_boxes(np.array([[10, 20, 30, 40], [10, 20, 30, 40]]), np.array([100, 200]), np.array([200, 100]), 64)
    np.testing.assert_allclose(boxes, [[6.4, 6.4, 19.2, 12.8], [3.2, 12.8, 9.6, 25.6]])


# =========================================================================== store
def small_store() -> tuple[PatchLabelStore, np.ndarray]:
    boxes = np.random.default_rng(1).uniform(0, 40, (50, 4))
    labels = rasterise(boxes, 64, 16)
    source = np.repeat(np.array([0, 1], dtype=np.uint8), 25)
    record_id = np.concatenate([np.arange(100, 125), np.arange(24, -1, -1)]).astype(np.int64)  # unsorted
    store = PatchLabelStore(pack(labels), source, ("coco_objects", "vg_regions"), record_id, record_id * 7, 64, 16, 0.0)
    return store, labels


def test_store_round_trip_and_lookup(tmp_path):
    store, labels = small_store()
    store.save(tmp_path / "labels")  # no ".npz" added
    loaded = PatchLabelStore.load(tmp_path / "labels")
    assert len(loaded) == 50 and loaded.sources == store.sources and loaded.grid == 4
    np.testing.assert_array_equal(loaded.lookup("coco_objects", 103), labels[3])
    np.testing.assert_array_equal(loaded.lookup("vg_regions", 0), labels[49])
    np.testing.assert_array_equal(loaded.labels(7), labels[7])
    assert loaded.image_id[loaded.row("vg_regions", 3)] == 21


def test_store_bytes_are_stable(tmp_path):
    store, _ = small_store()
    store.save(tmp_path / "a.npz")
    store.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # No clock time in the zip members: the bytes cannot change from one second to the next.
    assert {info.date_time for info in zipfile.ZipFile(tmp_path / "a.npz").infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_store_unknown_keys_raise_naming_them():
    store, _ = small_store()
    with pytest.raises(KeyError, match="'vg_regions', record id 25"):
        store.lookup("vg_regions", 25)
    with pytest.raises(KeyError, match="source 'vg_objects'.*coco_objects, vg_regions"):
        store.lookup("vg_objects", 1)


def test_store_rejects_duplicate_keys():
    store, _ = small_store()
    with pytest.raises(ValueError, match="duplicate.*'coco_objects', record id 100"):
        PatchLabelStore(store.bits, np.zeros(50, np.uint8), store.sources, np.full(50, 100), store.image_id, 64, 16, 0.0)


# =========================================================================== augmentation
TEXTS = ["a dog", "the dog on the left", "Right of the car", "LEFT-hand sign", "leftover pizza", "a bright light"]
SIDED = {"the dog on the left", "Right of the car", "LEFT-hand sign"}


def random_box(rng: np.random.Generator, width: int, height: int, integer: bool) -> Box:
    """A box inside the image with a positive size; whole pixels or any floats."""
    (x0, x1), (y0, y1) = sorted(rng.uniform(0, width, 2)), sorted(rng.uniform(0, height, 2))
    if integer:
        x0, y0 = math.floor(x0), math.floor(y0)
        x1, y1 = max(math.ceil(x1), x0 + 1), max(math.ceil(y1), y0 + 1)
    return Box(x0, y0, x1 - x0, y1 - y0)


def inverse_labels(box: Box, g: Geometry, patch: int) -> np.ndarray:
    """Each output patch mapped back to original pixels (un-flip, un-resize, un-crop) and tested,
    in exact arithmetic, for overlap with the box clipped to the crop."""
    c, size = g.crop, g.size
    bx0, bx1 = max(Fraction(box.x), Fraction(c.x)), min(Fraction(box.x) + Fraction(box.w), Fraction(c.x + c.w))
    by0, by1 = max(Fraction(box.y), Fraction(c.y)), min(Fraction(box.y) + Fraction(box.h), Fraction(c.y + c.h))
    grid = size // patch
    out = np.zeros((grid, grid), dtype=bool)
    for i in range(grid):
        for j in range(grid):
            qx0, qx1 = (size - (j + 1) * patch, size - j * patch) if g.flip else (j * patch, (j + 1) * patch)
            qx0, qx1 = (c.x + Fraction(q * c.w, size) for q in (qx0, qx1))
            qy0, qy1 = (c.y + Fraction(q * c.h, size) for q in (i * patch, (i + 1) * patch))
            out[i, j] = min(bx1, qx1) > max(bx0, qx0) and min(by1, qy1) > max(by0, qy0)
    return out


def test_augmented_labels_follow_the_geometry():
    rng = np.random.default_rng(0)
    flips = defaultdict(int)
    for n in range(300):
        width, height = (int(v) for v in rng.integers(8, 300, 2))
        size, patch = [(64, 16), (48, 16), (56, 14), (32, 8)][n % 4]
        box = random_box(rng, width, height, integer=n % 2 == 0)
        text = TEXTS[n % len(TEXTS)]
        g = BoxAugmentation(size).sample(rng, width, height, box, text)
        flips[text] += g.flip
        assert g.crop.x <= box.x and box.x + box.w <= g.crop.x + g.crop.w  # the crop contains the box
        assert g.crop.y <= box.y and box.y + box.h <= g.crop.y + g.crop.h
        out = g.box(box, min_visible=0.0)
        np.testing.assert_array_equal(rasterise(np.array([out.as_list()]), size, patch)[0], inverse_labels(box, g, patch))
        other = random_box(rng, width, height, integer=n % 3 == 0)
        moved = g.box(other, min_visible=0.5)
        inside = crop_box(other, g.crop, min_visible=0.0)
        if moved is None:  # dropped: at most half of it is inside the crop
            assert inside is None or inside.area <= 0.5 * other.area + 1e-9
        else:
            np.testing.assert_array_equal(rasterise(np.array([moved.as_list()]), size, patch)[0], inverse_labels(other, g, patch))
    assert all(flips[t] == 0 for t in SIDED)
    assert all(flips[t] > 10 for t in set(TEXTS) - SIDED)  # about half of 50 draws each


def test_augmented_labels_on_patch_boundaries():
    """Boxes with whole-pixel edges, some on a patch boundary of the output: scaled and flipped
    in floats, x and w can sum to an ulp off the boundary (EDGE_TOL absorbs it)."""
    rng = np.random.default_rng(1)

    def edges(size: int, patch: int, side: int) -> list[int]:
        on_boundary = [k * patch * side // size for k in range(size // patch + 1) if k * patch * side % size == 0]
        return sorted(rng.choice(sorted(set(on_boundary) | set(rng.integers(0, side + 1, 3).tolist())), 2, replace=False))

    for n in range(300):
        size, patch = [(64, 16), (224, 16), (56, 14)][n % 3]
        crop = Box(*(int(v) for v in rng.integers(0, 50, 2)), *(int(v) for v in rng.integers(8, 200, 2)))
        (x0, x1), (y0, y1) = edges(size, patch, crop.w), edges(size, patch, crop.h)
        box = Box(crop.x + x0, crop.y + y0, x1 - x0, y1 - y0)
        g = Geometry(crop, size, flip=bool(n % 2))
        out = g.box(box, min_visible=0.0)
        np.testing.assert_array_equal(rasterise(np.array([out.as_list()]), size, patch)[0], inverse_labels(box, g, patch), err_msg=f"{box} {g}")


def test_should_flip_reads_whole_words():
    rng = np.random.default_rng(0)
    assert not any(should_flip("The Left one", rng, p=1.0) for _ in range(20))
    assert not should_flip("turn right.", rng, p=1.0)
    assert should_flip("leftover rights", rng, p=1.0)
    assert not should_flip("a cat", rng, p=0.0)


def test_box_helpers():
    assert hflip_box(Box(10, 5, 20, 7), 100) == Box(70, 5, 20, 7)
    crop = Box(10, 10, 50, 50)
    assert crop_box(Box(0, 0, 20, 20), crop, 0.0) == Box(0, 0, 10, 10)  # a quarter inside, clipped
    assert crop_box(Box(0, 0, 20, 20), crop, 0.5) is None
    assert crop_box(Box(5, 20, 10, 10), crop, 0.5) is None  # exactly half inside: X-VLM needs more
    assert crop_box(Box(100, 100, 5, 5), crop, 0.0) is None
    with pytest.raises(ValueError, match="inside the 50x40 image"):
        sample_crop(np.random.default_rng(0), 50, 40, Box(45, 0, 10, 10))


@pytest.mark.parametrize("seed", range(8))
def test_image_and_box_move_together(seed):
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(60, 240, 2))
    x0, y0 = (int(v) for v in rng.integers(0, [width // 2, height // 2]))
    box = Box(x0, y0, int(rng.integers(width // 4, width - x0)), int(rng.integers(height // 4, height - y0)))
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).rectangle((box.x, box.y, box.x + box.w - 1, box.y + box.h - 1), fill=255)
    out_image, out_box = BoxAugmentation(64, flip_p=1.0)(image.convert("RGB"), box, "a square", rng)
    bright = np.asarray(out_image)[..., 0] > 127
    ys, xs = np.mgrid[0:64, 0:64] + 0.5  # pixel centres
    inside = lambda margin: (  # noqa: E731
        (xs > out_box.x - margin) & (xs < out_box.x + out_box.w + margin) & (ys > out_box.y - margin) & (ys < out_box.y + out_box.h + margin)
    )
    assert out_image.size == (64, 64)
    assert not (bright & ~inside(1.0)).any()  # every drawn pixel is within the box (+1 px of filter blur)
    assert bright[inside(-1.0)].all()  # and the box is drawn over


# =========================================================================== stage end to end
def filtered_folder(world: Path, out: Path) -> dict[str, int]:
    """Two X-VLM files built from the fixture world's COCO objects (train2014 and val2014),
    keeping only boxes inside their image (the world injects defective ones)."""
    lay, counts = DataLayout(world), {}
    for split, source in [("train2014", "coco_objects"), ("val2014", "extra_objects")]:
        inst = coco.read_instances(lay.coco_instances(split), lay.coco_images(split))
        per_image = defaultdict(list)
        for obj in inst.objects:
            b, im = obj.box, inst.images[obj.image_id]
            if b.w > 0 and b.h > 0 and b.x >= 0 and b.y >= 0 and b.x + b.w <= im.width and b.y + b.h <= im.height:
                name = inst.categories[obj.category_id].name
                per_image[obj.image_id].append(xvlm.Elem(name, b, (), obj.ann_id, f"This is a {name}."))
        items = [
            xvlm.ImageAnnotations(str(im.path.relative_to(world)), tuple(per_image[i]), None, i, im.width, im.height, source)
            for i, im in sorted(inst.images.items()) if per_image[i]
        ]
        xvlm.write_xvlm(out / f"{source}.jsonl", items)
        counts[source] = sum(len(item.elems) for item in items)
    return counts


def test_patch_labels_stage_end_to_end(fixture_world, tmp_path):
    """``copa patch-labels``: the data layer labels and picks the panels, the CLI draws them."""
    params = load_params("fixture", params_dir=PARAMS_DIR).patch_labels
    counts = filtered_folder(fixture_world, tmp_path / "filtered")
    for run in ("a", "b"):
        outputs = ["--out", str(tmp_path / run / "labels.npz"), "--summary", str(tmp_path / run / "summary.json"),
                   "--figure", str(tmp_path / run / "fig")]
        assert main(["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "patch-labels", "--annotations", str(tmp_path / "filtered"),
                     "--root", str(fixture_world), "--workers", "1", *outputs]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["boxes"] == sum(counts.values()) and summary["grid"] == params.image_size // params.patch_size
    assert {k: v["boxes"] for k, v in summary["per_source"].items()} == counts
    assert 0 < summary["mean_positive_fraction"] <= 1
    for name in ("labels.npz", "summary.json", "fig.png", "fig.pdf"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), f"{name} differs between runs"
    # Every stored row is the rasterised, resized box of its record.
    store = PatchLabelStore.load(tmp_path / "a" / "labels.npz")
    item = next(xvlm.iter_xvlm(tmp_path / "filtered" / "extra_objects.jsonl"))
    elem = item.elems[-1]
    box = resize_boxes(elem.box.as_list(), np.array([item.width]), np.array([item.height]), params.image_size)
    np.testing.assert_array_equal(store.lookup("extra_objects", elem.id), rasterise(box, params.image_size, params.patch_size)[0])
    assert store.image_id[store.row("extra_objects", elem.id)] == item.image_id


def test_build_store_names_a_missing_field(tmp_path):
    item = xvlm.ImageAnnotations("x.jpg", (xvlm.Elem("dog", Box(0, 0, 5, 5), (), 1, "This is a dog."),), None, 1, None, 10, "coco_objects")
    xvlm.write_xvlm(tmp_path / "coco_objects.jsonl", [item])
    params = load_params("fixture", params_dir=PARAMS_DIR).patch_labels
    with pytest.raises(ValueError, match=r"coco_objects.jsonl, record image 'x.jpg', field 'width'"):
        build_store(tmp_path, params)
    with pytest.raises(FileNotFoundError, match="no filtered annotation files"):
        build_store(tmp_path / "empty", params)
    xvlm.write_xvlm(tmp_path / "coco_objects.jsonl", [])
    assert len(build_store(tmp_path, params)) == 0
    with pytest.raises(ValueError, match="hold no boxes"):
        run_patch_labels(tmp_path, tmp_path / "labels.npz", params, tmp_path, seed=0)
