"""The reference boxes of COPA Appendix C.1 (Figure 5): on a seeded sample of web pairs (the
CC3M training TSV), the regions each caption names, turned into patch labels by PTA's rule.

Two detectors write the same file (copa.data.formats.reference_boxes):
- ``grounding_dino``: Grounding DINO with the caption as the prompt (copa.data.grounding_dino);
- ``oracle``: the synthetic world's true boxes of the objects its web captions name, with
  detector-like noise (``synth.oracle_noise``), which the world writes beside its CC3M TSV. A
  figure built on them says so: they are not detector output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from copa.config import ReferenceBoxesParams
from copa.data import grounding_dino
from copa.data.formats import reference_boxes, web_pairs
from copa.data.formats.records import FormatError
from copa.data.layout import DataLayout
from copa.data.patch_labels import grid_size, rasterise, resize_boxes
from copa.data.images import ImageError, read_rgb
from copa.data.pretrain_data import IMAGENET_MEAN, IMAGENET_STD, _Base


def _sample(count: int, wanted: int, seed: int, what: str, knob: str) -> list[int]:
    """``wanted`` of ``count`` indices, seeded, in file order; all of them when ``wanted == count``."""
    if wanted > count:
        raise ValueError(f"reference_boxes.pairs is {wanted:,} but {what} holds {count:,} pairs ({knob})")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(count, size=wanted, replace=False))


def oracle_reference_pairs(layout: DataLayout, params: ReferenceBoxesParams) -> list[reference_boxes.ReferencePair]:
    pairs = reference_boxes.read_reference_boxes(layout.oracle_reference_boxes, layout.root)
    if any(p.source != reference_boxes.ORACLE_SOURCE for p in pairs):
        raise FormatError(layout.oracle_reference_boxes, f"expected only source {reference_boxes.ORACLE_SOURCE!r} in the oracle file")
    return [pairs[i] for i in _sample(len(pairs), params.pairs, params.seed, str(layout.oracle_reference_boxes), "synth.oracle_pairs")]


def _open_image(pair: web_pairs.WebPair, tsv: Path) -> Image.Image:
    if not Path(pair.path).is_file():
        raise FormatError(tsv, f"image file {pair.path} does not exist", f"line {pair.line}", "image")
    try:
        return read_rgb(pair.path)
    except ImageError as exc:
        raise FormatError(tsv, f"image file {pair.path} cannot be read ({exc.problem})", f"line {pair.line}", "image") from None


def detected_reference_pairs(layout: DataLayout, params: ReferenceBoxesParams, device: torch.device | str = "cpu",
                             progress: bool = True) -> tuple[list[reference_boxes.ReferencePair], int]:
    """Grounding DINO's boxes on the sample, and how many boxes fell wholly outside their image."""
    tsv = layout.cc3m_tsv("train")
    every = web_pairs.read_web_pairs(tsv, check_files=False)
    sample = [every[i] for i in _sample(len(every), params.pairs, params.seed, str(tsv), "the CC3M training TSV")]
    model, processor = grounding_dino.load_grounding_dino(params.model, params.seed)
    model.to(device)
    source = f"grounding-dino:{params.model}"
    out, outside = [], 0
    bar = tqdm(total=len(sample), desc="Grounding DINO", unit="pair", disable=not progress)
    for start in range(0, len(sample), params.batch_size):
        batch = sample[start:start + params.batch_size]
        images = [_open_image(pair, tsv) for pair in batch]
        found, missed = grounding_dino.detect(model, processor, images, [p.caption for p in batch], params.box_threshold,
                                              params.text_threshold, device)
        outside += missed
        for pair, image, detections in zip(batch, images, found):
            boxes = tuple(reference_boxes.DetectedBox(d.box, d.score, d.phrase) for d in detections)
            out.append(reference_boxes.ReferencePair(f"cc3m/train/{pair.line}", pair.path.relative_to(layout.root).as_posix(),
                                                     pair.caption, image.width, image.height, source, boxes))
        bar.update(len(batch))
    bar.close()
    return out, outside


def run_reference_boxes(root: Path, params: ReferenceBoxesParams, out: Path, device: torch.device | str = "cpu",
                        progress: bool = True) -> dict:
    """Write the sample's reference boxes to ``out`` (JSON lines); returns a summary."""
    layout = DataLayout(root)
    outside = 0
    if params.detector == "oracle":
        pairs = oracle_reference_pairs(layout, params)
    else:
        pairs, outside = detected_reference_pairs(layout, params, device, progress)
    reference_boxes.write_reference_boxes(out, pairs)
    boxes = [len(p.boxes) for p in pairs]
    settings = ({"model": params.model, "box_threshold": params.box_threshold, "text_threshold": params.text_threshold}
                if params.detector == "grounding_dino" else {})
    return {
        "detector": params.detector, "source": pairs[0].source if pairs else None, **settings, "seed": params.seed, "pairs": len(pairs),
        "boxes": sum(boxes), "pairs_without_boxes": sum(n == 0 for n in boxes), "boxes_outside_image": outside,
    }


def reference_patch_labels(pair: reference_boxes.ReferencePair, image_size: int, patch_size: int, min_overlap: float = 0.0) -> np.ndarray:
    """(G * G,) bool, row-major: the patches of the square ``image_size`` resize that any of the
    pair's boxes overlaps (PTA's rule, COPA §3.3, applied to the union of the caption's boxes)."""
    grid = grid_size(image_size, patch_size)
    if not pair.boxes:
        return np.zeros(grid * grid, dtype=bool)
    xywh = np.array([b.box.as_list() for b in pair.boxes], dtype=np.float64)
    n = len(xywh)
    resized = resize_boxes(xywh, np.full(n, pair.width), np.full(n, pair.height), image_size)
    return rasterise(resized, image_size, patch_size, min_overlap).any(axis=0).reshape(-1)


class ReferencePairDataset(_Base):
    """(image, caption tokens, reference patch labels) per pair, for evaluation: the square resize
    of the pretraining, no augmentation."""

    def __init__(self, pairs: Sequence[reference_boxes.ReferencePair], data_root: Path, tokenizer, image_size: int, patch_size: int,
                 max_length: int, min_overlap: float = 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__(tokenizer, image_size, max_length, seed=0, train=False, mean=mean, std=std)
        self.pairs, self.root, self.patch_size, self.min_overlap = list(pairs), Path(data_root), patch_size, min_overlap

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        pair = self.pairs[i]
        image = read_rgb(self.root / pair.image)
        if image.size != (pair.width, pair.height):
            raise ValueError(f"{self.root / pair.image}: image is {image.width}x{image.height}, pair {pair.pair_id} says "
                             f"{pair.width}x{pair.height}")
        labels = reference_patch_labels(pair, self.image_size, self.patch_size, self.min_overlap)
        return {
            "image": self.to_tensor(image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)),
            **self.tokens(pair.caption),
            "patch_labels": torch.from_numpy(labels.astype(np.float32)),
        }
