"""Pretraining objectives (COPA §3.3, Algorithm 1, Appendix B) as tensor functions, one module per
objective: models return features and logits, these turn them into losses (STYLE point 3,
open_clip's ``loss.py``).

- :mod:`.itc`: ITC (queue, DDP gather, temperature, momentum encoders, loss).
- :mod:`.itm`: ITM with hard negatives.
- :mod:`.language`: MLM and PrefixLM.
- :mod:`.pta`: PTA and the TPD's detection metrics.
- :mod:`.draws`: where a step's random draws are made (the generator's device).
- here: COPA eq. 4, the weighted sum of the terms.

Shapes: B batch, D feature dim, Q queue rows, L/T sequence length, V vocabulary, N patches.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor
from torch.profiler import record_function


# --------------------------------------------------------------------------------------------
# COPA eq. 4
# --------------------------------------------------------------------------------------------

LOSS_NAMES = ("itc", "itm", "mlm", "prefix", "pta")
DEFAULT_WEIGHTS: dict[str, float] = dict.fromkeys(LOSS_NAMES, 1.0)  # COPA eq. 4: equal weights


SHARED_SCOPE = "shared"  # work that several objectives read (the caption-guided encoding)
SCOPE_PREFIX = "objective:"


def objective_scope(name: str) -> record_function:
    """A profiler scope ``objective:<name>`` around the forward work of one loss term (or of the
    ``shared`` encoding), by which ``copa.eval.step_profile`` attributes a step's forward and backward
    time; without a running profiler it costs a few microseconds."""
    if name not in LOSS_NAMES and name != SHARED_SCOPE:
        raise ValueError(f"unknown objective scope {name!r}; expected one of {[*LOSS_NAMES, SHARED_SCOPE]}")
    return record_function(SCOPE_PREFIX + name)


def pretrain_loss(terms: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> Tensor:
    """L = sum_n w_n L_n over the terms present (COPA eq. 4; Algorithm 1 line 12).

    ``terms`` maps names from ``LOSS_NAMES`` to scalar losses; a term may be absent (e.g.
    "pta" in the w/o-PTA ablation). ``weights`` default to 1 (equal weights, eq. 4); a weight
    not given is 1. Unknown names in either raise ``ValueError``.
    """
    weights = {} if weights is None else weights
    for kind, names in (("loss term", terms), ("loss weight", weights)):
        unknown = sorted(set(names) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown {kind} name(s) {unknown}; expected some of {list(LOSS_NAMES)}")
    if not terms:
        raise ValueError("pretrain_loss needs at least one loss term")
    total = None
    for name, value in terms.items():
        if value.dim() != 0:
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
        term = weights.get(name, DEFAULT_WEIGHTS[name]) * value
        total = term if total is None else total + term
    return total
