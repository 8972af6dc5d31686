"""Initial vision and text encoders for pretraining from scratch (``pretrain.encoder_init``).

COPA starts from CLIP ViT-B/16 and BERT-base (§4.1), and ALBEF-style ITC assumes encoders whose
features already tell inputs apart. From random weights they do not: in the demo model every
image's ITC feature had cosine > 0.997 with every other's and Algorithm 1's ITC sat at ln(batch)
for 280 steps (measured; our unmeasured reading: the gradient through near-identical features
is small next to the four other losses). Where no checkpoint exists, ``contrastive`` stands in for those weights: a
short stage of in-batch image-text contrastive learning (CLIP's symmetric InfoNCE, image
features text-free) on the same pairs trains the encoders, their projections and the
temperature; pretraining then starts from them. It runs through the training engine into
``<run>/encoder_init/`` (checkpoints, DVCLive, resume), with a constant learning rate.
``checkpoints`` loads the real weights: a timm ViT state dict into the vision encoder, a BERT
state dict into the text encoder and the fusion layers (COPA §4.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from copa.config import DOWNSTREAM_SECTIONS, Params
from copa.models.copa import CopaModel
from copa.models.objectives import contrastive_loss
from copa.models.text import load_bert_weights
from copa.models.vit import load_timm_checkpoint
from copa.models.weights import read_state_dict
from copa.train.engine import EngineConfig, train

INIT_DIR = "encoder_init"
INIT_PARTS = ("vision", "text", "vision_proj", "text_proj", "temperature")


class ContrastiveEncoders(nn.Module):
    """The unimodal parts of a :class:`CopaModel` (shared, not copied) under the contrastive loss."""

    def __init__(self, model: CopaModel):
        super().__init__()
        self.parts = nn.ModuleDict({name: getattr(model, name) for name in INIT_PARTS})

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        p = self.parts
        text = p["text"](batch["input_ids"], batch["attention_mask"])  # (B, L, H)
        image = p["vision"](batch["images"], None, use_detector=False)["tokens"]  # text-free selection
        temperature = p["temperature"]()
        # the [CLS] features ITC uses (CopaModel.image_feature / text_feature; normalised in the loss)
        loss = contrastive_loss(p["vision_proj"](image[:, 0]), p["text_proj"](text[:, 0]), temperature)
        return {"loss": loss, "contrastive": loss.detach(), "temperature": temperature.detach()}


class ContrastiveInitTask:
    """The engine's Task: ``steps`` steps, one epoch, on batches of the pretraining pairs."""

    def __init__(self, model: CopaModel, pair_data, params: Params):
        self.model, self.pair_data, self.params = ContrastiveEncoders(model), pair_data, params

    def param_groups(self) -> list[dict]:
        init = self.params.pretrain.encoder_init
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": init.lr,
                 "weight_decay": self.params.pretrain.weight_decay, "name": "encoders"}]

    def steps_per_epoch(self, world_size: int) -> int:
        return self.params.pretrain.encoder_init.steps

    def batches(self, epoch: int, rank: int, world_size: int, start: int) -> Iterator[dict]:
        p = self.params.pretrain
        if p.batch_size % world_size:
            raise ValueError(f"batch size {p.batch_size} does not split over {world_size} processes")
        per_rank = p.batch_size // world_size
        order = np.random.default_rng([self.params.seed, epoch, 1]).permutation(len(self.pair_data))  # its own stream
        self.pair_data.set_epoch(epoch)
        for step in range(start, self.steps_per_epoch(world_size)):
            first = (step * p.batch_size + rank * per_rank) % len(order)  # cycles if steps x batch > pairs
            idx = np.take(order, range(first, first + per_rank), mode="wrap")
            batch = self.pair_data.collate_fn([self.pair_data[int(i)] for i in idx])
            yield {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def after_step(self, model, step: int) -> None:
        pass


def initialise_encoders(model: CopaModel, pair_data, params: Params, out_dir: Path) -> dict | None:
    """Run ``pretrain.encoder_init`` on ``model`` in place; returns the contrastive stage's last
    metrics, or what ``checkpoints`` loaded (None for ``none``). A finished contrastive stage is
    not redone: the engine resumes it at its end."""
    init = params.pretrain.encoder_init
    given = {name: getattr(init, name) for name in ("vision_checkpoint", "text_checkpoint") if getattr(init, name)}
    if init.method != "checkpoints" and given:
        raise ValueError(f"pretrain.encoder_init.{next(iter(given))} is set but method is {init.method!r}: "
                         "set method=checkpoints to load it, or the path to null")
    if init.method == "none":
        return None
    if init.method == "checkpoints":
        return load_encoder_checkpoints(model, init.vision_checkpoint, init.text_checkpoint)
    task = ContrastiveInitTask(model, pair_data, params)
    # the TPD's MLP gets no gradient here (text-free): DDP must not wait for it
    config = EngineConfig(epochs=1, checkpoint_every=max(init.steps, 1), seed=params.seed, find_unused_parameters=True,
                          resume_ignores=DOWNSTREAM_SECTIONS)
    return train(task, config, Path(out_dir) / INIT_DIR, params.to_dict())


def load_encoder_checkpoints(model: CopaModel, vision: str | None, text: str | None) -> dict:
    """The ViT from a timm state dict, the text encoder and fusion from a BERT one (either may be
    None, not both); returns what was loaded, with the fusion parameters BERT has no weights for."""
    if not vision and not text:
        raise ValueError("pretrain.encoder_init.method is 'checkpoints' but neither vision_checkpoint nor text_checkpoint is set")
    loaded: dict = {}
    if vision:
        load_timm_checkpoint(model.vision, vision)
        loaded["vision_checkpoint"] = str(vision)
    if text:
        fresh = load_bert_weights(model.text, model.fusion, read_state_dict(text))
        loaded.update(text_checkpoint=str(text), fusion_parameters_not_in_bert=len(fresh))
    return loaded
