"""Visual grounding on RefCOCO+ (COPA §4.2, Table 3): the expression guides the TPD, and the
decoder writes the box as four coordinate tokens (mPLUG style, no box-regression head).

With ``finetune.grounding.head: tokens`` (the default, COPA's), each of x1, y1, x2, y2, relative
to the image side, is quantised into ``coordinate_bins`` bins;
bin i is the token ``[coord_i]``, appended to the run's vocabulary (the decoder's embeddings and
LM head grow by as many rows). Target: ``[CLS] x1 y1 x2 y2 [SEP]``, cross-entropy. Inference:
greedy decoding restricted to the coordinate tokens, each bin read as its centre. Metric:
acc@IoU>=0.5 per split, next to three baselines: the centre box (a box of the mean training size
in the middle of the image), the image's largest annotated box, and a random annotated box of the
shape the expression names (a model that reads the expression must beat the last), and the
correlation of the predicted and true box centres (``centre_r``, copa.eval.grounding). ``head:
regression`` is X-VLM's instead (for the X-VLM comparison): a sigmoid MLP on the fused text [CLS]
predicts (cx, cy, w, h), trained with L1 + GIoU.

With ``finetune.grounding.perception`` oracle (VQA's perception bracket, copa.models.scene_tokens),
the scene's perfect image tokens replace the ViT's: whether the fusion and decoder learn to write
the box when every token says what lies under its patch and where that patch is.
``finetune.grounding.oracle_objects: named`` shows the expression's object alone (every other patch
empty): the box's read-out without the lookup, so that a bracket that fails can say which of the two
stops it.

Two departures from the paper's fine-tune, each off in base.yaml (issue 23): ``finetune.grounding.pta_weight``
adds COPA's PTA loss (eq. 3) on the referred box's patches (labelled by the pretraining's rule,
``patch_labels.min_overlap``) to the box's loss, supervising the TPD's lookup of the expression's object;
``finetune.grounding.keep_ratio`` (copa.train.finetune.start_from) has the selection keep another share of
the patches than the pretraining run's (the paper's 50%): a small one, so that a detector that finds the
object hands the decoder little else. The keep ratio applies to the runs that select patches, PTA to those whose
TPD does; the others (mPLUG's row, w/o TPD's, perfect image tokens) fine-tune without them, their parameters
recording so (start_from).

Images are resized to a square without crops or flips ("left" and "right" in the expressions
must stay true), so relative coordinates carry over.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss
from tqdm import tqdm

from copa.config import GroundingEvalParams, Params
from copa.data.downstream import GroundingExample, grounding_examples
from copa.data.layout import DataLayout
from copa.data.patch_labels import rasterise
from copa.data.pretrain_data import PairDataset
from copa.data.scene_grid import SceneGridPairs, named_object_grids
from copa.eval.grounding import (box_iou, centre_correlation, grounding_accuracy, grounding_hits, patch_centre_share, pointed_centres,
                                 points_inside)
from copa.models.copa import CopaModel
from copa.models.objectives.language import lm_loss
from copa.models.objectives.pta import pta_loss
from copa.tasks.base import FinetuneTask, extend_vocabulary, perceived_pairs, run_finetuning
from copa.tasks.generation import condition
from copa.train.finetune import FinetunedRun, start_from

TRAIN_SPLIT = "train"


def coordinate_tokens(bins: int) -> list[str]:
    return [f"[coord_{i}]" for i in range(bins)]


def relative_xyxy(example: GroundingExample) -> Tensor:
    b = example.box
    return torch.tensor([b.x / example.width, b.y / example.height, (b.x + b.w) / example.width, (b.y + b.h) / example.height])


def to_bins(xyxy: Tensor, bins: int) -> Tensor:
    """Relative coordinates in [0, 1] -> bin indices in [0, bins)."""
    return (xyxy * bins).floor().long().clamp(0, bins - 1)


def from_bins(indices: Tensor, bins: int) -> Tensor:
    """Bin indices -> relative coordinates of the bins' centres."""
    return (indices.double() + 0.5) / bins


def to_pixels_xywh(xyxy: Tensor, sizes: Tensor) -> Tensor:
    """(N, 4) relative x1 y1 x2 y2 and (N, 2) image width, height -> (N, 4) xywh in pixels."""
    wh = sizes.double().repeat(1, 2)
    px = xyxy.double() * wh
    return torch.cat([px[:, :2], px[:, 2:] - px[:, :2]], dim=1)


class BoxHead(nn.Module):
    """X-VLM's box head: an MLP on the fused text [CLS] -> sigmoid (cx, cy, w, h), relative."""

    def __init__(self, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    def forward(self, fused_cls: Tensor) -> Tensor:
        return self.mlp(fused_cls).sigmoid()


def cxcywh_to_xyxy(box: Tensor) -> Tensor:
    centre, size = box[:, :2], box[:, 2:]
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def box_regression_loss(pred_cxcywh: Tensor, target_xyxy: Tensor) -> Tensor:
    """X-VLM's L1 (on cx, cy, w, h) + GIoU loss (on the corners), each averaged over the batch."""
    target_cxcywh = torch.cat([(target_xyxy[:, :2] + target_xyxy[:, 2:]) / 2, target_xyxy[:, 2:] - target_xyxy[:, :2]], dim=1)
    l1 = (pred_cxcywh - target_cxcywh).abs().sum(1).mean()
    giou = generalized_box_iou_loss(cxcywh_to_xyxy(pred_cxcywh), target_xyxy, reduction="mean")
    return l1 + giou


def referred_patches(boxes: Tensor, grid: int, patch_size: int, min_overlap: float) -> Tensor:
    """(B, 4) relative x1 y1 x2 y2 -> (B, grid * grid) float patch labels of each box on the square
    input (copa.data.patch_labels.rasterise: the pretraining's PTA labels)."""
    side = grid * patch_size
    xyxy = boxes.double().numpy() * side
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    return torch.from_numpy(rasterise(xywh, side, patch_size, min_overlap).reshape(len(boxes), -1)).float()


class GroundingFinetuning(nn.Module):
    def __init__(self, model: CopaModel, head: str = "tokens", pta_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.box_head = BoxHead(model.spec.text_dim) if head == "regression" else None
        self.pta_weight = pta_weight

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images, input_ids / attention_mask (expressions), box (B, 4): relative x1 y1 x2 y2,
        box_ids (B, 6): the target ``[CLS] x1 y1 x2 y2 [SEP]`` (tokens), and with PTA patch_labels (B, n):
        the referred box's patches."""
        m = self.model
        cond = condition(m, batch["images"], batch["input_ids"], batch["attention_mask"], guided=True)
        if self.box_head is not None:
            loss = box_regression_loss(self.box_head(cond.text[:, 0]), batch["box"])
        else:
            target = batch["box_ids"]
            mask = torch.ones_like(target)
            loss = lm_loss(m.decode(target, mask, cond.image, cond.text, cond.text_mask), target, mask)
        out = {"loss": loss}
        if self.pta_weight > 0:
            out["pta"] = pta_loss(cond.scores, batch["patch_labels"])
            out["loss"] = loss + self.pta_weight * out["pta"]
        return out


def _data(examples: Sequence[GroundingExample], tokenizer, params: Params, layout: DataLayout) -> PairDataset | SceneGridPairs:
    images = [e.image for e in examples]
    named = None
    if params.finetune.grounding.oracle_objects == "named":  # the expression's object alone (perception oracle only)
        def named(root: DataLayout, size: int, patch: int) -> list[Tensor]:
            return named_object_grids(root, images, [e.box for e in examples], size, patch)
    return perceived_pairs(images, [e.sentence for e in examples], tokenizer, params, "refcoco+", layout, oracle_grids=named)


class GroundingTask(FinetuneTask):
    name = "grounding"

    def __init__(self, params: Params, start_run: Path, data_root: Path, out_dir: Path):
        model, self.params, self.tokenizer = start_from(start_run, params, out_dir, self.name)
        pta_weight = self.settings.pta_weight  # 0 where the run's TPD scores no patches (start_from)
        self.bins, self.head = self.settings.coordinate_bins, self.settings.head
        if self.head == "tokens":
            model, self.tokenizer = extend_vocabulary(model, self.params, out_dir, coordinate_tokens(self.bins), self.params.seed)
            self.first_coordinate = self.tokenizer.convert_tokens_to_ids(coordinate_tokens(1)[0])
        layout = DataLayout(Path(data_root))
        self.examples = grounding_examples(layout, TRAIN_SPLIT)
        self.data = _data(self.examples, self.tokenizer, self.params, layout)
        with torch.random.fork_rng():  # the head's initialisation, seeded
            torch.manual_seed(self.params.seed)
            self.model = GroundingFinetuning(model, self.head, pta_weight)

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def collate(self, indices, epoch: int) -> dict:
        batch = self.data.collate_fn([self.data[i] for i in indices])
        boxes = torch.stack([relative_xyxy(self.examples[i]) for i in indices])
        out = {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "box": boxes}
        if self.model.pta_weight > 0:  # built here, on the CPU, like every label
            side = batch["image"].shape[-1]
            patch = self.params.patch_labels.patch_size
            out["patch_labels"] = referred_patches(boxes, side // patch, patch, self.params.patch_labels.min_overlap)
        if self.head == "tokens":
            tk = self.tokenizer
            out["box_ids"] = torch.cat([torch.full((len(indices), 1), tk.cls_token_id), to_bins(boxes, self.bins) + self.first_coordinate,
                                        torch.full((len(indices), 1), tk.sep_token_id)], dim=1)
        return out


def run_grounding_finetuning(params: Params, start_run: Path, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    return run_finetuning(GroundingTask(params, start_run, data_root, out_dir), out_dir, resume)


# ------------------------------------------------------------------------------------ inference
@torch.no_grad()
def predict_boxes(model: CopaModel, tokenizer, examples: Sequence[GroundingExample], params: Params, layout: DataLayout,
                  box_head: BoxHead | None = None, batch_size: int = 64, progress: bool = True) -> tuple[Tensor, Tensor | None]:
    """(N, 4) relative x1 y1 x2 y2: from ``box_head``, or by greedy decoding over the coordinate
    tokens only; and (N, n) the TPD's scores of the patches under each expression (None for a
    selection without them). ``layout``: the data root's (the scene grids of a model with perception oracle)."""
    bins = params.finetune.grounding.coordinate_bins
    first = tokenizer.convert_tokens_to_ids(coordinate_tokens(1)[0])
    if box_head is None and first == tokenizer.unk_token_id:
        raise ValueError("the run's vocabulary has no coordinate tokens: not a grounding run")
    data = _data(examples, tokenizer, params, layout)
    out, scores = [], []
    for start in tqdm(range(0, len(examples), batch_size), desc="grounding", disable=not progress):
        batch = data.collate_fn([data[i] for i in range(start, min(start + batch_size, len(examples)))])
        cond = condition(model, batch["image"], batch["input_ids"], batch["attention_mask"], guided=True)
        scores.append(cond.scores)
        if box_head is not None:
            out.append(cxcywh_to_xyxy(box_head(cond.text[:, 0])).double())
            continue
        tokens = torch.full((len(batch["image"]), 1), tokenizer.cls_token_id)
        for _ in range(4):
            logits = model.decode(tokens, torch.ones_like(tokens), cond.image, cond.text, cond.text_mask)[:, -1]
            tokens = torch.cat([tokens, logits[:, first:first + bins].argmax(1, keepdim=True) + first], dim=1)
        out.append(from_bins(tokens[:, 1:] - first, bins))
    return torch.cat(out), None if any(s is None for s in scores) else torch.cat(scores)


def centre_boxes(train: Sequence[GroundingExample], test: Sequence[GroundingExample]) -> Tensor:
    """The trivial baseline: a box of the mean relative training size, centred, as relative xyxy."""
    sizes = torch.stack([relative_xyxy(e) for e in train])
    w, h = (sizes[:, 2] - sizes[:, 0]).mean(), (sizes[:, 3] - sizes[:, 1]).mean()
    box = torch.tensor([0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2], dtype=torch.float64)
    return box.expand(len(test), 4)


def largest_boxes(test: Sequence[GroundingExample]) -> Tensor:
    """The largest annotated box of each expression's image, as xywh in pixels."""
    return torch.tensor([max(e.objects, key=lambda o: o.box.area).box.as_list() for e in test], dtype=torch.float64)


def named_objects(e: GroundingExample) -> list:
    """The annotated objects of the image whose category the expression names, as whole words."""
    return [o for o in e.objects if re.search(rf"\b{re.escape(o.category)}\b", e.sentence, re.IGNORECASE)]


def named_shape_boxes(test: Sequence[GroundingExample], seed: int) -> Tensor:
    """A random annotated box of the image whose category the expression names (as whole words),
    or of any category where it names none in the image, as xywh in pixels; drawn in order from a
    generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for e in test:
        candidates = named_objects(e) or e.objects
        out.append(candidates[int(rng.integers(len(candidates)))].box.as_list())
    return torch.tensor(out, dtype=torch.float64)


def detector_pointing(test: Sequence[GroundingExample], scores: Tensor) -> dict:
    """Where the TPD, guided by each expression, puts its highest-scoring patch (the pointing game,
    copa.eval.grounding), in percent of expressions: in the referred box; in it when guided instead by
    another expression of the same image that refers to another object (the first in file order; a
    detector that reads the expression points there less); in a box of the shape the expression
    names; in any annotated box; and the chance of a patch drawn uniformly (the share of the grid's
    patch centres in the referred box: a box that holds none cannot be pointed at)."""
    sizes = torch.tensor([[e.width, e.height] for e in test])
    truth = torch.tensor([e.box.as_list() for e in test], dtype=torch.float64)
    points = pointed_centres(scores)

    def share_in_any(objects_of) -> float:
        hits = [any(points_inside(points[i:i + 1], torch.tensor([o.box.as_list()], dtype=torch.float64), sizes[i:i + 1]).item()
                    for o in objects_of(e)) for i, e in enumerate(test)]
        return 100.0 * sum(hits) / len(test)

    of_image: dict = {}
    for i, e in enumerate(test):
        of_image.setdefault(e.image, []).append(i)
    mine, other = [], []
    for i, e in enumerate(test):
        about_another = [j for j in of_image[e.image] if test[j].box != e.box]
        if about_another:
            mine.append(i)
            other.append(about_another[0])
    return {"referred": 100.0 * points_inside(points, truth, sizes).double().mean().item(),
            "another_expression": 100.0 * points_inside(points[other], truth[mine], sizes[mine]).double().mean().item() if mine else None,
            "another_expression_n": len(mine),
            "named_shape": share_in_any(named_objects), "any_object": share_in_any(lambda e: e.objects),
            "chance": 100.0 * patch_centre_share(truth, sizes, math.isqrt(scores.shape[1])).mean().item()}


def expression_ids(examples: Sequence[GroundingExample]) -> list[str]:
    """Each expression's id: ``<ref_id>.<n>``, its n-th sentence of the ref (file order)."""
    seen: Counter = Counter()
    out = []
    for e in examples:
        out.append(f"{e.ref_id}.{seen[e.ref_id]}")
        seen[e.ref_id] += 1
    return out


def load_box_head(run: FinetunedRun) -> BoxHead | None:
    """The run's box head (regression runs); None for token runs."""
    if run.params.finetune.grounding.head != "regression":
        return None
    head = BoxHead(run.params.model.text_dim)
    head.load_state_dict(run.weights_under("box_head."))
    return head.eval()


def evaluate_grounding(run: FinetunedRun, settings: GroundingEvalParams, data_root: Path,
                       split: str | None = None, batch_size: int = 64, progress: bool = True) -> tuple[dict, list[dict], str]:
    """(acc@0.5 per split with the baselines, predicted boxes per expression, a summary)."""
    model, params, tokenizer = run.model, run.params, run.tokenizer
    layout = DataLayout(Path(data_root))
    box_head = load_box_head(run)
    train = grounding_examples(layout, TRAIN_SPLIT)
    # what the fine-tune kept and trained (the pretraining run's keep ratio, or finetune.grounding.keep_ratio; perfect
    # image tokens: every one; PTA's weight)
    viewed = params.model.perception == "encoder"
    record: dict = {"head": params.finetune.grounding.head, "perception": params.model.perception,
                    "selection": params.model.selection.method if viewed else "none",
                    "keep_ratio": params.model.selection.keep_ratio if viewed else 1.0,
                    "pta_weight": params.finetune.grounding.pta_weight, "splits": {}}
    predictions: list[dict] = []
    for name in [split] if split else settings.splits:
        test = grounding_examples(layout, name)
        sizes = torch.tensor([[e.width, e.height] for e in test])
        truth = torch.tensor([e.box.as_list() for e in test], dtype=torch.float64)
        relative, scores = predict_boxes(model, tokenizer, test, params, layout, box_head, batch_size, progress)
        boxes = to_pixels_xywh(relative, sizes)
        baselines = {"centre_box": to_pixels_xywh(centre_boxes(train, test), sizes), "largest_box": largest_boxes(test),
                     "named_shape_box": named_shape_boxes(test, params.seed)}
        hits = grounding_hits(boxes, truth)
        record["splits"][name] = {"expressions": len(test), "acc@0.5": 100.0 * hits.double().mean().item(),
                                  "mean_iou": box_iou(boxes, truth).mean().item(),
                                  "centre_r": dict(zip("xy", centre_correlation(boxes, truth, sizes))),
                                  # the TPD's own scores of every patch (TRIPS's attention, mPLUG: none)
                                  "detector_pointing": detector_pointing(test, scores) if scores is not None and params.model.selection.method == "tpd" else None,
                                  "baselines": {k: v for baseline, guess in baselines.items()
                                                for k, v in ((baseline, grounding_accuracy(guess, truth)),
                                                             (f"{baseline}_mean_iou", box_iou(guess, truth).mean().item()))},
                                  # each expression's hit (IoU >= 0.5: 0 / 1), for paired comparisons of runs (copa.eval.paired)
                                  "per_expression": dict(zip(expression_ids(test), map(int, hits.tolist())))}
        predictions += [{"split": name, "ref_id": e.ref_id, "sentence": e.sentence, "box": [round(v, 2) for v in b.tolist()]}
                        for e, b in zip(test, boxes)]
    summary = "grounding acc@0.5 " + ", ".join(
        f"{n} {r['acc@0.5']:.1f} (centre box {r['baselines']['centre_box']:.1f}, largest box {r['baselines']['largest_box']:.1f}, "
        f"random box of the named shape {r['baselines']['named_shape_box']:.1f})" for n, r in record["splits"].items())
    pointing = {n: r["detector_pointing"] for n, r in record["splits"].items() if r["detector_pointing"]}
    if pointing:
        def percent(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1f}"

        summary += ("; the TPD's best patch in the referred box (guided by another expression of the image, in the named shape, "
                    "in any object, chance) " + ", ".join(
                        f"{n} {percent(p['referred'])} ({', '.join(percent(p[k]) for k in ('another_expression', 'named_shape', 'any_object', 'chance'))})"
                        for n, p in pointing.items()))
    if params.model.perception != "encoder":  # a bracket's record says so, as VQA's, and what its tokens show
        record["oracle_objects"] = params.finetune.grounding.oracle_objects
        shown = "the named object's image tokens alone" if record["oracle_objects"] == "named" else "the scene's image tokens"
        summary = f"perception {params.model.perception} ({shown}): {summary}"
    return record, predictions, summary
