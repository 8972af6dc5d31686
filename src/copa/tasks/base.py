"""What every downstream task's training shares: the engine Task over a list of examples, the
optimiser schedule of Table 11, and growing the vocabulary (grounding's coordinate tokens).
Where a run starts is :func:`copa.train.finetune.start_from`.

A task subclasses :class:`FinetuneTask` with ``name`` (its section of ``params.finetune``),
``n_examples`` and ``collate(indices)``; batches are drawn from a permutation seeded by
(seed, epoch), so any number of processes sees the same global batches and resume is exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from copa.config import AFTER_TRAINING_SECTIONS, Params
from copa.data.layout import DataLayout
from copa.data.pretrain_data import Pair, PairDataset
from copa.data.scene_grid import SceneGridPairs, scene_grids
from copa.models.copa import CopaModel
from copa.train.build import copa_spec
from copa.train.engine import EngineConfig, epoch_length, train
from copa.train.pretrain import VOCAB_DIR
from copa.train.schedule import model_param_groups, warmup_cosine_lambda


def extend_vocabulary(model: CopaModel, params: Params, out_dir: Path, new_tokens: Sequence[str], seed: int):
    """Append ``new_tokens`` (absent ones only) to the run's ``vocab/vocab.txt`` and grow every
    vocabulary-sized tensor of ``model`` (word embeddings, the tied LM heads): old rows are kept,
    new rows get the model's own initialisation drawn with ``seed``. Returns (model, tokenizer)."""
    from copa.data.tokenizer import load_tokenizer

    vocab_path = Path(out_dir) / VOCAB_DIR / "vocab.txt"
    lines = vocab_path.read_text(encoding="utf-8").splitlines()
    known = set(lines)
    lines += [t for t in new_tokens if t not in known]
    vocab_path.write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    old_size, new_size = model.spec.vocab_size, len(lines)
    if new_size == old_size:
        return model, load_tokenizer(vocab_path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        grown = CopaModel(copa_spec(params, new_size))
    state = grown.state_dict()
    for key, value in model.state_dict().items():
        target = state[key]
        if value.shape == target.shape:
            target.copy_(value)
        elif value.shape[0] == old_size and target.shape[0] == new_size and value.shape[1:] == target.shape[1:]:
            target[:old_size].copy_(value)
        else:
            raise ValueError(f"extend_vocabulary: {key} is {tuple(value.shape)}, cannot grow it to {tuple(target.shape)}")
    grown.load_state_dict(state)
    return grown.train(model.training), load_tokenizer(vocab_path)


def resized_pairs(images: Sequence[Path], texts: Sequence[str], tokenizer, params: Params, source: str,
                  image_size: int | None = None) -> PairDataset:
    """(image, text) examples at ``image_size`` (default: the pretraining resolution), without crops
    or flips: what every generative task trains and evaluates on (a crop can remove what a question
    counts or an expression names, a flip swaps "left" and "right")."""
    pairs = [Pair(image, text, source) for image, text in zip(images, texts, strict=True)]
    size = image_size or params.patch_labels.image_size
    return PairDataset(pairs, tokenizer, size, params.model.max_text_length, params.seed, train=False)


def perceived_pairs(images: Sequence[Path], texts: Sequence[str], tokenizer, params: Params, source: str,
                    layout: DataLayout | None, image_size: int | None = None,
                    oracle_grids: Callable[[DataLayout, int, int], Sequence[Tensor]] | None = None) -> PairDataset | SceneGridPairs:
    """:func:`resized_pairs` as the model reads them: with ``model.perception`` oracle (issue 23's
    perception bracket) a scene grid in place of each pair's pixels, from ``layout``'s synthetic
    world (copa.data.scene_grid): ``oracle_grids(layout, image size, patch size)``, one per pair, or by
    default each image's whole scene."""
    data = resized_pairs(images, texts, tokenizer, params, source, image_size)
    if params.model.perception != "oracle":
        return data
    if layout is None:
        raise ValueError("a model with perception oracle reads scene grids: perceived_pairs needs the data root's layout")
    patch = params.patch_labels.patch_size
    if oracle_grids is not None:
        return SceneGridPairs(data, oracle_grids(layout, data.image_size, patch))
    grids = scene_grids(layout, images, data.image_size, patch)
    return SceneGridPairs(data, [grids[pair.image] for pair in data.pairs])


class FinetuneTask:
    """The engine's Task for one downstream fine-tuning (see the module docstring)."""

    name: str  # the task's section of params.finetune
    model: nn.Module  # the task module; its ``model`` attribute is the CopaModel
    params: Params

    @property
    def settings(self):
        return getattr(self.params.finetune, self.name)

    @property
    def section(self) -> str:
        """The params key of ``settings``, for messages."""
        return f"finetune.{self.name}"

    @property
    def n_examples(self) -> int:
        raise NotImplementedError

    def collate(self, indices: Sequence[int], epoch: int) -> dict:
        """The model's batch of the examples ``indices`` (drawn for ``epoch``)."""
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        s = self.settings
        return model_param_groups(self.model, self.params.model.selection.lr, s.lr_vision, s.lr_text, s.weight_decay)

    def steps_per_epoch(self, world_size: int) -> int:
        s = self.settings
        return epoch_length(s.steps_per_epoch, self.n_examples, s.batch_size, f"{self.section}.steps_per_epoch")

    def batches(self, epoch: int, rank: int, world_size: int, start: int) -> Iterator[dict]:
        s = self.settings
        if s.batch_size % world_size:
            raise ValueError(f"{self.section}.batch_size {s.batch_size} does not split over {world_size} processes")
        per_rank = s.batch_size // world_size
        order = np.random.default_rng([self.params.seed, epoch]).permutation(self.n_examples)
        for step in range(start, self.steps_per_epoch(world_size)):
            idx = [int(i) for i in order[step * s.batch_size + rank * per_rank:][:per_rank]]
            seed = int(np.random.default_rng([self.params.seed, epoch, step, rank]).integers(2**31))
            yield {**self.collate(idx, epoch), "seed": seed}

    def after_step(self, model, step: int) -> None:
        pass


def run_finetuning(task: FinetuneTask, out_dir: Path, resume: bool = True) -> dict:
    """Train ``task`` with AdamW (ViT / rest groups), linear warm-up and cosine decay (Table 11)."""
    s = task.settings
    total = s.epochs * task.steps_per_epoch(int(os.environ.get("WORLD_SIZE", 1)))  # torchrun sets WORLD_SIZE
    lambdas = [warmup_cosine_lambda(g["lr"], s.warmup_steps, total, s.min_lr) for g in task.param_groups()]
    config = EngineConfig(epochs=s.epochs, lr_lambda=lambdas, checkpoint_every=s.checkpoint_every, seed=task.params.seed,
                          grad_clip=s.grad_clip, resume_ignores=AFTER_TRAINING_SECTIONS)
    return train(task, config, out_dir, task.params.to_dict(), resume=resume)
