"""Linear probes on frozen ViT features: does the image encoder encode the world at all? (issue 19)

On the held-out images (copa.data.heldout), with the labels of ``heldout_attributes``:
- **patch tokens** -> the shape / colour of the object under the patch, and the patch's own row and
  column (whether the tokens still carry the position embeddings' information): the tokens entering the
  first selection layer (the ``prefix`` of copa.models.vit.VisionEncoder: the ViT's patch tokens
  after layer ``location - 1``, every patch of a text-free pass; later layers keep only the
  selected ones), of the patches at least ``PATCH_INSIDE`` inside exactly one box (patches of
  two boxes, or of none, are left out);
- **fusion input tokens** -> the same labels from the same patches where the selection kept them, at
  the ViT's output (after its final norm: the image tokens the fusion reads): whether what the tokens
  carried before the selection (their place above all, which grounding's decoder needs) reaches the fusion;
- **image [CLS]** -> the image's attributes (number of objects; the background in the synthetic
  world): the final, text-free [CLS] (selection by image-[CLS] attention), which ITC projects.

The classifier (copa.eval.ridge) is fitted on a seeded half of the images and tested on the other
half (split by image, so no image gives examples to both), with its accuracy beside the majority
class's (the training half's most frequent class, scored on the test half).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from copa.data.heldout import HeldoutAttributes, HeldoutObjects
from copa.data.patch_labels import rasterise, resize_boxes
from copa.data.pretrain_data import ObjectDataset
from copa.eval.ridge import ridge_probe
from copa.models.copa import CopaModel

PATCH_INSIDE = 0.5  # a patch belongs to a box when the box covers at least half of it


def image_split(n_images: int, seed: int) -> Tensor:
    """(n_images,) bool: the images a probe is fitted on (a seeded half; the rest are tested)."""
    train = torch.zeros(n_images, dtype=torch.bool)
    train[torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))[: n_images // 2]] = True
    return train


def single_box_patches(sample, image_size: int, patch_size: int) -> tuple[Tensor, Tensor]:
    """(patch indices, box index) of the patches at least PATCH_INSIDE inside exactly one box of
    ``sample`` (an ObjectImage) after the square resize."""
    boxes = resize_boxes(np.array([e.box.as_list() for e in sample.elems]), np.full(len(sample.elems), sample.width),
                         np.full(len(sample.elems), sample.height), image_size)
    inside = torch.from_numpy(rasterise(boxes, image_size, patch_size, PATCH_INSIDE).reshape(len(boxes), -1))  # (K, n)
    patches = (inside.sum(0) == 1).nonzero().squeeze(1)
    return patches, inside[:, patches].float().argmax(0)


def probe_features(model: CopaModel, tokenizer, objects: HeldoutObjects, image_size: int, patch_size: int, max_length: int,
                   batch_size: int = 64, progress: bool = True) -> tuple[list[Tensor], Tensor, list[tuple[Tensor, Tensor]]]:
    """Per image, the frozen features of its single-box patches (P_i, D) (in
    :func:`single_box_patches`'s order); the images' final text-free [CLS] (N, D); and per image, the
    fusion's input tokens of those patches the selection kept: (the kept ones' positions in that
    order (Q_i,), their features (Q_i, D))."""
    dataset = ObjectDataset(objects.samples, tokenizer, image_size, patch_size, max_length, seed=0, train=False)
    patch_feats, cls_feats, output_feats = [], [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="probe features", disable=not progress):
        indices = range(start, min(start + batch_size, len(dataset)))
        out = model.encode_image(torch.stack([dataset[i]["image"] for i in indices]), None, use_detector=False)
        cls_feats.append(out["tokens"][:, 0])
        for row, i in enumerate(indices):
            patches, _ = single_box_patches(objects.samples[i], image_size, patch_size)
            patch_feats.append(out["prefix"][row, 1 + patches])
            token_of = {p: 1 + j for j, p in enumerate(out["kept"][row].tolist()) if p >= 0}  # -1: a fused token
            kept = [k for k, p in enumerate(patches.tolist()) if p in token_of]
            output_feats.append((torch.tensor(kept, dtype=torch.long), out["tokens"][row, [token_of[p] for p in patches[kept].tolist()]]))
    return patch_feats, torch.cat(cls_feats), output_feats


def probe_accuracies(patch_feats: Sequence[Tensor], cls_feats: Tensor, objects: HeldoutObjects, attributes: HeldoutAttributes,
                     image_size: int, patch_size: int, seed: int = 0, output_feats: Sequence[tuple[Tensor, Tensor]] | None = None) -> dict:
    """Every probe of the module docstring on given features (per image: its single-box patches'
    (P_i, D); (N, D) image [CLS]; where given, per image the fusion's input tokens of some of those
    patches: (their positions among them, features)), with the labels of ``attributes``."""
    if len(objects.samples) < 2:
        return {"labels": attributes.source, "note": "fewer than 2 images: nothing to fit and test on"}
    train = image_split(len(objects.samples), seed)
    result = {"labels": attributes.source, "train_images": int(train.sum()), "test_images": int((~train).sum()), "image_cls": {}}
    located = [single_box_patches(sample, image_size, patch_size) for sample in objects.samples]  # (patches, box) per image
    grid = image_size // patch_size

    def patch_probe(feats: Sequence[Tensor], subsets: Sequence[Tensor] | None, label_of) -> dict:
        """``feats``: per image, the features of its single-box patches (``subsets``: of those at these
        positions); ``label_of(i, patch, box)``: the label of image i's single-box patch."""
        halves = {True: ([], []), False: ([], [])}
        for i, (features, (patches, box)) in enumerate(zip(feats, located)):
            if subsets is not None:
                patches, box = patches[subsets[i]], box[subsets[i]]
            xs, ys = halves[bool(train[i])]
            xs.append(features)
            ys += [label_of(i, p, k) for p, k in zip(patches.tolist(), box.tolist())]
        return ridge_probe(torch.cat(halves[True][0]), halves[True][1], torch.cat(halves[False][0]), halves[False][1])

    def token_probes(feats: Sequence[Tensor], subsets: Sequence[Tensor] | None = None) -> dict:
        probes = {name: patch_probe(feats, subsets, lambda i, p, k, name=name: attributes.objects[i][k][name])
                  for name in (attributes.objects[0][0] if attributes.objects else ())}
        # the token's own place: grounding and spatial questions need it, and only the position embeddings give it
        probes["row"] = patch_probe(feats, subsets, lambda i, p, k: p // grid)
        probes["column"] = patch_probe(feats, subsets, lambda i, p, k: p % grid)
        return probes

    result["patch_tokens"] = token_probes(patch_feats)
    if output_feats is not None:
        subsets, feats = zip(*output_feats)
        result["fusion_input_tokens"] = token_probes(feats, subsets)
    for name in attributes.images[0] if attributes.images else ():
        ys = [image[name] for image in attributes.images]
        result["image_cls"][name] = ridge_probe(cls_feats[train], [y for y, t in zip(ys, train) if t],
                                                cls_feats[~train], [y for y, t in zip(ys, train) if not t])
    return result


@torch.no_grad()
def linear_probes(model: CopaModel, tokenizer, objects: HeldoutObjects, attributes: HeldoutAttributes, image_size: int,
                  patch_size: int, max_length: int, batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """:func:`probe_accuracies` on the model's frozen features of the held-out images."""
    patch_feats, cls_feats, output_feats = probe_features(model, tokenizer, objects, image_size, patch_size, max_length, batch_size, progress)
    return {"patch_layer": f"tokens entering ViT layer {min(model.vision.locations)} (before the selection)",
            "fusion_input_layer": "the ViT's output tokens of the patches its text-free selection kept",
            **probe_accuracies(patch_feats, cls_feats, objects, attributes, image_size, patch_size, seed, output_feats)}
