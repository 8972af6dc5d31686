"""The pretraining data (COPA Algorithm 1): image-text pairs, PTA object images, their datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from copa.config import PatchLabelParams, load_params
from copa.data.filtering import run_filter
from copa.data.formats import coco, karpathy, visual_genome
from copa.data.layout import DataLayout
from copa.data.patch_labels import build_store, rasterise, resize_boxes
from copa.data.pretrain_data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ObjectDataset,
    PairDataset,
    Pair,
    collate,
    image_text_pairs,
    object_samples,
    text_key,
)
from copa.data.tokenizer import load_tokenizer, train_wordpiece

PARAMS_DIR = Path(__file__).parents[1] / "params"
S, P = 64, 16


@pytest.fixture(scope="module")
def world(fixture_world: Path, tmp_path_factory: pytest.TempPathFactory):
    """(layout, filtered dir, tokenizer, pairs) built once for the module."""
    tmp = tmp_path_factory.mktemp("pretrain_data")
    run_filter(fixture_world, load_params("fixture", params_dir=PARAMS_DIR).filter, tmp / "filtered", progress=False)
    layout = DataLayout(fixture_world)
    pairs = image_text_pairs(layout, ["coco", "vg", "cc3m"])
    objects = object_samples(tmp / "filtered", fixture_world)
    texts = [p.text for p in pairs] + [e.text for o in objects for e in o.elems]
    tokenizer = load_tokenizer(train_wordpiece(texts, 400, tmp / "tokenizer"))
    return layout, tmp / "filtered", tokenizer, pairs


def _karpathy_eval(layout: DataLayout) -> set[Path]:
    _, images = karpathy.read_karpathy(layout.karpathy_coco, layout.coco, check_files=False)
    return {im.path for im in images if im.split in ("val", "test")}


# --------------------------------------------------------------------------- pairs
def test_pair_counts_per_source_and_karpathy_exclusion(world):
    layout, _, _, pairs = world
    evaluation = _karpathy_eval(layout)
    assert evaluation
    by_source = {s: [p for p in pairs if p.source == s] for s in ("coco", "vg", "cc3m")}

    captions = [
        (data.images[c.image_id].path, c.text)
        for split in ("train2014", "val2014")
        for data in [coco.read_captions(layout.coco_captions(split), layout.coco_images(split), check_files=False)]
        for c in data.captions
    ]
    assert [(p.image, p.text) for p in by_source["coco"]] == [c for c in captions if c[0] not in evaluation]
    assert len(by_source["coco"]) < len(captions)  # the eval images had captions

    vg_images = visual_genome.read_image_data(layout.vg_image_data, layout.vg, check_files=False)
    phrases = {
        (vg_images[i].path, " ".join(r.phrase.lower().split()))
        for i, regions in visual_genome.iter_regions(layout.vg_regions, vg_images, check_references=False)
        if i in vg_images
        for r in regions
    }
    assert len(by_source["vg"]) == len(phrases)
    assert len(by_source["cc3m"]) == len(layout.cc3m_tsv("train").read_text().splitlines())
    assert not {p.image for p in pairs} & evaluation

    everything = image_text_pairs(layout, ["coco"], exclude_karpathy_eval=False)
    assert len(everything) == len(captions)
    assert image_text_pairs(layout, ["cc3m", "coco"]) == by_source["cc3m"] + by_source["coco"]  # order of sources
    with pytest.raises(ValueError, match="sbu"):
        image_text_pairs(layout, ["sbu"])


# --------------------------------------------------------------------------- object images
def test_object_samples_are_every_image_with_boxes(world, fixture_world):
    _, filtered, _, _ = world
    everything = object_samples(filtered, fixture_world)
    assert len({o.image for o in everything}) == len(everything)  # an image once, with all its elems
    assert {e.source for o in everything for e in o.elems} == {"coco_objects", "vg_objects", "vg_regions"}
    assert all(o.image.is_file() for o in everything)
    images = {json.loads(line)["image"] for path in filtered.glob("*.jsonl") for line in path.open() if line.strip()}
    assert len(everything) == len(images)  # every image with a kept box, no share of them


# --------------------------------------------------------------------------- PairDataset
def test_pair_dataset_items_and_determinism(world):
    _, _, tokenizer, pairs = world
    ds = PairDataset(pairs, tokenizer, S, max_length=8, seed=3)
    item = ds[5]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    assert item["input_ids"].dtype == torch.long and item["input_ids"].ndim == 1 and len(item["input_ids"]) <= 8
    assert item["input_ids"][0] == tokenizer.cls_token_id
    assert torch.equal(item["attention_mask"], torch.ones_like(item["input_ids"]))

    again = PairDataset(pairs, tokenizer, S, max_length=8, seed=3)[5]
    assert torch.equal(item["image"], again["image"])
    ds.set_epoch(1)
    assert not torch.equal(item["image"], ds[5]["image"])
    ds.set_epoch(0)
    assert torch.equal(item["image"], ds[5]["image"])

    # Eval: a plain resize, normalised with ImageNet's mean/std by default.
    image = Image.open(pairs[5].image).convert("RGB").resize((S, S), Image.Resampling.BICUBIC)
    expected = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(PairDataset(pairs, tokenizer, S, 8, seed=3, train=False)[5]["image"], expected, atol=1e-6)


def test_pair_dataset_never_flips_left_right_texts(world, tmp_path):
    _, _, tokenizer, _ = world
    # Left half black, right half white: any crop of >= 50% area (aspect <= 4/3) is >= 61% wide,
    # so it spans the middle and its first output column is black, its last white, unless flipped.
    pixels = np.zeros((80, 80, 3), dtype=np.uint8)
    pixels[:, 40:] = 255
    Image.fromarray(pixels).save(tmp_path / "halves.png")
    pairs = [Pair(tmp_path / "halves.png", "the dog on the left", "test"), Pair(tmp_path / "halves.png", "a dog", "test")]
    ds = PairDataset(pairs, tokenizer, S, 16, seed=0)
    flips = {0: 0, 1: 0}
    for epoch in range(30):
        ds.set_epoch(epoch)
        for i in (0, 1):
            flipped = ds.geometry(i, 80, 80).flip
            image = ds[i]["image"]
            assert (image[:, :, 0].mean() > image[:, :, -1].mean()) == flipped  # the pixels agree with the geometry
            flips[i] += flipped
    assert flips[0] == 0 and flips[1] > 0


# --------------------------------------------------------------------------- ObjectDataset
def test_object_dataset_eval_labels_are_the_resized_boxes_of_the_text(world, fixture_world):
    _, filtered, tokenizer, _ = world
    objects = object_samples(filtered, fixture_world)
    ds = ObjectDataset(objects, tokenizer, S, P, max_length=16, seed=0, train=False, every_elem=True)
    assert len(ds) == sum(len(o.elems) for o in objects)  # each elem once
    store = build_store(filtered, PatchLabelParams(S, P, 0.0, 0))
    for k in range(0, len(ds), 7):
        item = ds[k]
        i, j = ds.elem_pairs[k]
        obj, elem = objects[i], objects[i].elems[j]
        assert (item["source"], item["record_id"]) == (elem.source, elem.id)
        same = [e for e in obj.elems if text_key(e.text) == text_key(elem.text)]
        boxes = resize_boxes(np.array([e.box.as_list() for e in same]), np.full(len(same), obj.width), np.full(len(same), obj.height), S)
        expected = rasterise(boxes, S, P).any(0).reshape(-1)
        assert item["patch_labels"].shape == ((S // P) ** 2,) and item["patch_labels"].dtype == torch.float32
        assert np.array_equal(item["patch_labels"].numpy(), expected.astype(np.float32))
        union = np.any([store.lookup(e.source, e.id).reshape(-1) for e in same], axis=0)  # the patch-label stage agrees
        assert np.array_equal(item["patch_labels"].numpy().astype(bool), union)


def test_object_labels_cover_every_box_the_text_fits(world, fixture_world):
    # "This is a square." in an image with two squares: labelling one of them contradicts the text
    _, filtered, tokenizer, _ = world
    objects = object_samples(filtered, fixture_world)
    i, j = next((i, j) for i, o in enumerate(objects) for j, e in enumerate(o.elems)
                if sum(text_key(x.text) == text_key(e.text) for x in o.elems) > 1)
    same = ObjectDataset(objects, tokenizer, S, P, 16, seed=0, train=False)
    chosen = ObjectDataset(objects, tokenizer, S, P, 16, seed=0, train=False, labels="chosen_box")
    rng = np.random.default_rng(0)
    union, one = same.example(i, j, rng)["patch_labels"], chosen.example(i, j, rng)["patch_labels"]
    assert (union >= one).all() and union.sum() > one.sum()
    for train in (True, False):  # the augmentation moves every labelled box with the image
        item = ObjectDataset(objects, tokenizer, S, P, 16, seed=0, train=train).example(i, j, np.random.default_rng(1))
        chosen_patches = rasterise(item["box"].numpy()[None], S, P)[0].reshape(-1)
        assert item["patch_labels"].numpy()[chosen_patches].all() and item["patch_labels"].sum() > chosen_patches.sum()
    with pytest.raises(ValueError, match="PTA labels must be one of"):
        ObjectDataset(objects, tokenizer, S, P, 16, seed=0, labels="every_box")


def test_object_dataset_train_labels_follow_the_augmentation(world, fixture_world):
    _, filtered, tokenizer, pairs = world
    objects = object_samples(filtered, fixture_world)
    ds = ObjectDataset(objects, tokenizer, S, P, max_length=16, seed=0)
    chosen = set()
    for epoch in range(3):  # the data loaders' way (item i = image i); pretraining draws through example()
        ds.set_epoch(epoch)
        for i in range(len(objects)):
            item = ds[i]
            box = item["box"].numpy()
            assert item["image"].shape == (3, S, S)
            assert item["patch_labels"].sum() > 0  # the crop always contains the chosen box
            assert box[0] >= -1e-6 and box[1] >= -1e-6 and box[0] + box[2] <= S + 1e-6 and box[1] + box[3] <= S + 1e-6
            assert (item["patch_labels"].numpy().astype(bool) >= rasterise(box[None], S, P)[0].reshape(-1)).all()  # + same-text twins
            chosen.add((i, item["record_id"]))
    assert len(chosen) > len(objects)  # a different elem of some images in another epoch
    ds.set_epoch(0)
    first, again = ds[3], ObjectDataset(objects, tokenizer, S, P, 16, seed=0)[3]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["box"], again["box"])


# --------------------------------------------------------------------------- collate / loader
def test_collate_pads_with_the_pad_id():
    batch = [
        {"image": torch.zeros(3, 4, 4), "input_ids": torch.tensor([2, 7, 3]), "attention_mask": torch.ones(3, dtype=torch.long), "source": "a", "record_id": 1},
        {"image": torch.ones(3, 4, 4), "input_ids": torch.tensor([2, 3]), "attention_mask": torch.ones(2, dtype=torch.long), "source": "b", "record_id": 2},
    ]
    out = collate(batch, pad_id=9)
    assert out["input_ids"].tolist() == [[2, 7, 3], [2, 3, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["image"].shape == (2, 3, 4, 4) and out["source"] == ["a", "b"] and out["record_id"].tolist() == [1, 2]
    assert collate(batch)["input_ids"][1, 2] == 0  # the project's [PAD]


def test_data_loaders_iterate_a_batch(world, fixture_world):
    _, filtered, tokenizer, pairs = world
    objects = object_samples(filtered, fixture_world)
    obj_ds = ObjectDataset(objects, tokenizer, S, P, max_length=16, seed=0)
    batch = next(iter(DataLoader(obj_ds, batch_size=4, shuffle=False, num_workers=0, collate_fn=obj_ds.collate_fn)))
    assert batch["image"].shape == (4, 3, S, S) and batch["patch_labels"].shape == (4, (S // P) ** 2)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 4
    pair_ds = PairDataset(pairs, tokenizer, S, max_length=16, seed=0)
    batch = next(iter(DataLoader(pair_ds, batch_size=4, num_workers=0, collate_fn=pair_ds.collate_fn)))
    assert batch["image"].shape == (4, 3, S, S) and batch["input_ids"].dtype == torch.long
    lengths = batch["attention_mask"].sum(1)
    assert (batch["input_ids"][torch.arange(4), lengths - 1] == tokenizer.sep_token_id).all()


def test_batches_do_not_depend_on_the_number_of_workers(world):
    _, _, tokenizer, pairs = world
    ds = PairDataset(pairs[:8], tokenizer, S, max_length=16, seed=0)
    ds.set_epoch(2)
    runs = [list(DataLoader(ds, batch_size=4, num_workers=n, collate_fn=ds.collate_fn)) for n in (0, 2)]
    for a, b in zip(*runs):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["input_ids"], b["input_ids"])
