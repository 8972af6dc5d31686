"""The claims check: each qualitative claim of the COPA ablations (digest-copa.md, "Claims the
ablations make") against this profile's tables, with a verdict by one rule (``RULE``, also the
header of results/<profile>/claims.md; ``judge`` applies it).

Each claim is tested as one or more differences oriented so that the paper's direction is
positive. Accuracy differences between rows evaluated on the same examples are paired: where
the rows' result files keep each example's score (VQA: ``per_question``), a paired bootstrap
over the examples (copa.eval.paired); where they do not (result files from before), the two
rows' separate standard errors from the table, marked unpaired. Figure 5's changes and margins
over chance come with the probe's own paired bootstrap (copa.eval.patch_detection). FLOPs and
memory are deterministic, with a stated minimal relative effect; throughput is compared as a
paired speedup over the timing rounds of the table's models, timed together
(copa.eval.paired_timing), with its bootstrap interval (copa.eval.paired.paired_speedup).

The claims read the tables' canonical CSVs (results/<profile>/tables/<grid>.csv) by row label, as
the grid files in params/grids/ name them, and the rows' result files (copa.report.grids.row_result)
for per-example scores.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from copa.config import DEFAULT_PARAMS_DIR, Params
from copa.data.formats.records import FormatError, load_json
from copa.eval.paired import LEVEL, POWER, PairedDifference, paired_bootstrap, paired_speedup
from copa.report.columns import COLUMNS, PERCENT
from copa.report.grids import load_grid, paired_result, row_result

HOLDS, FAILS, UNMEASURABLE = "holds", "does not hold", "not measurable at this scale"
MIN_VQA_POINTS = 0.25  # the smallest VQA difference the paper reports as an effect (Table 6: 71.51 vs 71.26)
MIN_DETECTION = 0.01  # Figure 5: one point of patch accuracy / recall (fractions)
MIN_COST = 0.01  # FLOPs, memory: a relative difference of 1%
SPREAD_TOLERANCE = 0.05  # "independent of location": memory within 5% of its mean across locations
_UNIT = PairedDifference.from_se(0.0, 1.0)  # in standard errors: the interval's half-width (high) and the MDD

RULE = (
    "Verdict rule. Each claim is a difference oriented so that the paper's direction is positive, with a "
    f"{100 * (1 - LEVEL):.0f}% interval [lo, hi] (estimate +- {_UNIT.high:.2f} SE).",
    "- **holds**: lo > 0 (the interval excludes zero in the paper's direction) and the point estimate is at least the "
    f"claim's minimal effect m (VQA accuracy: {MIN_VQA_POINTS} points, the smallest difference the paper reports as an effect; "
    f"Figure 5 accuracy / recall: {MIN_DETECTION}). Decided first: an effect shown in the paper's direction holds even where "
    "it is smaller than the paper's.",
    "- **does not hold**: the interval excludes the paper's effect: hi < p, p = the difference of the paper's two numbers "
    "(VQA accuracy points; the paper's accuracy level is not this profile's, so p is the bar a refutation must clear, not a "
    "prediction); where only the direction is comparable (Figure 5: another scale of training, no chance level in the "
    "paper) hi < 0, the interval excludes zero in the opposite direction.",
    "- **not measurable at this scale**: otherwise, or rows this profile does not train; the text gives the minimal "
    f"detectable difference (MDD = {_UNIT.detectable:.2f} SE: the smallest true difference a two-sided {100 * LEVEL:.0f}% test "
    f"detects with {100 * POWER:.0f}% power at this scale).",
    "- Intervals: a paired bootstrap over the test examples where the result files keep each example's score (VQA: per "
    "question; each resample draws both rows' scores of the same questions); otherwise \"unpaired\": the rows' binomial "
    "standard errors (or over seeds) combined. Figure 5: the probe's bootstrap over web pairs, the same pairs at both "
    "epochs. Claim 6a needs the end above chance too: a rise that ends at chance is no generalising detector.",
    f"- Costs: FLOPs and memory are deterministic: holds iff every relative difference is at least {100 * MIN_COST:.0f}% in "
    "the paper's direction, otherwise does not hold. Throughput: the paired speedup of the rows timed together (the "
    "median of the per-round time ratios, with its percentile bootstrap interval over the rounds): holds iff the interval "
    "lies above 1, does not hold iff below 1, otherwise not measurable. "
    "A claim of several parts holds when all hold and does not hold when one does not.",
)


@dataclass(frozen=True)
class Verdict:
    claim: str
    paper: str  # the paper's evidence
    measured: str  # what this profile measured
    verdict: str
    parts: list[dict] = field(default_factory=list)  # each tested difference: its interval, bars and verdict


def judge(difference: PairedDifference, minimal: float, paper: float | None = None) -> str:
    """``RULE`` for a difference oriented so that the paper's direction is positive: ``minimal``
    the claim's minimal effect, ``paper`` the paper's effect where it is comparable (None: only the
    direction is). "holds" is decided first: an effect shown in the paper's direction holds even
    where it is smaller than the paper's."""
    if difference.low > 0 and difference.estimate >= minimal:
        return HOLDS
    if difference.high < (0.0 if paper is None else paper):
        return FAILS
    return UNMEASURABLE


def exact_verdict(relative: float, minimal: float = MIN_COST) -> str:
    """A deterministic relative difference (FLOPs, memory), positive in the paper's direction."""
    return HOLDS if relative >= minimal else FAILS


def timing_verdict(speedup: dict) -> str:
    """A paired speedup (estimate, low, high; > 1 in the paper's direction) by its interval."""
    return HOLDS if speedup["low"] > 1 else FAILS if speedup["high"] < 1 else UNMEASURABLE


def _speedup_text(speedup: dict) -> str:
    return f"speedup {speedup['estimate']:.3f} [{speedup['low']:.3f}, {speedup['high']:.3f}]"


def combined(verdicts: list[str]) -> str:
    """The parts of a claim: any failure fails it, all holding hold it."""
    return FAILS if FAILS in verdicts else HOLDS if verdicts and all(v == HOLDS for v in verdicts) else UNMEASURABLE


def _part(name: str, difference: PairedDifference, minimal: float, paper: float | None, paired: bool) -> dict:
    return {"name": name, **difference.as_dict(), "paired": paired, "minimal": minimal, "paper": paper,
            "verdict": judge(difference, minimal, paper)}


def _part_text(part: dict, digits: int) -> str:
    """+1.31 [-0.46, +3.08] ...: the estimate, its interval, the MDD and the bars."""
    bar = f"paper {part['paper']:+.{digits}f}" if part["paper"] is not None else "direction only"
    return (f"{part['estimate']:+.{digits}f} [{part['low']:+.{digits}f}, {part['high']:+.{digits}f}], "
            f"MDD {part['detectable']:.{digits}f}; m {part['minimal']:g}, {bar}")


class Tables:
    """The canonical CSVs of one profile, by grid name, and (given the profile's params) the
    per-example scores of their rows from the result files under ``results`` (default: the
    tables folder's parent, results/<profile>)."""

    def __init__(self, folder: Path, params: Params | None = None, results: Path | None = None,
                 params_dir: str | Path = DEFAULT_PARAMS_DIR):
        self.folder = Path(folder)
        self.params, self.params_dir = params, params_dir
        self.results = Path(results) if results is not None else self.folder.parent
        self._frames: dict[str, pd.DataFrame | None] = {}

    def frame(self, grid: str) -> pd.DataFrame | None:
        if grid not in self._frames:
            path = self.folder / f"{grid}.csv"
            self._frames[grid] = _read_table(path) if path.is_file() else None
        return self._frames[grid]

    def value(self, grid: str, row: str, column: str) -> dict | None:
        """mean, std, seeds, examples, paper of one cell; None if the table, row or value is missing."""
        frame = self.frame(grid)
        if frame is None or row not in frame.index or column not in frame.columns or pd.isna(frame.at[row, column]):
            return None

        def companion(suffix: str):
            name = f"{column}{suffix}"
            return frame.at[row, name] if name in frame.columns else None

        mean = frame.at[row, column]
        if not isinstance(mean, numbers.Real):  # a hand-edited cell
            raise FormatError(self.folder / f"{grid}.csv", f"{mean!r} is not a number", record=repr(row), field=column)
        return {"mean": float(mean), "std": _number(companion("_std")), "seeds": int(companion("_seeds") or 1),
                "examples": _number(companion("_examples")), "paper": _number(companion("_paper"))}

    def speedup(self, grid: str, faster: str, slower: str) -> dict | None:
        """The paired throughput speedup of row ``faster`` over row ``slower`` of ``grid`` (> 1:
        ``faster`` is), from the timing rounds of the grid's models timed together; None where
        the timing or a row is missing."""
        path = paired_result(self.results, grid)
        if not path.is_file():
            return None
        record = load_json(path)
        models = record.get("models", {})
        if faster not in models or slower not in models:
            return None
        return paired_speedup(models[slower]["throughput"]["seconds_per_round"], models[faster]["throughput"]["seconds_per_round"],
                              seed=record["settings"]["timing"]["seed"])

    def example_scores(self, grid: str, row: str, column: str) -> dict[str, float] | None:
        """Each test example's score (0-1, the mean over the profile's seeds) of ``row`` by example
        id; None without params, or where a result file or its per-example scores are missing."""
        spec = COLUMNS[column]
        if self.params is None or spec.per_example is None:
            return None
        grid_row = load_grid(grid, self.params_dir).row(row)
        results = []
        for seed in self.params.report.seeds:
            path = row_result(grid_row, spec.source, self.params, self.results, seed)
            if not path.is_file():
                return None
            results.append((path, load_json(path)))
        return spec.seed_mean_scores(results)


def _read_table(path: Path) -> pd.DataFrame:
    """A table's CSV as `copa table` writes it, indexed by its 'row' column."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise FormatError(path, f"not a CSV table ({exc})") from None
    if "row" not in frame.columns:
        raise FormatError(path, "no 'row' column: not a table `copa table` writes")
    return frame.set_index("row")


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def standard_error(a: dict, b: dict) -> float | None:
    """Of the difference of two accuracies (points), unpaired: over seeds, or binomial over
    examples, sqrt(p (100 - p) / N) (an approximation: VQA's soft scores are not 0/1)."""
    if a["std"] is not None and b["std"] is not None:
        return math.sqrt(a["std"] ** 2 / a["seeds"] + b["std"] ** 2 / b["seeds"])
    if a["examples"] and b["examples"]:
        return math.sqrt(a["mean"] * (100 - a["mean"]) / a["examples"] + b["mean"] * (100 - b["mean"]) / b["examples"])
    return None


def better_accuracy(tables: Tables, grid: str, better: str, worse: str, column: str = "vqa") -> tuple[str, str, list[dict]]:
    """(measured text, verdict, parts) of "row ``better`` scores higher than row ``worse``"."""
    a, b = tables.value(grid, better, column), tables.value(grid, worse, column)
    if a is None or b is None:
        missing = " and ".join(label for label, v in ((better, a), (worse, b)) if v is None)
        return f"{missing}: not trained in this profile", UNMEASURABLE, []
    paper = a["paper"] - b["paper"] if a["paper"] is not None and b["paper"] is not None else None
    text = f"{better} {a['mean']:.2f} vs {worse} {b['mean']:.2f}: "
    first, second = tables.example_scores(grid, better, column), tables.example_scores(grid, worse, column)
    if first is not None and second is not None:
        if first.keys() != second.keys():
            raise ValueError(f"{grid}: rows {better!r} and {worse!r} were not evaluated on the same examples")
        ids = sorted(first)
        difference, paired = paired_bootstrap([first[i] for i in ids], [second[i] for i in ids]).scaled(PERCENT), True
        how = f"paired over {len(ids):,} {COLUMNS[column].count[-1]}"
    else:
        se = standard_error(a, b)
        if se is None:
            return text + f"{a['mean'] - b['mean']:+.2f} (no standard error)", UNMEASURABLE, []
        difference, paired, how = PairedDifference.from_se(a["mean"] - b["mean"], se), False, "unpaired"
    part = _part(f"{better} - {worse}", difference, MIN_VQA_POINTS, paper, paired)
    return text + f"{_part_text(part, 2)} ({how})", part["verdict"], [part]


def _series(tables: Tables, grid: str, rows: list[str], column: str) -> list[tuple[str, float]]:
    return [(row, v["mean"]) for row in rows if (v := tables.value(grid, row, column)) is not None]


def rising_steps(values: list[tuple[str, float]]) -> list[float]:
    """Each step's relative rise along a series: value / previous value - 1."""
    return [b[1] / a[1] - 1 for a, b in zip(values, values[1:])]


def _listing(values: list[tuple[str, float]], digits: int) -> str:
    return ", ".join(f"{row} {value:.{digits}f}" for row, value in values)


def _rising_claim(series: list[list[tuple[str, float]]]) -> tuple[str, str]:
    """(text, verdict) of deterministic costs that rise along each series by at least MIN_COST per step."""
    steps = [step for s in series for step in rising_steps(s)]
    if not steps:
        return "", UNMEASURABLE
    text = f"; smallest step {100 * min(steps):+.1f}%"
    return text, combined([exact_verdict(step) for step in steps])


def check_claims(tables: Tables) -> list[Verdict]:
    verdicts = []

    text, verdict, parts = better_accuracy(tables, "table10", "COPA", "w/o PTA")
    verdicts.append(Verdict("1. Text-guided selection trained by PTA beats [CLS]-attention selection at the same location and ratio",
                            "Table 10: 77.84 vs 77.12", text, verdict, parts))
    text, verdict, parts = better_accuracy(tables, "table10", "w/o TPD", "mPLUG")
    verdicts.append(Verdict("2. PTA alone (no selection) helps the task", "Table 10: 77.98 vs 77.55", text, verdict, parts))

    locations, ratios = (4, 6, 8), (10, 30, 50, 70)
    flops_by_ratio = [_series(tables, "table9", [f"loc {loc}, {r}%" for r in ratios], "gmacs") for loc in locations]
    flops_by_location = [_series(tables, "table9", [f"loc {loc}, {r}%" for loc in locations], "gmacs") for r in ratios]
    steps, verdict = _rising_claim(flops_by_ratio + flops_by_location)
    verdicts.append(Verdict(
        "3a. An earlier location or a lower keeping ratio costs fewer FLOPs", "Table 9: 10.15 G (loc 4, 10%) ... 30.22 G (loc 8, 70%)",
        ("; ".join(_listing(s, 3) for s in flops_by_ratio if s) + steps) or "Table 9 missing", verdict))
    speed = [(loc, tables.speedup("table9", f"loc {loc}, 10%", f"loc {loc}, 70%")) for loc in locations]
    speed = [(loc, up) for loc, up in speed if up]
    verdicts.append(Verdict(
        "3b. ... and runs faster (throughput: 10% above 70% at every location)", "Table 9: 514 vs 337 pairs/s at loc 4",
        "; ".join(f"loc {loc}: 10% over 70% {_speedup_text(up)}" for loc, up in speed) or "Table 9 missing",
        combined([timing_verdict(up) for _, up in speed])))
    text, verdict, parts = better_accuracy(tables, "table9", "loc 6, 50%", "loc 6, 10%")
    verdicts.append(Verdict("3c. ... at lower accuracy; keeping 10% hurts most", "Table 9: 77.84 (50%) vs 76.89 (10%) at loc 6",
                            text, verdict, parts))
    text, verdict, parts = better_accuracy(tables, "table9", "loc 8, 50%", "loc 4, 50%")
    verdicts.append(Verdict("3d. A later detection location is more accurate at the same ratio", "Table 9: 77.89 (loc 8) vs 77.33 (loc 4) at 50%",
                            text, verdict, parts))

    by_ratio = _series(tables, "figure3", ["keep 10%", "keep 30%", "keep 50%", "keep 70%"], "memory_mib")
    steps, verdict = _rising_claim([by_ratio])
    verdicts.append(Verdict("4a. Pretraining memory falls with the keeping ratio", "Figure 3(a)",
                            (_listing(by_ratio, 0) + steps) or "Figure 3 missing", verdict))
    by_location = _series(tables, "figure3", ["loc 2", "loc 4", "keep 50%", "loc 8", "loc 10"], "memory_mib")
    if len(by_location) > 1:
        values = [v for _, v in by_location]
        spread = (max(values) - min(values)) / (sum(values) / len(values))
        text = f"{_listing(by_location, 0)} ('keep 50%' is loc 6): spread {100 * spread:.0f}% of the mean"
        verdict = HOLDS if spread <= SPREAD_TOLERANCE else FAILS
    else:
        text, verdict = "Figure 3 missing", UNMEASURABLE
    verdicts.append(Verdict(f"4b. ... and does not depend on the detection location (within {100 * SPREAD_TOLERANCE:.0f}%)", "Figure 3(b)",
                            text, verdict))

    verdicts += _resolution_claims(tables)
    verdicts += _generalisation_claims(tables)
    verdicts += _single_stream_claims(tables)
    return verdicts


def _single_stream_claims(tables: Tables) -> list[Verdict]:
    """Claim 7 (Table 6): in the single-stream model the TPD trained by PTA makes it faster (fewer
    FLOPs, higher throughput than ViLT) with no loss of VQA accuracy (the paper: +0.25 points)."""
    flops = {row: tables.value("table6", row, "gmacs") for row in ("COPA-S", "ViLT")}
    speedup = tables.speedup("table6", "COPA-S", "ViLT")
    if any(v is None for v in flops.values()) or speedup is None:
        text, verdict = "Table 6 missing", UNMEASURABLE
    else:
        flops_s, flops_v = (f["mean"] for f in flops.values())
        text = f"COPA-S {flops_s:.3f} G vs ViLT {flops_v:.3f} G (FLOPs {100 * (flops_s / flops_v - 1):+.0f}%); throughput {_speedup_text(speedup)}"
        verdict = combined([exact_verdict(flops_v / flops_s - 1), timing_verdict(speedup)])
    faster = Verdict("7a. The TPD transfers to a single-stream model: COPA-S costs fewer FLOPs and runs faster than ViLT",
                     "Table 6: 26.23 vs 55.40 G, 436.74 vs 247.53 pairs/s", text, verdict)
    text, verdict, parts = better_accuracy(tables, "table6", "COPA-S", "ViLT")
    return [faster, Verdict("7b. ... with no loss of VQA accuracy (it is the more accurate)", "Table 6: 71.51 vs 71.26", text, verdict, parts)]


def _generalisation_claims(tables: Tables) -> list[Verdict]:
    """Claim 6 (Figure 5): out of domain, the TPD's top-K accuracy and recall rise from the first to
    the last epoch (6a) and end above what keeping as many patches at random scores (6b; the paper's
    0.87 / 0.74 imply it). A rise counts only when it ends above chance: 6a takes 6b's parts too."""
    frame = tables.frame("figure5")
    claims = ("6a. The TPD's accuracy and recall on out-of-domain web pairs rise over the epochs (to above chance)",
              "6b. ... and end above chance: the TPD generalises to web pairs")
    paper = ("Figure 5: rising to accuracy 0.87, recall ~0.74 at epoch 30", "Figure 5 (no chance level given)")
    epochs = [row for row in frame.index if row.startswith("epoch ")] if frame is not None else []
    if len(epochs) < 2:
        text = "Figure 5 missing (the default run has no TPD)" if frame is None else "Figure 5 has fewer than two epochs"
        return [Verdict(c, p, text, UNMEASURABLE) for c, p in zip(claims, paper)]
    first, last = frame.loc[epochs[0]], frame.loc[epochs[-1]]
    rise, above, texts = [], [], ([], [])
    for m in ("accuracy", "recall"):
        change = PairedDifference.from_se(last[f"ood_kept_{m}_change"], last[f"ood_kept_{m}_change_se"])
        margin = PairedDifference.from_se(last[f"ood_kept_{m}_over_chance"], last[f"ood_kept_{m}_over_chance_se"])
        rise.append(_part(f"{m} rise", change, MIN_DETECTION, None, True))
        above.append(_part(f"{m} over chance", margin, MIN_DETECTION, None, True))
        texts[0].append(f"{m} {first[f'ood_kept_{m}']:.3f} -> {last[f'ood_kept_{m}']:.3f}: {_part_text(rise[-1], 3)}")
        texts[1].append(f"{m} {last[f'ood_kept_{m}']:.3f} vs chance {last[f'ood_chance_{m}']:.3f}: {_part_text(above[-1], 3)}")
    ends = ", ".join(f"{p['name']} {p['verdict']}" for p in above)
    return [Verdict(claims[0], paper[0], f"top-K, {epochs[0]} -> {epochs[-1]}: " + "; ".join(texts[0]) + f"; end: {ends} (6b)",
                    combined([p["verdict"] for p in rise + above]), rise + above),
            Verdict(claims[1], paper[1], f"top-K, {epochs[-1]}: " + "; ".join(texts[1]), combined([p["verdict"] for p in above]), above)]


def _resolution_claims(tables: Tables) -> list[Verdict]:
    """Claim 5 (Table 5): accuracy rises with the VQA fine-tuning resolution, and at the highest
    resolution whose FLOPs do not exceed mPLUG's at 384 px the TPD model is the more accurate."""
    copa = [f"COPA {px}" for px in (224, 256, 304, 384, 464, 512)]
    trained = [row for row in copa if tables.value("table5", row, "vqa")]
    if len(trained) > 1:
        text, verdict, parts = better_accuracy(tables, "table5", trained[-1], trained[0])
    else:
        text, verdict, parts = f"{len(trained)} of the COPA resolutions trained in this profile", UNMEASURABLE, []
    verdicts = [Verdict("5a. A higher VQA fine-tuning resolution with the TPD improves accuracy", "Table 5: 78.25 (512) vs 76.83 (224)",
                        text, verdict, parts)]
    baseline = tables.value("table5", "mPLUG 384", "gmacs")
    cheaper = [(row, v["mean"]) for row in copa if baseline and (v := tables.value("table5", row, "gmacs")) and v["mean"] <= baseline["mean"]]
    if cheaper:
        row, flops = cheaper[-1]
        text, verdict, parts = better_accuracy(tables, "table5", row, "mPLUG 384")
        text += f"; FLOPs {flops:.3f} vs {baseline['mean']:.3f} G"
    else:
        text, verdict, parts = "no COPA resolution within mPLUG 384's FLOPs" if baseline else "Table 5 missing", UNMEASURABLE, []
    verdicts.append(Verdict("5b. ... so that at no more FLOPs than mPLUG at 384 px it is the more accurate",
                            "Table 5: 78.25 at 83.24 G (512) vs 77.55 at 84.87 G", text, verdict, parts))
    return verdicts


def claims_markdown(verdicts: list[Verdict], profile: str) -> str:
    lines = [f"# Claims of the COPA ablations, checked on the {profile} profile", "",
             "Verdicts from this profile's tables (results/<profile>/tables/) and its runs' per-example scores (see",
             "copa.report.claims). A claim that does not hold here is a finding about this scale, not a bug. Differences read",
             "estimate [interval], MDD (minimal detectable difference), m (minimal effect to hold), paper (the paper's effect).", "",
             *RULE, "",
             "| claim | paper | measured here | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {v.claim} | {v.paper} | {v.measured} | **{v.verdict}** |" for v in verdicts]
    counts = {name: sum(v.verdict == name for v in verdicts) for name in (HOLDS, FAILS, UNMEASURABLE)}
    lines += ["", "Summary: " + ", ".join(f"{n} {name}" for name, n in counts.items()) + "."]
    return "\n".join(lines) + "\n"


def write_claims(tables_dir: Path, profile: str, out: Path, params: Params | None = None,
                 params_dir: str | Path = DEFAULT_PARAMS_DIR) -> list[Path]:
    """``out`` (.md) and the same verdicts as JSON beside it; with ``params``, accuracy differences
    are paired where the result files beside the tables (results/<profile>/) keep per-example scores."""
    if not Path(tables_dir).is_dir():
        raise FileNotFoundError(f"{tables_dir}: no such folder (the tables `copa table` writes)")
    verdicts = check_claims(Tables(tables_dir, params, params_dir=params_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(claims_markdown(verdicts, profile), encoding="utf-8")
    js = out.with_suffix(".json")
    js.write_text(json.dumps([asdict(v) for v in verdicts], indent=2) + "\n", encoding="utf-8")
    return [out, js]
