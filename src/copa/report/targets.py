"""Issue 23's outcome targets for the demo, next to what a profile's run measured: one table
(results/<profile>/targets.md, and the same rows as JSON beside it) that says which target the
main job reaches, read from the files the workflow wrote, never typed.

Each target reads the profile's default run (its params' model: copa.report.grids.params_run_name):

- VQA, from its evaluation (copa.tasks.vqa): overall, the "other" answer type (the colour and
  shape questions), each beside Table 10's anchors of the run's seed where they ran (the FiLM
  model from scratch, the perception bracket), and the overall minus the swapped-image control
  (the same questions asked about other images: what the model takes from the image);
- the held-out probes of its last pretraining checkpoint (copa.eval.pretraining): ITM balanced
  accuracy with hard negatives, the TPD's average precision guided by the box's own text, the
  same-image contrast (paired, with its interval) and target-patch recall at 30% keep, the run's
  selector minus image-[CLS] attention (micro: over all target patches);
- retrieval R@1 and grounding acc@0.5 (each split the evaluation scored) from their evaluations;
- the claims check's count of "not measurable" verdicts (copa.report.claims);
- the workflow's time: the time during which at least one of the jobs whose benchmark files lie
  under logs/<profile>/benchmarks ran (copa.report.stage_times.busy_seconds: jobs side by side
  count once), beside their summed time, the time to make every output one job after another.

A target whose file is missing is "not run", and one the run cannot measure (no TPD scores
without a TPD, no swapped-image control where it is off) says why: neither gets a verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from copa.config import DEFAULT_PARAMS_DIR, Params
from copa.data.formats.records import load_json
from copa.eval.target_recall_record import KEEP_RATIOS, REFERENCES
from copa.report.claims import UNMEASURABLE
from copa.report.grids import ABLATION_GRID, AnchorRow, load_grid, params_run_name
from copa.report.stage_times import busy_seconds, stage_times
from copa.run_layout import RunLayout, seed_run

TARGET_KEEP = 0.3  # the keep ratio of the target-patch recall target
assert TARGET_KEEP in KEEP_RATIOS
NOT_RUN = "not run"  # a measure's text where a file is missing: "not run (<file> missing)"


@dataclass(frozen=True)
class TargetRow:
    what: str
    target: str
    measured: str  # "not run (<file> missing)" where the file is absent, the reason where the run has no such number
    met: bool | None  # None: not run, or not measurable on this run


class RunFiles:
    """The result files of one pretraining run (the targets': the profile's default run) and the
    profile's claims check, read once each; a missing one raises FileNotFoundError. ``anchors``: the
    VQA anchors of seed ``seed`` shown beside its VQA."""

    def __init__(self, layout: RunLayout, run: str, seed: int | None = None, anchors: Sequence[AnchorRow] = ()):
        self.layout, self.run, self.seed, self.anchors = layout, run, seed, anchors
        self.files: dict[Path, object] = {}
        self.last: Path | None = None  # the file read last: the one a missing key is in

    def _json(self, path: Path):
        if path not in self.files:
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing")
            self.files[path] = load_json(path)
        self.last = path
        return self.files[path]

    def task(self, task: str) -> dict:
        return self._json(self.layout.finetune_result(self.run, task))

    def anchor(self, anchor: AnchorRow) -> dict | None:
        """The result of ``anchor`` for the run's seed; None if it did not run."""
        path = self.layout.anchor_result(anchor.model, seed_run(self.seed))
        return self._json(path) if path.is_file() else None

    def probes(self) -> dict:
        """The held-out probes of the run's last pretraining checkpoint."""
        return self._json(self.layout.pretrain_eval(self.run))["checkpoints"][-1]

    def claims(self) -> list[dict]:
        return self._json(self.layout.claims_json)


@dataclass(frozen=True)
class Bar:
    """A number the measured value must reach: at least ``value``, or at most with ``at_most``; the
    target's text is written from it, so what the table says is what is compared."""
    value: float
    unit: str = ""
    at_most: bool = False

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.value:g}{self.unit}"

    def met(self, measured: float) -> bool:
        return measured <= self.value if self.at_most else measured >= self.value


Measure = Callable[[RunFiles, Sequence[Bar]], tuple[str, bool | None]]


@dataclass(frozen=True)
class Target:
    what: str
    bars: tuple[Bar, ...]
    measure: Measure
    note: str = ""  # the target's text after its bars: how its measure applies them ("each" split) or what it checks besides
    instrument: bool = False  # read from a pretraining run's own files: copa.report.instruments shows it for every run

    @property
    def text(self) -> str:
        return " / ".join(map(str, self.bars)) + self.note


def _vqa(key: Callable[[dict], float]) -> Measure:
    """A VQA number of the run, with the same number of Table 10's anchors beside it where they ran."""
    def measure(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool]:
        value = key(run.task("vqa"))
        beside = [f"; {a.label} {key(record):.1f}" for a in run.anchors if (record := run.anchor(a)) is not None]
        return f"{value:.1f}" + "".join(beside), bars[0].met(value)
    return measure


def _vqa_swap(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    record = run.task("vqa")
    if "controls" not in record:
        return "no swapped-image control (evaluate.vqa.swapped_image_control off)", None
    control = record["controls"]["swapped_image"]
    gap = record["overall"] - control["overall"]
    return (f"{gap:.1f} ({record['overall']:.1f} - {control['overall']:.1f}; {100 * control['answers_changed']:.0f}% of answers "
            "change)"), bars[0].met(gap)


def _itm(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    itm = run.probes()["itm"]
    value = 100 * itm["hard"]["balanced"]
    auc = f", AUC {itm['hard']['auc']:.3f}" if "auc" in itm["hard"] else ""  # evaluations before the AUC have none
    return f"{value:.1f}% (constant predictor {100 * itm['constant']:.0f}%){auc}", bars[0].met(value)


def _tpd_ap(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    detection = run.probes()["patch_detection"]
    if "score_ap" not in detection:
        return f"no TPD scores (selection {detection.get('selection', 'none')})", None
    ap = detection["score_ap"]
    return f"{ap['text']:.3f} (another box's text: {ap['other_text']:.3f})", bars[0].met(ap["text"])


def _contrast(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    contrast = run.probes()["same_image_contrast"]
    if "contrast" not in contrast:
        return contrast["note"], None
    c = contrast["contrast"]
    return f"{c['estimate']:.3f} [{c['low']:.3f}, {c['high']:.3f}]", bars[0].met(c["estimate"]) and c["low"] > 0  # the note's "interval above 0"


def _target_recall(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    probes = run.probes()
    if "target_recall" not in probes:
        return "not measured (the data root has no referents.json)", None
    selectors = probes["target_recall"]["selectors"]
    own = next((name for name in selectors if name not in REFERENCES), None)
    if own is None:
        return "no selector of the run's own", None

    def micro(name: str) -> float:
        return {r["keep_ratio"]: r["micro"] for r in selectors[name]}[TARGET_KEEP]

    gap = micro(own) - micro("cls_attention")
    return (f"{gap:+.3f} ({own} {micro(own):.3f}, [CLS] attention {micro('cls_attention'):.3f}, "
            f"random {micro('random'):.3f}, oracle {micro('oracle'):.3f})"), bars[0].met(gap)


def _retrieval(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    r = run.task("retrieval")
    text, image = bars
    measured = f"{r['tr_r1']:.1f} / {r['ir_r1']:.1f}; ITC stage alone {r['coarse']['tr_r1']:.1f} / {r['coarse']['ir_r1']:.1f}"
    if "fit_oracle" in r:  # the world's captions fit other images too: what knowing only what is true reaches
        measured += f"; caption-fit oracle {r['fit_oracle']['tr_r1']:.1f} / {r['fit_oracle']['ir_r1']:.1f}"
    return measured, text.met(r["tr_r1"]) and image.met(r["ir_r1"])


def _grounding(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    record = run.task("grounding")
    splits = record["splits"]
    met = bool(splits) and all(bars[0].met(s["acc@0.5"]) for s in splits.values())
    return " / ".join(f"{name} {s['acc@0.5']:.1f}" for name, s in splits.items()) + _centre_r(splits) + _fine_tune(record), met


def _fine_tune(record: dict) -> str:
    """What the grounding fine-tune kept and added, where the record says (older records do not)."""
    if "keep_ratio" not in record:
        return ""
    pta = f", PTA on the referred box (weight {record['pta_weight']:g})" if record["pta_weight"] > 0 else ""
    return f"; fine-tuned with {record['selection']} keeping {record['keep_ratio']:.0%}{pta}"


def _centre_r(splits: dict) -> str:
    """The predicted against true box centres' correlation, x / y per split (copa.eval.grounding),
    where the record has it (older records do not)."""
    def r(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    scored = {name: s["centre_r"] for name, s in splits.items() if "centre_r" in s}
    if not scored:
        return ""
    return "; centre r x / y " + ", ".join(f"{name} {r(c['x'])} / {r(c['y'])}" for name, c in scored.items())


def _claims(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    verdicts = run.claims()
    n = sum(v["verdict"] == UNMEASURABLE for v in verdicts)
    return f"{n} of {len(verdicts)}", bars[0].met(n)


TRAINING_RULES = ("pretrain", "finetune", "evaluate")  # every profile's workflow runs them: without them, a part ran


def _time(run: RunFiles, bars: Sequence[Bar]) -> tuple[str, bool | None]:
    times = stage_times(run.layout.benchmarks)
    missing = [rule for rule in TRAINING_RULES if rule not in {t.rule for t in times}]
    if missing:  # e.g. `dvc repro data` alone: its minute would pass the bar
        raise FileNotFoundError(f"{run.layout.benchmarks}: no benchmark of the {', '.join(missing)} rules, so not a whole workflow")
    minutes = busy_seconds(run.layout.benchmarks) / 60
    return f"{minutes:.0f} min with a job running ({sum(t.seconds for t in times) / 60:.0f} summed over the jobs)", bars[0].met(minutes)


TARGETS: tuple[Target, ...] = (
    Target("VQA overall, COPA run", (Bar(75),), _vqa(lambda r: r["overall"])),
    Target('VQA "other" (colour and shape questions)', (Bar(70),), _vqa(lambda r: r["per_answer_type"]["other"])),
    Target("VQA overall minus swapped-image control", (Bar(20, " points"),), _vqa_swap, instrument=True),
    Target("ITM held-out accuracy, balanced, hard negatives", (Bar(85, "%"),), _itm, instrument=True),
    Target("TPD patch AP guided by the pair's own text", (Bar(0.45),), _tpd_ap, instrument=True),
    Target("same-image PTA contrast, paired", (Bar(0.15),), _contrast, " AP, interval above 0", instrument=True),
    Target(f"target-patch recall at {TARGET_KEEP:.0%} keep, TPD minus [CLS]-attention", (Bar(0.15),), _target_recall, instrument=True),
    Target("retrieval TR@1 / IR@1 (Karpathy-style test split)", (Bar(40), Bar(25)), _retrieval),
    Target("grounding acc@0.5, each split (val / testA / testB)", (Bar(70),), _grounding, " each"),
    Target('claims "not measurable"', (Bar(2, at_most=True),), _claims),
    Target("workflow time, 2 cores", (Bar(90, " min", at_most=True),), _time),
)


def measure_targets(params: Params, layout: RunLayout, params_dir: str | Path = DEFAULT_PARAMS_DIR) -> list[TargetRow]:
    """Every target's row for the profile of ``params``, from its files under ``layout``."""
    vqa_anchors = [a for a in load_grid(ABLATION_GRID, params_dir).anchors if a.task == "vqa"]  # shown beside the run's VQA
    run = RunFiles(layout, params_run_name(params), params.seed, vqa_anchors)
    return [TargetRow(target.what, target.text, *measure_target(target, run)) for target in TARGETS]


def measure_target(target: Target, run: RunFiles) -> tuple[str, bool | None]:
    """What ``run`` measured for ``target`` and whether it meets the bars; "not run (<file> missing)"
    and None where a file is missing. A record of another format raises ValueError naming the file."""
    try:
        return target.measure(run, target.bars)
    except FileNotFoundError as missing:
        return f"{NOT_RUN} ({missing})", None
    except (KeyError, IndexError, TypeError) as exc:  # a record of another format
        raise ValueError(f"target {target.what!r}: {run.last}: no {exc} where its record should have it") from None


def targets_markdown(rows: list[TargetRow], profile: str, run: str) -> str:
    mark = {True: "**met**", False: "not met", None: "-"}
    lines = [f"Outcome targets (issue 23) of the {profile} profile's default run `{run}`, measured (copa.report.targets):", "",
             "| what | target | measured | |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.what} | {r.target} | {r.measured} | {mark[r.met]} |" for r in rows]
    met = sum(r.met is True for r in rows)
    lines += ["", f"{met} of {len(rows)} targets met."]
    return "\n".join(lines) + "\n"


def write_targets(params: Params, out: Path, layout: RunLayout, params_dir: str | Path = DEFAULT_PARAMS_DIR) -> list[Path]:
    """``out`` (.md) and the same rows as JSON beside it."""
    rows = measure_targets(params, layout, params_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(targets_markdown(rows, params.profile, params_run_name(params)), encoding="utf-8")
    js = out.with_suffix(".json")
    js.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8")
    return [out, js]
