"""Resampling and percentile intervals (Efron & Tibshirani 1993, ch. 13 and Sec. 8.2)."""

from __future__ import annotations

import math

import numpy as np

from flops_fit.contract import MIN_POINTS_PER_BUDGET

# Upper bound on bootstrap replicates: percentile intervals are stable well before this,
# and each replicate costs memory in the batched refit.
MAX_BOOTSTRAP = 100_000
# More than this share of bootstrap replicates dropped: the interval is unreliable.
MAX_DROPPED_SHARE = 0.2

# When more than this share of the budgets rest on exactly 3 sizes, the IsoFLOP intervals
# miss most of the noise (those budgets' optima do not move under resampling).
MAX_THIN_SHARE = 0.5
# Redraws of degenerate bootstrap resamples before giving up on them (each redraw keeps
# ~70% of them or fewer; 50 leave essentially none).
MAX_REDRAWS = 50


def redraw_degenerate(counts, mask, x, rng):
    """Redraw the rows of counts (R, n) whose valley points (mask) carry fewer than 3
    distinct sizes x; rows still degenerate after MAX_REDRAWS stay (and are dropped)."""
    unique_x, which = np.unique(x, return_inverse=True)
    if unique_x.size < MIN_POINTS_PER_BUDGET:
        return counts
    one_hot = (which[:, None] == np.arange(unique_x.size)[None, :]).astype(float)
    n = counts.shape[1]
    for _ in range(MAX_REDRAWS):
        distinct = (((counts[:, mask] > 0).astype(float) @ one_hot) > 0).sum(1)
        bad = np.flatnonzero(distinct < MIN_POINTS_PER_BUDGET)
        if bad.size == 0:
            break
        counts[bad] = rng.multinomial(n, np.full(n, 1.0 / n), size=bad.size)
    return counts


def weighted_loglog(log_c, log_y, w):
    """Weighted OLS of log y on log C for each row of weights w (R, m)."""
    s0 = w.sum(1)
    sx = w @ log_c
    sxx = w @ (log_c * log_c)
    sy = w @ log_y
    sxy = w @ (log_y * log_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (s0 * sxy - sx * sy) / (s0 * sxx - sx * sx)
    return (sy - slope * sx) / s0, slope


def percentile_interval(samples, level):
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return (math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return (float(lo), float(hi))
