"""What every downstream fine-tuning shares: starting from a pretraining (or an earlier
fine-tuning) run, the parameters a fine-tuning run is trained (and later loaded) with, and
loading a fine-tuned run.

A fine-tuning run folder holds the engine's checkpoints of the task module (its ``model``
attribute is the :class:`CopaModel`), ``vocab/`` (the pretraining run's, copied) and
``pretrained.json`` (which checkpoint it started from). Its resolved parameters are the
pretraining run's (the model) with the task's ``finetune`` section and the seed of the current
params.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from copa.config import Params, params_from_dict
from copa.data.formats.records import FormatError
from copa.data.tokenizer import load_tokenizer
from copa.models.copa import CopaModel
from copa.train.build import build_pretraining, copa_spec
from copa.train.pretrain import VOCAB_DIR, load_pretraining_checkpoint, run_checkpoints

PRETRAINED_FILE = "pretrained.json"


class CheckpointMismatch(FormatError):
    """A checkpoint's weights do not fit the model its resolved parameters describe. A
    FormatError (names the file), so the CLI reports it as ``copa <command>: error: ...``."""


def start_from(run: Path, current: Params, out_dir: Path, task: str, build: Callable = build_pretraining) -> tuple[CopaModel, Params, object]:
    """The model to fine-tune (train mode), the new run's parameters and its tokenizer. ``run`` is a
    pretraining run (its last checkpoint), or a fine-tuning run (it has ``pretrained.json``; CIDEr
    optimisation continues the cross-entropy captioning run; ``build`` makes a pretraining run's
    module: a single-stream run's passes its own). The new run's parameters are that
    run's with ``finetune.<task>`` and the seed of ``current`` (so editing another task's section
    does not change this run's parameters, which resuming checks); its vocabulary is copied to
    ``out_dir`` and ``pretrained.json`` records where it started."""
    run, out_dir = Path(run), Path(out_dir)
    checkpoint = run_checkpoints(run, "last")[0]
    if (run / PRETRAINED_FILE).is_file():
        model, earlier, tokenizer, state = load_finetuned(run)[:4]
        record = {"checkpoint": str(checkpoint), "finetuned_run": str(run), **state}
    else:
        pretraining, earlier, tokenizer, state = load_pretraining_checkpoint(checkpoint, build)
        model = pretraining.model
        record = {"checkpoint": str(checkpoint), **state}
    merged = earlier.to_dict()
    merged["finetune"][task] = current.to_dict()["finetune"][task]
    merged["seed"] = current.seed
    params = params_from_dict(merged, f"{checkpoint} + the current finetune.{task} parameters")
    (out_dir / VOCAB_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / VOCAB_DIR / "vocab.txt", out_dir / VOCAB_DIR / "vocab.txt")
    (out_dir / PRETRAINED_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return model.train(), params, tokenizer


class FinetunedRun(NamedTuple):
    model: CopaModel  # eval mode
    params: Params
    tokenizer: object
    state: dict  # where it stands: step, epoch
    task_weights: dict  # the task module's weights beside the CopaModel (e.g. ``box_head.*``), by full name
    checkpoint: Path

    def weights_under(self, prefix: str) -> dict:
        """The task module's weights under ``prefix`` (e.g. ``box_head.``), with the prefix removed."""
        found = {k.removeprefix(prefix): v for k, v in self.task_weights.items() if k.startswith(prefix)}
        if not found:
            raise CheckpointMismatch(self.checkpoint, f"no weights under '{prefix}' in this checkpoint")
        return found


def load_finetuned(run_dir: Path) -> FinetunedRun:
    """A fine-tuning run's last checkpoint, read once: the CopaModel, its params, its tokenizer,
    where it stands and the task module's other weights."""
    checkpoint = run_checkpoints(Path(run_dir), "last")[0]
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    params = params_from_dict(ckpt["resolved_params"], f"{checkpoint} (resolved_params)")
    tokenizer = load_tokenizer(Path(run_dir) / VOCAB_DIR / "vocab.txt")
    model = CopaModel(copa_spec(params, len(tokenizer)))
    prefix = "model."  # the task module's CopaModel
    weights = {k.removeprefix(prefix): v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    expected = model.state_dict()
    problems = {
        "missing": [k for k in expected if k not in weights],
        "unexpected": [k for k in weights if k not in expected],
        "shape mismatch (checkpoint vs model)": [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
                                                 for k, v in weights.items() if k in expected and v.shape != expected[k].shape],
    }
    if any(problems.values()):
        raise CheckpointMismatch(checkpoint, "does not fit the model its resolved_params describe: " + "; ".join(
            f"{kind} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}" for kind, keys in problems.items() if keys))
    model.load_state_dict(weights)
    others = {k: v for k, v in ckpt["model"].items() if not k.startswith(prefix)}
    return FinetunedRun(model.eval(), params, tokenizer, {"step": ckpt["step"], "epoch": ckpt["epoch"]}, others, checkpoint)
