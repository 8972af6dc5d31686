"""Where a profile's runs are written: every output path of the workflow and the CLI, decided here.

``RunLayout(profile)`` names each kind of output: processed data (data/processed/<profile>),
results (results/<profile>: JSON records, tables, claims), figures (figures/<profile>, stems
written as .png and .pdf), training runs (runs/<profile>: a folder per run, finished when its
metrics.json is written) and each job's log and Snakemake benchmark (logs/<profile>). The CLI's
defaults, the report code and the Snakemake rules all ask it, so the paths agree by construction.

The methods take names as plain strings and never parse them: a Snakemake wildcard ("{run}",
"{task}", "{size}") in place of a name gives the rule's pattern, so the rules call the same
methods as the CLI. A size tag ("" or "-192px", ``size_tag``) marks a result measured at another
resolution than the profile's own (COPA Table 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# The file a training run writes last (copa.train.engine): the rules' target of a run folder.
METRICS_FILE = "metrics.json"
# A size tag as the rules' `size` wildcard matches it ("" or "-<px>px").
SIZE_TAG_PATTERN = r"(-\d+px)?"


def size_tag(image_size: int | None) -> str:
    """The suffix of a result measured at ``image_size`` px ("-192px"); "" for the profile's own (None)."""
    return f"-{image_size}px" if image_size else ""


def tag_size(tag: str) -> int | None:
    """The px of a size tag, None for ""; the inverse of ``size_tag``."""
    digits = tag.removeprefix("-").removesuffix("px")
    return int(digits) if digits else None


def split_size_tag(name: str) -> tuple[str, str]:
    """A name and the size tag it ends in: ("vqa", "-192px") from "vqa-192px"; (name, "") without one."""
    stem, tag = re.fullmatch(rf"(.*?){SIZE_TAG_PATTERN}", name, flags=re.DOTALL).groups()
    return stem, tag or ""


def seed_run(seed: int | str) -> str:
    """The name of the workflow's run of a seed where a seed is all that tells runs apart (the
    encoder init, the anchors)."""
    return f"seed{seed}"


def markdown_beside(report: Path) -> Path:
    """The Markdown table `copa filter` writes beside its report JSON."""
    return report.with_suffix(".md")


def predictions_beside(result: Path) -> Path:
    """The predictions file `copa evaluate` writes beside its result JSON: <name>_predictions.json."""
    return result.with_name(f"{result.stem}_predictions.json")


def data_beside(figure: Path) -> Path:
    """The JSON of numbers `copa detected-patches` writes beside its figure stem: <stem>.json."""
    return figure.with_name(figure.name + ".json")


@dataclass(frozen=True)
class RunLayout:
    """The paths of profile ``profile``, relative to the repository root (the workflow's working
    directory). ``results_dir`` replaces results/<profile> where a command is given another
    results folder to read (``copa table --results``); it moves nothing else."""

    profile: str
    results_dir: Path | None = None

    # --- folders
    @property
    def processed(self) -> Path:
        return Path("data/processed") / self.profile

    @property
    def results(self) -> Path:
        return Path(self.results_dir) if self.results_dir is not None else Path("results") / self.profile

    @property
    def figures(self) -> Path:
        return Path("figures") / self.profile

    @property
    def runs(self) -> Path:
        return Path("runs") / self.profile

    @property
    def logs(self) -> Path:
        return Path("logs") / self.profile

    @property
    def benchmarks(self) -> Path:
        """The Snakemake benchmark files' folder (`copa stage-times` reads it)."""
        return self.logs / "benchmarks"

    @property
    def tables(self) -> Path:
        return self.results / "tables"

    # --- processed data
    @property
    def filtered_annotations(self) -> Path:
        """The folder of filtered X-VLM JSON lines (`copa filter`), read by patch labels and pretraining."""
        return self.processed / "annotations"

    @property
    def patch_label_store(self) -> Path:
        return self.processed / "patch_labels.npz"

    @property
    def reference_boxes(self) -> Path:
        return self.processed / "reference_boxes.jsonl"

    # --- results
    @property
    def data_validation(self) -> Path:
        return self.results / "data_validation.json"

    @property
    def filter_report(self) -> Path:
        return self.results / "filter_report.json"

    @property
    def filter_table(self) -> Path:
        return markdown_beside(self.filter_report)

    @property
    def patch_label_summary(self) -> Path:
        return self.results / "patch_labels.json"

    @property
    def reference_boxes_summary(self) -> Path:
        return self.results / "reference_boxes.json"

    def pretrain_eval(self, run: str) -> Path:
        """A pretraining run's held-out probes (`copa pretrain-eval`)."""
        return self.results / "pretrain" / f"{run}.json"

    def patch_detection(self, run: str) -> Path:
        """A pretraining run's TPD against the reference boxes (`copa patch-detection`)."""
        return self.results / "patch_detection" / f"{run}.json"

    def efficiency(self, run: str, size: str = "") -> Path:
        """The costs of run ``run``'s model, at the resolution of size tag ``size``."""
        return self.results / "efficiency" / f"{run}{size}.json"

    def efficiency_paired(self, grid: str) -> Path:
        """The speed of a grid's models timed together (`copa efficiency --grid`): the paired protocol."""
        return self.results / "efficiency" / "paired" / f"{grid}.json"

    def efficiency_from_params(self, name: str) -> Path:
        """The costs of a model built from the parameters (`copa efficiency --from-params` without --json)."""
        return self.results / "efficiency" / "from-params" / f"{name}.json"

    def finetune_result(self, run: str, task: str, size: str = "") -> Path:
        """The evaluation of pretraining run ``run`` fine-tuned on ``task`` (at size tag ``size``)."""
        return self.results / "finetune" / run / f"{task}{size}.json"

    def finetune_predictions(self, run: str, task: str, size: str = "") -> Path:
        return predictions_beside(self.finetune_result(run, task, size))

    def anchor_result(self, model: str, run: str) -> Path:
        """The evaluation of run ``run`` of anchor model ``model`` (copa.report.grids.ANCHOR_TASKS; the workflow's
        run of a seed: ``seed_run``), e.g. `copa vqa-scratch`'s."""
        return self.results / model / f"{run}.json"

    def table(self, name: str) -> Path:
        """The stem of a table (a grid's, or figure5): .csv .md .tex .json."""
        return self.tables / name

    @property
    def claims(self) -> Path:
        """The claims check's Markdown; its JSON goes beside it."""
        return self.results / "claims.md"

    @property
    def claims_json(self) -> Path:
        return self.claims.with_suffix(".json")

    @property
    def targets(self) -> Path:
        """Issue 23's outcome targets against the default run (`copa targets`); its JSON goes beside it."""
        return self.results / "targets.md"

    @property
    def instruments(self) -> Path:
        """The held-out instruments of every pretraining run the profile trains, side by side (`copa
        instruments`); its JSON goes beside it."""
        return self.results / "instruments.md"

    # --- figures (stems: .png and .pdf)
    def figure(self, name: str) -> Path:
        """The stem of a figure: a grid's (figure1a, figure3), figure4, figure5."""
        return self.figures / name

    @property
    def patch_label_figure(self) -> Path:
        return self.figure("patch_labels")

    def pretrain_figure(self, run: str) -> Path:
        return self.figures / "pretrain" / run

    # --- training runs (folders)
    def encoder_init(self, seed: int | str) -> Path:
        """The contrastive encoder init shared by the pretraining runs of ``seed``."""
        return self.runs / "encoder_init" / seed_run(seed)

    def pretrain_run(self, run: str) -> Path:
        return self.runs / "pretrain" / run

    def finetune_run(self, run: str, task: str, size: str = "") -> Path:
        return self.runs / "finetune" / run / f"{task}{size}"

    def anchor_run(self, model: str, run: str) -> Path:
        """Run ``run`` of anchor model ``model`` (e.g. ``vqa_scratch``, params vqa_scratch)."""
        return self.runs / model / run

    # --- a workflow job's log and benchmark, by the job's name: its rule, then its wildcards as a path
    def log(self, job: str) -> Path:
        return self.logs / f"{job}.log"

    def benchmark(self, job: str) -> Path:
        return self.benchmarks / f"{job}.tsv"
