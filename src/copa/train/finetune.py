"""What every downstream fine-tuning shares: starting from a pretraining run, the parameters a
fine-tuning run is trained (and later loaded) with, and loading a fine-tuned run.

A fine-tuning run folder holds the engine's checkpoints of the task module (its ``model``
attribute is the :class:`CopaModel`), ``vocab/`` (the pretraining run's, copied) and
``pretrained.json`` (which checkpoint it started from). Its resolved parameters are the
pretraining run's (the model) with the ``finetune`` section and the seed of the current params.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from copa.config import Params, params_from_dict
from copa.data.tokenizer import load_tokenizer
from copa.models.copa import CopaModel
from copa.train.build import copa_spec
from copa.train.pretrain import VOCAB_DIR, load_pretraining_checkpoint, run_checkpoints

PRETRAINED_FILE = "pretrained.json"


def start_from_pretraining(pretrain_run: Path, current: Params, out_dir: Path) -> tuple[CopaModel, Params, object]:
    """The last checkpoint of ``pretrain_run`` as the model to fine-tune, the fine-tuning run's
    parameters, and the tokenizer; the vocabulary and the starting point are recorded in ``out_dir``."""
    checkpoint = run_checkpoints(Path(pretrain_run), "last")[0]
    pretraining, pretrained_params, tokenizer, state = load_pretraining_checkpoint(checkpoint)
    merged = pretrained_params.to_dict()
    merged.update(finetune=current.to_dict()["finetune"], seed=current.seed)
    params = params_from_dict(merged, f"{checkpoint} + the current finetune parameters")
    out_dir = Path(out_dir)
    (out_dir / VOCAB_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint.parent.parent / VOCAB_DIR / "vocab.txt", out_dir / VOCAB_DIR / "vocab.txt")
    (out_dir / PRETRAINED_FILE).write_text(json.dumps({"checkpoint": str(checkpoint), **state}, indent=2) + "\n", encoding="utf-8")
    return pretraining.model.train(), params, tokenizer


def load_finetuned(run_dir: Path) -> tuple[CopaModel, Params, object, dict]:
    """A fine-tuning run's last checkpoint: the CopaModel in eval mode, its params, its tokenizer
    and where it stands (``step``, ``epoch``)."""
    checkpoint = run_checkpoints(Path(run_dir), "last")[0]
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    params = params_from_dict(ckpt["resolved_params"], f"{checkpoint} (resolved_params)")
    tokenizer = load_tokenizer(Path(run_dir) / VOCAB_DIR / "vocab.txt")
    model = CopaModel(copa_spec(params, len(tokenizer)))
    prefix = "model."  # the task module's CopaModel
    weights = {k.removeprefix(prefix): v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise KeyError(f"{checkpoint}: does not fit the model its parameters describe: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model.eval(), params, tokenizer, {"step": ckpt["step"], "epoch": ckpt["epoch"]}
