"""Initial vision and text encoders for pretraining from scratch (``pretrain.encoder_init``).

COPA starts from CLIP ViT-B/16 and BERT-base (§4.1), and ALBEF-style ITC assumes encoders whose
features already tell inputs apart. From random weights they do not: in the demo model every
image's ITC feature had cosine > 0.997 with every other's and Algorithm 1's ITC sat at ln(batch)
for 280 steps (measured; our unmeasured reading: the gradient through near-identical features
is small next to the four other losses). Where no checkpoint exists, ``contrastive`` stands in for those weights: a
short stage of in-batch image-text contrastive learning (CLIP's symmetric InfoNCE, image
features text-free) on the same pairs trains the encoders, their projections and the
temperature; pretraining then starts from them. With ``objective: captions_and_boxes`` it also
contrasts boxes with their texts (X-VLM's visual concepts, papers/001: a box's feature is the mean of
the ViT's last patch tokens that PTA's labels mark for it: inside it, and under ``pta_labels:
same_text`` inside the image's other boxes of the same text) over PTA's object stream: the patch tokens then have to say
what lies under them and where (the world's shapes, which the captions alone did not teach the demo's
ViT; docs/issue-23-findings.md). Like CLIP, the stage selects no patches: it trains a
selection-free copy of the model (same sizes, vocabulary and seed), whose encoders are then copied
into the run's (the selector's own weights, the TPD's MLP, start fresh). So every run of a profile
and seed can share one stage (the workflow's ``encoder_init`` rule, ``copa encoder-init``); by
default a run trains its own in ``<run>/encoder_init/``. It runs through the training engine
(checkpoints, DVCLive, resume), with a constant learning rate.
``checkpoints`` loads the real weights: a timm ViT state dict into the vision encoder, a BERT
state dict into the text encoder and the fusion layers (COPA §4.1).
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from copa.config import Params
from copa.data.pretrain_data import model_inputs
from copa.models.bert_init import load_bert_decoder_weights, load_bert_weights
from copa.models.copa import CopaModel
from copa.models.objectives.itc import contrastive_loss
from copa.models.pretraining import CopaPretraining
from copa.models.vit import load_timm_checkpoint
from copa.models.weights import load_tensors, read_state_dict
from copa.train.build import copa_spec, require_encoder
from copa.train.encoder_init_params import encoder_init_params, reads_boxes
from copa.train.engine import EngineConfig, changed_params, seed_everything, train
from copa.train.schedule import VIT_NO_DECAY, param_groups

INIT_DIR = "encoder_init"
VOCAB_DIR = "vocab"
INIT_PARTS = ("vision", "text", "vision_proj", "text_proj", "temperature")


def box_features(patch_tokens: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """X-VLM's concept [CLS]: the mean of the patch tokens (B, N, D) that a box's labels (B, N) mark
    (a row marking none gets zeros, kept finite by the loss's normalisation)."""
    weights = patch_labels.to(patch_tokens.dtype)
    return (patch_tokens * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)  # (B, D)


class ContrastiveEncoders(nn.Module):
    """The unimodal parts of a :class:`CopaModel` (shared, not copied) under the contrastive loss:
    images against their captions, and with a batch's ``boxes`` those against their texts too."""

    def __init__(self, model: CopaModel):
        super().__init__()
        self.parts = nn.ModuleDict({name: getattr(model, name) for name in INIT_PARTS})

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        p = self.parts
        text = p["text"](batch["input_ids"], batch["attention_mask"])  # (B, L, H)
        image = p["vision"](batch["images"], None, use_detector=False)["tokens"]  # text-free selection
        temperature = p["temperature"]()
        # the [CLS] features ITC uses (CopaModel.image_feature / text_feature; normalised in the loss)
        captions = contrastive_loss(p["vision_proj"](image[:, 0]), p["text_proj"](text[:, 0]), temperature)
        out = {"loss": captions, "contrastive": captions.detach(), "temperature": temperature.detach()}
        if "boxes" in batch:  # same projections and temperature: a box and a whole image live in one space
            boxes = batch["boxes"]
            box_text = p["text"](boxes["input_ids"], boxes["attention_mask"])
            patches = p["vision"](boxes["images"], None, use_detector=False)["tokens"][:, 1:]  # (B, N, D): nothing selected
            box_loss = contrastive_loss(p["vision_proj"](box_features(patches, boxes["patch_labels"])),
                                        p["text_proj"](box_text[:, 0]), temperature)
            out.update(loss=captions + box_loss, box_contrastive=box_loss.detach())
        return out


class ContrastiveInitTask:
    """The engine's Task: ``steps`` steps, one epoch, on batches of the pretraining pairs (and, with
    ``box_data``, of pretrain.object_batch_size boxes drawn as Algorithm 1 draws PTA's)."""

    def __init__(self, model: CopaModel, pair_data, params: Params, box_data=None):
        self.model, self.pair_data, self.params, self.box_data = ContrastiveEncoders(model), pair_data, params, box_data

    def param_groups(self) -> list[dict]:
        init = self.params.pretrain.encoder_init  # one rate; decay as in pretraining (none on biases, norms, VIT_NO_DECAY)
        return param_groups(self.model.named_parameters(), (), init.lr, init.lr, self.params.pretrain.weight_decay, VIT_NO_DECAY)

    def steps_per_epoch(self, world_size: int) -> int:
        return self.params.pretrain.encoder_init.steps

    def batches(self, epoch: int, rank: int, world_size: int, start: int) -> Iterator[dict]:
        p = self.params.pretrain
        if p.batch_size % world_size or (self.box_data is not None and p.object_batch_size % world_size):
            raise ValueError(f"batch sizes {p.batch_size} / {p.object_batch_size} do not split over {world_size} processes")
        per_rank, boxes_per_rank = p.batch_size // world_size, p.object_batch_size // world_size
        order = np.random.default_rng([self.params.seed, epoch, 1]).permutation(len(self.pair_data))  # its own stream
        box_order = np.random.default_rng([self.params.seed, epoch, 2]).permutation(len(self.box_data)) if self.box_data else None
        self.pair_data.set_epoch(epoch)
        for step in range(start, self.steps_per_epoch(world_size)):
            first = (step * p.batch_size + rank * per_rank) % len(order)  # cycles if steps x batch > pairs
            idx = np.take(order, range(first, first + per_rank), mode="wrap")
            batch = model_inputs(self.pair_data.collate_fn([self.pair_data[int(i)] for i in idx]))
            if box_order is not None:  # every rank draws the whole batch and takes its slice
                draw = np.random.default_rng([self.params.seed, epoch, step, 2])
                images, elems, seeds = self.box_data.draw(box_order, step, p.object_batch_size, draw)
                mine = slice(rank * boxes_per_rank, (rank + 1) * boxes_per_rank)
                batch["boxes"] = model_inputs(self.box_data.batch(images[mine], elems[mine], seeds[mine]))
            yield batch

    def after_step(self, model, step: int) -> None:
        pass


def selection_free(params: Params) -> Params:
    selection = dataclasses.replace(params.model.selection, method="none", keep_ratio=1.0)
    return dataclasses.replace(params, model=dataclasses.replace(params.model, selection=selection))


def train_contrastive_encoders(params: Params, pair_data, vocab_file: Path, init_dir: Path, box_data=None,
                               read_finished: bool = True) -> tuple[CopaModel, dict]:
    """The contrastive stage in ``init_dir``: a selection-free model of the run's sizes and
    vocabulary (``vocab_file``, copied into ``init_dir/vocab/``), read from the folder when the
    stage has finished there (``read_finished``), trained (or resumed: the engine rewrites the
    stage's metrics at its end, what a rerun of `copa encoder-init` must do) otherwise.
    ``box_data``: PTA's object images (an ObjectDataset), which ``captions_and_boxes`` trains on."""
    init = params.pretrain.encoder_init
    require_encoder(params, "the contrastive encoder init")
    if init.method != "contrastive":
        raise ValueError(f"pretrain.encoder_init.method is {init.method!r}: the contrastive stage runs for 'contrastive' only")
    kept = Path(init_dir) / VOCAB_DIR / "vocab.txt"
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vocab_file, kept)
    elif not filecmp.cmp(kept, vocab_file, shallow=False):
        raise ValueError(f"{kept}: the encoder init was trained with another vocabulary than {vocab_file}")
    seed_everything(params.seed)  # the stage's initial weights
    model = CopaModel(copa_spec(selection_free(params), len(pair_data.tokenizer)))
    finished = finished_stage(params, init_dir) if read_finished else None
    if finished is not None:  # read only: runs sharing the stage may start side by side
        ContrastiveEncoders(model).load_state_dict(finished["model"])
        return model, finished["metrics"]
    if reads_boxes(params) and box_data is None:
        raise ValueError(f"pretrain.encoder_init.objective is {init.objective!r}: the encoder init needs the filtered annotations "
                         "(copa encoder-init --annotations DIR)")
    config = EngineConfig(epochs=1, checkpoint_every=max(init.steps, 1), seed=params.seed)
    task = ContrastiveInitTask(model, pair_data, params, box_data if reads_boxes(params) else None)
    return model, train(task, config, init_dir, encoder_init_params(params))


def finished_stage(params: Params, init_dir: Path) -> dict | None:
    """The last checkpoint of a contrastive stage that ran all its steps under ``params``; None when
    there is none yet (or it stopped early: the engine then resumes it). A finished stage of other
    parameters is an error naming the keys."""
    last = Path(init_dir) / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    ckpt = load_tensors(last)
    expected = json.loads(json.dumps(encoder_init_params(params)))  # as the checkpoint stores it
    changed = changed_params(expected, ckpt["resolved_params"])
    if changed:
        raise ValueError(f"{last}: the encoder init was trained with other parameters (differing keys: {changed}); "
                         f"delete {init_dir} to train it again")
    return ckpt if ckpt["step"] >= params.pretrain.encoder_init.steps else None


def copy_encoders(source: CopaModel, target: CopaModel) -> None:
    """The contrastive stage's parts into a run's model; only the selector may lack weights."""
    for name in INIT_PARTS:
        missing, unexpected = getattr(target, name).load_state_dict(getattr(source, name).state_dict(), strict=False)
        missing = [key for key in missing if not key.startswith("selector.")]
        if missing or unexpected:
            raise ValueError(f"encoder init: the run's {name} does not match the stage's (missing {missing}, unexpected {unexpected})")


def initialise_encoders(model: CopaModel, pair_data, params: Params, init_dir: Path, vocab_file: Path | None = None,
                        box_data=None) -> dict | None:
    """Run ``pretrain.encoder_init`` for ``model`` (in place); returns the contrastive stage's last
    metrics, or what ``checkpoints`` loaded (None for ``none``). ``init_dir``: the contrastive
    stage's folder, a run's own or one shared by the runs of a profile and seed; a finished stage
    is only read. ``box_data``: see :func:`train_contrastive_encoders`."""
    init = params.pretrain.encoder_init
    given = {name: getattr(init, name) for name in ("vision_checkpoint", "text_checkpoint") if getattr(init, name)}
    if init.method != "checkpoints" and given:
        raise ValueError(f"pretrain.encoder_init.{next(iter(given))} is set but method is {init.method!r}: "
                         "set method=checkpoints to load it, or the path to null")
    if init.method == "none":
        return None
    if init.method == "checkpoints":
        return load_encoder_checkpoints(model, init.vision_checkpoint, init.text_checkpoint, init.decoder_from_text_checkpoint)
    if vocab_file is None:
        raise ValueError("the contrastive encoder init needs the run's vocabulary file")
    trained, metrics = train_contrastive_encoders(params, pair_data, vocab_file, init_dir, box_data)
    copy_encoders(trained, model)
    return metrics


def initialise_copa(step: CopaPretraining, params: Params, pair_data, vocab_file: Path, init_dir: Path,
                    box_data=None) -> dict | None:
    """The dual-stream architecture's start before Algorithm 1 (copa.train.architectures):
    ``pretrain.encoder_init`` for its model, then the momentum encoders as copies of the result."""
    metrics = initialise_encoders(step.model, pair_data, params, init_dir, vocab_file, box_data)
    if metrics is not None:
        step.sync_momentum()
    return metrics


def load_encoder_checkpoints(model: CopaModel, vision: str | None, text: str | None, decoder_from_text: bool = True) -> dict:
    """The ViT from a timm state dict, the text encoder and fusion from a BERT one (either may be
    None, not both), and with ``decoder_from_text`` the decoder from the same BERT (mPLUG's); returns
    what was loaded, with the parameters BERT has no weights for."""
    if not vision and not text:
        raise ValueError("pretrain.encoder_init.method is 'checkpoints' but neither vision_checkpoint nor text_checkpoint is set")
    loaded: dict = {}
    if vision:
        load_timm_checkpoint(model.vision, vision)
        loaded["vision_checkpoint"] = str(vision)
    if text:
        bert = read_state_dict(text)
        fresh = load_bert_weights(model.text, model.fusion, bert)
        loaded.update(text_checkpoint=str(text), fusion_parameters_not_in_bert=len(fresh))
        if decoder_from_text:
            loaded["decoder_parameters_not_in_bert"] = len(load_bert_decoder_weights(model.decoder, bert))
    return loaded
