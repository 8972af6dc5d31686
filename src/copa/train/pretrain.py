"""``copa pretrain``: Algorithm 1 of COPA driven by the training engine.

:class:`PretrainTask` is the engine's :class:`~copa.train.engine.Task`: each step takes a
global batch of image-text pairs and one of object samples (every image with boxes; COPA: ~5% of
its images have them), drawn from generators seeded by (seed, epoch[, step]), so any number of
processes sees the same global batches and a resumed run continues exactly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from copa.config import DOWNSTREAM_SECTIONS, Params, UserError, params_from_dict
from copa.data.formats.records import FormatError, load_json
from copa.data.layout import DataLayout
from copa.data.pretrain_data import (ObjectDataset, PairDataset, image_text_pairs, labelled_elems, model_inputs, object_samples,
                                     pair_image_ids)
from copa.data.tokenizer import load_tokenizer, train_wordpiece
from copa.models.weights import load_tensors
from copa.train.architectures import architecture, resolve
from copa.train.encoder_init import INIT_DIR, VOCAB_DIR, train_contrastive_encoders
from copa.train.encoder_init_params import reads_boxes
from copa.train.engine import RESOLVED_FILE, EngineConfig, epoch_length, seed_everything, train
from copa.train.schedule import model_param_groups, warmup_cosine_lambda

# In a fine-tuning run folder (copa.train.finetune): which checkpoint it started from. A run folder
# without it is a pretraining run's.
PRETRAINED_FILE = "pretrained.json"


class PairSource:
    """The pretraining pairs of a data root, their vocabulary (written to ``<out_dir>/vocab/``) and
    their dataset: what Algorithm 1 and its contrastive encoder init both train on."""

    def __init__(self, params: Params, data_root: Path, out_dir: Path):
        p = params.pretrain
        self.pairs = image_text_pairs(DataLayout(Path(data_root)), p.pair_sources)
        if not self.pairs:
            raise ValueError(f"{data_root}: no image-text pairs for the sources {', '.join(p.pair_sources)}")
        self.vocab_file = Path(out_dir) / VOCAB_DIR / "vocab.txt"
        if params.model.vocab_file:  # a given vocabulary (bert-base-uncased's with BERT weights), kept with the run
            self.vocab_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_existing(params.model.vocab_file, "model.vocab_file"), self.vocab_file)
        elif not self.vocab_file.exists():  # a vocabulary of the run's own captions (deterministic; kept with the run)
            train_wordpiece([pair.text for pair in self.pairs], params.model.vocab_size, self.vocab_file.parent)
        self.tokenizer = load_tokenizer(self.vocab_file)
        self.pair_data = PairDataset(self.pairs, self.tokenizer, params.patch_labels.image_size, params.model.max_text_length, params.seed)


def object_dataset(params: Params, annotations: Path, data_root: Path, tokenizer) -> ObjectDataset:
    """The object images of the filtered ``annotations`` as PTA reads them (and the contrastive
    encoder init's box-text pairs, ``pretrain.encoder_init.objective``)."""
    objects = object_samples(annotations, data_root)
    if not objects:
        raise ValueError(f"{annotations}: no object images for PTA (the filtered files list no image with a kept box)")
    size, patch, length = params.patch_labels.image_size, params.patch_labels.patch_size, params.model.max_text_length
    return ObjectDataset(objects, tokenizer, size, patch, length, params.seed, params.patch_labels.min_overlap,
                         labels=params.pretrain.pta_labels)


class PretrainTask:
    def __init__(self, params: Params, data_root: Path, annotations: Path, out_dir: Path):
        self.params = params
        source = PairSource(params, data_root, out_dir)
        self.pairs, self.tokenizer, self.pair_data, self.vocab_file = source.pairs, source.tokenizer, source.pair_data, source.vocab_file
        self.image_ids = pair_image_ids(self.pairs)  # ITM's negatives are never a pair of the same image
        self.object_data = object_dataset(params, annotations, data_root, self.tokenizer)
        self.model = self.build_model()

    def build_model(self) -> nn.Module:
        """The pretraining step the engine trains: the architecture's (copa.train.architectures)."""
        seed_everything(self.params.seed)  # the model's initial weights
        return resolve(architecture(self.params).build_pretraining)(self.params, self.tokenizer)

    def param_groups(self) -> list[dict]:
        p = self.params.pretrain
        return model_param_groups(self.model, self.params.model.selection.lr, p.lr_vision, p.lr_text, p.weight_decay)

    def steps_per_epoch(self, world_size: int) -> int:
        p = self.params.pretrain
        return epoch_length(p.steps_per_epoch, len(self.pairs), p.batch_size, "pretrain.steps_per_epoch")

    def batches(self, epoch: int, rank: int, world_size: int, start: int) -> Iterator[dict]:
        p = self.params.pretrain
        if p.batch_size % world_size or p.object_batch_size % world_size:
            raise ValueError(f"batch sizes {p.batch_size} / {p.object_batch_size} do not split over {world_size} processes")
        pair_b, object_b = p.batch_size // world_size, p.object_batch_size // world_size
        pair_order, object_order = self._orders(epoch)
        self.pair_data.set_epoch(epoch)
        for step in range(start, self.steps_per_epoch(world_size)):
            pair_idx = pair_order[step * p.batch_size + rank * pair_b:][:pair_b]
            images, elems, geometry_seeds = self.object_draws(object_order, epoch, step)
            mine = slice(rank * object_b, (rank + 1) * object_b)
            yield {
                "pairs": {**model_inputs(self.pair_data.collate_fn([self.pair_data[int(i)] for i in pair_idx])),
                          "image_ids": torch.tensor([self.image_ids[int(i)] for i in pair_idx])},
                "objects": model_inputs(self.object_data.batch(images[mine], elems[mine], geometry_seeds[mine])),
                "seed": int(np.random.default_rng([self.params.seed, epoch, step, rank]).integers(2**31)),
                "images": ([self.pairs[int(i)].image.name for i in pair_idx],  # for an error naming the batch
                           [self.object_data.objects[int(i)].image.name for i in images[mine]]),
            }

    def _orders(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's permutations of the pairs and of the object images."""
        rng = np.random.default_rng([self.params.seed, epoch])
        return rng.permutation(len(self.pair_data)), rng.permutation(len(self.object_data))

    def object_draws(self, object_order: np.ndarray, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The global object mini-batch of a step (ObjectDataset.draw), from the epoch's order."""
        draw = np.random.default_rng([self.params.seed, epoch, step])
        return self.object_data.draw(object_order, step, self.params.pretrain.object_batch_size, draw)

    def summary(self) -> dict[str, float]:
        """What PTA's object stream covered over the whole run (the same draws as ``batches``):
        how many (image, object, text) examples it saw, and how many of its texts fit several
        boxes of their image (labelled as one under ``pta_labels: chosen_box``: ambiguous)."""
        p, objects = self.params.pretrain, self.object_data.objects
        first_elem = np.concatenate([[0], np.cumsum(self.object_data.elem_counts)[:-1]])  # (images,) each image's first global elem
        shares_text = np.array([len(labelled_elems(o, e, "same_text")) > 1 for o in objects for e in o.elems], dtype=bool)
        seen = np.zeros(len(shares_text), dtype=bool)
        shared = draws = 0
        for epoch in range(p.epochs):
            _, order = self._orders(epoch)
            for step in range(self.steps_per_epoch(1)):
                images, elems, _ = self.object_draws(order, epoch, step)
                drawn = first_elem[images] + elems
                seen[drawn] = True
                shared += int(shares_text[drawn].sum())
                draws += len(drawn)
        ambiguous = shared if p.pta_labels == "chosen_box" else 0
        return {"pta/object_images": len(objects), "pta/objects": len(shares_text), "pta/draws": draws,
                "pta/distinct_examples": int(seen.sum()), "pta/shared_text_share": shared / max(draws, 1),
                "pta/ambiguous_label_share": ambiguous / max(draws, 1)}

    def after_step(self, model, step: int) -> None:
        model.after_step(step)

    def describe_batch(self, batch: dict) -> str:
        pairs, objects = batch["images"]
        return f"pair images {', '.join(pairs)}; object images {', '.join(objects)}"


def _existing(path: str, key: str) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file (params {key})")
    return Path(path)


def run_encoder_init(params: Params, data_root: Path, out_dir: Path, annotations: Path | None = None) -> dict:
    """``copa encoder-init``: the contrastive encoder init alone, in ``out_dir``, for every run of
    the profile and seed to start from (``copa pretrain --encoder-init``). ``annotations``: the
    filtered files, read when its objective contrasts boxes too."""
    source = PairSource(params, data_root, out_dir)
    boxes = object_dataset(params, annotations, data_root, source.tokenizer) if reads_boxes(params) and annotations else None
    return train_contrastive_encoders(params, source.pair_data, source.vocab_file, out_dir, boxes, read_finished=False)[1]


def run_pretraining(params: Params, data_root: Path, annotations: Path, out_dir: Path, resume: bool = True,
                    init_dir: Path | None = None) -> dict:
    """Algorithm 1 into ``out_dir`` for the params' architecture: its step, started by its
    ``initialise`` (the contrastive encoder init in ``init_dir``; default: the run's own
    ``encoder_init/``; a shared one is reused when finished)."""
    task = PretrainTask(params, data_root, annotations, out_dir)
    init_dir = Path(init_dir) if init_dir is not None else Path(out_dir) / INIT_DIR
    resolve(architecture(params).initialise)(task.model, params, task.pair_data, task.vocab_file, init_dir, task.object_data)
    return train_pretraining(task, params, out_dir, resume)


def train_pretraining(task: PretrainTask, params: Params, out_dir: Path, resume: bool) -> dict:
    """The engine on a pretraining task: ``pretrain``'s epochs, warm-up + cosine schedule, checkpoints."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # torchrun sets it
    p = params.pretrain
    total = p.epochs * task.steps_per_epoch(world_size)
    lambdas = [warmup_cosine_lambda(g["lr"], p.warmup_steps, total, p.min_lr) for g in task.param_groups()]
    config = EngineConfig(epochs=p.epochs, lr_lambda=lambdas, checkpoint_every=p.checkpoint_every, seed=params.seed,
                          grad_clip=p.grad_clip, resume_ignores=DOWNSTREAM_SECTIONS)
    return train(task, config, out_dir, params.to_dict(), resume=resume)


def load_pretraining_checkpoint(path: Path) -> tuple[nn.Module, Params, object, dict]:
    """A checkpoint of a run (``<run>/checkpoints/*.pt``): the pretraining step module its
    architecture builds, in eval mode, the params it was trained with, the run's tokenizer, and
    where it stands (``step``, ``epoch`` done)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    ckpt = load_tensors(path)
    params = params_from_dict(ckpt["resolved_params"], f"{path} (resolved_params)")
    vocab = path.parent.parent / VOCAB_DIR / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab}: the run's vocabulary is missing (expected beside {path.parent})")
    tokenizer = load_tokenizer(vocab)
    run = path.parent.parent
    if (run / PRETRAINED_FILE).is_file():
        raise UserError(f"{run} is a fine-tuning run ({PRETRAINED_FILE}): {path} is no pretraining checkpoint (copa pretrain --out)")
    model = resolve(architecture(params).build_pretraining)(params, tokenizer)
    model.load_state_dict(ckpt["model"])
    return model.eval(), params, tokenizer, {"step": ckpt["step"], "epoch": ckpt["epoch"]}


def run_params(run_dir: Path) -> Params:
    """The params a run was trained with (its ``resolved_params.json``)."""
    path = Path(run_dir) / RESOLVED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a pretraining run folder (copa pretrain --out)?")
    resolved = load_json(path)
    if not isinstance(resolved, dict) or not isinstance(resolved.get("params"), dict):
        raise FormatError(path, "no 'params' mapping: not the resolved_params.json `copa pretrain` writes")
    return params_from_dict(resolved["params"], str(path))


def run_checkpoints(run_dir: Path, which: str = "epochs") -> list[Path]:
    """``epochs``: every per-epoch checkpoint in epoch order; ``last``: the latest one."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted(folder.glob("epoch_*.pt")) if which == "epochs" else [folder / "last.pt"] if which == "last" else None
    if found is None:
        raise ValueError(f"which must be 'epochs' or 'last', got {which!r}")
    found = [p for p in found if p.is_file()]
    if not found:
        raise FileNotFoundError(f"{folder}: no {'epoch_*.pt' if which == 'epochs' else 'last.pt'} checkpoint")
    return found
