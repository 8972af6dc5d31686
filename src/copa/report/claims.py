"""The claims check: each qualitative claim of the COPA ablations (digest-copa.md, "Claims the
ablations make") against this profile's tables, with a verdict.

Verdicts: ``holds``; ``does not hold``; ``not measurable at this scale`` (an accuracy difference
within two standard errors, or rows the profile does not train). Accuracy differences are judged against two standard errors of the
difference: over seeds when a table has several (their standard deviations), otherwise the
binomial standard error of each accuracy over its test examples, sqrt(p (100 - p) / N) in
points (an approximation: VQA's soft scores are not 0/1). FLOPs and memory are deterministic
and compared directly; throughput is timing, and a claim on it needs the ordering at every
location.

The claims read the tables' canonical CSVs (results/<profile>/tables/<grid>.csv) by row label, as
the grid files in params/grids/ name them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

HOLDS, FAILS, UNMEASURABLE = "holds", "does not hold", "not measurable at this scale"
SPREAD_TOLERANCE = 0.05  # "independent of location": memory within 5% of its mean across locations


@dataclass(frozen=True)
class Verdict:
    claim: str
    paper: str  # the paper's evidence
    measured: str  # what this profile measured
    verdict: str


class Tables:
    """The canonical CSVs of one profile, by grid name."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._frames: dict[str, pd.DataFrame | None] = {}

    def frame(self, grid: str) -> pd.DataFrame | None:
        if grid not in self._frames:
            path = self.folder / f"{grid}.csv"
            self._frames[grid] = pd.read_csv(path).set_index("row") if path.is_file() else None
        return self._frames[grid]

    def value(self, grid: str, row: str, column: str) -> dict | None:
        """mean, std, seeds, examples of one cell; None if the table, row or value is missing."""
        frame = self.frame(grid)
        if frame is None or row not in frame.index or column not in frame.columns or pd.isna(frame.at[row, column]):
            return None

        def companion(suffix: str):
            name = f"{column}{suffix}"
            return frame.at[row, name] if name in frame.columns else None

        return {"mean": float(frame.at[row, column]), "std": _number(companion("_std")), "seeds": int(companion("_seeds") or 1),
                "examples": _number(companion("_examples"))}


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def standard_error(a: dict, b: dict) -> float | None:
    """Of the difference of two accuracies (points): over seeds, or binomial over examples."""
    if a["std"] is not None and b["std"] is not None:
        return math.sqrt(a["std"] ** 2 / a["seeds"] + b["std"] ** 2 / b["seeds"])
    if a["examples"] and b["examples"]:
        return math.sqrt(a["mean"] * (100 - a["mean"]) / a["examples"] + b["mean"] * (100 - b["mean"]) / b["examples"])
    return None


def better_accuracy(tables: Tables, grid: str, better: str, worse: str, column: str = "vqa") -> tuple[str, str]:
    """(measured text, verdict) of "row ``better`` scores higher than row ``worse``"."""
    a, b = tables.value(grid, better, column), tables.value(grid, worse, column)
    if a is None or b is None:
        missing = " and ".join(label for label, v in ((better, a), (worse, b)) if v is None)
        return f"{missing}: not trained in this profile", UNMEASURABLE
    diff, se = a["mean"] - b["mean"], standard_error(a, b)
    text = f"{better} {a['mean']:.2f} vs {worse} {b['mean']:.2f}: {diff:+.2f}"
    if se is None:
        return text + " (no standard error)", UNMEASURABLE
    text += f" (2 standard errors: {2 * se:.2f})"
    if abs(diff) <= 2 * se:
        return text, UNMEASURABLE
    return text, HOLDS if diff > 0 else FAILS


def _series(tables: Tables, grid: str, rows: list[str], column: str) -> list[tuple[str, float]]:
    return [(row, v["mean"]) for row in rows if (v := tables.value(grid, row, column)) is not None]


def increasing(values: list[tuple[str, float]]) -> bool:
    return all(b[1] > a[1] for a, b in zip(values, values[1:]))


def _listing(values: list[tuple[str, float]], digits: int) -> str:
    return ", ".join(f"{row} {value:.{digits}f}" for row, value in values)


def check_claims(tables: Tables) -> list[Verdict]:
    verdicts = []

    text, verdict = better_accuracy(tables, "table10", "COPA", "w/o PTA")
    verdicts.append(Verdict("1. Text-guided selection trained by PTA beats [CLS]-attention selection at the same location and ratio",
                            "Table 10: 77.84 vs 77.12", text, verdict))
    text, verdict = better_accuracy(tables, "table10", "w/o TPD", "mPLUG")
    verdicts.append(Verdict("2. PTA alone (no selection) helps the task", "Table 10: 77.98 vs 77.55", text, verdict))

    locations, ratios = (4, 6, 8), (10, 30, 50, 70)
    flops_by_ratio = [_series(tables, "table9", [f"loc {loc}, {r}%" for r in ratios], "gmacs") for loc in locations]
    flops_by_location = [_series(tables, "table9", [f"loc {loc}, {r}%" for loc in locations], "gmacs") for r in ratios]
    measured = [s for s in flops_by_ratio + flops_by_location if len(s) > 1]
    verdicts.append(Verdict(
        "3a. An earlier location or a lower keeping ratio costs fewer FLOPs", "Table 9: 10.15 G (loc 4, 10%) ... 30.22 G (loc 8, 70%)",
        "; ".join(_listing(s, 3) for s in flops_by_ratio if s) or "Table 9 missing",
        (HOLDS if all(increasing(s) for s in measured) else FAILS) if measured else UNMEASURABLE))
    speed = [(loc, tables.value("table9", f"loc {loc}, 10%", "throughput"), tables.value("table9", f"loc {loc}, 70%", "throughput"))
             for loc in locations]
    speed = [(loc, low["mean"], high["mean"]) for loc, low, high in speed if low and high]
    verdicts.append(Verdict(
        "3b. ... and runs faster (throughput: 10% above 70% at every location)", "Table 9: 514 vs 337 pairs/s at loc 4",
        "; ".join(f"loc {loc}: {a:.1f} vs {b:.1f} pairs/s" for loc, a, b in speed) or "Table 9 missing",
        (HOLDS if all(a > b for _, a, b in speed) else FAILS) if speed else UNMEASURABLE))
    text, verdict = better_accuracy(tables, "table9", "loc 6, 50%", "loc 6, 10%")
    verdicts.append(Verdict("3c. ... at lower accuracy; keeping 10% hurts most", "Table 9: 77.84 (50%) vs 76.89 (10%) at loc 6", text, verdict))
    text, verdict = better_accuracy(tables, "table9", "loc 8, 50%", "loc 4, 50%")
    verdicts.append(Verdict("3d. A later detection location is more accurate at the same ratio", "Table 9: 77.89 (loc 8) vs 77.33 (loc 4) at 50%",
                            text, verdict))

    by_ratio = _series(tables, "figure3", ["keep 10%", "keep 30%", "keep 50%", "keep 70%"], "memory_mib")
    verdicts.append(Verdict("4a. Pretraining memory falls with the keeping ratio", "Figure 3(a)", _listing(by_ratio, 0) or "Figure 3 missing",
                            (HOLDS if increasing(by_ratio) else FAILS) if len(by_ratio) > 1 else UNMEASURABLE))
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
    costs = {row: (tables.value("table6", row, "gmacs"), tables.value("table6", row, "throughput")) for row in ("COPA-S", "ViLT")}
    if any(v is None for pair in costs.values() for v in pair):
        text, verdict = "Table 6 missing", UNMEASURABLE
    else:
        (flops_s, speed_s), (flops_v, speed_v) = ((f["mean"], t["mean"]) for f, t in costs.values())
        text = f"COPA-S {flops_s:.3f} G, {speed_s:.1f} pairs/s vs ViLT {flops_v:.3f} G, {speed_v:.1f} pairs/s"
        verdict = HOLDS if flops_s < flops_v and speed_s > speed_v else FAILS
    faster = Verdict("7a. The TPD transfers to a single-stream model: COPA-S costs fewer FLOPs and runs faster than ViLT",
                     "Table 6: 26.23 vs 55.40 G, 436.74 vs 247.53 pairs/s", text, verdict)
    text, verdict = better_accuracy(tables, "table6", "COPA-S", "ViLT")
    return [faster, Verdict("7b. ... with no loss of VQA accuracy (it is the more accurate)", "Table 6: 71.51 vs 71.26", text, verdict)]


def _significant(value: float, se: float) -> str:
    """holds / does not hold / not measurable for a quantity that should be positive."""
    return HOLDS if value > 2 * se else FAILS if value < -2 * se else UNMEASURABLE


def _combined(verdicts: list[str]) -> str:
    """Both parts of a claim: any failure fails it, both holding holds it."""
    return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else UNMEASURABLE


def _generalisation_claims(tables: Tables) -> list[Verdict]:
    """Claim 6 (Figure 5): out of domain, the TPD's top-K accuracy and recall rise from the first to
    the last epoch (change against two bootstrap standard errors), and end above what keeping as
    many patches at random scores (the paper's 0.87 / 0.74 imply it)."""
    frame = tables.frame("figure5")
    claims = ("6a. The TPD's accuracy and recall on out-of-domain web pairs rise over the epochs",
              "6b. ... and end above chance: the TPD generalises to web pairs")
    paper = ("Figure 5: rising to accuracy 0.87, recall ~0.74 at epoch 30", "Figure 5 (no chance level given)")
    epochs = [row for row in frame.index if row.startswith("epoch ")] if frame is not None else []
    if len(epochs) < 2:
        text = "Figure 5 missing (the default run has no TPD)" if frame is None else "Figure 5 has fewer than two epochs"
        return [Verdict(c, p, text, UNMEASURABLE) for c, p in zip(claims, paper)]
    first, last = frame.loc[epochs[0]], frame.loc[epochs[-1]]
    rise, above, verdicts = [], [], ([], [])
    for m in ("accuracy", "recall"):
        change, se = last[f"ood_kept_{m}_change"], last[f"ood_kept_{m}_change_se"]
        margin, margin_se = last[f"ood_kept_{m}_over_chance"], last[f"ood_kept_{m}_over_chance_se"]
        rise.append(f"{m} {first[f'ood_kept_{m}']:.3f} -> {last[f'ood_kept_{m}']:.3f} ({change:+.3f}, 2 SE {2 * se:.3f})")
        above.append(f"{m} {last[f'ood_kept_{m}']:.3f} vs chance {last[f'ood_chance_{m}']:.3f} ({margin:+.3f}, 2 SE {2 * margin_se:.3f})")
        verdicts[0].append(_significant(change, se))
        verdicts[1].append(_significant(margin, margin_se))
    where = f"top-K, {epochs[0]} -> {epochs[-1]}: "
    return [Verdict(claims[0], paper[0], where + "; ".join(rise), _combined(verdicts[0])),
            Verdict(claims[1], paper[1], f"top-K, {epochs[-1]}: " + "; ".join(above), _combined(verdicts[1]))]


def _resolution_claims(tables: Tables) -> list[Verdict]:
    """Claim 5 (Table 5): accuracy rises with the VQA fine-tuning resolution, and at the highest
    resolution whose FLOPs do not exceed mPLUG's at 384 px the TPD model is the more accurate."""
    copa = [f"COPA {px}" for px in (224, 256, 304, 384, 464, 512)]
    trained = [row for row in copa if tables.value("table5", row, "vqa")]
    if len(trained) > 1:
        text, verdict = better_accuracy(tables, "table5", trained[-1], trained[0])
    else:
        text, verdict = f"{len(trained)} of the COPA resolutions trained in this profile", UNMEASURABLE
    verdicts = [Verdict("5a. A higher VQA fine-tuning resolution with the TPD improves accuracy", "Table 5: 78.25 (512) vs 76.83 (224)",
                        text, verdict)]
    baseline = tables.value("table5", "mPLUG 384", "gmacs")
    cheaper = [(row, v["mean"]) for row in copa if baseline and (v := tables.value("table5", row, "gmacs")) and v["mean"] <= baseline["mean"]]
    if cheaper:
        row, flops = cheaper[-1]
        text, verdict = better_accuracy(tables, "table5", row, "mPLUG 384")
        text += f"; FLOPs {flops:.3f} vs {baseline['mean']:.3f} G"
    else:
        text, verdict = "no COPA resolution within mPLUG 384's FLOPs" if baseline else "Table 5 missing", UNMEASURABLE
    verdicts.append(Verdict("5b. ... so that at no more FLOPs than mPLUG at 384 px it is the more accurate",
                            "Table 5: 78.25 at 83.24 G (512) vs 77.55 at 84.87 G", text, verdict))
    return verdicts


def claims_markdown(verdicts: list[Verdict], profile: str) -> str:
    lines = [f"# Claims of the COPA ablations, checked on the {profile} profile", "",
             "Verdicts from this profile's tables (results/<profile>/tables/); accuracy differences against two standard",
             "errors (see copa.report.claims). A claim that does not hold here is a finding about this scale, not a bug.", "",
             "| claim | paper | measured here | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {v.claim} | {v.paper} | {v.measured} | **{v.verdict}** |" for v in verdicts]
    counts = {name: sum(v.verdict == name for v in verdicts) for name in (HOLDS, FAILS, UNMEASURABLE)}
    lines += ["", "Summary: " + ", ".join(f"{n} {name}" for name, n in counts.items()) + "."]
    return "\n".join(lines) + "\n"


def write_claims(tables_dir: Path, profile: str, out: Path) -> list[Path]:
    """``out`` (.md) and the same verdicts as JSON beside it."""
    verdicts = check_claims(Tables(tables_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(claims_markdown(verdicts, profile), encoding="utf-8")
    js = out.with_suffix(".json")
    js.write_text(json.dumps([asdict(v) for v in verdicts], indent=2) + "\n", encoding="utf-8")
    return [out, js]
