"""Target-patch recall: how much of what a question is about each selector keeps (issue 19).

The synthetic world's sidecar (``referents.json``, copa.data.formats.referents) names the boxes
each VQA question refers to. Resized to the model's input and rasterised with the patch labels'
rule (copa.data.patch_labels: any overlap at ``min_overlap`` 0), they mark the question's target
patches. For every selector that can run on a model's weights and every keep ratio, the share of
the target patches in the kept set, micro (over all target patches) and the mean over questions:

- the run's own selector (the TPD, TRIPS, ...), guided by the question, rebuilt at each ratio with
  the run's weights;
- ``cls_attention``: the text-free image-[CLS] attention selection (COPA's warm-up, "w/o PTA");
- ``oracle``: the target patches themselves (1.0 wherever K covers them: the best any selector
  keeping K can do) and ``random``: K patches drawn at random (K / n in expectation). They
  bracket the others.

The parameter-free selectors act after the first layer the run selects at (the TPD's place), so
every selector sees the same tokens before its selection. Questions without a referent box
("is there a red star?" answered no) have no target patch: they are skipped and counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from copa.data.downstream import VQAExample, referent_targets, vqa_examples
from copa.data.formats.records import FormatError
from copa.data.layout import DataLayout
from copa.data.pretrain_data import Pair, PairDataset
from copa.eval.target_recall_record import KEEP_RATIOS, REFERENCES
from copa.models.copa import CopaModel, spec_selector
from copa.models.objectives.pta import kept_mask
from copa.models.selectors import build_selector
from copa.models.vit import VisionEncoder


@dataclass(frozen=True)
class TargetQuestions:
    """The questions of a VQA split with at least one referent box, and their target patches."""

    split: str
    examples: tuple[VQAExample, ...]
    targets: Tensor  # (Q, n) bool: patch i (row-major) overlaps a box the question refers to
    skipped: int  # questions of the split that refer to no box
    image_size: int
    patch_size: int


def target_questions(layout: DataLayout, split: str, image_size: int, patch_size: int, min_overlap: float = 0.0) -> TargetQuestions:
    """The questions of ``split`` with a target patch (``referent_targets``) and theirs."""
    examples = vqa_examples(layout, split, need_answers=False)
    targets = referent_targets(layout, examples, image_size, patch_size, min_overlap)
    referring = targets.any(dim=1)
    if not referring.any():
        raise FormatError(layout.referents, f"no question of VQA {split} refers to a box")
    kept = tuple(e for e, r in zip(examples, referring.tolist()) if r)
    return TargetQuestions(split, kept, targets[referring], len(examples) - len(kept), image_size, patch_size)


@contextmanager
def _selecting_with(vision: VisionEncoder, selector: nn.Module, locations: frozenset[int]) -> Iterator[None]:
    """``vision`` with another selector (and its locations) for the duration."""
    saved = vision.selector, vision.locations
    vision.selector, vision.locations = selector, locations
    try:
        yield
    finally:
        vision.selector, vision.locations = saved


def comparable_selectors(model: CopaModel, keep_ratio: float) -> dict[str, tuple[nn.Module, frozenset[int]]]:
    """name -> (selector at ``keep_ratio``, its locations): the model's own (with its weights, at its
    locations; none for a model without selection) and the parameter-free references after the
    first layer it selects at."""
    spec, vision = model.spec, model.vision
    first = min(vision.locations)
    if not 1 <= first < len(vision.blocks):
        raise ValueError(f"target recall: the references select after layer {first}, outside 1..{len(vision.blocks) - 1}")
    device = next(model.parameters()).device
    out = {}
    if spec.selection != "none":
        own = spec_selector(dataclasses.replace(spec, keep_ratio=keep_ratio))
        own.load_state_dict(vision.selector.state_dict())
        out[spec.selection] = (own, vision.locations)
    for name in REFERENCES:
        out.setdefault(name, (build_selector(name, spec.vision_dim, keep_ratio=keep_ratio), frozenset({first})))
    return {name: (selector.to(device).eval(), locations) for name, (selector, locations) in out.items()}


@torch.no_grad()
def target_recall(model: CopaModel, tokenizer, questions: TargetQuestions, max_length: int, keep_ratios: Sequence[float] = KEEP_RATIOS,
                  batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Target-patch recall of every comparable selector at every keep ratio (module docstring); the
    question guides the text-guided ones; ``seed`` seeds the random selector's draws."""
    if questions.image_size != model.spec.image_size or questions.patch_size != model.spec.patch_size:
        raise ValueError(f"target recall: targets on a {questions.image_size} px / {questions.patch_size} px grid, "
                         f"the model reads {model.spec.image_size} px / {model.spec.patch_size} px")
    selectors = {r: comparable_selectors(model, r) for r in keep_ratios}
    pairs = [Pair(e.image, e.question, "vqa") for e in questions.examples]
    data = PairDataset(pairs, tokenizer, questions.image_size, max_length, seed, train=False)
    device = next(model.parameters()).device
    n = questions.targets.shape[1]
    hits = {r: dict.fromkeys(selectors[r], 0) for r in keep_ratios}
    shares = {r: dict.fromkeys(selectors[r], 0.0) for r in keep_ratios}
    kept_counts: dict = {r: {} for r in keep_ratios}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in tqdm(DataLoader(data, batch_size=batch_size, collate_fn=data.collate_fn), desc="target recall", disable=not progress):
            images = batch["image"].to(device)
            targets = questions.targets[batch["index"]].to(device)  # (B, n)
            text_cls = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))[:, 0]
            per_question, prefix = targets.sum(1), None
            for r in keep_ratios:
                for name, (selector, locations) in selectors[r].items():
                    with _selecting_with(model.vision, selector, locations):
                        out = model.vision(images, text_cls, True, prefix, False, targets)
                    prefix = out["prefix"]  # every selector starts at the same layer: the layers before it run once
                    found = (kept_mask(out["kept"], n) & targets).sum(1)  # (B,)
                    hits[r][name] += int(found.sum())
                    shares[r][name] += float((found / per_question).sum())
                    kept_counts[r][name] = int((out["kept"] >= 0).sum(1).max())
    total, count = int(questions.targets.sum()), len(questions.examples)
    return {
        "split": f"VQA v2 {questions.split}", "questions": count, "skipped_without_referent": questions.skipped, "patches": n,
        "target_patches_per_question": total / count,
        "selectors": {name: [{"keep_ratio": r, "kept": kept_counts[r][name], "micro": hits[r][name] / total, "mean": shares[r][name] / count}
                             for r in keep_ratios]
                      for name in selectors[keep_ratios[0]]},
    }
