"""Image-text retrieval recall (the COCO / Flickr30K protocol of ALBEF, X-VLM, mPLUG, COPA).

TR@K (image -> text): an image is a hit when any of its ground-truth captions is among its K
most similar texts. IR@K (text -> image): a text is a hit when its image is among its K most
similar images. Tied similarities are ranked in ``torch.topk``'s order.

:func:`encode_retrieval_set` is the model's side of every retrieval measurement (the retrieval
task's two-stage inference, the pretraining instruments' ITC retrieval and ITM accuracy).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from copa.data.heldout import RetrievalSet
from copa.data.pretrain_data import Pair, PairDataset
from copa.models.copa import CopaModel

RECALL_KS = (1, 5, 10)


@torch.no_grad()
def query_hits(sim: Tensor, text_image: Sequence[int] | Tensor, ks: Sequence[int] = RECALL_KS,
               sim_t2i: Tensor | None = None) -> dict[str, Tensor]:
    """Each query's hit (bool) at every K: ``tr_r{k}`` (n_images,) for the image queries,
    ``ir_r{k}`` (n_texts,) for the text queries; arguments as :func:`retrieval_recall`'s."""
    sim_t2i = sim if sim_t2i is None else sim_t2i
    if sim_t2i.shape != sim.shape:
        raise ValueError(f"sim_t2i has shape {tuple(sim_t2i.shape)}, sim {tuple(sim.shape)}")
    n_images, n_texts = sim.shape
    gt = torch.as_tensor(text_image, dtype=torch.long, device=sim.device)
    if gt.shape != (n_texts,):
        raise ValueError(f"text_image has {gt.numel()} entries for {n_texts} texts")
    if n_texts and (gt.min() < 0 or gt.max() >= n_images):
        raise ValueError(f"text_image must index the {n_images} images, got values in [{int(gt.min())}, {int(gt.max())}]")
    out: dict[str, Tensor] = {}
    for k in ks:
        top_texts = sim.topk(min(k, n_texts), dim=1).indices  # (n_images, k)
        out[f"tr_r{k}"] = (gt[top_texts] == torch.arange(n_images, device=sim.device)[:, None]).any(dim=1)
        top_images = sim_t2i.t().topk(min(k, n_images), dim=1).indices  # (n_texts, k)
        out[f"ir_r{k}"] = (top_images == gt[:, None]).any(dim=1)
    return out


@torch.no_grad()
def retrieval_recall(sim: Tensor, text_image: Sequence[int] | Tensor, ks: Sequence[int] = RECALL_KS,
                     sim_t2i: Tensor | None = None) -> dict[str, float]:
    """``sim`` (n_images, n_texts), ``text_image[j]``: the image of text j; ``sim_t2i``: other
    scores of the same shape for the text -> image direction (two-stage ranking re-scores each
    side's candidates). Returns percentages ``tr_r{k}``, ``ir_r{k}`` and ``r_mean`` (their mean,
    the papers' "RSUM / 6" column)."""
    hits = query_hits(sim, text_image, ks, sim_t2i)
    out = {key: 100.0 * hit.float().mean().item() for key, hit in hits.items()}
    out["r_mean"] = sum(out.values()) / len(out)
    return out


def _any_of_own_in_top(total: int, own: int, k: int) -> float:
    """The chance that a random order of ``total`` texts, ``own`` of them a query's, has one of its
    own in the first K: 1 - C(total - own, K) / C(total, K)."""
    if own <= 0:
        return 0.0
    return 1.0 if total <= k else 1.0 - math.comb(total - own, k) / math.comb(total, k)


def chance_recall(n_images: int, texts_per_image: float, k: int) -> dict[str, float]:
    """Expected R@K of random rankings (percent): IR K / n_images; TR 1 - C(n-c, K) / C(n, K)
    with c captions per image among n texts (approximated for fractional c by rounding)."""
    n_texts = round(n_images * texts_per_image)
    return {f"tr_r{k}": 100.0 * _any_of_own_in_top(n_texts, round(texts_per_image), k),
            f"ir_r{k}": 100.0 * min(k, n_images) / n_images}


def chance_recalls(n_images: int, n_texts: int, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """:func:`chance_recall` for every K of ``ks``, as one dict (the trivial baseline of a result)."""
    return {key: value for k in ks for key, value in chance_recall(n_images, n_texts / n_images, k).items()}


def fit_oracle_recalls(true_of: Sequence[frozenset[int]], text_image: Sequence[int], n_images: int,
                       ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Expected R@K (percent) of an oracle that knows only what is true (per text, ``true_of``: the
    images it is true of, its own among them) and ranks that first, in random order among it: where
    captions fit other images than their own, what knowing the truth alone reaches (not an upper
    bound: a model may also learn which of the true captions the writer would have chosen). IR:
    min(1, K / f) for a caption true of f images; TR: 1 - C(F - c, K) / C(F, K) for an image with c
    captions of its own among the F true of it."""
    if not true_of or len(true_of) != len(text_image):
        raise ValueError(f"true_of has {len(true_of)} entries for {len(text_image)} texts (need one per text, at least one)")
    true_texts = [0] * n_images
    own_texts = [0] * n_images
    for images, own in zip(true_of, text_image):
        if not 0 <= own < n_images or not all(0 <= i < n_images for i in images):
            raise ValueError(f"true_of and text_image must index the {n_images} images")
        if own not in images:
            raise ValueError(f"a caption of image {own} is not true of it")
        own_texts[own] += 1
        for i in images:
            true_texts[i] += 1
    out = {}
    for k in ks:
        out[f"tr_r{k}"] = 100.0 * sum(_any_of_own_in_top(f, c, k) for f, c in zip(true_texts, own_texts)) / n_images
        out[f"ir_r{k}"] = 100.0 * sum(min(1.0, k / len(images)) for images in true_of) / len(true_of)
    return out


@torch.no_grad()
def two_stage_scores(coarse: Tensor, k: int, rerank: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """COPA Appendix E's inference: rank by ``coarse`` similarities (n_images, n_texts), then
    re-score each query's top-k candidates with ``rerank(image_idx, text_idx) -> (P,)`` (ITM on
    text-guided image features) and rank those first, by the new score.

    Returns the (image -> text, text -> image) score matrices, each query's top-k holding its
    re-ranked scores and everything else -inf (so R@K with K <= k reads the re-ranked order).
    With k >= the candidate count this is the full re-ranking.
    """
    n_images, n_texts = coarse.shape

    def one_side(sim: Tensor, as_pairs: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> Tensor:
        top = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (queries, k)
        queries = torch.arange(sim.shape[0], device=sim.device)[:, None].expand_as(top)
        scores = rerank(*as_pairs(queries.reshape(-1), top.reshape(-1))).to(sim.dtype)
        out = torch.full_like(sim, float("-inf"))
        return out.scatter_(1, top, scores.view_as(top))

    i2t = one_side(coarse, lambda q, c: (q, c))
    t2i = one_side(coarse.t(), lambda q, c: (c, q))  # text queries: candidates are images
    return i2t, t2i.t().contiguous()


def retrieval_images(data: RetrievalSet, tokenizer, image_size: int, max_length: int, progress: bool = True) -> Tensor:
    """The set's images (n_images, 3, S, S), resized and normalised as for evaluation."""
    images_only = PairDataset([Pair(path, "", "karpathy") for path in data.images], tokenizer, image_size, max_length, seed=0, train=False)
    return torch.stack([images_only[i]["image"] for i in tqdm(range(len(images_only)), desc="images", disable=not progress)])


@torch.no_grad()
def encode_retrieval_set(model: CopaModel, tokenizer, data: RetrievalSet, image_size: int, max_length: int,
                         batch_size: int = 64, progress: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Images (n_images, 3, S, S), text-free image features (n_images, E), text states (n_texts, L, H),
    text masks (n_texts, L) and text features (n_texts, E) of a retrieval set."""
    images = retrieval_images(data, tokenizer, image_size, max_length, progress)
    image_feats = torch.cat([model.image_feature(model.encode_image(images[i:i + batch_size], None, use_detector=False)["tokens"])
                             for i in range(0, len(images), batch_size)])
    enc = tokenizer(list(data.texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    states = torch.cat([model.encode_text(enc["input_ids"][i:i + batch_size], enc["attention_mask"][i:i + batch_size])
                        for i in range(0, len(data.texts), batch_size)])
    return images, image_feats, states, enc["attention_mask"], model.text_feature(states)
