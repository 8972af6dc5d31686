"""Held-out ITM accuracy: does the matching head tell an image's caption from another image's?

Pairs from a Karpathy split that pretraining never saw (copa.data.heldout):
- **positives**: each image with its first caption;
- **negatives**, two per positive of each kind: the image with another image's caption, and the
  caption with another image. ``hard``: the most ITC-similar one (argmax of the text-free
  image features against the text features, the similarities ALBEF draws its hard negatives
  from; argmax rather than a draw, so the set is fixed); ``random``: a seeded uniform draw.
  A caption is never a negative of an image that has a caption with the same text, nor, where
  the world says (the synthetic world's scenes, ``RetrievalSet.true_of``), of an image it is true
  of: its short captions repeat across images and often fit others (34% of the demo's 200 held-out
  test images have another image's caption that is true of them, and the most ITC-similar caption of
  a well-trained model would be one), so such a "negative" would match.
- **accuracy**: balanced (the mean of the positives' and the negatives' recall) of the ITM
  head's argmax, per kind of negative, beside a constant predictor's (0.5 whatever it says).
- **AUC**: how often the head's match score (its logit margin, match minus no match) ranks a
  positive above a negative (ties half), per kind: 0.5 for a head that reads nothing of the pair.
  It tells a head that ranks pairs but sits on the training's 1:2 prior (every argmax "no match":
  balanced accuracy 0.5) from one that reads nothing.

Each pair's image is encoded as the run trained ITM (``pretrain.itm_guidance``, see
copa.models.pretraining): ``pair_text`` selects the image's patches under the pair's text;
``own_caption`` under the image's own (positive) caption, whatever text it is paired with; the
TPD selects only where the checkpoint's warm-up had switched it on (``detector_on``), else
image-[CLS] attention does.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from copa.config import ITM_GUIDANCES
from copa.data.heldout import RetrievalSet
from copa.data.pretrain_data import text_key
from copa.eval.retrieval import encode_retrieval_set
from copa.models.copa import CopaModel

NEGATIVE_KINDS = ("hard", "random")


def positive_texts(text_image: Sequence[int], n_images: int) -> Tensor:
    """(n_images,) the index of each image's first caption."""
    first = torch.full((n_images,), -1, dtype=torch.long)
    for j, i in reversed(list(enumerate(text_image))):
        first[i] = j
    if (first < 0).any():
        raise ValueError(f"image {int((first < 0).nonzero()[0])} has no caption")
    return first


def matching(texts: Sequence[str], text_image: Sequence[int], n_images: int,
             true_of: Sequence[frozenset[int]] | None = None) -> Tensor:
    """(n_images, n_texts) bool: the image has a caption with that text (case and spacing aside), or
    ``true_of`` (per text, the images it is true of) says the text fits it."""
    keys = [text_key(t) for t in texts]
    own: list[set[str]] = [set() for _ in range(n_images)]
    for key, i in zip(keys, text_image):
        own[i].add(key)
    matches = torch.tensor([[key in own[i] for key in keys] for i in range(n_images)], dtype=torch.bool)
    for j, images in enumerate(true_of or ()):
        matches[list(images), j] = True
    return matches


def itm_negatives(sim: Tensor, matches: Tensor, positive: Tensor, kind: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(negative text per image, negative image per positive caption), each (n_images,).

    ``sim`` (n_images, n_texts): ITC similarities; ``matches``: :func:`matching`; ``positive``:
    each image's positive caption. ``hard``: the most similar non-matching one; ``random``: a
    uniform draw among them (seeded)."""
    if kind not in NEGATIVE_KINDS:
        raise ValueError(f"negative kind must be one of {', '.join(NEGATIVE_KINDS)}, got {kind!r}")
    allowed_text = ~matches  # (n_images, n_texts)
    allowed_image = ~matches[:, positive].t()  # (n_images: the caption's row, n_images)
    if not allowed_text.any(1).all() or not allowed_image.any(1).all():
        raise ValueError("an image has no non-matching caption or a caption no non-matching image: fewer than two images, "
                         "or every caption is true of that image")
    if kind == "hard":
        text_sim = sim.float().masked_fill(~allowed_text, float("-inf"))  # image i -> text j
        image_sim = sim[:, positive].t().float().masked_fill(~allowed_image, float("-inf"))  # image i's caption -> image k
        return text_sim.argmax(1), image_sim.argmax(1)
    generator = torch.Generator().manual_seed(seed)
    return (torch.multinomial(allowed_text.float(), 1, generator=generator).squeeze(1),
            torch.multinomial(allowed_image.float(), 1, generator=generator).squeeze(1))


def ranking_auc(positive: Tensor, negative: Tensor) -> float:
    """P(a positive's score > a negative's) + half P(equal): the Mann-Whitney U over n_pos * n_neg,
    from average ranks (the pinned stack has no scikit-learn or SciPy)."""
    if not len(positive) or not len(negative):
        raise ValueError(f"AUC needs positives and negatives, got {len(positive)} and {len(negative)}")
    scores = torch.cat([positive, negative]).double()
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    average_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2  # 1-based, ties share their mean
    ranks = average_rank[inverse]
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negative)))


def balanced_accuracy(predicted: Tensor, labels: Tensor) -> dict[str, float]:
    """Recall of the positives, of the negatives, and their mean (bool tensors of one shape)."""
    positive_recall = float(predicted[labels].float().mean())
    negative_recall = float((~predicted[~labels]).float().mean())
    return {"positive_recall": positive_recall, "negative_recall": negative_recall, "balanced": (positive_recall + negative_recall) / 2}


@torch.no_grad()
def itm_accuracy(model: CopaModel, tokenizer, data: RetrievalSet, image_size: int, max_length: int, guidance: str,
                 use_detector: bool, batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Balanced ITM accuracy and the head's AUC on the held-out pairs of the module docstring, per
    negative kind."""
    if guidance not in ITM_GUIDANCES:
        raise ValueError(f"itm_guidance must be one of {', '.join(ITM_GUIDANCES)}, got {guidance!r}")
    images, image_feats, states, masks, text_feats = encode_retrieval_set(model, tokenizer, data, image_size, max_length, batch_size, progress)
    n = len(images)
    positive = positive_texts(data.text_image, n)
    matches = matching(data.texts, data.text_image, n, data.true_of)
    sim = image_feats @ text_feats.t()

    def match_margin(image_idx: Tensor, text_idx: Tensor) -> Tensor:
        guide = text_idx if guidance == "pair_text" else positive[image_idx]
        out = []
        for s in range(0, len(image_idx), batch_size):
            im, tx, gd = image_idx[s:s + batch_size], text_idx[s:s + batch_size], guide[s:s + batch_size]
            tokens = model.encode_image(images[im], states[gd, 0], use_detector)["tokens"]
            _, fused = model.fuse(tokens, states[tx], masks[tx])
            logits = model.itm_logits(fused).float()
            out.append(logits[:, 1] - logits[:, 0])
        return torch.cat(out)

    everyone = torch.arange(n)
    on_positives = match_margin(everyone, positive)
    result = {"positives": n, "negatives_per_kind": 2 * n, "guidance": guidance, "detector": use_detector}
    margins = {"positive": on_positives.tolist()}
    for kind in NEGATIVE_KINDS:
        neg_text, neg_image = itm_negatives(sim, matches, positive, kind, seed)
        on_negatives = match_margin(torch.cat([everyone, neg_image]), torch.cat([neg_text, positive]))
        labels = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(2 * n, dtype=torch.bool)])
        # the head's argmax: "match" where the margin is positive (a tie is argmax's first class, no match)
        result[kind] = {**balanced_accuracy(torch.cat([on_positives, on_negatives]) > 0, labels),
                        "auc": ranking_auc(on_positives, on_negatives)}
        margins[f"{kind}_text"], margins[f"{kind}_image"] = on_negatives[:n].tolist(), on_negatives[n:].tolist()
    result["constant"] = balanced_accuracy(torch.ones(3 * n, dtype=torch.bool), labels)["balanced"]  # 0.5: one class always
    # last: per image i, the margin of its positive pair, of its caption-side negative (image i, another caption)
    # and of its image-side negative (another image, i's caption): runs compared image by image (a paired
    # bootstrap over images; a hard negative is each run's own)
    result["margins"] = margins
    return result
