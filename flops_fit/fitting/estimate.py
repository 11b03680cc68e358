"""A fitted number with its interval, and the one shape of every prediction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flops_fit.fitting.bootstrap import percentile_interval

if TYPE_CHECKING:
    import pandas as pd


# What every predict returns, one row per compute budget C: flops (C, FLOPs), then
# params (N_opt), tokens (D_opt) and loss (nats per token), each with its bootstrap
# interval (*_low, *_high; NaN without bootstrap).
PREDICTED = ("params", "tokens", "loss")
PREDICTION_COLUMNS = ["flops"] + [f"{q}{end}" for q in PREDICTED for end in ("", "_low", "_high")]


def prediction_frame(flops, point, intervals) -> pd.DataFrame:
    """PREDICTION_COLUMNS from the point predictions and their (low, high) intervals."""
    import pandas as pd
    columns = {"flops": flops}
    for j, name in enumerate(PREDICTED):
        low, high = intervals[j] if intervals is not None else (np.full_like(point[j], np.nan),) * 2
        columns.update({name: point[j], f"{name}_low": low, f"{name}_high": high})
    return pd.DataFrame(columns, columns=PREDICTION_COLUMNS)


@dataclass(frozen=True)
class Estimate:
    """A fitted number and its interval (a t interval, or a bootstrap percentile interval;
    NaN where there is none).

    It stands for its value in arithmetic and comparisons, which give plain floats and
    bools: an interval does not carry through arithmetic (the interval of a product is not
    the product of the intervals), so nothing pretends it does."""

    value: float
    low: float = math.nan
    high: float = math.nan

    def __float__(self):
        return float(self.value)

    def __lt__(self, other):
        return self.value < float(other)

    def __le__(self, other):
        return self.value <= float(other)

    def __gt__(self, other):
        return self.value > float(other)

    def __ge__(self, other):
        return self.value >= float(other)

    def __neg__(self):
        return -self.value

    def __abs__(self):
        return abs(self.value)

    def __add__(self, other):
        return self.value + float(other)

    def __sub__(self, other):
        return self.value - float(other)

    def __mul__(self, other):
        return self.value * float(other)

    def __truediv__(self, other):
        return self.value / float(other)

    def __pow__(self, other):
        return self.value ** float(other)

    def __radd__(self, other):
        return float(other) + self.value

    def __rsub__(self, other):
        return float(other) - self.value

    def __rmul__(self, other):
        return float(other) * self.value

    def __rtruediv__(self, other):
        return float(other) / self.value

    def __rpow__(self, other):
        return float(other) ** self.value

    def __contains__(self, x):
        """`x in estimate`: x lies within the interval (False where there is none)."""
        return bool(self.low <= float(x) <= self.high)

    def __format__(self, spec):
        spec = spec or ".4g"
        if np.isfinite(self.low):
            return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"
        return f"{self.value:{spec}}"

    def __str__(self):
        return format(self, "")


def estimate(value, samples, level):
    lo, hi = percentile_interval(samples, level) if samples is not None else (math.nan, math.nan)
    return Estimate(float(value), lo, hi)
