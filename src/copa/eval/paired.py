"""Paired statistics: the difference between two systems scored on the same examples.

Two rows of a table evaluated on the same test examples (VQA questions, retrieval queries,
grounding expressions, the pairs of a patch-detection probe) differ by the mean of their
per-example differences. Resampling the examples and taking both systems' scores of each drawn
example together (a paired bootstrap) keeps what the examples share (an easy question is easy
for both), so the interval is that of the difference itself, narrower than combining the two
systems' separate errors whenever their scores are correlated.

The interval is the estimate +- z(1 - level/2) x the bootstrap standard error (a normal
interval: the same construction serves differences whose standard error was bootstrapped
elsewhere, e.g. copa.eval.patch_detection's micro-averaged metrics). The minimal detectable
difference is (z(1 - level/2) + z(power)) x the standard error: the smallest true difference a
two-sided test at ``level`` detects with probability ``power`` (2.80 SE at 5% and 80%).

Timings pair the same way: two models timed in the same rounds (copa.eval.paired_timing) differ by
the median of their per-round ratios, with a percentile bootstrap interval over the rounds
(``paired_speedup``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.05  # two-sided: 95% intervals
POWER = 0.8  # of the minimal detectable difference
RESAMPLES = 2000
_CHUNK = 10_000_000  # bootstrap draws (resamples x examples) held in memory at once (~160 MB)


@dataclass(frozen=True)
class PairedDifference:
    """A difference (first minus second system) with its (1 - level) interval."""

    estimate: float
    low: float
    high: float
    se: float
    detectable: float  # the minimal detectable difference at ``level`` and ``power``
    level: float = LEVEL
    examples: int | None = None  # how many paired examples (None: not known here)

    @classmethod
    def from_se(cls, estimate: float, se: float, level: float = LEVEL, power: float = POWER,
                examples: int | None = None) -> PairedDifference:
        z = NormalDist().inv_cdf(1 - level / 2)
        return cls(float(estimate), float(estimate - z * se), float(estimate + z * se), float(se),
                   float((z + NormalDist().inv_cdf(power)) * se), level, examples)

    def scaled(self, factor: float) -> PairedDifference:
        """The same difference in other units (fractions -> points: 100); ``factor`` > 0."""
        if factor <= 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        return PairedDifference(self.estimate * factor, self.low * factor, self.high * factor, self.se * factor,
                                self.detectable * factor, self.level, self.examples)

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(first, second, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
                     power: float = POWER) -> PairedDifference:
    """mean(first) - mean(second) of two per-example score vectors on the same examples (the same
    order), with its standard error over ``resamples`` draws of the examples with replacement,
    each draw taking both systems' scores of the drawn examples. Deterministic for ``seed``."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.ndim != 1 or first.shape != second.shape:
        raise ValueError(f"paired scores need two vectors of the same length, got shapes {first.shape} and {second.shape}")
    n = len(first)
    if n < 2 or resamples < 2:
        raise ValueError(f"a bootstrap needs at least 2 examples and 2 resamples, got {n} and {resamples}")
    differences = first - second
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // n)
    means = np.concatenate([differences[rng.integers(0, n, size=(min(step, resamples - start), n))].mean(axis=1)
                            for start in range(0, resamples, step)])
    return PairedDifference.from_se(differences.mean(), np.std(means, ddof=1), level, power, n)


def paired_speedup(baseline: Sequence[float], variant: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> dict[str, float]:
    """The speedup of ``variant`` over ``baseline`` (> 1: faster) from their per-round times of the
    same rounds: the median of the per-round ratios baseline / variant, with the (1 - level)
    percentile interval of that median over ``resamples`` bootstrap draws of the rounds.
    Deterministic for ``seed``."""
    baseline, variant = np.asarray(baseline, dtype=np.float64), np.asarray(variant, dtype=np.float64)
    if baseline.ndim != 1 or baseline.shape != variant.shape:
        raise ValueError(f"paired times need two vectors of the same rounds, got shapes {baseline.shape} and {variant.shape}")
    if len(baseline) < 2 or resamples < 2:
        raise ValueError(f"a bootstrap needs at least 2 rounds and 2 resamples, got {len(baseline)} and {resamples}")
    if (baseline <= 0).any() or (variant <= 0).any():
        raise ValueError("times must be positive")
    ratios = baseline / variant
    draws = np.random.default_rng(seed).integers(0, len(ratios), size=(resamples, len(ratios)))
    low, high = np.quantile(np.median(ratios[draws], axis=1), [level / 2, 1 - level / 2])
    return {"estimate": float(np.median(ratios)), "low": float(low), "high": float(high), "rounds": len(ratios),
            "level": level}
