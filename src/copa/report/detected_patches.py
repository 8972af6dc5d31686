"""COPA Figure 4: the patches the Text-aware Patch Detector keeps for VQA questions, drawn over
the images at several keeping ratios.

From one fine-tuned VQA run: each question guides the TPD through its text [CLS], as when the
run answers it, at the run's VQA resolution. The detector scores every patch whatever the ratio,
so one pass gives the kept patches of every ratio: the top K = n x ratio (the selector's own
rounding) by score. The run's own ratio is the one it was trained and evaluated with; the
others show what a lower or higher ratio would keep from the same scores. Under each image: the
question and the run's answer.

The paired panel: the same image under two different questions (where the data root has the
synthetic world's referents.json, two questions about different objects; otherwise the image's
first two questions), the patches each keeps at the run's ratio side by side. How much the kept
set moves with the question: the IoU of the two kept sets and the share of one question's kept
patches the other does not keep (both keep K patches), per pair and averaged over the pairs.
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
from copa.data.formats.referents import Referents
from copa.data.images import read_rgb
from copa.models.selectors import num_keep
from copa.report.figures import new_figure
from copa.tasks.vqa import question_data, answer_questions
from copa.train.build import require_encoder
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


def pick_question_pairs(examples: Sequence[VQAExample], count: int, referents: Referents | None = None) -> list[tuple[VQAExample, VQAExample]]:
    """Up to ``count`` pairs of two questions about one image, one pair per image, in file order:
    with ``referents``, the first two questions of the image that each refer to some box, not the
    same boxes (a question about nothing, "is there a red star?" answered no, has no region to
    move to); without, the image's first two questions."""
    by_image: dict[str, list[VQAExample]] = {}
    for e in examples:
        by_image.setdefault(str(e.image), []).append(e)

    def about(e: VQAExample) -> frozenset | None:
        referred = referents.questions.get(e.question_id) if referents else None
        return None if referred is None else frozenset(tuple(b.box.as_list()) for b in referred.boxes)

    pairs = []
    for questions in by_image.values():
        candidates = [(a, b) for i, a in enumerate(questions) for b in questions[i + 1:]
                      if referents is None or (about(a) and about(b) and about(a) != about(b))]
        if candidates and len(pairs) < count:
            pairs.append(candidates[0])
    return pairs


def kept_change(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """(IoU of two kept-patch masks, share of ``first``'s kept patches that ``second`` does not keep)."""
    both, either = int((first & second).sum()), int((first | second).sum())
    if not first.any():
        raise ValueError("the first mask keeps no patch")
    return both / either, 1.0 - both / int(first.sum())


def pair_summary(pairs: Sequence[tuple[Detection, Detection]], ratio: float) -> dict:
    """Figure 4's paired panel as data: per pair the two questions, answers and the change of
    the kept set at ``ratio`` (``kept_change``); the means over the pairs."""
    rows = []
    for a, b in pairs:
        iou, moved = kept_change(a.kept[ratio], b.kept[ratio])
        rows.append({"image": a.example.image.name, "question_ids": [a.example.question_id, b.example.question_id],
                     "questions": [a.example.question, b.example.question], "answers": [a.answer, b.answer],
                     "kept": int(a.kept[ratio].sum()), "iou": iou, "moved": moved})
    mean = {key: float(np.mean([r[key] for r in rows])) if rows else None for key in ("iou", "moved")}
    return {"ratio": ratio, "pairs": rows, "mean_iou": mean["iou"], "mean_moved": mean["moved"],
            "definition": "iou: |kept(q1) & kept(q2)| / |kept(q1) | kept(q2)|; moved: share of q1's kept patches q2 does not keep"}


@torch.no_grad()
def detect_patches(run: FinetunedRun, examples: Sequence[VQAExample], ratios: Sequence[float],
                   settings: VQAEvalParams) -> list[Detection]:
    model, params = run.model, run.params
    require_encoder(params, "Figure 4 (the TPD's detections)")
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
        pixels = np.asarray(read_rgb(e.image).resize((size, size), Image.Resampling.BICUBIC))
        detections.append(Detection(e, answers[e.question_id], pixels, kept))
    return detections


def _draw(ax, pixels: np.ndarray, kept: np.ndarray, title: str, label: str) -> None:
    """The image with the patches not kept dimmed (they are fused into one token)."""
    size = pixels.shape[0]
    ax.imshow(pixels, extent=(0, size, size, 0), interpolation="nearest")
    shade = np.zeros((*kept.shape, 4))
    shade[~kept] = (0.0, 0.0, 0.0, 0.65)
    ax.imshow(shade, extent=(0, size, size, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    if label:
        ax.set_xlabel(label, fontsize=7, loc="left")


def detected_patches_figure(detections: Sequence[Detection], trained_ratio: float, title: str,
                            pairs: Sequence[tuple[Detection, Detection]] = ()) -> Figure:
    """One row per question, one column per ratio; below (``pairs``), the paired panel: each
    pair's two questions side by side at ``trained_ratio``, with the IoU of their kept sets."""
    ratios = sorted(detections[0].kept)
    per_row = max(1, len(ratios) // 2)  # pairs side by side in the ratios' width
    pair_rows = math.ceil(len(pairs) / per_row)
    fig = new_figure(2.3 * max(len(ratios), 2), 2.6 * (len(detections) + pair_rows) + 0.6 + 0.6 * bool(pairs))
    fig.set_layout_engine("constrained")
    fig.suptitle(title, fontsize=9)
    top, bottom = fig.subfigures(2, 1, height_ratios=[len(detections), pair_rows]) if pairs else (fig, None)
    for row, d in enumerate(detections):
        for col, ratio in enumerate(ratios):
            mark = " (trained)" if math.isclose(ratio, trained_ratio) else ""
            _draw(top.add_subplot(len(detections), len(ratios), row * len(ratios) + col + 1), d.pixels, d.kept[ratio],
                  f"keep {round(100 * ratio)}%{mark}", f"Q: {d.example.question}\nA: {d.answer}" if col == 0 else "")
    if bottom is not None:
        bottom.suptitle(f"The same image under two questions (keep {round(100 * trained_ratio)}%): do the kept patches move?", fontsize=8)
        for n, (a, b) in enumerate(pairs):
            iou, moved = kept_change(a.kept[trained_ratio], b.kept[trained_ratio])
            for side, d in enumerate((a, b)):
                ax = bottom.add_subplot(pair_rows, 2 * per_row, 2 * n + side + 1)
                heading = "question 1" if side == 0 else f"question 2: IoU {iou:.2f}, {100 * moved:.0f}% moved"
                _draw(ax, d.pixels, d.kept[trained_ratio], heading, f"Q: {d.example.question}\nA: {d.answer}")
    return fig
