"""Image captioning (COPA §4.2, Table 1): no text to guide the TPD, so patches are selected by
image-[CLS] attention; the decoder writes the caption conditioned on the image fused with an
empty text ([CLS] [SEP]).

- Stage 1 (:class:`CaptionFinetuning`, task ``captioning``): cross-entropy on the Karpathy
  train (+ restval) captions.
- Stage 2 (:class:`CiderOptimisation`, task ``captioning_cider``): self-critical sequence
  training (Rennie et al. 2017) from the stage-1 run: sampled captions rewarded by CIDEr-D
  against the image's references (document frequencies of the training corpus), minus a
  baseline (the greedy caption's reward, or the mean of the other samples').
- Inference (:func:`evaluate_captioning`): beam search, then BLEU / METEOR / ROUGE-L / CIDEr (and
  SPICE when it can run) through pycocoevalcap, next to a constant-caption baseline.

Images are resized without crops or flips (the captions say "left of" and count objects).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from copa.config import CaptioningEvalParams, DecodingParams, Params
from copa.data.formats.karpathy import KarpathyImage, tokenize as words
from copa.data.heldout import TRAIN_SPLITS, karpathy_images
from copa.data.layout import DataLayout
from copa.data.pretrain_data import PairDataset
from copa.eval.captioning import caption_metrics
from copa.eval.cider import CiderD
from copa.models.copa import CopaModel
from copa.models.objectives.language import lm_loss
from copa.tasks.base import FinetuneTask, resized_pairs, run_finetuning
from copa.tasks.generation import condition, decode_text, generate, sample, sequence_log_probs, tokenize
from copa.train.finetune import FinetunedRun, start_from


def empty_prompt(tokenizer, batch: int) -> tuple[Tensor, Tensor]:
    """The text side of captioning: ``[CLS] [SEP]`` for every image."""
    ids, mask = tokenize(tokenizer, [""], 4)
    return ids.expand(batch, -1), mask.expand(batch, -1)


def _image_data(paths: Sequence[Path], tokenizer, params: Params) -> PairDataset:
    return resized_pairs(paths, [""] * len(paths), tokenizer, params, "karpathy")


def caption_condition(model: CopaModel, tokenizer, images: Tensor):
    return condition(model, images, *empty_prompt(tokenizer, images.shape[0]), guided=False)


# ------------------------------------------------------------------------------------ stage 1
class CaptionFinetuning(nn.Module):
    def __init__(self, model: CopaModel, tokenizer, label_smoothing: float):
        super().__init__()
        self.model, self.tokenizer, self.label_smoothing = model, tokenizer, label_smoothing

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images, input_ids / attention_mask (the target captions)."""
        m = self.model
        cond = caption_condition(m, self.tokenizer, batch["images"])
        logits = m.decode(batch["input_ids"], batch["attention_mask"], cond.image, cond.text, cond.text_mask)
        return {"loss": lm_loss(logits, batch["input_ids"], batch["attention_mask"], self.label_smoothing)}


class CaptioningTask(FinetuneTask):
    name = "captioning"

    def __init__(self, params: Params, start_run: Path, data_root: Path, out_dir: Path):
        model, self.params, self.tokenizer = start_from(start_run, params, out_dir, self.name)
        images = karpathy_images(DataLayout(Path(data_root)), self.settings.dataset, TRAIN_SPLITS)
        captions = [(im.path, text) for im in images for text in im.sentences]
        self.data = resized_pairs([c[0] for c in captions], [c[1] for c in captions], self.tokenizer, self.params, "karpathy")
        self.model = CaptionFinetuning(model, self.tokenizer, self.settings.label_smoothing)

    @property
    def n_examples(self) -> int:
        return len(self.data)

    def collate(self, indices, epoch: int) -> dict:
        batch = self.data.collate_fn([self.data[i] for i in indices])
        return {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


# ------------------------------------------------------------------------------------ stage 2
class CiderOptimisation(nn.Module):
    def __init__(self, model: CopaModel, tokenizer, references: Sequence[Sequence[str]], samples: int, baseline: str, max_length: int):
        """``references``: each training image's reference captions, tokenized (words joined by spaces)."""
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.references, self.cider = references, CiderD(references)
        self.samples, self.baseline, self.max_length = samples, baseline, max_length

    def rewards(self, sequences: Sequence[Sequence[int]], images: Sequence[int]) -> Tensor:
        captions = [" ".join(words(decode_text(self.tokenizer, seq))) for seq in sequences]
        return torch.tensor([self.cider.score(c, self.references[i]) for c, i in zip(captions, images)])

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images, image_index (into ``references``) and seed (the samples' draw)."""
        m, n = self.model, self.samples
        images, index = batch["images"], batch["image_index"].tolist()
        generator = torch.Generator(device="cpu").manual_seed(int(batch["seed"]))
        cond = caption_condition(m, self.tokenizer, images)
        was_training = m.training
        m.eval()  # sampling and the greedy baseline without dropout
        with torch.no_grad():
            frozen = caption_condition(m, self.tokenizer, images)
            ids, mask = sample(m, frozen, self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, n, self.max_length, generator)
            greedy = generate(m, frozen, self.tokenizer, DecodingParams(1, self.max_length, 1, 0.0)) if self.baseline == "greedy" else None
        m.train(was_training)
        rows = [i for i in index for _ in range(n)]
        reward = self.rewards([row[1:int(length)].tolist() for row, length in zip(ids, mask.sum(1))], rows)
        if greedy is not None:
            baseline = self.rewards(greedy, index).repeat_interleave(n)
        else:  # the mean reward of the image's other samples
            per_image = reward.view(-1, n)
            baseline = ((per_image.sum(1, keepdim=True) - per_image) / max(n - 1, 1)).reshape(-1)
        advantage = (reward - baseline).to(images.device)
        logp = sequence_log_probs(m, cond.select(torch.arange(len(index), device=images.device).repeat_interleave(n)), ids, mask)
        loss = -(advantage * logp).mean()
        return {"loss": loss, "reward": reward.mean(), "baseline_reward": baseline.mean(),
                "sample_length": (mask.sum(1) - 1).float().mean()}


class CiderTask(FinetuneTask):
    name = "captioning_cider"

    def __init__(self, params: Params, start_run: Path, data_root: Path, out_dir: Path):
        model, self.params, self.tokenizer = start_from(start_run, params, out_dir, self.name)
        self.images = karpathy_images(DataLayout(Path(data_root)), self.params.finetune.captioning.dataset, TRAIN_SPLITS)
        self.data = _image_data([im.path for im in self.images], self.tokenizer, self.params)
        references = [[" ".join(words(s)) for s in im.sentences] for im in self.images]
        s = self.settings
        self.model = CiderOptimisation(model, self.tokenizer, references, s.samples, s.baseline, s.max_length)

    @property
    def n_examples(self) -> int:
        return len(self.images)

    def collate(self, indices, epoch: int) -> dict:
        batch = self.data.collate_fn([self.data[i] for i in indices])
        return {"images": batch["image"], "image_index": torch.tensor(list(indices))}


def run_captioning_finetuning(params: Params, start_run: Path, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    return run_finetuning(CaptioningTask(params, start_run, data_root, out_dir), out_dir, resume)


def run_cider_optimisation(params: Params, start_run: Path, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    return run_finetuning(CiderTask(params, start_run, data_root, out_dir), out_dir, resume)


# ------------------------------------------------------------------------------------ inference
@torch.no_grad()
def write_captions(model: CopaModel, tokenizer, images: Sequence[KarpathyImage], params: Params, settings: DecodingParams,
                   batch_size: int = 64, progress: bool = True) -> list[str]:
    data = _image_data([im.path for im in images], tokenizer, params)
    out: list[str] = []
    for start in tqdm(range(0, len(images), batch_size), desc="captions", disable=not progress):
        batch = data.collate_fn([data[i] for i in range(start, min(start + batch_size, len(images)))])
        cond = caption_condition(model, tokenizer, batch["image"])
        out += [decode_text(tokenizer, seq) for seq in generate(model, cond, tokenizer, settings)]
    return out


def constant_caption(images: Sequence[KarpathyImage]) -> str:
    """The trivial baseline: the most frequent training caption (the first of the most frequent)."""
    return Counter(s for im in images for s in im.sentences).most_common(1)[0][0]


def evaluate_captioning(run: FinetunedRun, settings: CaptioningEvalParams, data_root: Path, split: str,
                        batch_size: int = 64, progress: bool = True) -> tuple[dict, list[dict], str]:
    """(metrics record, captions in the COCO result format, a one-line summary)."""
    model, params, tokenizer = run.model, run.params, run.tokenizer
    layout = DataLayout(Path(data_root))
    dataset = params.finetune.captioning.dataset
    test = karpathy_images(layout, dataset, (split,))
    captions = write_captions(model, tokenizer, test, params, settings, batch_size, progress)
    references = {im.imgid: im.sentences for im in test}
    constant = constant_caption(karpathy_images(layout, dataset, TRAIN_SPLITS))
    sets = {"model": {im.imgid: c for im, c in zip(test, captions)}, "constant": {im.imgid: constant for im in test}}
    metrics = caption_metrics(sets, references, spice=("model",) if settings.spice else ())
    scores, baseline = metrics["model"], metrics["constant"]
    record = {"split": f"{dataset} Karpathy {split}", "beam_size": settings.beam_size,
              "max_length": settings.max_length, **scores, "baselines": {"constant_caption": {"caption": constant, **baseline}}}
    results = [{"image_id": im.cocoid if im.cocoid is not None else im.imgid, "caption": c} for im, c in zip(test, captions)]
    summary = (f"captioning BLEU-4 {100 * scores['bleu_4']:.1f} CIDEr {100 * scores['cider']:.1f}; constant caption "
               f"BLEU-4 {100 * baseline['bleu_4']:.1f} CIDEr {100 * baseline['cider']:.1f}")
    return record, results, summary
