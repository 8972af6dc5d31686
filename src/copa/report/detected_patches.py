"""COPA Figure 4: the patches the Text-aware Patch Detector keeps for VQA questions, drawn over
the images at several keeping ratios.

From one fine-tuned VQA run: each question guides the TPD through its text [CLS], as when the
run answers it, at the run's VQA resolution. The detector scores every patch whatever the ratio,
so one pass gives the kept patches of every ratio: the top K = n x ratio (the selector's own
rounding) by score. The run's own ratio is the one it was trained and evaluated with; the
others show what a lower or higher ratio would keep from the same scores. Under each image: the
question and the run's answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from copa.config import VQAEvalParams, vqa_image_size
from copa.data.downstream import VQAExample
from copa.models.selectors import num_keep
from copa.report.figures import new_figure
from copa.tasks.vqa import question_data, answer_questions
from copa.train.finetune import FinetunedRun


@dataclass(frozen=True)
class Detection:
    example: VQAExample
    answer: str  # the run's
    pixels: np.ndarray  # (S, S, 3) uint8: the image as the run sees it
    kept: dict[float, np.ndarray]  # ratio -> (h, w) bool: the patches kept at that ratio


def pick_questions(examples: Sequence[VQAExample], count: int) -> list[VQAExample]:
    """The first ``count`` "other" questions (what / which: they name things in the image), one per
    image, in file order; yes/no and number questions fill up if there are too few."""
    chosen, images = [], set()
    for wanted in (lambda e: e.answer_type == "other", lambda e: e.answer_type != "other"):
        for e in examples:
            if len(chosen) < count and wanted(e) and e.image not in images:
                chosen.append(e)
                images.add(e.image)
    return chosen


@torch.no_grad()
def detect_patches(run: FinetunedRun, examples: Sequence[VQAExample], ratios: Sequence[float],
                   settings: VQAEvalParams) -> list[Detection]:
    model, params = run.model, run.params
    selector = model.vision.selector
    if params.model.selection.method != "tpd":
        raise ValueError(f"{run.checkpoint}: the run selects with {params.model.selection.method!r}; Figure 4 shows the TPD's detections")
    data = question_data(examples, run.tokenizer, params)
    batch = data.collate_fn([data[i] for i in range(len(examples))])
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    scores = model.encode_image(batch["image"], text[:, 0], use_detector=True, need_scores=True)["scores"]  # (B, n)
    size, patch = vqa_image_size(params), params.patch_labels.patch_size
    side = size // patch
    order = scores.argsort(dim=1, descending=True, stable=True)
    answers = answer_questions(model, run.tokenizer, examples, params, settings, progress=False)
    detections = []
    for i, e in enumerate(examples):
        kept = {}
        for ratio in ratios:
            mask = np.zeros(side * side, dtype=bool)
            mask[order[i, :num_keep(side * side, ratio, selector.rounding)].numpy()] = True
            kept[ratio] = mask.reshape(side, side)
        with Image.open(e.image) as image:
            pixels = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
        detections.append(Detection(e, answers[e.question_id], pixels, kept))
    return detections


def detected_patches_figure(detections: Sequence[Detection], trained_ratio: float, title: str) -> Figure:
    """One row per question, one column per ratio; the patches not kept are dimmed."""
    ratios = sorted(detections[0].kept)
    fig = new_figure(2.3 * len(ratios), 2.6 * len(detections) + 0.6)
    fig.suptitle(title, fontsize=9)
    for row, d in enumerate(detections):
        size = d.pixels.shape[0]
        for col, ratio in enumerate(ratios):
            ax = fig.add_subplot(len(detections), len(ratios), row * len(ratios) + col + 1)
            ax.imshow(d.pixels, extent=(0, size, size, 0), interpolation="nearest")
            shade = np.zeros((*d.kept[ratio].shape, 4))
            shade[~d.kept[ratio]] = (0.0, 0.0, 0.0, 0.65)  # dropped (fused) patches dimmed
            ax.imshow(shade, extent=(0, size, size, 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            mark = " (trained)" if math.isclose(ratio, trained_ratio) else ""
            ax.set_title(f"keep {round(100 * ratio)}%{mark}", fontsize=8)
            if col == 0:
                ax.set_xlabel(f"Q: {d.example.question}\nA: {d.answer}", fontsize=7, loc="left")
    fig.tight_layout()
    return fig
