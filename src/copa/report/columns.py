"""The columns tables and figures can show: where each value is read from and how it is printed.

``source`` is a fine-tuning task (its result JSON: results/<profile>/finetune/<run>/<task>.json),
``efficiency`` (results/<profile>/efficiency/<run>.json: FLOPs, memory) or ``paired`` (the speed
of the grid's models timed together, results/<profile>/efficiency/paired/<grid>.json: the row's
entry, with its paired ``speedup`` over the grid's baseline row); ``paths`` are keys into that JSON,
the first one present wins (training memory: the GPU allocator's peak where measured on a GPU,
the bytes autograd saves on CPU; ``memory_mib`` under the run's ITM encoding,
``memory_mib_<encoding>`` under each of ``pretrain.itm_guidance``'s). Captioning scores are
fractions in their JSON and percentages here, as in the papers. ``per_example`` is where the
JSON keeps each test example's score (a fraction, by example id: VQA questions, retrieval
queries, grounding expressions) where the evaluation saves it, for paired differences between rows.

Controls (``CONTROLS``): columns a table shows right after a column wherever a grid shows it,
without the grid naming them: beside VQA accuracy, the majority answer of each question type and
the model's accuracy with the images swapped among questions of the same type (copa.tasks.vqa).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

from copa.config import ITM_GUIDANCES

PERCENT = 100.0  # per-example scores are fractions; the columns that keep them are percentages
COST_SOURCES = ("efficiency", "paired")  # the sources measured for every row, trained or not (no fine-tuning)
CONSISTENCY = 1e-3  # points: per-example scores must average to the result's own value (rounding aside)


@dataclass(frozen=True)
class Column:
    header: str
    source: str  # a task of copa.tasks.registry, "efficiency" or "paired"
    paths: tuple[tuple[str, ...], ...]
    scale: float = 1.0
    digits: int = 1
    higher_is_better: bool = True
    count: tuple[str, ...] | None = None  # where the JSON says how many examples the value averages
    per_example: tuple[str, ...] | None = None  # where the JSON maps each example's id to its score (0-1)
    in_paper: bool = True  # the papers report it: tables show the paper's value beside (controls: not)
    speedup: tuple[str, ...] | None = None  # where a "paired" record keeps the row's speedup over the baseline row
    iqr: tuple[str, ...] | None = None  # where a "paired" record keeps the value's interquartile range over the rounds

    def value(self, record: dict[str, Any]) -> float | None:
        """The column's value in ``record`` (the source's JSON); None where it was not measured
        (SPICE without its jars)."""
        for path in self.paths:
            node = _lookup(record, path)
            if node is not _MISSING:
                return None if node is None else float(node) * self.scale
        return None

    def speedup_of(self, record: dict[str, Any]) -> dict[str, float] | None:
        """The row's paired speedup over the baseline row (estimate, low, high) in a "paired" record."""
        node = _lookup(record, self.speedup) if self.speedup else _MISSING
        return None if node is _MISSING else node

    def iqr_of(self, record: dict[str, Any]) -> tuple[float, float] | None:
        """The value's interquartile range (low, high) over the timing rounds in a "paired" record."""
        node = _lookup(record, self.iqr) if self.iqr else _MISSING
        return None if node is _MISSING or node is None else (min(node), max(node))

    def examples(self, record: dict[str, Any]) -> int | None:
        """How many test examples the value is a mean over (accuracies), for its standard error."""
        node = _lookup(record, self.count) if self.count else _MISSING
        return None if node is _MISSING or node is None else int(node)

    def example_scores(self, record: dict[str, Any]) -> dict[str, float] | None:
        """Each test example's score (0-1) by id; None where the result does not keep them."""
        node = _lookup(record, self.per_example) if self.per_example else _MISSING
        return None if node is _MISSING or node is None else {str(k): float(v) for k, v in node.items()}

    def seed_mean_scores(self, results: Sequence[tuple[Path, dict[str, Any]]]) -> dict[str, float] | None:
        """Each example's score averaged over the results of one row's seeds ((path, JSON) pairs);
        None where a result does not keep them. An error names the file whose scores do not
        average to its own value or cover other examples than the first seed's."""
        per_seed: list[dict[str, float]] = []
        for path, record in results:
            scores = self.example_scores(record)
            if scores is None:
                return None
            if not scores or abs(PERCENT * fmean(scores.values()) - (self.value(record) or 0.0)) > CONSISTENCY:
                raise ValueError(f"{path}: key {'.'.join(self.per_example or ())} does not average to the result's "
                                 f"{'.'.join(self.paths[0])} ({self.value(record)})")
            if per_seed and scores.keys() != per_seed[0].keys():
                raise ValueError(f"{path}: key {'.'.join(self.per_example or ())} holds other examples than {results[0][0]}")
            per_seed.append(scores)
        return {k: fmean(s[k] for s in per_seed) for k in per_seed[0]} if per_seed else None


_MISSING = object()


def _lookup(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = record
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


MEMORY_HEADER = "pretraining-step memory (MiB)"


def memory_column(encoding: str) -> str:
    """The column of the pretraining-step memory under the ITM encoding ``encoding`` (pretrain.itm_guidance)."""
    return f"memory_mib_{encoding}"


def _memory(header: str, *record: str, in_paper: bool = True) -> Column:
    """The pretraining-step memory at ``record`` in the efficiency JSON (a GPU's peak, else the saved bytes)."""
    return Column(header, "efficiency", tuple((*record, key) for key in ("cuda_max_allocated_mib", "saved_mib")), higher_is_better=False,
                  in_paper=in_paper)


def _caption(header: str, task: str, key: str) -> Column:
    return Column(header, task, ((key,),), scale=100.0)


COLUMNS: dict[str, Column] = {
    "vqa": Column("VQA accuracy", "vqa", (("overall",),), digits=2, count=("questions",), per_example=("per_question",)),
    "vqa_majority": Column("majority answer per question type", "vqa", (("baselines", "majority_per_question_type", "overall"),),
                           digits=2, count=("questions",), in_paper=False),
    "vqa_swapped": Column("VQA accuracy, images swapped within question type", "vqa", (("controls", "swapped_image", "overall"),),
                          digits=2, count=("questions",), in_paper=False),
    "gmacs": Column("FLOPs (GMACs)", "efficiency", (("flops", "gmacs", "total"),), digits=3, higher_is_better=False),
    # COPA's inference time includes writing the VQA answer; its FLOPs column does not
    "decoder_gmacs": Column("decoder, one VQA answer (GMACs)", "efficiency", (("flops", "gmacs", "decoder"),), digits=3,
                            higher_is_better=False, in_paper=False),
    "throughput": Column("throughput (pairs/s)", "paired", (("throughput", "pairs_per_s"),), speedup=("speedup", "throughput"),
                         iqr=("throughput", "pairs_per_s_iqr")),
    "latency_ms": Column("latency (ms)", "paired", (("latency", "median_ms"),), higher_is_better=False, speedup=("speedup", "latency"),
                         iqr=("latency", "iqr_ms")),
    "memory_mib": _memory(f"{MEMORY_HEADER}, the run's ITM encoding", "training_memory"),
    **{memory_column(encoding): _memory(f"{MEMORY_HEADER}, ITM {encoding}", "training_memory", "by_itm_guidance", encoding,
                                        in_paper=False) for encoding in ITM_GUIDANCES},
    "caption_bleu4": _caption("B@4", "captioning", "bleu_4"),
    "caption_meteor": _caption("METEOR", "captioning", "meteor"),
    "caption_cider": _caption("CIDEr", "captioning", "cider"),
    "caption_spice": _caption("SPICE", "captioning", "spice"),
    "cider_opt_bleu4": _caption("B@4 (CIDEr opt.)", "captioning_cider", "bleu_4"),
    "cider_opt_meteor": _caption("METEOR (CIDEr opt.)", "captioning_cider", "meteor"),
    "cider_opt_cider": _caption("CIDEr (CIDEr opt.)", "captioning_cider", "cider"),
    "cider_opt_spice": _caption("SPICE (CIDEr opt.)", "captioning_cider", "spice"),
    **{f"{d}_r{k}": Column(f"{d.upper()} R@{k}", "retrieval", ((f"{d}_r{k}",),), count=(queries,), per_example=("per_query", f"{d}_r{k}"))
       for d, queries in (("tr", "images"), ("ir", "texts")) for k in (1, 5, 10)},
    **{f"grounding_{split}": Column(f"RefCOCO+ {split}", "grounding", (("splits", split, "acc@0.5"),), digits=2,
                                    count=("splits", split, "expressions"), per_example=("splits", split, "per_expression"))
       for split in ("val", "testA", "testB")},
}

CONTROLS: dict[str, tuple[str, ...]] = {"vqa": ("vqa_majority", "vqa_swapped")}  # shown right after the column


def with_controls(columns: Sequence[str]) -> tuple[str, ...]:
    """``columns`` with each one's controls (``CONTROLS``) right after it."""
    return tuple(shown for name in columns for shown in (name, *CONTROLS.get(name, ())))
