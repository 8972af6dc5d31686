"""What every downstream fine-tuning shares: starting from a pretraining (or an earlier
fine-tuning) run, the parameters a fine-tuning run is trained (and later loaded) with, and
loading a fine-tuned run.

A fine-tuning run folder holds the engine's checkpoints of the task module (its ``model``
attribute is the :class:`CopaModel`), ``vocab/`` (the pretraining run's, copied) and
``pretrained.json`` (which checkpoint it started from). Its resolved parameters are the
pretraining run's (the model) with the task's ``finetune`` section and the seed of the current
params; a task section's ``selection`` (VQA: the oracle and random references, issue 19), where
set, replaces ``model.selection.method`` there, so everything that rebuilds the fine-tuned model
from its parameters (``load_finetuned``, the vocabulary growth, ``copa efficiency``) builds it
with that selector. A task's ``perception`` (issue 23's bracket: VQA, grounding) replaces ``model.perception`` the same
way: the run's model has the scene's image tokens in place of the ViT, which ``load_finetuned`` and
the vocabulary growth rebuild, and what needs the ViT (the cost protocol, Figure 4) refuses. A
task's ``keep_ratio`` (grounding, issue 23) replaces ``model.selection.keep_ratio`` the same way, for
runs that select patches; for the others (no selection, a selector keeping every patch, perfect image tokens) it does not apply: a line says so and the
run's parameters record it as null. A task's ``pta_weight`` (grounding) likewise applies to runs whose TPD scores
the patches (it selects some of them), and is recorded as 0 for the others.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from copa.config import Params, ParamsError, params_from_dict
from copa.data.formats.records import FormatError
from copa.data.tokenizer import load_tokenizer
from copa.models.copa import CopaModel
from copa.models.weights import load_tensors
from copa.train.build import copa_spec, perception_spec
from copa.train.pretrain import PRETRAINED_FILE, VOCAB_DIR, load_pretraining_checkpoint, run_checkpoints


class CheckpointMismatch(FormatError):
    """A checkpoint's weights do not fit the model its resolved parameters describe. A
    FormatError (names the file), so the CLI reports it as ``copa <command>: error: ...``."""


def start_from(run: Path, current: Params, out_dir: Path, task: str) -> tuple[nn.Module, Params, object]:
    """The model to fine-tune (train mode), the new run's parameters and its tokenizer. ``run`` is a
    pretraining run (its last checkpoint), or a fine-tuning run (it has ``pretrained.json``; CIDEr
    optimisation continues the cross-entropy captioning run); the model is the run's architecture's
    (copa.train.architectures). The new run's parameters are that
    run's with ``finetune.<task>`` and the seed of ``current`` (so editing another task's section
    does not change this run's parameters, which resuming checks); its vocabulary is copied to
    ``out_dir`` and ``pretrained.json`` records the task and where it started."""
    run, out_dir = Path(run), Path(out_dir)
    checkpoint = run_checkpoints(run, "last")[0]
    if (run / PRETRAINED_FILE).is_file():
        model, earlier, tokenizer, state = load_finetuned(run)[:4]
        record = {"task": task, "checkpoint": str(checkpoint), "finetuned_run": str(run), **state}
    else:
        pretraining, earlier, tokenizer, state = load_pretraining_checkpoint(checkpoint)
        model = pretraining.model
        record = {"task": task, "checkpoint": str(checkpoint), **state}
    merged = earlier.to_dict()
    merged["finetune"][task] = current.to_dict()["finetune"][task]
    merged["seed"] = current.seed
    selection = merged["finetune"][task].get("selection")  # None: the run's own
    if selection is not None:
        merged["model"]["selection"]["method"] = selection
    perception = merged["finetune"][task].get("perception")  # None: the run's own
    if perception is not None:
        if perception != "encoder" and selection is not None:
            raise ParamsError(f"finetune.{task}.perception {perception} keeps every patch: finetune.{task}.selection must be null, "
                              f"got {selection}")
        merged["model"]["perception"] = perception
    # a profile's keep ratio and PTA weight are for the runs that select (a grid's rows that keep every patch, mPLUG's and
    # w/o TPD's, stay so): for the others they are recorded as not applied
    section, model_params = merged["finetune"][task], merged["model"]

    def not_applied(key: str, why: str, value) -> None:
        print(f"finetune.{task}.{key} {section[key]} does not apply to {run}: {why} (selection {model_params['selection']['method']} "
              f"keeping {model_params['selection']['keep_ratio']:.0%}, perception {model_params['perception']})", file=sys.stderr)
        section[key] = value

    if section.get("keep_ratio") is not None:
        if _selects(model_params):
            model_params["selection"]["keep_ratio"] = section["keep_ratio"]
        else:
            not_applied("keep_ratio", "it selects no patches; every patch is kept", None)
    if section.get("pta_weight", 0.0) > 0 and not (_selects(model_params) and model_params["selection"]["method"] == "tpd"):
        not_applied("pta_weight", "PTA trains the scores of a TPD that selects; the task's loss alone", 0.0)
    params = params_from_dict(merged, f"{checkpoint} + the current finetune.{task} parameters")
    if model.spec.selection != params.model.selection.method:
        try:
            model = with_selection(model, params.model.selection.method, params.seed)
        except ValueError as exc:  # a selector the architecture or the run's location does not take
            raise ParamsError(f"finetune.{task}.selection {selection} for the run {run}: {exc}") from None
    if getattr(model.spec, "perception", "encoder") != params.model.perception:
        if not isinstance(model, CopaModel):
            raise ParamsError(f"finetune.{task}.perception {perception}: the dual-stream model's bracket; the run {run} is "
                              f"{params.architecture}")
        model = respecified(model, params.seed, "vision.", **perception_spec(params.model.perception))
    if model.spec.keep_ratio != params.model.selection.keep_ratio:  # the task's keep ratio, where it applies
        model = respecified(model, params.seed, None, keep_ratio=params.model.selection.keep_ratio)
    (out_dir / VOCAB_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / VOCAB_DIR / "vocab.txt", out_dir / VOCAB_DIR / "vocab.txt")
    (out_dir / PRETRAINED_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return model.train(), params, tokenizer


def _selects(model_params: dict) -> bool:
    """Whether a run with these ``model`` params keeps a share of its patches: a selector keeping every patch scores
    none (copa.models.selectors), perfect image tokens have no selector."""
    return (model_params["selection"]["method"] != "none" and model_params["selection"]["keep_ratio"] < 1
            and model_params["perception"] == "encoder")


def with_selection(model: nn.Module, method: str, seed: int) -> nn.Module:
    """``model`` (a CopaModel, or a single-stream model, which refuses the dual-stream-only
    selectors) selecting with ``method`` at the same location(s) and keep ratio: every weight but
    the old selector's is kept; a selector with weights of its own starts fresh (drawn with
    ``seed``), a parameter-free one (oracle, random, cls_attention, none) has none."""
    return respecified(model, seed, "vision.selector.", selection=method)


def respecified(model: nn.Module, seed: int, new_part: str | None, **changes) -> nn.Module:
    """``model`` rebuilt with ``changes`` to its spec: every weight is kept but those under ``new_part``
    (None: none), which the new part (drawn with ``seed``) has in their place, if any."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        switched = type(model)(dataclasses.replace(model.spec, **changes))
    state = switched.state_dict()
    state.update({k: v for k, v in model.state_dict().items() if new_part is None or not k.startswith(new_part)})
    switched.load_state_dict(state)
    return switched.to(next(model.parameters()).device).train(model.training)


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
    if not (Path(run_dir) / PRETRAINED_FILE).is_file():
        raise FileNotFoundError(f"{Path(run_dir) / PRETRAINED_FILE}: not found; is {run_dir} a fine-tuning run folder (copa finetune --out)?")
    checkpoint = run_checkpoints(Path(run_dir), "last")[0]
    ckpt = load_tensors(checkpoint)
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
