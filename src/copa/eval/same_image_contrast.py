"""Same-image PTA contrast: does the TPD read the text? (issue 19)

On a held-out image with objects A and B of different texts ("This is a circle." / "This is a
star."), the TPD's patch scores guided by A's text should rank A's patches (its PTA labels) higher
than the scores guided by B's text do. For every ordered pair (A, B) of boxes of one image whose
texts differ (case and spacing aside), the contrast is

    AP(scores under A's text, A's labels) - AP(scores under B's text, A's labels)

(copa.eval.patch_ranking's average precision; pairs whose A has no labelled patch are left out).
A detector that ignores the text scores the image the same under both texts: contrast 0, however
well it finds objects. The image is the unit: its pairs share its scores, so each image's pairs
are averaged first, and the estimate (the mean over images) gets a paired bootstrap interval over
images (copa.eval.paired).

The bounds on the same pairs, from the annotations (copa.eval.patch_ranking's references): the
best text-free scorer (every box of the image first) has contrast 0 by construction; the best
text-aware one (the boxes of the guiding text first, then the other boxes) reaches the largest
contrast the labels allow.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from copa.data.heldout import HeldoutObjects
from copa.data.pretrain_data import ObjectDataset, text_key
from copa.eval.paired import paired_bootstrap
from copa.eval.patch_ranking import average_precision, reference_tiers, tie_jitter
from copa.models.copa import CopaModel


def contrast_pairs(images: Sequence[str], texts: Sequence[str]) -> list[tuple[int, int]]:
    """Ordered pairs (a, b) of rows on the same image whose texts differ (:func:`text_key`)."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        rows[image].append(i)
    return [(a, b) for members in rows.values() for a in members for b in members if text_key(texts[a]) != text_key(texts[b])]


def _per_image(values: Tensor, pair_images: Sequence[str]) -> np.ndarray:
    """The mean of each image's pair values, images in first-seen order."""
    groups: dict[str, list[float]] = defaultdict(list)
    for value, image in zip(values.tolist(), pair_images):
        groups[image].append(value)
    return np.array([np.mean(v) for v in groups.values()])


def _contrast(own: Tensor, other: Tensor, pair_images: Sequence[str], seed: int) -> dict:
    first, second = _per_image(own, pair_images), _per_image(other, pair_images)
    return {"ap_own_text": float(first.mean()), "ap_other_text": float(second.mean()),
            "contrast": paired_bootstrap(first, second, seed=seed).as_dict()}


def same_image_contrast(scores: Tensor, labels: Tensor, images: Sequence[str], texts: Sequence[str], seed: int = 0) -> dict:
    """The contrast of the module docstring for per-row ``scores`` (R, n) (row r: its image scored
    under its text), PTA ``labels`` (R, n), and each row's image and text; with its bounds."""
    pairs = [(a, b) for a, b in contrast_pairs(images, texts) if labels[a].sum() > 0]
    pair_images = [images[a] for a, _ in pairs]
    if len({*pair_images}) < 2:
        return {"pairs": len(pairs), "images": len({*pair_images}), "note": "fewer than 2 images with two boxes of different texts"}
    a, b = (torch.tensor(side) for side in zip(*pairs))
    target = labels[a]
    result = {"pairs": len(pairs), "images": len({*pair_images}),
              **_contrast(average_precision(scores[a], target), average_precision(scores[b], target), pair_images, seed)}
    any_box, same_text = reference_tiers(labels, images, [text_key(t) for t in texts])
    jitter = tie_jitter(labels.shape, seed)[a]  # A's tie order under both texts
    text_free = average_precision(any_box[a] + jitter, target)
    result["bounds"] = {
        "text_free": _contrast(text_free, text_free, pair_images, seed),
        "text_aware": _contrast(average_precision(any_box[a] + same_text[a] + jitter, target),
                                average_precision(any_box[a] + same_text[b] + jitter, target), pair_images, seed),
    }
    return result


@torch.no_grad()
def tpd_contrast(model: CopaModel, tokenizer, objects: HeldoutObjects, image_size: int, patch_size: int, max_length: int,
                 min_overlap: float, labels: str, batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """:func:`same_image_contrast` of the model's TPD on the held-out images with boxes of two
    texts or more, each box labelled by the run's PTA rule ``labels``; a note without a TPD."""
    if model.spec.selection != "tpd":
        return {"note": f"no text-aware patch detector (selection {model.spec.selection}): no scores to contrast"}
    contrasted = [s for s in objects.samples if len({text_key(e.text) for e in s.elems}) >= 2]
    if not contrasted:
        return {"pairs": 0, "images": 0, "note": "no held-out image with boxes of two texts"}
    dataset = ObjectDataset(contrasted, tokenizer, image_size, patch_size, max_length, seed=0, min_overlap=min_overlap, train=False,
                            labels=labels, every_elem=True)
    scores, all_labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn)
    for batch in tqdm(loader, desc="same-image contrast", disable=not progress):
        text_cls = model.encode_text(batch["input_ids"], batch["attention_mask"])[:, 0]
        scores.append(model.encode_image(batch["image"], text_cls, use_detector=True, need_scores=True)["scores"])
        all_labels.append(batch["patch_labels"])
    rows = [(contrasted[i], contrasted[i].elems[j]) for i, j in dataset.elem_pairs]
    return same_image_contrast(torch.cat(scores), torch.cat(all_labels), [str(s.image) for s, _ in rows], [e.text for _, e in rows], seed)
