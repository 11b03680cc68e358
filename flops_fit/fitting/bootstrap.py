"""Bootstrap bounds and percentile intervals (Efron & Tibshirani 1993, ch. 13)."""

from __future__ import annotations

import math

import numpy as np

# Upper bound on bootstrap replicates: percentile intervals are stable well before this,
# and each replicate costs memory in the batched refit.
MAX_BOOTSTRAP = 100_000
# More than this share of bootstrap replicates dropped: the interval is unreliable.
MAX_DROPPED_SHARE = 0.2


def percentile_interval(samples, level):
    """(low, high) two-sided percentile interval of the finite samples; NaN with fewer than 2."""
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return (math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return (float(lo), float(hi))
