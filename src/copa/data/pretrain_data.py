"""The two mini-batches of one COPA pretraining step (COPA Algorithm 1).

Each step reads an *image-text* mini-batch (ITC, ITM, MLM, PrefixLM) and an *object* mini-batch
(PTA, COPA §3.3: images with boxes, one sampled object/region text per image, and the patch labels
of that box at the pretraining resolution). This module builds both lists of examples from the
data root and the filter stage's output, and the torch ``Dataset`` of each.

Determinism: every random draw of an item comes from ``np.random.default_rng([seed, epoch, i])``,
so an item depends only on (seed, epoch, index), never on the data-loader worker that loads it
nor on how many workers there are. Call ``set_epoch`` at the start of every epoch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset

from copa.data.formats import coco, karpathy, visual_genome, web_pairs
from copa.data.formats.records import Box, FormatError
from copa.data.formats.xvlm import iter_xvlm
from copa.data.images import read_rgb
from copa.data.layout import COCO_ANNOTATED_SPLITS, DataLayout
from copa.data.patch_labels import filtered_files, grid_size, rasterise, resize_boxes
from copa.data.tokenizer import SPECIAL_TOKENS
from copa.data.transforms import BoxAugmentation, Geometry, should_flip

PAIR_SOURCES = ("coco", "vg", "cc3m")
KARPATHY_EVAL_SPLITS = ("val", "test")

# Normalisation pairs. The default is ImageNet's (torchvision / timm's IMAGENET_DEFAULT_*). A model
# initialised from other weights must pass the pair those weights were trained with: CLIP's for
# mPLUG's CLIP ViT-B/16 (COPA's base), 0.5/0.5 for timm's augreg ViT-B/16 (IMAGENET_INCEPTION_*).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

PAD_ID = SPECIAL_TOKENS.index("[PAD]")  # the project's own vocabularies; datasets pass their tokenizer's


# --------------------------------------------------------------------------- image-text pairs
@dataclass(frozen=True)
class Pair:
    image: Path
    text: str
    source: str  # coco | vg | cc3m


def image_text_pairs(layout: DataLayout, sources: Sequence[str], exclude_karpathy_eval: bool = True) -> list[Pair]:
    """The image-text pairs of ``sources``, in the order given, each source in its file order.

    ``exclude_karpathy_eval``: drop images of the Karpathy val/test splits (ALBEF / X-VLM keep
    every downstream evaluation image out of pretraining): COCO images by path, VG images by
    their ``coco_id`` (real VG shares ~51K images with COCO).
    """
    unknown = [s for s in sources if s not in PAIR_SOURCES]
    if unknown:
        raise ValueError(f"unknown pair sources {unknown}; known: {', '.join(PAIR_SOURCES)}")
    eval_paths: set[Path] = set()
    eval_coco_ids: set[int] = set()
    if exclude_karpathy_eval:
        _, images = karpathy.read_karpathy(layout.karpathy_coco, layout.coco, check_files=False)
        for im in images:
            if im.split in KARPATHY_EVAL_SPLITS:
                eval_paths.add(im.path)
                if im.cocoid is not None:
                    eval_coco_ids.add(im.cocoid)
    pairs: list[Pair] = []
    for source in sources:
        if source == "coco":
            pairs += _coco_pairs(layout, eval_paths)
        elif source == "vg":
            pairs += _vg_pairs(layout, eval_coco_ids)
        else:
            pairs += [Pair(p.path, p.caption, "cc3m") for p in web_pairs.read_web_pairs(layout.cc3m_tsv("train"), check_files=False)]
    return pairs


def pair_image_ids(pairs: Sequence[Pair]) -> list[int]:
    """Each pair's image as an int, numbered in order of first appearance: the pairs of one image
    file (COCO's five captions) share it, so ITM never takes one of them as another's negative."""
    ids: dict[Path, int] = {}
    return [ids.setdefault(pair.image, len(ids)) for pair in pairs]


def _coco_pairs(layout: DataLayout, excluded: set[Path]) -> list[Pair]:
    # Both annotated 2014 splits: the Karpathy train + restval images come from train2014 and val2014.
    pairs = []
    for split in COCO_ANNOTATED_SPLITS:
        data = coco.read_captions(layout.coco_captions(split), layout.coco_images(split), check_files=False)
        pairs += [Pair(data.images[c.image_id].path, c.text, "coco") for c in data.captions if data.images[c.image_id].path not in excluded]
    return pairs


def _vg_pairs(layout: DataLayout, excluded_coco_ids: set[int]) -> list[Pair]:
    """VG region phrases as captions of the whole image (ALBEF's 4M set, ``vg.json``).

    Unknown image ids are skipped and an image's repeated phrase (case and spacing aside) is kept
    once: as a caption, the box that made it a second record says nothing new.
    """
    images = visual_genome.read_image_data(layout.vg_image_data, layout.vg, check_files=False)
    pairs = []
    for image_id, regions in visual_genome.iter_regions(layout.vg_regions, images, check_references=False):
        image = images.get(image_id)
        if image is None or image.coco_id in excluded_coco_ids:
            continue
        seen: set[str] = set()
        for region in regions:
            key = " ".join(region.phrase.lower().split())
            if key and key not in seen:
                seen.add(key)
                pairs.append(Pair(image.path, region.phrase, "vg"))
    return pairs


# --------------------------------------------------------------------------- object images (PTA)
@dataclass(frozen=True)
class ObjectElem:
    source: str  # the filtered file's source (coco_objects, vg_objects, vg_regions, ...)
    id: int  # record id in that source: the key of its row in the PatchLabelStore
    text: str  # training text: templated class label or region phrase (COPA §3.3)
    box: Box  # xywh in original image pixels


@dataclass(frozen=True)
class ObjectImage:
    image: Path
    width: int
    height: int
    elems: tuple[ObjectElem, ...]


def object_samples(filtered_dir: Path, data_root: Path) -> list[ObjectImage]:
    """The images PTA trains on: every image of the filtered files, with every kept elem of each.

    An image listed by several files (a VG image in vg_objects and vg_regions) is one image with
    the elems of all of them. All of them: COPA's "~5% of training images" (Appendix A) is how
    much of its corpus has boxes, not a share to subsample (with 5% of the demo's images, each
    object example repeated about twelve times an epoch).
    """
    merged: dict[str, tuple[int, int, list[ObjectElem]]] = {}  # insertion order = file order
    for path in filtered_files(filtered_dir):
        for item in iter_xvlm(path):
            record = f"image {item.image!r}"
            for name in ("width", "height", "source"):
                if getattr(item, name) is None:
                    raise FormatError(path, "missing (the filter stage writes it on every line)", record, name)
            width, height, elems = merged.setdefault(item.image, (item.width, item.height, []))
            if (width, height) != (item.width, item.height):
                raise FormatError(path, f"size {item.width}x{item.height} differs from {width}x{height} in an earlier file", record, "width")
            for elem in item.elems:
                if elem.id is None:
                    raise FormatError(path, "an elem has no record id", record, "elems.id")
                elems.append(ObjectElem(item.source, elem.id, elem.text or elem.caption, elem.box))
    return [ObjectImage(Path(data_root) / name, w, h, tuple(elems)) for name, (w, h, elems) in merged.items() if elems]


PTA_LABEL_RULES = ("same_text", "chosen_box")  # see labelled_elems


def text_key(text: str) -> str:
    """What makes two object texts the same text: case and spacing aside."""
    return " ".join(text.lower().split())


def labelled_elems(obj: ObjectImage, elem: ObjectElem, labels: str) -> list[ObjectElem]:
    """The elems whose boxes are labelled 1 when ``elem``'s text is the PTA text (``labels``):
    ``same_text``, every elem of the image with that text ("This is a square." fits each square,
    so a label of one of them would contradict the text); ``chosen_box``, the chosen one alone."""
    if labels == "chosen_box":
        return [elem]
    key = text_key(elem.text)
    return [elem] + [e for e in obj.elems if e is not elem and text_key(e.text) == key]


# --------------------------------------------------------------------------- datasets
def _random_resized_crop(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio=(3 / 4, 4 / 3)) -> Box:
    """torchvision's RandomResizedCrop window (area fraction ~ U(scale), log-uniform aspect,
    10 tries, then the centre crop at the clamped ratio) drawn from a numpy generator."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return Box(int(rng.integers(0, width - w, endpoint=True)), int(rng.integers(0, height - h, endpoint=True)), w, h)
    w, h = width, height
    if width / height < ratio[0]:
        h = min(round(width / ratio[0]), height)
    elif width / height > ratio[1]:
        w = min(round(height * ratio[1]), width)
    return Box((width - w) // 2, (height - h) // 2, w, h)


class _Base(Dataset):
    def __init__(self, tokenizer, image_size: int, max_length: int, seed: int, train: bool, mean, std) -> None:
        self.tokenizer, self.image_size, self.max_length = tokenizer, image_size, max_length
        self.seed, self.train, self.epoch = seed, train, 0
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.collate_fn = functools.partial(collate, pad_id=tokenizer.pad_token_id)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i])

    def to_tensor(self, image: PILImage.Image) -> torch.Tensor:
        """uint8 (S, S, 3) -> normalised float (3, S, S)."""
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (pixels - self.mean) / self.std

    def tokens(self, text: str) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length)  # [CLS] ... [SEP]
        return {
            "input_ids": torch.tensor(enc["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(enc["attention_mask"], dtype=torch.long),
        }


class PairDataset(_Base):
    """Image-text pairs for ITC / ITM / MLM / PrefixLM.

    Train: RandomResizedCrop(S, scale=(0.5, 1.0)) and a horizontal flip with p = 0.5 unless the
    text says left/right (X-VLM's pretrain transform; RandAugment, which COPA also names, is not
    applied here). Eval: a plain S x S resize.
    """

    def __init__(self, pairs: Sequence[Pair], tokenizer, image_size: int, max_length: int, seed: int, train: bool = True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_scale: tuple[float, float] = (0.5, 1.0), flip_p: float = 0.5) -> None:
        super().__init__(tokenizer, image_size, max_length, seed, train, mean, std)
        self.pairs, self.crop_scale, self.flip_p = list(pairs), crop_scale, flip_p

    def __len__(self) -> int:
        return len(self.pairs)

    def geometry(self, i: int, width: int, height: int) -> Geometry:
        """The crop / resize / flip item ``i`` gets this epoch (crop drawn first, then the flip)."""
        if not self.train:
            return Geometry(Box(0, 0, width, height), self.image_size, False)
        rng = self.rng(i)
        crop = _random_resized_crop(rng, width, height, self.crop_scale)
        return Geometry(crop, self.image_size, should_flip(self.pairs[i].text, rng, self.flip_p))

    def __getitem__(self, i: int) -> dict:
        pair = self.pairs[i]
        image = read_rgb(pair.image)
        geometry = self.geometry(i, image.width, image.height)
        return {"image": self.to_tensor(geometry.image(image)), **self.tokens(pair.text), "index": i}


def elem_index(n, choice) -> np.ndarray:
    """The elem a uniform ``choice`` in [0, 1) picks among ``n`` (numbers, or arrays of both)."""
    return np.minimum((np.asarray(choice) * n).astype(np.int64), np.asarray(n) - 1)


class ObjectDataset(_Base):
    """(image, object text, patch labels) examples for PTA (COPA §3.3, Algorithm 1).

    Item ``i`` is image ``i`` with one of its elems drawn by the item's generator ("pick one
    object/region per image"); pretraining instead draws a fresh elem and geometry at every step
    and calls :meth:`example`. ``every_elem``: item ``k`` is the k-th (image, elem) pair, each elem
    once (held-out evaluation). Train mode applies X-VLM's box-keeping augmentation
    (:class:`BoxAugmentation`: crop containing the chosen box, resize, flip unless left/right),
    eval mode a plain square resize. The labels rasterise the boxes of :func:`labelled_elems`
    *after* the transform, so they follow the crop and the flip (row-major, token ``r * G + c``).
    """

    def __init__(self, objects: Sequence[ObjectImage], tokenizer, image_size: int, patch_size: int, max_length: int, seed: int,
                 min_overlap: float = 0.0, train: bool = True, labels: str = "same_text", every_elem: bool = False,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_scale: tuple[float, float] = (0.5, 1.0), flip_p: float = 0.5) -> None:
        super().__init__(tokenizer, image_size, max_length, seed, train, mean, std)
        grid_size(image_size, patch_size)  # fails early on a size that is not a multiple
        if labels not in PTA_LABEL_RULES:
            raise ValueError(f"PTA labels must be one of {PTA_LABEL_RULES}, got {labels!r}")
        self.objects, self.patch_size, self.min_overlap, self.labels = list(objects), patch_size, min_overlap, labels
        self.augment = BoxAugmentation(image_size, crop_scale, flip_p)
        self.elem_pairs = [(i, j) for i, obj in enumerate(self.objects) for j in range(len(obj.elems))] if every_elem else None
        self.elem_counts = np.array([len(o.elems) for o in self.objects], dtype=np.int64)  # (images,)

    def __len__(self) -> int:
        return len(self.objects) if self.elem_pairs is None else len(self.elem_pairs)

    def __getitem__(self, k: int) -> dict:
        rng = self.rng(k)
        i, j = (k, int(elem_index(len(self.objects[k].elems), rng.random()))) if self.elem_pairs is None else self.elem_pairs[k]
        return self.example(i, j, rng)

    def draw(self, order: np.ndarray, step: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The object mini-batch of a step: image indices (``order``, a permutation of the images,
        cycled: they are fewer than the pairs), each image's elem, drawn afresh at every step by
        ``rng`` (not once per epoch: an image met twice in an epoch gets another object), and each
        example's seed of its crop and flip. A process of several takes its slice of the whole draw."""
        images = np.take(order, range(step * batch_size, (step + 1) * batch_size), mode="wrap")
        choices, geometry_seeds = rng.random(batch_size), rng.integers(2**63, size=batch_size)
        return images, elem_index(self.elem_counts[images], choices), geometry_seeds

    def batch(self, images: np.ndarray, elems: np.ndarray, geometry_seeds: np.ndarray) -> dict:
        """The collated examples of :meth:`draw`'s (image, elem, seed) triples."""
        return self.collate_fn([self.example(int(i), int(j), np.random.default_rng(int(g)))
                                for i, j, g in zip(images, elems, geometry_seeds)])

    def example(self, i: int, j: int, rng: np.random.Generator) -> dict:
        """Image ``i`` with its elem ``j`` as the text; ``rng`` draws the crop and the flip (train)."""
        obj = self.objects[i]
        elem = obj.elems[j]
        image = read_rgb(obj.image)
        if image.size != (obj.width, obj.height):
            raise ValueError(f"{obj.image}: image is {image.width}x{image.height}, annotations say {obj.width}x{obj.height}")
        labelled = labelled_elems(obj, elem, self.labels)  # the chosen elem first
        if self.train:
            geometry = self.augment.sample(rng, obj.width, obj.height, elem.box, elem.text)
            image = geometry.image(image, self.augment.resample)
            # min_visible=0: the crop contains the chosen box; any visible part of another is labelled
            boxes = [box.as_list() for box in (geometry.box(e.box, min_visible=0.0) for e in labelled) if box is not None]
            boxes = np.array(boxes, dtype=np.float64)
        else:
            image = image.resize((self.image_size, self.image_size), self.augment.resample)
            xywh = np.array([e.box.as_list() for e in labelled], dtype=np.float64)
            boxes = resize_boxes(xywh, np.full(len(xywh), obj.width), np.full(len(xywh), obj.height), self.image_size)
        labels = rasterise(boxes, self.image_size, self.patch_size, self.min_overlap).any(0)  # (G, G)
        return {
            "image": self.to_tensor(image),
            **self.tokens(elem.text),
            "patch_labels": torch.from_numpy(labels.reshape(-1).astype(np.float32)),  # (G*G,)
            "box": torch.tensor(boxes[0], dtype=torch.float64),  # the chosen box, xywh in output px (float64: rasterised from it)
            "source": elem.source,
            "record_id": elem.id,
        }


def collate(batch: Sequence[dict], pad_id: int = PAD_ID) -> dict:
    """Stack images / patch labels / boxes, pad token ids with ``pad_id`` and masks with 0 to the
    longest text of the batch; other fields become lists (ints become a LongTensor)."""
    out: dict = {}
    longest = max(len(item["input_ids"]) for item in batch)
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key in ("input_ids", "attention_mask"):
            padded = torch.full((len(batch), longest), pad_id if key == "input_ids" else 0, dtype=torch.long)
            for row, value in enumerate(values):
                padded[row, : len(value)] = value
            out[key] = padded  # (B, L)
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


def model_inputs(batch: dict) -> dict:
    """A collated batch as the pretraining models read it (images, token ids, mask; patch labels of objects)."""
    out = {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "patch_labels" in batch:
        out["patch_labels"] = batch["patch_labels"]
    return out
