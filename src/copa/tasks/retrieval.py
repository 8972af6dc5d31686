"""Image-text retrieval (COPA §4.2, Appendix E): fine-tuning with ITC + ITM, two-stage inference.

- Fine-tuning (:class:`RetrievalFinetuning`): ITC on text-free image features (selection by
  image-[CLS] attention, the features the coarse stage ranks with) against the text [CLS]
  features, in-batch (the captions of one image are not each other's negatives); ITM on the
  positives and one hard negative per image and per text, each pair's image encoded with the TPD
  guided by that pair's text (the features the re-ranking stage uses). Loss = ITC + ITM.
- Inference (:func:`evaluate_retrieval`): coarse similarities of all images and texts, then the
  top ``k`` candidates of every query re-scored by ITM's positive probability with text-guided
  image features (:func:`copa.eval.retrieval.two_stage_scores`); TR / IR R@1/5/10 and their mean.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from copa.config import Params
from copa.data.heldout import TRAIN_SPLITS, RetrievalSet, karpathy_images, karpathy_retrieval_set
from copa.data.layout import DataLayout
from copa.data.pretrain_data import Pair, PairDataset
from copa.eval.retrieval import chance_recalls, retrieval_recall, two_stage_scores
from copa.models.copa import CopaModel
from copa.models.objectives import contrastive_loss, itm_loss, itm_pairs, sample_hard_negatives
from copa.train.engine import EngineConfig, epoch_length, train
from copa.train.finetune import start_from_pretraining
from copa.train.schedule import param_groups, warmup_cosine_lambda


class RetrievalFinetuning(nn.Module):
    def __init__(self, model: CopaModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images, input_ids, attention_mask, image_ids (B,) and seed (the negatives' draw)."""
        m = self.model
        images, ids, mask, image_ids = batch["images"], batch["input_ids"], batch["attention_mask"], batch["image_ids"]
        generator = torch.Generator(device="cpu").manual_seed(int(batch["seed"]))
        text = m.encode_text(ids, mask)  # (B, L, H)
        image_free = m.encode_image(images, None, use_detector=False)["tokens"]
        temperature = m.temperature()
        image_feat, text_feat = m.image_feature(image_free), m.text_feature(text)
        itc = contrastive_loss(image_feat, text_feat, temperature, ids=image_ids)
        with torch.no_grad():
            sim = image_feat @ text_feat.t() / temperature
        neg_text, neg_image = sample_hard_negatives(sim.cpu(), sim.t().cpu(), generator, ids=image_ids.cpu())
        image_idx, text_idx, labels = (t.to(images.device) for t in itm_pairs(neg_text, neg_image))
        itm_image = m.encode_image(images[image_idx], text[text_idx, 0], use_detector=True)["tokens"]
        _, fused = m.fuse(itm_image, text[text_idx], mask[text_idx])
        itm = itm_loss(m.itm_logits(fused), labels)
        return {"loss": itc + itm, "itc": itc.detach(), "itm": itm.detach(), "temperature": temperature.detach(),
                "itm_examples": torch.tensor(float(len(labels)))}


def training_pairs(layout: DataLayout, dataset: str) -> tuple[list[Pair], list[int]]:
    """Every caption of the Karpathy train (+ restval) images, with its image's index."""
    pairs, image_ids = [], []
    for index, image in enumerate(karpathy_images(layout, dataset, TRAIN_SPLITS)):
        pairs += [Pair(image.path, text, dataset) for text in image.sentences]
        image_ids += [index] * len(image.sentences)
    return pairs, image_ids


class RetrievalTask:
    """The engine's Task: batches of (image, caption) pairs drawn from a permutation seeded by
    (seed, epoch), so any number of processes sees the same global batches and resume is exact."""

    def __init__(self, params: Params, pretrain_run: Path, data_root: Path, out_dir: Path):
        model, self.params, self.tokenizer = start_from_pretraining(pretrain_run, params, out_dir)
        self.settings = self.params.finetune.retrieval
        self.pairs, self.image_ids = training_pairs(DataLayout(Path(data_root)), self.settings.dataset)
        size, length = self.params.patch_labels.image_size, self.params.model.max_text_length
        self.data = PairDataset(self.pairs, self.tokenizer, size, length, self.params.seed)
        self.model = RetrievalFinetuning(model)

    def param_groups(self) -> list[dict]:
        s = self.settings
        return param_groups(self.model.named_parameters(), ("model.vision.",), s.lr_vision, s.lr_text, s.weight_decay)

    def steps_per_epoch(self, world_size: int) -> int:
        s = self.settings
        return epoch_length(s.steps_per_epoch, len(self.pairs), s.batch_size, "finetune.retrieval.steps_per_epoch")

    def batches(self, epoch: int, rank: int, world_size: int, start: int) -> Iterator[dict]:
        s = self.settings
        if s.batch_size % world_size:
            raise ValueError(f"finetune.retrieval.batch_size {s.batch_size} does not split over {world_size} processes")
        per_rank = s.batch_size // world_size
        order = np.random.default_rng([self.params.seed, epoch]).permutation(len(self.data))
        self.data.set_epoch(epoch)
        for step in range(start, self.steps_per_epoch(world_size)):
            idx = order[step * s.batch_size + rank * per_rank:][:per_rank]
            batch = self.data.collate_fn([self.data[int(i)] for i in idx])
            yield {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                   "image_ids": torch.tensor([self.image_ids[int(i)] for i in idx]),
                   "seed": int(np.random.default_rng([self.params.seed, epoch, step, rank]).integers(2**31))}

    def after_step(self, model, step: int) -> None:
        pass


def run_retrieval_finetuning(params: Params, pretrain_run: Path, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    task = RetrievalTask(params, pretrain_run, data_root, out_dir)
    s = task.settings
    total = s.epochs * task.steps_per_epoch(int(os.environ.get("WORLD_SIZE", 1)))
    lambdas = [warmup_cosine_lambda(g["lr"], s.warmup_steps, total, s.min_lr) for g in task.param_groups()]
    config = EngineConfig(epochs=s.epochs, lr_lambda=lambdas, checkpoint_every=s.checkpoint_every, seed=task.params.seed)
    return train(task, config, out_dir, task.params.to_dict(), resume=resume)


# ------------------------------------------------------------------------------------ inference
@torch.no_grad()
def encode_retrieval_set(model: CopaModel, tokenizer, data: RetrievalSet, image_size: int, max_length: int,
                         batch_size: int = 64, progress: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Images (n_images, 3, S, S), text-free image features (n_images, E), text states (n_texts, L, H),
    text masks (n_texts, L) and text features (n_texts, E) of a retrieval set."""
    images_only = PairDataset([Pair(path, "", "karpathy") for path in data.images], tokenizer, image_size, max_length, seed=0, train=False)
    images = torch.stack([images_only[i]["image"] for i in tqdm(range(len(images_only)), desc="images", disable=not progress)])
    image_feats = torch.cat([model.image_feature(model.encode_image(images[i:i + batch_size], None, use_detector=False)["tokens"])
                             for i in range(0, len(images), batch_size)])
    enc = tokenizer(list(data.texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    states = torch.cat([model.encode_text(enc["input_ids"][i:i + batch_size], enc["attention_mask"][i:i + batch_size])
                        for i in range(0, len(data.texts), batch_size)])
    return images, image_feats, states, enc["attention_mask"], model.text_feature(states)


@torch.no_grad()
def evaluate_retrieval(model: CopaModel, tokenizer, data: RetrievalSet, k: int, image_size: int, max_length: int,
                       batch_size: int = 64, progress: bool = True) -> dict:
    """Two-stage R@K of COPA Appendix E, the coarse stage's own R@K, and random ranking's (the
    trivial baseline)."""
    images, image_feats, states, masks, text_feats = encode_retrieval_set(model, tokenizer, data, image_size, max_length, batch_size, progress)
    coarse = image_feats @ text_feats.t()
    pairs = min(k, len(states)) * len(images) + min(k, len(images)) * len(states)
    bar = tqdm(desc="ITM re-ranking", total=pairs, disable=not progress)

    def itm_scores(image_idx: Tensor, text_idx: Tensor) -> Tensor:
        out = []
        for i in range(0, len(image_idx), batch_size):
            im, tx = image_idx[i:i + batch_size], text_idx[i:i + batch_size]
            tokens = model.encode_image(images[im], states[tx, 0], use_detector=True)["tokens"]
            _, fused = model.fuse(tokens, states[tx], masks[tx])
            out.append(model.itm_logits(fused).softmax(dim=-1)[:, 1])
            bar.update(len(im))
        return torch.cat(out)

    i2t, t2i = two_stage_scores(coarse, k, itm_scores)
    bar.close()
    return {"images": len(images), "texts": len(states), "k_test": k,
            **retrieval_recall(i2t, data.text_image, sim_t2i=t2i),
            "coarse": retrieval_recall(coarse, data.text_image),
            "chance": chance_recalls(len(images), len(states))}


def evaluation_set(data_root: Path, params: Params, split: str = "test") -> RetrievalSet:
    return karpathy_retrieval_set(DataLayout(Path(data_root)), params.finetune.retrieval.dataset, split)
