"""Visual grounding on RefCOCO+ (COPA §4.2, Table 3): the expression guides the TPD, and the
decoder writes the box as four coordinate tokens (mPLUG style, no box-regression head).

Each of x1, y1, x2, y2, relative to the image side, is quantised into ``coordinate_bins`` bins;
bin i is the token ``[coord_i]``, appended to the run's vocabulary (the decoder's embeddings and
LM head grow by as many rows). Target: ``[CLS] x1 y1 x2 y2 [SEP]``, cross-entropy. Inference:
greedy decoding restricted to the coordinate tokens, each bin read as its centre. Metric:
acc@IoU>=0.5 per split, next to the centre-box baseline (a box of the mean training size in the
middle of the image).

Images are resized to a square without crops or flips ("left" and "right" in the expressions
must stay true), so relative coordinates carry over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from copa.config import GroundingEvalParams, Params
from copa.data.downstream import GroundingExample, grounding_examples
from copa.data.layout import DataLayout
from copa.data.pretrain_data import PairDataset
from copa.eval.grounding import box_iou, grounding_accuracy
from copa.models.copa import CopaModel
from copa.models.objectives import lm_loss
from copa.tasks.base import FinetuneTask, extend_vocabulary, resized_pairs, run_finetuning
from copa.tasks.generation import condition
from copa.train.finetune import start_from

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


class GroundingFinetuning(nn.Module):
    def __init__(self, model: CopaModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images, input_ids / attention_mask (expressions), box_ids (B, 6): the target
        ``[CLS] x1 y1 x2 y2 [SEP]``."""
        m = self.model
        cond = condition(m, batch["images"], batch["input_ids"], batch["attention_mask"], guided=True)
        target = batch["box_ids"]
        mask = torch.ones_like(target)
        logits = m.decode(target, mask, cond.image, cond.text, cond.text_mask)
        return {"loss": lm_loss(logits, target, mask)}


def _data(examples: Sequence[GroundingExample], tokenizer, params: Params) -> PairDataset:
    return resized_pairs([e.image for e in examples], [e.sentence for e in examples], tokenizer, params, "refcoco+")


class GroundingTask(FinetuneTask):
    name = "grounding"

    def __init__(self, params: Params, start_run: Path, data_root: Path, out_dir: Path):
        model, self.params, _ = start_from(start_run, params, out_dir, self.name)
        self.bins = self.settings.coordinate_bins
        model, self.tokenizer = extend_vocabulary(model, self.params, out_dir, coordinate_tokens(self.bins), self.params.seed)
        self.first_coordinate = self.tokenizer.convert_tokens_to_ids(coordinate_tokens(1)[0])
        self.examples = grounding_examples(DataLayout(Path(data_root)), TRAIN_SPLIT)
        self.data = _data(self.examples, self.tokenizer, self.params)
        self.model = GroundingFinetuning(model)

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def collate(self, indices, epoch: int) -> dict:
        batch = self.data.collate_fn([self.data[i] for i in indices])
        bins = torch.stack([to_bins(relative_xyxy(self.examples[i]), self.bins) for i in indices])
        tk = self.tokenizer
        box_ids = torch.cat([torch.full((len(indices), 1), tk.cls_token_id), bins + self.first_coordinate,
                             torch.full((len(indices), 1), tk.sep_token_id)], dim=1)
        return {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "box_ids": box_ids}


def run_grounding_finetuning(params: Params, start_run: Path, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    return run_finetuning(GroundingTask(params, start_run, data_root, out_dir), out_dir, resume)


# ------------------------------------------------------------------------------------ inference
@torch.no_grad()
def predict_boxes(model: CopaModel, tokenizer, examples: Sequence[GroundingExample], params: Params,
                  batch_size: int = 64, progress: bool = True) -> Tensor:
    """(N, 4) relative x1 y1 x2 y2: greedy decoding over the coordinate tokens only."""
    bins = params.finetune.grounding.coordinate_bins
    first = tokenizer.convert_tokens_to_ids(coordinate_tokens(1)[0])
    if first == tokenizer.unk_token_id:
        raise ValueError("the run's vocabulary has no coordinate tokens: not a grounding run")
    data = _data(examples, tokenizer, params)
    out = []
    for start in tqdm(range(0, len(examples), batch_size), desc="grounding", disable=not progress):
        batch = data.collate_fn([data[i] for i in range(start, min(start + batch_size, len(examples)))])
        cond = condition(model, batch["image"], batch["input_ids"], batch["attention_mask"], guided=True)
        tokens = torch.full((len(batch["image"]), 1), tokenizer.cls_token_id)
        for _ in range(4):
            logits = model.decode(tokens, torch.ones_like(tokens), cond.image, cond.text, cond.text_mask)[:, -1]
            tokens = torch.cat([tokens, logits[:, first:first + bins].argmax(1, keepdim=True) + first], dim=1)
        out.append(from_bins(tokens[:, 1:] - first, bins))
    return torch.cat(out)


def centre_boxes(train: Sequence[GroundingExample], test: Sequence[GroundingExample]) -> Tensor:
    """The trivial baseline: a box of the mean relative training size, centred, as relative xyxy."""
    sizes = torch.stack([relative_xyxy(e) for e in train])
    w, h = (sizes[:, 2] - sizes[:, 0]).mean(), (sizes[:, 3] - sizes[:, 1]).mean()
    box = torch.tensor([0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2], dtype=torch.float64)
    return box.expand(len(test), 4)


def evaluate_grounding(model: CopaModel, tokenizer, params: Params, settings: GroundingEvalParams, data_root: Path, split: str | None = None,
                       batch_size: int = 64, progress: bool = True) -> tuple[dict, list[dict], str]:
    """(acc@0.5 per split with the centre-box baseline, predicted boxes per expression, a summary)."""
    layout = DataLayout(Path(data_root))
    train = grounding_examples(layout, TRAIN_SPLIT)
    record: dict = {"splits": {}}
    predictions: list[dict] = []
    for name in [split] if split else settings.splits:
        test = grounding_examples(layout, name)
        sizes = torch.tensor([[e.width, e.height] for e in test])
        truth = torch.tensor([e.box.as_list() for e in test], dtype=torch.float64)
        boxes = to_pixels_xywh(predict_boxes(model, tokenizer, test, params, batch_size, progress), sizes)
        centre = to_pixels_xywh(centre_boxes(train, test), sizes)
        record["splits"][name] = {"expressions": len(test), "acc@0.5": grounding_accuracy(boxes, truth),
                                  "mean_iou": box_iou(boxes, truth).mean().item(),
                                  "baselines": {"centre_box": grounding_accuracy(centre, truth),
                                                "centre_box_mean_iou": box_iou(centre, truth).mean().item()}}
        predictions += [{"split": name, "ref_id": e.ref_id, "sentence": e.sentence, "box": [round(v, 2) for v in b.tolist()]}
                        for e, b in zip(test, boxes)]
    summary = "grounding acc@0.5 " + ", ".join(f"{n} {r['acc@0.5']:.1f} (centre box {r['baselines']['centre_box']:.1f})"
                                               for n, r in record["splits"].items())
    return record, predictions, summary
