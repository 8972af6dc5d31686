"""Grounding DINO (Liu et al. 2023) through transformers, as COPA Appendix C.1 uses it: the
caption is the prompt, and each box the detector finds comes with its score and the caption's
words it matched.

:func:`load_grounding_dino` takes a local directory (``save_pretrained`` of the model and its
processor) or a hub name when the hub is reachable; ``random-tiny`` builds an untrained model
of about 6.5 MB (measured, saved) from a config, so that the whole path runs offline and in CI. Its
boxes mean nothing.
"""

from __future__ import annotations

import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from copa.data.formats.records import Box

RANDOM_TINY = "random-tiny"


@dataclass(frozen=True)
class Detection:
    box: Box  # xywh in the image's own pixels, inside the image
    score: float  # the query's best token probability
    phrase: str  # the caption's words above the text threshold


def prompt(caption: str) -> str:
    """Grounding DINO's prompt convention: lower case, ending with a full stop. The full stop also
    matters to transformers' processor: a batch of texts without one is read as one image's list
    of candidate labels and merged into a single prompt."""
    text = caption.strip().lower()
    return text if text.endswith(".") else text + "."


def load_grounding_dino(name: str, seed: int = 0):
    """(model in eval mode, processor). ``name``: a local directory, a hub name, or ``random-tiny``."""
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    if name == RANDOM_TINY:
        return tiny_random_grounding_dino(seed)
    try:
        model = GroundingDinoForObjectDetection.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name)
    except OSError as exc:  # transformers' error for a missing directory or an unreachable hub
        raise FileNotFoundError(
            f"Grounding DINO {name!r} could not be loaded ({str(exc).splitlines()[0]}). Offline, download it where the hub "
            f"is reachable (e.g. `hf download {name} --local-dir DIR`) and set reference_boxes.model=DIR") from None
    return model.eval(), processor


def tiny_random_grounding_dino(seed: int = 0):
    """An untrained Grounding DINO small enough for CI (the config ENVIRONMENT.md found to work at
    64 px), with a processor whose tokenizer has bert-base-uncased's special-token ids, which the
    model hard-codes ([CLS] 101, [SEP] 102, "." 1012, "?" 1029); words become letters."""
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoProcessor,
                              SwinConfig)
    from transformers.models.grounding_dino import GroundingDinoImageProcessor

    vocab = [f"[unused{i}]" for i in range(30522)]
    for index, token in ((0, "[PAD]"), (100, "[UNK]"), (101, "[CLS]"), (102, "[SEP]"), (103, "[MASK]"), (1012, "."), (1029, "?")):
        vocab[index] = token
    for index, char in enumerate(string.ascii_lowercase + string.digits + ",'-"):
        vocab[2000 + index], vocab[3000 + index] = char, f"##{char}"
    with tempfile.TemporaryDirectory() as folder:  # BertTokenizer reads its vocabulary from a file
        path = Path(folder) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(str(path))
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1] * 4, num_heads=[1] * 4, window_size=2,
                                   out_indices=[2, 3, 4]),
        text_config=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=len(vocab)),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, num_queries=20, num_feature_levels=3, max_text_len=64)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}), tokenizer)
    return model, processor


@torch.no_grad()
def detect(model, processor, images: Sequence[Image.Image], captions: Sequence[str], box_threshold: float, text_threshold: float,
           device: torch.device | str = "cpu") -> tuple[list[list[Detection]], int]:
    """The boxes of one batch, per image, best score first, and how many boxes lay wholly outside
    their image (not kept; the caller reports them)."""
    inputs = processor(images=list(images), text=[prompt(c) for c in captions], return_tensors="pt", padding="longest",
                       truncation=True, max_length=model.config.max_text_len)
    inputs = inputs.to(device)
    outputs = model(**inputs)
    sizes = [(im.height, im.width) for im in images]
    results = processor.post_process_grounded_object_detection(outputs, inputs["input_ids"], threshold=box_threshold,
                                                               text_threshold=text_threshold, target_sizes=sizes)
    special = set(processor.tokenizer.all_special_tokens)
    batch, outside = [], 0
    for (height, width), result in zip(sizes, results):
        found = []
        for score, xyxy, phrase in zip(result["scores"].tolist(), result["boxes"].tolist(), result["text_labels"]):
            x0, y0 = min(max(xyxy[0], 0.0), width), min(max(xyxy[1], 0.0), height)  # the detector's boxes may leave the image
            x1, y1 = min(max(xyxy[2], 0.0), width), min(max(xyxy[3], 0.0), height)
            if x1 <= x0 or y1 <= y0:
                outside += 1
                continue
            words = " ".join(w for w in phrase.split() if w not in special)
            found.append(Detection(Box(round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)), round(score, 4), words))
        batch.append(sorted(found, key=lambda d: -d.score))
    return batch, outside
