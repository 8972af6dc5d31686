"""Does the fusion read the image? MLM on held-out captions with one content word masked (issue 23).

For each word class (the COCO categories; on the synthetic world also the colours), caption tokens
that are a word of the class (a seeded sample of at most ``per_class``), one at a time, are masked
and predicted by the fused MLM head
(the selection guided by the masked caption, as in pretraining), with the caption's own image and
with another image of the split (a seeded derangement of the images): the control, which scores
what the caption's other words tell. Accuracy over the whole vocabulary, and among the class's own
words (``within_class``: which category / which colour), with that choice's chance level.

A fusion that grounds words scores well above the swapped image; one that reads only the text
scores the same with either.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from copa.data.heldout import RetrievalSet
from copa.eval.retrieval import retrieval_images
from copa.models.copa import CopaModel


def class_token_ids(tokenizer, word_classes: Mapping[str, Sequence[str]]) -> dict[str, torch.Tensor]:
    """Each class's words that are one word piece of the vocabulary, as token ids."""
    return {cls: torch.tensor(sorted({tokenizer.convert_tokens_to_ids(w) for w in words} - {tokenizer.unk_token_id}), dtype=torch.long)
            for cls, words in word_classes.items()}


def masked_words(tokenizer, texts: Sequence[str], class_ids: Mapping[str, torch.Tensor], max_length: int,
                 per_class: int, seed: int) -> list[tuple[int, int, str, int]]:
    """(text index, token position, class, token id) of the class words (``class_token_ids``), at
    most ``per_class`` of each class (a seeded draw), in text order."""
    ids_of = {cls: set(ids.tolist()) for cls, ids in class_ids.items()}
    found: dict[str, list[tuple[int, int, str, int]]] = {cls: [] for cls in class_ids}
    for t, text in enumerate(texts):
        for position, token in enumerate(tokenizer(text, truncation=True, max_length=max_length)["input_ids"]):
            for cls, ids in ids_of.items():
                if token in ids:
                    found[cls].append((t, position, cls, token))
    rng = np.random.default_rng(seed)
    chosen = [item for items in found.values()
              for item in (items if len(items) <= per_class else [items[i] for i in rng.choice(len(items), per_class, replace=False)])]
    return sorted(chosen)


@torch.no_grad()
def word_grounding(model: CopaModel, tokenizer, data: RetrievalSet, word_classes: Mapping[str, Sequence[str]], image_size: int,
                   max_length: int, use_detector: bool, per_class: int = 1000, batch_size: int = 64, seed: int = 0,
                   progress: bool = True) -> dict[str, dict]:
    """class -> {own_image, other_image, own_image_within_class, other_image_within_class (percent),
    within_class_chance, words, examples}; a class none of whose words is one word piece is left out."""
    n = len(data.images)
    if n < 2:
        raise ValueError(f"word grounding needs at least two held-out images (its control is another image), got {n}")
    class_ids = class_token_ids(tokenizer, word_classes)
    items = masked_words(tokenizer, data.texts, class_ids, max_length, per_class, seed)
    images = retrieval_images(data, tokenizer, image_size, max_length, progress)  # read once: each is met by many words
    other = (np.arange(n) + np.random.default_rng(seed).integers(1, n)) % n  # a shift of 1..n-1: never the image itself
    hits: dict[str, dict[str, list[bool]]] = {cls: {key: [] for key in ("own", "other", "own_within", "other_within")} for cls in word_classes}
    for start in tqdm(range(0, len(items), batch_size), desc="word grounding", disable=not progress):
        chunk = items[start:start + batch_size]
        enc = tokenizer([data.texts[t] for t, *_ in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        ids = enc["input_ids"].clone()
        rows = torch.arange(len(chunk))
        positions = torch.tensor([position for _, position, _, _ in chunk])
        ids[rows, positions] = tokenizer.mask_token_id
        text = model.encode_text(ids, enc["attention_mask"])
        own = [data.text_image[t] for t, *_ in chunk]
        for name, image_idx in (("own", own), ("other", [int(other[i]) for i in own])):
            tokens = model.encode_image(images[image_idx], text[:, 0], use_detector=use_detector)["tokens"]
            _, fused = model.fuse(tokens, text, enc["attention_mask"])
            logits = model.mlm_logits(fused)[rows, positions]  # (B, V)
            for row, (_, _, cls, token) in enumerate(chunk):
                hits[cls][name].append(int(logits[row].argmax()) == token)
                within = class_ids[cls]
                hits[cls][f"{name}_within"].append(int(within[logits[row, within].argmax()]) == token)
    return {cls: {"own_image": _percent(h["own"]), "other_image": _percent(h["other"]),
                  "own_image_within_class": _percent(h["own_within"]), "other_image_within_class": _percent(h["other_within"]),
                  "within_class_chance": 100.0 / len(class_ids[cls]), "words": len(class_ids[cls]), "examples": len(h["own"])}
            for cls, h in hits.items() if h["own"]}


def _percent(values: list[bool]) -> float:
    return round(100.0 * float(np.mean(values)), 2)
