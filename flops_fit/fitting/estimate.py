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
    """A fitted number and its bootstrap percentile interval (NaN when bootstrap=0)."""

    value: float
    low: float = math.nan
    high: float = math.nan

    def __float__(self):
        return float(self.value)

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
