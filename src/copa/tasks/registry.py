"""The downstream tasks by name (what each one is: its settings, split, what it starts from) and
the heads that implement them per architecture (copa.train.architectures): how a run of that
architecture is fine-tuned on the task, loaded and evaluated. The CLI and the Snakemake rules go
through these tables only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copa.config import ParamsError, UserError


@dataclass(frozen=True)
class TaskSpec:
    settings: str  # its section of params.evaluate
    default_split: str | None  # None: the evaluate section's own split(s)
    starts_from: str | None = None  # another task whose fine-tuned run it continues; None: a pretraining run


TASKS = {
    "retrieval": TaskSpec("retrieval", "test"),
    "vqa": TaskSpec("vqa", None),
    "captioning": TaskSpec("captioning", None),
    "captioning_cider": TaskSpec("captioning", None, starts_from="captioning"),
    "grounding": TaskSpec("grounding", None),
}


@dataclass(frozen=True)
class Head:
    finetune: str  # "module:function" (params, start_run, data_root, out_dir, resume) -> final metrics
    evaluate: str  # "module:function" (the loaded run, settings, data_root, split, batch_size, progress)
                   # -> (record, predictions, summary line)
    load: str = "copa.train.finetune:load_finetuned"  # "module:function" (run folder) -> the run evaluate reads (.params, .state)
    # "module:function" (model, images, input_ids, attention_mask, decoding=settings) -> FLOPs of writing one answer
    # per row (the cost tables' decoder column); None: the head writes none (a classifier)
    answer_cost: str | None = None


# (architecture, task) -> its head; "module:function" strings, imported on use (copa.train.architectures.resolve)
HEADS = {
    ("dual_stream", "retrieval"): Head("copa.tasks.retrieval:run_retrieval_finetuning", "copa.tasks.retrieval:evaluate_retrieval_task"),
    ("dual_stream", "vqa"): Head("copa.tasks.vqa:run_vqa_finetuning", "copa.tasks.vqa:evaluate_vqa",
                                 answer_cost="copa.tasks.generation:answer_flops"),
    ("dual_stream", "captioning"): Head("copa.tasks.captioning:run_captioning_finetuning", "copa.tasks.captioning:evaluate_captioning"),
    ("dual_stream", "captioning_cider"): Head("copa.tasks.captioning:run_cider_optimisation", "copa.tasks.captioning:evaluate_captioning"),
    ("dual_stream", "grounding"): Head("copa.tasks.grounding:run_grounding_finetuning", "copa.tasks.grounding:evaluate_grounding"),
    # COPA Table 6: ViLT's VQA classifier (a single-stream model has no decoder)
    ("single_stream", "vqa"): Head("copa.tasks.single_stream_vqa:run_vqa_finetuning", "copa.tasks.single_stream_vqa:evaluate_vqa",
                                   "copa.tasks.single_stream_vqa:load_vqa_run"),
}


def heads_of(architecture: str) -> list[str]:
    """The tasks an architecture fine-tunes."""
    return [task for arch, task in HEADS if arch == architecture]


def head_modules(architecture: str) -> tuple[str, ...]:
    """The modules an architecture's heads name (the rules' per-architecture rerun triggers)."""
    return tuple(sorted({ref.split(":")[0] for (arch, _), h in HEADS.items() if arch == architecture
                         for ref in vars(h).values() if ref is not None}))


def answer_cost(architecture: str) -> str | None:
    """The architecture's VQA answer-writing cost function ("module:function"), or None (no decoder)."""
    vqa = HEADS.get((architecture, "vqa"))
    return vqa.answer_cost if vqa is not None else None


def check_start(task: str, run: Path) -> None:
    """Refuse a run ``task`` does not start from: a fine-tuning run (it has ``pretrained.json``) for a
    task that starts from a pretraining run, or a pretraining run for one that continues another task's."""
    from copa.train.pretrain import PRETRAINED_FILE

    earlier = TASKS[task].starts_from
    finetuned = (run / PRETRAINED_FILE).is_file()
    if earlier is None and finetuned:
        raise UserError(f"{run} is a fine-tuning run ({PRETRAINED_FILE}): {task} starts from a pretraining run (copa pretrain --out)")
    if earlier is not None and not finetuned and run.is_dir():
        raise UserError(f"{run} is not a fine-tuning run (no {PRETRAINED_FILE}): {task} continues the {earlier} run (copa finetune --task {earlier} --out)")


def check_finetuned(task: str, run: Path) -> None:
    """Refuse reading ``run`` as a ``task`` run where its ``pretrained.json`` names another task
    (runs fine-tuned before it named one pass)."""
    from copa.data.formats.records import load_json
    from copa.train.pretrain import PRETRAINED_FILE

    path = run / PRETRAINED_FILE
    record = load_json(path) if path.is_file() else None
    trained = record.get("task") if isinstance(record, dict) else None
    if trained is not None and trained != task:
        raise UserError(f"{run} is a {trained} run ({path}), not a {task} one")


def head(architecture: str, task: str, run: object) -> Head:
    """The head of ``task`` for a run of ``architecture``; refused, naming the run, where it has none."""
    if (architecture, task) not in HEADS:
        raise ParamsError(f"{run} is a {architecture} run: it has no {task} head (it has: {', '.join(heads_of(architecture)) or 'none'})")
    return HEADS[(architecture, task)]
