"""The columns tables and figures can show: where each value is read from and how it is printed.

``source`` is a fine-tuning task (its result JSON: results/<profile>/finetune/<run>/<task>.json)
or ``efficiency`` (results/<profile>/efficiency/<run>.json); ``paths`` are keys into that JSON,
the first one present wins (training memory: the GPU allocator's peak where measured on a GPU,
the bytes autograd saves on CPU). Captioning scores are fractions in their JSON and percentages
here, as in the papers. ``per_example`` is where the JSON keeps each test example's score (a
fraction, by example id) where the evaluation saves it, for paired differences between rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    header: str
    source: str  # a task of copa.tasks.registry, or "efficiency"
    paths: tuple[tuple[str, ...], ...]
    scale: float = 1.0
    digits: int = 1
    higher_is_better: bool = True
    count: tuple[str, ...] | None = None  # where the JSON says how many examples the value averages
    per_example: tuple[str, ...] | None = None  # where the JSON maps each example's id to its score (0-1)

    def value(self, record: dict[str, Any]) -> float | None:
        """The column's value in ``record`` (the source's JSON); None where it was not measured
        (SPICE without its jars)."""
        for path in self.paths:
            node = _lookup(record, path)
            if node is not _MISSING:
                return None if node is None else float(node) * self.scale
        return None

    def examples(self, record: dict[str, Any]) -> int | None:
        """How many test examples the value is a mean over (accuracies), for its standard error."""
        node = _lookup(record, self.count) if self.count else _MISSING
        return None if node is _MISSING or node is None else int(node)

    def example_scores(self, record: dict[str, Any]) -> dict[str, float] | None:
        """Each test example's score (0-1) by id; None where the result does not keep them."""
        node = _lookup(record, self.per_example) if self.per_example else _MISSING
        return None if node is _MISSING or node is None else {str(k): float(v) for k, v in node.items()}


_MISSING = object()


def _lookup(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = record
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _caption(header: str, task: str, key: str) -> Column:
    return Column(header, task, ((key,),), scale=100.0)


COLUMNS: dict[str, Column] = {
    "vqa": Column("VQA accuracy", "vqa", (("overall",),), digits=2, count=("questions",), per_example=("per_question",)),
    "gmacs": Column("FLOPs (GMACs)", "efficiency", (("flops", "gmacs", "total"),), digits=3, higher_is_better=False),
    "throughput": Column("throughput (pairs/s)", "efficiency", (("throughput", "pairs_per_s"),)),
    "latency_ms": Column("latency (ms)", "efficiency", (("latency", "median_ms"),), higher_is_better=False),
    "memory_mib": Column("pretraining-step memory (MiB)", "efficiency",
                         (("training_memory", "cuda_max_allocated_mib"), ("training_memory", "saved_mib")), higher_is_better=False),
    "caption_bleu4": _caption("B@4", "captioning", "bleu_4"),
    "caption_meteor": _caption("METEOR", "captioning", "meteor"),
    "caption_cider": _caption("CIDEr", "captioning", "cider"),
    "caption_spice": _caption("SPICE", "captioning", "spice"),
    "cider_opt_bleu4": _caption("B@4 (CIDEr opt.)", "captioning_cider", "bleu_4"),
    "cider_opt_meteor": _caption("METEOR (CIDEr opt.)", "captioning_cider", "meteor"),
    "cider_opt_cider": _caption("CIDEr (CIDEr opt.)", "captioning_cider", "cider"),
    "cider_opt_spice": _caption("SPICE (CIDEr opt.)", "captioning_cider", "spice"),
    **{f"{d}_r{k}": Column(f"{d.upper()} R@{k}", "retrieval", ((f"{d}_r{k}",),)) for d in ("tr", "ir") for k in (1, 5, 10)},
    **{f"grounding_{split}": Column(f"RefCOCO+ {split}", "grounding", (("splits", split, "acc@0.5"),), digits=2,
                                    count=("splits", split, "expressions"))
       for split in ("val", "testA", "testB")},
}
