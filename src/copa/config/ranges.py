"""The values a numeric parameter may take: :class:`Range`, declared beside its field in the
parameter tree, and the annotated types most parameters share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated


INT_LIMIT = 2**63  # every integer parameter fits in 64 bits (torch and numpy take no more)


@dataclass(frozen=True)
class Range:
    """The values a numeric parameter may take, declared beside its field
    (``Annotated[float, Range(gt=0, le=1)]``) and checked while the params are built. Whatever
    the bounds, a float must be finite and an integer fit in 64 bits."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: float) -> bool:
        within = -INT_LIMIT <= value < INT_LIMIT if isinstance(value, int) else math.isfinite(value)
        return (within and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def words(self, kind: type) -> str:
        """The range as error messages say it: 'in (0, 1]', '> 0 and finite', '>= 1 and < 2**63'."""
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else ""
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        if kind is float:
            limits = ["finite"]
        else:  # the 64-bit side(s) the declared bound leaves open
            limits = [w for w, open_side in ((">= -2**63", not low), ("< 2**63", not high)) if open_side]
        ops = {"[": ">=", "(": ">", "]": "<=", ")": "<"}
        declared = [f"{ops[low[0]]} {low[1:]}"] if low else [f"{ops[high[-1]]} {high[:-1]}"] if high else []
        return " and ".join(declared + limits)


# The ranges most parameters share.
Count = Annotated[int, Range(ge=0)]  # sizes where 0 means none (a queue, warm-up steps, an empty split)
PositiveInt = Annotated[int, Range(ge=1)]  # epochs, steps, batch sizes, widths, depths, heads, lengths
Seed = Annotated[int, Range(ge=0)]  # numpy's seed sequences refuse negative entropy
LearningRate = Annotated[float, Range(gt=0)]
GradientNorm = Annotated[float, Range(gt=0)]  # a cap on the gradients' global L2 norm
InitStd = Annotated[float, Range(gt=0)]  # the standard deviation of a normal initialisation
Dropout = Annotated[float, Range(ge=0, lt=1)]  # a dropout probability (1 would zero every activation)
NonNegative = Annotated[float, Range(ge=0)]  # weight decay, loss weights, a tolerance in px
Fraction = Annotated[float, Range(ge=0, le=1)]  # probabilities, rates, shares, thresholds of scores in [0, 1]
KeepRatio = Annotated[float, Range(gt=0, le=1)]  # share of the patches a selector keeps; 1: all (COPA's 'w/o TPD')
