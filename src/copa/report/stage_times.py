"""Wall time per stage of a workflow run, from the Snakemake benchmark files every rule writes
(logs/<profile>/benchmarks/<rule>[/<wildcards>].tsv: one line per job with ``s``, the wall
seconds, and ``max_rss``, MiB).

Jobs run side by side when cores allow, so the summed job times can exceed the run's wall time
(Snakemake's log ends with it: "Elapsed time"). ``busy_seconds`` measures that from the same files:
the time during which at least one job ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class StageTime:
    rule: str
    jobs: int
    seconds: float  # summed over the rule's jobs
    longest: float
    longest_job: str
    max_rss_mib: float | None


def _rule_and_job(path: Path, root: Path) -> tuple[str, str]:
    parts = path.relative_to(root).with_suffix("").parts
    return parts[0], "/".join(parts[1:]) or parts[0]


def _benchmarks(root: Path) -> list[tuple[Path, pd.DataFrame]]:
    """Every benchmark table under ``root`` with its path; a file that is not one is an error naming it."""
    root = Path(root)
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"{root}: no Snakemake benchmark files (*.tsv) here; run the workflow first")
    tables = []
    for path in files:
        frame = pd.read_csv(path, sep="\t")
        if "s" not in frame.columns or frame.empty:
            raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column, or no line)")
        tables.append((path, frame))
    return tables


def stage_times(root: Path) -> list[StageTime]:
    """The rules' times under ``root``, longest first. A file that is not a benchmark table is an
    error naming it."""
    jobs: dict[str, list[tuple[str, float, float | None]]] = {}
    for path, frame in _benchmarks(root):
        rule, job = _rule_and_job(path, Path(root))
        rss = pd.to_numeric(frame.get("max_rss"), errors="coerce") if "max_rss" in frame.columns else None
        jobs.setdefault(rule, []).append((job, float(frame["s"].mean()), None if rss is None or rss.isna().all() else float(rss.max())))
    out = []
    for rule, entries in jobs.items():
        job, longest, _ = max(entries, key=lambda e: e[1])
        rss = [e[2] for e in entries if e[2] is not None]
        out.append(StageTime(rule, len(entries), sum(e[1] for e in entries), longest, job, max(rss) if rss else None))
    return sorted(out, key=lambda t: -t.seconds)


def busy_seconds(root: Path) -> float:
    """The time during which at least one job ran: the union of the jobs' intervals, each ending when
    its benchmark file was last written (Snakemake writes it as the job ends) and lasting its ``s``.
    For one workflow run, its wall time less Snakemake's own start and the moments between jobs;
    jobs side by side count once, and a job rerun later adds only its own time."""
    ends_and_lengths = [(path.stat().st_mtime, float(frame["s"].mean())) for path, frame in _benchmarks(root)]
    busy, covered_to = 0.0, float("-inf")
    for start, end in sorted((end - length, end) for end, length in ends_and_lengths):
        busy += max(0.0, end - max(start, covered_to))
        covered_to = max(covered_to, end)
    return busy


def stage_times_markdown(times: list[StageTime]) -> str:
    lines = ["| rule | jobs | summed job time (min) | longest job (min) | longest job | peak RSS (MiB) |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for t in times:
        rss = "" if t.max_rss_mib is None else f"{t.max_rss_mib:.0f}"
        lines.append(f"| {t.rule} | {t.jobs} | {t.seconds / 60:.1f} | {t.longest / 60:.1f} | {t.longest_job} | {rss} |")
    total = sum(t.seconds for t in times)
    lines.append(f"| all | {sum(t.jobs for t in times)} | {total / 60:.1f} | | | |")
    return "\n".join(lines) + "\n"
