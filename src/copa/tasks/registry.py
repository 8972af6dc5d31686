"""The downstream tasks by name: how each is fine-tuned, what it starts from, and how it is
evaluated. The CLI and the Snakemake rules go through this table only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class TaskSpec:
    finetune: str  # "module:function" (params, start_run, data_root, out_dir, resume) -> final metrics
    evaluate: str  # "module:function" (finetuned run (copa.train.finetune.FinetunedRun), settings,
                   # data_root, split, batch_size, progress) -> (record, predictions, summary line)
    settings: str  # its section of params.evaluate
    default_split: str | None  # None: the evaluate section's own split(s)
    starts_from: str | None = None  # another task whose fine-tuned run it continues; None: a pretraining run


TASKS = {
    "retrieval": TaskSpec("copa.tasks.retrieval:run_retrieval_finetuning", "copa.tasks.retrieval:evaluate_retrieval_task", "retrieval", "test"),
    "vqa": TaskSpec("copa.tasks.vqa:run_vqa_finetuning", "copa.tasks.vqa:evaluate_vqa", "vqa", None),
    "captioning": TaskSpec("copa.tasks.captioning:run_captioning_finetuning", "copa.tasks.captioning:evaluate_captioning", "captioning", None),
    "captioning_cider": TaskSpec("copa.tasks.captioning:run_cider_optimisation", "copa.tasks.captioning:evaluate_captioning", "captioning", None,
                                 starts_from="captioning"),
    "grounding": TaskSpec("copa.tasks.grounding:run_grounding_finetuning", "copa.tasks.grounding:evaluate_grounding", "grounding", None),
}


def resolve(target: str) -> Callable:
    """Import ``module:function`` on use: each task pulls in only its own dependencies."""
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
