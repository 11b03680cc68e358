"""Scaling-law fits: IsoFLOP optima, power laws in compute, parametric L(N, D), bootstrap.

Layers, kept apart (lmfit style), one module each:

1. `flops_fit.law`      -- the laws and the Huber / log-sum-exp objective (pure math);
2. `flops_fit.optimize` -- the multi-start minimisation of that objective;
3. `flops_fit.table`    -- reading, mapping, validating and grouping a results table;
4. this module         -- per-budget optima (and `valley_vertex`, the valley rule), power
                          laws, the bootstrap, the warnings, `fit()` and the result classes
                          `ScalingLaws` and friends.
Presentation (tables, summary text, plots) lives in `flops_fit.report`; the methods here
only delegate to it.

Units throughout: compute C in FLOPs, model size N in parameters, data D in tokens,
loss L in nats per token.

References
- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla),
  arXiv:2203.15556: Approach 2 (IsoFLOP profiles, Sec. 3.2), Approach 3 (parametric
  fit, Sec. 3.3, eq. 2 and 4, App. D.2).
- Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv:2404.10102:
  the same recipe with the objective SUMMED (not averaged) over points, and a bootstrap
  over data points for the intervals.
- Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13 (percentile
  intervals) and Sec. 8.2 (stratified resampling).

Importing this module imports neither ray nor torch (docs/architecture.md, "Modules and import rules").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# pandas and scipy are imported inside the functions that use them: every Ray worker
# imports this package (whose `fit` is bound eagerly), and the two cost about 0.6 s of CPU
# per process, paid by every trial of a sweep (benchmarks/RESULTS.md, import costs).

from flops_fit import checks
from flops_fit.law import compute_optimal_allocation, huber_lse_objective, parametric_loss
from flops_fit.optimize import (BOOTSTRAP_CHUNK_ELEMENTS, BOOTSTRAP_ITERATIONS, EXPONENT_MIN, batched_lbfgs,
                                domain_bounds, fit_parametric_params, tie)
from flops_fit.table import BUDGET_RTOL, FitError, prepare

if TYPE_CHECKING:
    import pandas as pd

# Minimum data for each law.
MIN_BUDGETS = 3  # a line through log C needs at least 3 points to have a residual
MIN_POINTS_PER_BUDGET = 3  # a parabola has 3 coefficients
MIN_PARAMETRIC_POINTS = 6  # more points than the 5 parameters of L(N, D)

# The parabola is fitted to the points within this many decades of N on either side of
# the lowest-loss point: far from the valley an IsoFLOP profile is not quadratic in
# log N (Hoffmann et al. 2022 Fig. 3 fit near the minimum).
VALLEY_HALF_WIDTH_DECADES = 1.0

# Two-sided bootstrap percentile interval level.
INTERVAL_LEVEL = 0.95

OPTIMA = ("parabola", "lowest", "given")
APPROACHES = ("auto", "isoflop", "parametric")
# Upper bound on bootstrap replicates: percentile intervals are stable well before this,
# and each replicate costs memory in the batched refit.
MAX_BOOTSTRAP = 100_000
# More than this share of bootstrap replicates dropped: the interval is unreliable.
MAX_DROPPED_SHARE = 0.2
# Below this share of the variance of ln loss explained, the parametric law describes
# nothing in the data (published sets explain well over 90%).
MIN_EXPLAINED_VARIANCE = 0.5
# A prediction more than this factor beyond the largest fitted FLOPs is an extrapolation.
EXTRAPOLATION_FACTOR = 100.0




def _valley_mask(log_n, loss):
    centre = log_n[np.argmin(loss)]
    mask = np.abs(log_n - centre) <= VALLEY_HALF_WIDTH_DECADES * math.log(10)
    return mask if mask.sum() >= MIN_POINTS_PER_BUDGET else np.ones_like(mask)


def _weighted_parabolas(x, y, w):
    """Weighted least-squares parabolas y = c0 + c1 x + c2 x^2 for each row of w (R, n).

    Returns (c0, c1, c2) each (R,), NaN where the normal equations are singular (fewer
    than three distinct x carry weight)."""
    w = np.atleast_2d(w)
    pw = [w @ x**p for p in range(5)]
    mat = np.stack([np.stack(pw[i : i + 3], -1) for i in range(3)], -2)  # (R, 3, 3)
    rhs = np.stack([w @ (x**p * y) for p in range(3)], -1)
    unique_x, which = np.unique(x, return_inverse=True)
    one_hot = (which[:, None] == np.arange(unique_x.size)[None, :]).astype(float)
    n_distinct = (((w > 0).astype(float) @ one_hot) > 0).sum(1)
    out = np.full((w.shape[0], 3), np.nan)
    ok = n_distinct >= 3
    if ok.any():
        out[ok] = np.linalg.solve(mat[ok], rhs[ok][..., None])[..., 0]
    return out[:, 0], out[:, 1], out[:, 2]


def valley_vertex(log_n, loss):
    """The IsoFLOP valley rule: vertex of a parabola in ln N through the points within
    VALLEY_HALF_WIDTH_DECADES of the lowest loss (Hoffmann et al. 2022 Fig. 3).

    log_n: natural logs of model sizes (parameters); loss: nats/token, same length.
    Returns a dict: log_n_opt, loss_opt, bracketed (vertex inside the sampled sizes),
    reason (why not, else ""), and the parabola c0, c1, c2 in x = ln N - log_n_centre.
    """
    log_n = np.asarray(log_n, float)
    loss = np.asarray(loss, float)
    mask = _valley_mask(log_n, loss)
    centre = log_n[mask].mean()
    x = log_n[mask] - centre  # centred for conditioning
    c0, c1, c2 = (float(v[0]) for v in _weighted_parabolas(x, loss[mask], np.ones((1, x.size))))
    out = dict(n_valley=int(mask.sum()), curvature=c2, log_n_centre=centre, c0=c0, c1=c1, c2=c2)
    lo, hi = x.min(), x.max()
    if not np.isfinite(c2):
        out.update(bracketed=False, reason="parabola undetermined (fewer than 3 distinct sizes)")
        xv, lv = x[np.argmin(loss[mask])], loss[mask].min()
    elif c2 <= 0:
        out.update(bracketed=False, reason="parabola opens downward (no minimum)")
        xv, lv = x[np.argmin(loss[mask])], loss[mask].min()
    else:
        xv = -c1 / (2 * c2)
        lv = c0 + c1 * xv + c2 * xv * xv
        inside = lo <= xv <= hi
        out.update(bracketed=bool(inside),
                   reason="" if inside else
                   f"vertex N={math.exp(xv + centre):.3g} outside sampled sizes "
                   f"[{math.exp(lo + centre):.3g}, {math.exp(hi + centre):.3g}]")
    out.update(log_n_opt=float(xv + centre), loss_opt=float(lv))
    return out


def budget_optima(points, optimum, k):
    """Per-budget optimum. Returns a DataFrame with one row per budget (FLOPs order).

    optimum="given": every row already is a budget's optimum (e.g. a paper's table)."""
    import pandas as pd
    rows = []
    for budget, grp in points.groupby("budget", sort=True):
        log_n = np.log(grp["params"].to_numpy())
        loss = grp["loss"].to_numpy()
        rec = {"budget": float(budget), "n_points": len(grp),
               "params_min": float(np.exp(log_n.min())), "params_max": float(np.exp(log_n.max()))}
        if optimum == "given":
            if len(grp) != 1:
                raise FitError(f"optimum='given': budget {budget:.3g} has {len(grp)} rows; a table of "
                               "optima has one row per budget (use optimum='parabola' for sweep points)")
            n_opt, l_opt = float(grp["params"].iloc[0]), float(loss[0])
            rec.update(bracketed=True, reason="", tokens_given=float(grp["tokens"].iloc[0]))
        elif optimum == "parabola":
            v = valley_vertex(log_n, loss)
            rec.update({key: v[key] for key in ("n_valley", "curvature", "log_n_centre", "c0", "c1", "c2",
                                                "bracketed", "reason")})
            n_opt = math.exp(v["log_n_opt"])
            l_opt = v["loss_opt"]
        else:
            j = int(np.argmin(loss))
            n_opt = float(np.exp(log_n[j]))
            l_opt = float(loss[j])
            edge = log_n[j] <= log_n.min() or log_n[j] >= log_n.max()
            rec.update(bracketed=not edge,
                       reason="lowest loss at the smallest or largest size sampled" if edge else "")
        rec.update(params_opt=n_opt, tokens_opt=float(budget) / (k * n_opt), loss_opt=l_opt)
        if optimum == "given":
            rec["tokens_opt"] = rec.pop("tokens_given")
        rows.append(rec)
    return pd.DataFrame(rows)


def _loglog_fit(log_c, log_y, mask):
    """OLS of log y on log C for each row of mask (R, m). Returns (log_k, exponent)."""
    m = mask.astype(float)
    s0 = m.sum(1)
    sx = m @ log_c
    sxx = m @ (log_c * log_c)
    sy = (m * log_y).sum(1)
    sxy = (m * log_y * log_c).sum(1)
    den = s0 * sxx - sx * sx
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (s0 * sxy - sx * sy) / den
        intercept = (sy - slope * sx) / s0
    return intercept, slope


# When more than this share of the budgets rest on exactly 3 sizes, the IsoFLOP intervals
# miss most of the noise (those budgets' optima do not move under resampling).
MAX_THIN_SHARE = 0.5
# Redraws of degenerate bootstrap resamples before giving up on them (each redraw keeps
# ~70% of them or fewer; 50 leave essentially none).
MAX_REDRAWS = 50


def _redraw_degenerate(counts, mask, x, rng):
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


def _weighted_loglog(log_c, log_y, w):
    """Weighted OLS of log y on log C for each row of weights w (R, m)."""
    s0 = w.sum(1)
    sx = w @ log_c
    sxx = w @ (log_c * log_c)
    sy = w @ log_y
    sxy = w @ (log_y * log_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (s0 * sxy - sx * sy) / (s0 * sxx - sx * sx)
    return (sy - slope * sx) / s0, slope


def _percentile_interval(samples, level):
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return (math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return (float(lo), float(hi))


# What every predict returns, one row per compute budget C: flops (C, FLOPs), then
# params (N_opt), tokens (D_opt) and loss (nats per token), each with its bootstrap
# interval (*_low, *_high; NaN without bootstrap).
PREDICTED = ("params", "tokens", "loss")
PREDICTION_COLUMNS = ["flops"] + [f"{q}{end}" for q in PREDICTED for end in ("", "_low", "_high")]


def _prediction_frame(flops, point, intervals) -> pd.DataFrame:
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


def _estimate(value, samples, level):
    lo, hi = _percentile_interval(samples, level) if samples is not None else (math.nan, math.nan)
    return Estimate(float(value), lo, hi)


@dataclass
class IsoflopLaw:
    """N_opt = k_N C^a, D_opt = k_D C^b, L_opt = k_L C^loss_exponent (C in FLOPs).

    `optima`: one row per budget (budget in FLOPs, params_opt, tokens_opt, loss_opt in nats
    per token, bracketed, reason, n_points); only bracketed budgets enter the laws.
    `samples`: bootstrap draws of (ln k_N, a, ln k_D, b, ln k_L, loss_exponent), (R, 6).
    """

    optimum: str
    a: Estimate
    b: Estimate
    k_N: Estimate
    k_D: Estimate
    k_L: Estimate
    loss_exponent: Estimate
    optima: pd.DataFrame
    flops_per_param_token: float
    samples: np.ndarray | None = None
    bootstrap_failed: int = 0
    # budgets whose parabola rests on exactly 3 sizes: resampling cannot show their noise
    thin_budgets: list = field(default_factory=list)

    @property
    def thin_share(self) -> float:
        """Share of the budgets in the power laws whose parabola rests on exactly 3 sizes."""
        return len(self.thin_budgets) / max(1, int(self.optima["bracketed"].sum()))

    def predict(self, flops, level=INTERVAL_LEVEL) -> pd.DataFrame:
        """N_opt, D_opt, L_opt for compute C in FLOPs: one row per C, PREDICTION_COLUMNS."""
        c = np.atleast_1d(np.asarray(flops, float))
        lc = np.log(c)
        point = [np.exp(np.log(k.value) + e.value * lc) for k, e in
                 ((self.k_N, self.a), (self.k_D, self.b), (self.k_L, self.loss_exponent))]
        if self.samples is None or len(self.samples) < 2:
            return _prediction_frame(c, point, None)
        intervals = []
        for j in range(len(point)):
            draws = np.exp(self.samples[:, 2 * j, None] + self.samples[:, 2 * j + 1, None] * lc)
            intervals.append(np.array([_percentile_interval(d, level) for d in draws.T]).T)
        return _prediction_frame(c, point, intervals)


@dataclass
class ParametricLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta in nats per token (N parameters, D tokens).

    a, b: implied compute-optimal exponents of N_opt and D_opt (a = beta/(alpha+beta));
    G: Chinchilla eq. 4 coefficient, N_opt = G (C/k)^a, D_opt = G^-1 (C/k)^b.
    `samples`: bootstrap draws of (E, A, B, alpha, beta), (R, 5).
    """

    E: Estimate
    A: Estimate
    B: Estimate
    alpha: Estimate
    beta: Estimate
    a: Estimate
    b: Estimate
    G: Estimate
    objective: float
    n_points: int
    flops_per_param_token: float
    samples: np.ndarray | None = None
    bootstrap_dropped: int = 0
    tie_exponents: bool = False

    def loss(self, params, tokens):
        """Predicted loss in nats per token for N parameters trained on D tokens."""
        return parametric_loss(params, tokens, self.E.value, self.A.value, self.B.value,
                               self.alpha.value, self.beta.value)

    def predict(self, flops, level=INTERVAL_LEVEL) -> pd.DataFrame:
        """N_opt, D_opt, L(N_opt, D_opt) for C in FLOPs: one row per C, PREDICTION_COLUMNS."""
        c = np.atleast_1d(np.asarray(flops, float))
        k = self.flops_per_param_token

        def at(E, A, B, alpha, beta):
            n, d = compute_optimal_allocation(c, A, B, alpha, beta, k)
            return n, d, parametric_loss(n, d, E, A, B, alpha, beta)

        point = at(self.E.value, self.A.value, self.B.value, self.alpha.value, self.beta.value)
        if self.samples is None or len(self.samples) < 2:
            return _prediction_frame(c, point, None)
        draws = [at(*row) for row in self.samples]
        intervals = []
        for j in range(len(point)):
            stack = np.array([d[j] for d in draws])
            intervals.append(np.array([_percentile_interval(col, level) for col in stack.T]).T)
        return _prediction_frame(c, point, intervals)


APPROACH_ISOFLOP = "isoflop"
APPROACH_PARAMETRIC = "parametric"


@dataclass
class ScalingLaws:
    """The fitted scaling laws of one sweep (or published data set).

    isoflop: IsoflopLaw (Approach 2); parametric: ParametricLaw (Approach 3);
    points: the rows used (params, tokens, flops, loss, budget, row);
    excluded: DataFrame of every row or budget left out, with its reason;
    notes: how the table was read (mappings, derived columns, FLOP convention).
    """

    isoflop: IsoflopLaw | None
    parametric: ParametricLaw | None
    points: pd.DataFrame
    excluded: pd.DataFrame
    notes: list = field(default_factory=list)
    bootstrap: int = 0
    seed: int = 0
    level: float = INTERVAL_LEVEL
    source: str = ""
    warnings: list = field(default_factory=list)  # shown first in the summary
    approaches: list = field(default_factory=list)  # which approach ran or not, and why
    agreement: str = ""  # whether the two approaches agree on a = d ln N_opt / d ln C
    backtest: pd.DataFrame | None = None  # held-out rows: observed vs predicted loss
    provenance: dict = field(default_factory=dict)

    @property
    def max_fitted_flops(self) -> float:
        """Largest FLOPs among the fitted points (or optima)."""
        return float(self.points["flops"].max())

    def predict(self, flops) -> pd.DataFrame:
        """One row per approach per C (FLOPs): params, tokens, loss (nats/token) with
        bootstrap interval columns *_low, *_high."""
        import pandas as pd
        c = np.atleast_1d(np.asarray(flops, float))
        if not (np.all(np.isfinite(c)) and np.all(c > 0)):
            raise FitError(f"predict: compute budgets must be positive FLOPs, got {flops!r}")
        frames = []
        for name, law in ((APPROACH_ISOFLOP, self.isoflop), (APPROACH_PARAMETRIC, self.parametric)):
            if law is not None:
                frame = law.predict(c, self.level)
                frame.insert(0, "approach", name)
                frame["extrapolated"] = c > EXTRAPOLATION_FACTOR * self.max_fitted_flops
                frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    @property
    def table(self) -> pd.DataFrame:
        """The Chinchilla-Table-3-style table as a DataFrame: `predict` at the swept budgets
        and a few decades above them, with tokens_per_param (D/N at the optimum)."""
        from flops_fit import report

        return report.chinchilla_table(self)

    def to_markdown(self, budgets=None) -> str:
        """That table as markdown text (at `budgets`, FLOPs, if given), intervals in brackets."""
        from flops_fit import report

        return report.markdown_table(self, budgets)

    def _repr_html_(self) -> str:
        """Jupyter shows the table."""
        return self.table.to_html()

    def to_frame(self) -> pd.DataFrame:
        """Fitted quantities as a tidy DataFrame: approach, quantity, value, low, high."""
        import pandas as pd
        rows = []
        iso = self.isoflop
        for name in ("a", "b", "k_N", "k_D", "k_L", "loss_exponent") if iso is not None else ():
            e = getattr(iso, name)
            rows.append((APPROACH_ISOFLOP, name, e.value, e.low, e.high))
        if self.parametric is not None:
            for name in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):
                e = getattr(self.parametric, name)
                rows.append((APPROACH_PARAMETRIC, name, e.value, e.low, e.high))
        return pd.DataFrame(rows, columns=["approach", "quantity", "value", "low", "high"])

    def summary(self) -> str:
        """Human-readable text: exponents and coefficients with intervals, exclusions, counts."""
        from flops_fit import report

        return report.summary_text(self)

    def plot(self, out_dir=None):
        """The plots this fit supports: IsoFLOP curves, optima vs compute, parametric
        residuals, backtest. Without out_dir, {name: matplotlib Figure} (for a notebook;
        nothing is written); with out_dir, PNG files written there, and their paths."""
        from flops_fit import report

        if out_dir is None:
            return report.figures(self)
        return report.write_figures(self, out_dir)

    def __str__(self):
        return self.summary()


# ---------------------------------------------------------------------------------------
# 2. Engine: fit()
# ---------------------------------------------------------------------------------------


def _isoflop_laws(points, optima, optimum, k, bootstrap, rng, level):
    used = optima[optima["bracketed"]].reset_index(drop=True)
    log_c = np.log(used["budget"].to_numpy())
    targets = [np.log(used[c].to_numpy()) for c in ("params_opt", "tokens_opt", "loss_opt")]
    full = np.ones((1, len(used)), bool)
    fitted = [tuple(float(v[0]) for v in _loglog_fit(log_c, t[None, :], full)) for t in targets]

    samples, failed = None, 0
    if bootstrap and optimum == "given":
        # The optima are the data: resample budgets with replacement; a draw with fewer than
        # MIN_BUDGETS distinct budgets has no line and is dropped (counted).
        n_used = len(used)
        counts = rng.multinomial(n_used, np.full(n_used, 1.0 / n_used), size=bootstrap)
        enough = (counts > 0).sum(1) >= MIN_BUDGETS
        failed = int((~enough).sum())
        cols = []
        for t in targets:
            intercept, slope = _weighted_loglog(log_c, t, counts[enough].astype(float))
            cols += [intercept, slope]
        samples = np.column_stack(cols)
    elif bootstrap:
        # Stratified bootstrap: resample points WITH REPLACEMENT WITHIN each budget
        # (Efron & Tibshirani 1993 Sec. 8.2). The budgets are the design of the sweep, not
        # a random sample, and resampling budgets would leave some draws with fewer than
        # three budgets (no line); the within-budget noise is what moves each optimum.
        n_used = len(used)
        thin_budgets = []
        reps = np.full((bootstrap, n_used, 3), np.nan)
        valid = np.zeros((bootstrap, n_used), bool)
        for j, budget in enumerate(used["budget"]):
            grp = points[points["budget"] == budget]
            log_n = np.log(grp["params"].to_numpy())
            loss = grp["loss"].to_numpy()
            counts = rng.multinomial(len(grp), np.full(len(grp), 1.0 / len(grp)), size=bootstrap)
            if optimum == "parabola":
                mask = _valley_mask(log_n, loss)
                centre = log_n[mask].mean()
                x = log_n[mask] - centre
                if np.unique(x).size <= MIN_POINTS_PER_BUDGET:
                    thin_budgets.append(float(budget))
                # A resample that draws fewer than 3 distinct valley sizes has no parabola:
                # it is a degenerate draw of the design, not a failed fit, so it is drawn
                # again (resampling conditioned on a determinate fit; Davison & Hinkley
                # 1997 Sec. 6.2.4). Only a vertex outside the sizes sampled drops a replicate.
                counts = _redraw_degenerate(counts, mask, x, rng)
                w = counts[:, mask].astype(float)
                c0, c1, c2 = _weighted_parabolas(x, loss[mask], w)
                # The bracket is the design's: the sizes the budget sampled. A resample that
                # misses an edge size still places its vertex from a parabola through at
                # least 3 sizes; dropping it would narrow the interval towards the centre.
                lo, hi = x.min(), x.max()
                with np.errstate(invalid="ignore", divide="ignore"):
                    xv = -c1 / (2 * c2)
                ok = np.isfinite(c2) & (c2 > 0) & (xv >= lo) & (xv <= hi)
                reps[:, j, 0] = xv + centre
                reps[:, j, 2] = c0 + c1 * xv + c2 * xv * xv
            else:
                present = counts > 0
                masked = np.where(present, loss, np.inf)
                jmin = masked.argmin(1)
                xn = log_n[jmin]
                lo = np.where(present, log_n, np.inf).min(1)
                hi = np.where(present, log_n, -np.inf).max(1)
                ok = (xn > lo) & (xn < hi)
                reps[:, j, 0] = xn
                reps[:, j, 2] = loss[jmin]
            reps[:, j, 1] = np.log(budget / k) - reps[:, j, 0]
            valid[:, j] = ok
        enough = valid.sum(1) >= MIN_BUDGETS
        failed = int((~enough).sum())
        reps_ok = reps[enough]
        valid_ok = valid[enough]
        cols = []
        for t in range(3):
            y = np.where(valid_ok, reps_ok[:, :, t], 0.0)
            if t == 2:
                y = np.log(np.where(valid_ok, reps_ok[:, :, t], 1.0))
            intercept, slope = _loglog_fit(log_c, y, valid_ok)
            cols += [intercept, slope]
        samples = np.column_stack(cols)

    def est(idx_k, idx_e, pair):
        ks = None if samples is None else np.exp(samples[:, idx_k])
        es = None if samples is None else samples[:, idx_e]
        return _estimate(math.exp(pair[0]), ks, level), _estimate(pair[1], es, level)

    thin = thin_budgets if (bootstrap and optimum == "parabola") else []
    k_n, a = est(0, 1, fitted[0])
    k_d, b = est(2, 3, fitted[1])
    k_l, lexp = est(4, 5, fitted[2])
    return IsoflopLaw(optimum, a, b, k_n, k_d, k_l, lexp, optima, k, samples, failed, thin)


def _parametric_law(points, k, bootstrap, rng, level, tie_exponents=False):
    log_n = np.log(points["params"].to_numpy())
    log_d = np.log(points["tokens"].to_numpy())
    log_l = np.log(points["loss"].to_numpy())
    theta, fbest, local = fit_parametric_params(log_n, log_d, log_l, tie_exponents=tie_exponents)
    lower, upper = domain_bounds(log_l)

    samples, dropped = None, 0
    if bootstrap:
        # Bootstrap over runs (Besiroglu et al. 2024 Sec. 3 resample data points; rows of
        # one run, e.g. its checkpoints, are not independent, so they are drawn together):
        # each replicate is the same objective with multinomial run counts as weights, so
        # replicates x starts run as one batch, in chunks that bound memory.
        import pandas as pd

        run_of_row = (pd.factorize(points["run"])[0] if "run" in points.columns
                      else np.arange(log_n.size))
        n_runs = int(run_of_row.max()) + 1
        counts = rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=bootstrap)
        starts = np.vstack([theta[None, :], local])
        n_starts = starts.shape[0]
        per_chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // (n_starts * log_n.size))
        best = np.empty((bootstrap, 5))
        fbest_rep = np.empty(bootstrap)
        for c0 in range(0, bootstrap, per_chunk):
            reps = counts[c0 : c0 + per_chunk][:, run_of_row].astype(float)
            x0 = np.tile(starts, (len(reps), 1))
            weights = np.repeat(reps, n_starts, axis=0)

            def fun_grad(x, rows, weights=weights):
                f, g = huber_lse_objective(tie(x) if tie_exponents else x, log_n, log_d, log_l, weights[rows])
                if tie_exponents:
                    g[:, 3] = g[:, 4] = 0.5 * (g[:, 3] + g[:, 4])
                return f, g

            xb, fb, _ = batched_lbfgs(fun_grad, x0, max_iter=BOOTSTRAP_ITERATIONS, lower=lower, upper=upper)
            fb = np.where(np.isfinite(fb), fb, np.inf).reshape(len(reps), n_starts)
            pick = fb.argmin(1)
            best[c0 : c0 + len(reps)] = xb.reshape(len(reps), n_starts, 5)[np.arange(len(reps)), pick]
            fbest_rep[c0 : c0 + len(reps)] = fb[np.arange(len(reps)), pick]
        ok = np.isfinite(fbest_rep) & np.all(np.isfinite(best), axis=1)
        dropped = int((~ok).sum())
        best = best[ok]
        samples = np.column_stack([np.exp(best[:, 2]), np.exp(best[:, 0]), np.exp(best[:, 1]),
                                   best[:, 3], best[:, 4]])

    E, A, B, alpha, beta = math.exp(theta[2]), math.exp(theta[0]), math.exp(theta[1]), theta[3], theta[4]

    def derived(al, be, aa, bb):
        s = al + be
        return be / s, al / s, (al * aa / (be * bb)) ** (1 / s)

    a_val, b_val, g_val = derived(alpha, beta, A, B)
    if samples is not None:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            ds = derived(samples[:, 3], samples[:, 4], samples[:, 1], samples[:, 2])
    else:
        ds = (None, None, None)
    col = (lambda j: None if samples is None else samples[:, j])
    return ParametricLaw(
        E=_estimate(E, col(0), level), A=_estimate(A, col(1), level), B=_estimate(B, col(2), level),
        alpha=_estimate(alpha, col(3), level), beta=_estimate(beta, col(4), level),
        a=_estimate(a_val, ds[0], level), b=_estimate(b_val, ds[1], level),
        G=_estimate(g_val, ds[2], level), objective=fbest, n_points=int(log_n.size),
        flops_per_param_token=k, samples=samples, bootstrap_dropped=dropped,
        tie_exponents=tie_exponents,
    )


EXCLUDED_COLUMNS = ["kind", "row", "budget", "params", "tokens", "flops", "loss", "reason"]


def fit(data, *, approach="auto", optimum="parabola", bootstrap=1000, seed=0, columns=None,
        where=None, holdout=None, drop_highest_loss=0, budget_rtol=BUDGET_RTOL,
        level=INTERVAL_LEVEL, tie_exponents=False) -> ScalingLaws:
    """Fit IsoFLOP power laws (Approach 2) and/or the parametric L(N, D) (Approach 3).

    data: DataFrame, list of dicts, path or URI of a CSV/JSON/JSONL table, a stored sweep
        folder, or an object with a `.table` DataFrame. Columns params (parameters), tokens,
        loss (nats per token); optional flops (FLOPs, default 6ND), budget (nominal FLOPs of
        the IsoFLOP group), status (only 'ok' rows are used), error, run (rows of one run,
        e.g. its checkpoints, are resampled together by the bootstrap).
    approach: "auto" fits L(N, D) whenever there are enough points and the IsoFLOP laws
        where budgets have enough sizes, and says which ran and why; "isoflop" or
        "parametric" fit only that one and refuse when the data cannot support it.
    optimum: "parabola" (vertex of a parabola in ln N near the valley), "lowest", or
        "given" (each row already is a budget's optimum: power laws are fitted to them).
    bootstrap: bootstrap replicates for the intervals (0 disables; at most MAX_BOOTSTRAP).
    seed: non-negative seed of the bootstrap's random generator.
    columns: {our column: their column or safe expression}, e.g.
        {"params": "Model Size", "flops": "`Training FLOP`"} (see flops_fit.expressions).
    where: safe expression(s); rows where it is False are excluded (reason recorded).
    holdout: safe expression; rows where it is True are not fitted but predicted by the
        parametric law (`laws.backtest`: observed, predicted, interval, relative error).
    drop_highest_loss: exclude this many highest-loss usable rows (Besiroglu et al. 2024
        drop the 5 highest-loss points of the digitised Chinchilla data).
    budget_rtol: relative FLOPs tolerance for grouping when there is no budget column.
    level: bootstrap interval level (two-sided percentile).
    tie_exponents: fit L(N, D) with alpha = beta (as e.g. Muennighoff et al. 2023 do).
    """
    import pandas as pd
    checks.one_of(approach, "fit", "approach", APPROACHES, error=FitError)
    checks.one_of(optimum, "fit", "optimum", OPTIMA, error=FitError)
    if approach == "parametric" and optimum == "given":
        raise FitError("optimum='given' fits power laws to per-budget optima; use approach='isoflop' or 'auto'")
    bootstrap = checks.integer(bootstrap, "fit", "bootstrap", "1000 replicates give stable 95% intervals; 0 disables",
                          minimum=0, maximum=MAX_BOOTSTRAP, error=FitError)
    seed = checks.integer(seed, "fit", "seed", "the seed of the bootstrap's random generator", minimum=0, error=FitError)
    level = checks.fraction(level, "fit", "level", "the two-sided interval level, e.g. 0.95", open_low=True,
                       open_high=True, error=FitError)
    budget_rtol = checks.positive_number(budget_rtol, "fit", "budget_rtol", "the relative FLOPs tolerance of a group",
                                    error=FitError)
    drop_highest_loss = checks.integer(drop_highest_loss, "fit", "drop_highest_loss", "rows to drop", minimum=0,
                                  error=FitError)
    prep = prepare(data, columns=columns, where=where, drop_highest_loss=drop_highest_loss,
                   budget_rtol=budget_rtol, holdout=holdout)
    points = prep.points
    excluded = list(prep.excluded)
    warnings = list(prep.warnings)
    ran = []

    want_par = approach in ("auto", "parametric") and optimum != "given"
    par_reason = ""
    if want_par and len(points) < MIN_PARAMETRIC_POINTS:
        par_reason = (f"data: {len(points)} usable points; the parametric fit needs at least "
                      f"{MIN_PARAMETRIC_POINTS}")
        if approach == "parametric":
            raise FitError(par_reason)
        want_par = False
    if holdout is not None and not want_par:
        raise FitError("holdout: the backtest predicts held-out rows with the parametric law, which "
                       f"cannot be fitted here ({par_reason or 'approach/optimum exclude it'})")

    iso_points = optima = None
    iso_reason = ""
    if approach in ("auto", "isoflop"):
        try:
            iso_points, optima, iso_excluded = _isoflop_inputs(
                points, excluded, prep, optimum, budget_rtol, strict=(approach == "isoflop" or not want_par))
            excluded += iso_excluded
        except FitError as err:
            if approach == "isoflop" or not want_par:
                raise
            iso_reason = str(err)

    rng = np.random.default_rng(seed)
    k = prep.flops_per_param_token
    iso = None
    if optima is not None:
        iso = _isoflop_laws(iso_points, optima, optimum, k, bootstrap, rng, level)
        ran.append(f"isoflop: ran on {len(optima)} given per-budget optima" if optimum == "given" else
                   f"isoflop: ran on {int(optima['bracketed'].sum())} budget(s) with at least "
                   f"{MIN_POINTS_PER_BUDGET} sizes and a bracketed optimum (optimum={optimum})")
    else:
        ran.append(f"isoflop: not run ({iso_reason or 'approach=parametric'})")
    par = None
    if want_par:
        par = _parametric_law(points, k, bootstrap, rng, level, tie_exponents)
        ran.append(f"parametric: ran on {par.n_points} points" + (" with alpha = beta" if tie_exponents else ""))
    else:
        ran.append(f"parametric: not run ({par_reason or ('optimum=given: the rows are optima, not runs' if optimum == 'given' else 'approach=isoflop')})")

    warnings += _domain_warnings(points, iso, par, bootstrap)
    agreement = _agreement(iso, par)
    if agreement.startswith("disagree"):
        warnings.append(f"the two approaches {agreement}")

    backtest = _backtest(par, prep.holdout, level, float(points["flops"].max())) if prep.holdout is not None else None
    excl = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)
    source = str(data) if isinstance(data, (str, Path)) else type(data).__name__
    provenance = _provenance(data, prep, columns=columns, where=where, holdout=holdout,
                             excluded=excl, approach=approach, optimum=optimum, bootstrap=bootstrap,
                             seed=seed, level=level, budget_rtol=budget_rtol,
                             drop_highest_loss=drop_highest_loss, tie_exponents=tie_exponents)
    return ScalingLaws(iso, par, points, excl, prep.notes, bootstrap, seed, level, source,
                       warnings, ran, agreement, backtest, provenance)


def _isoflop_inputs(points, excluded, prep, optimum, budget_rtol, strict):
    """(points of the usable budgets, per-budget optima, new exclusions) or FitError."""
    import pandas as pd
    new = []
    sizes = points.groupby("budget")["params"].nunique()
    need = 1 if optimum == "given" else MIN_POINTS_PER_BUDGET
    small = sizes[sizes < need]
    # A budget planned with too few sizes is a design error (refused when only the IsoFLOP
    # approach is asked for); one left short because some of its runs diverged, failed or
    # are unfinished is data: it is excluded and reported.
    lost = pd.Series([e.get("budget") for e in excluded if e.get("kind") == "row"], dtype=float).value_counts()
    designed_small = small[[n + int(lost.get(b, 0)) < need for b, n in small.items()]]
    if strict and prep.budget_given and len(designed_small):
        listing = ", ".join(f"{b:.3g} ({n} size{'s' if n != 1 else ''})" for b, n in designed_small.items())
        raise FitError(
            f"budget: {len(designed_small)} budget(s) have fewer than {MIN_POINTS_PER_BUDGET} model sizes "
            f"for a parabola: {listing}. Drop them, e.g. where='budget != {designed_small.index[0]:.3g}', "
            "or run more sizes at those budgets"
        )
    for b, n in small.items():
        why = (f"only {n} usable model size(s) (need {MIN_POINTS_PER_BUDGET})"
               if prep.budget_given else
               # Groups formed by FLOPs tolerance are not planned budgets; small ones are noted.
               f"only {n} model size(s) at this FLOPs (need {MIN_POINTS_PER_BUDGET})")
        new.append({"kind": "budget", "budget": float(b), "reason": why})
    enough = sizes[sizes >= need]
    if len(enough) < MIN_BUDGETS:
        raise FitError(
            f"budget: only {len(enough)} budget(s) with at least {need} model "
            f"size(s); a power law needs {MIN_BUDGETS}. "
            + ("Add budgets to the sweep." if prep.budget_given else
               f"Points are grouped by FLOPs within budget_rtol={budget_rtol:g}; give a budget "
               "column or a larger budget_rtol (CLI: --budget-rtol), or fit L(N, D) alone "
               "(approach='parametric').")
        )
    iso_points = points[points["budget"].isin(enough.index)]
    optima = budget_optima(iso_points, optimum, prep.flops_per_param_token)
    for rec in optima[~optima["bracketed"]].itertuples():
        new.append({"kind": "budget", "budget": rec.budget, "params": rec.params_opt,
                    "loss": rec.loss_opt, "reason": f"optimum not bracketed: {rec.reason}"})
    if optima["bracketed"].sum() < MIN_BUDGETS:
        raise FitError(
            f"optimum={optimum!r}: only {int(optima['bracketed'].sum())} budget(s) have a bracketed "
            f"optimum; a power law needs {MIN_BUDGETS}. Sample sizes on both sides of the "
            "minimum" + (" or try optimum='lowest'" if optimum == "parabola" else "")
        )
    return iso_points, optima, new


def _domain_warnings(points, iso, par, bootstrap):
    """Warnings that the data do not show a scaling law, or that intervals are unreliable."""
    out = []
    log_c = np.log(points["flops"].to_numpy())
    log_l = np.log(points["loss"].to_numpy())
    if np.ptp(log_c) > 0:
        slope = np.polyfit(log_c, log_l, 1)[0]
        if slope >= 0:
            out.append(f"loss does not fall with compute (slope of ln loss on ln FLOPs = {slope:+.3g}): "
                       "no scaling law can be read from these rows; check the loss column and the filters")
    if iso is not None and iso.loss_exponent.value >= 0:
        out.append(f"IsoFLOP optimal loss rises with compute (L_opt ~ C^{iso.loss_exponent.value:+.3g})")
    if par is not None:
        resid = np.log(par.loss(points["params"], points["tokens"])) - log_l
        r2 = 1 - float(np.sum(resid**2)) / float(np.sum((log_l - log_l.mean()) ** 2) or np.inf)
        if r2 < MIN_EXPLAINED_VARIANCE:
            out.append(f"the parametric law explains only {max(r2, 0):.0%} of the variance of ln loss "
                       "across these rows: the loss does not follow N and D here (random or mislabelled "
                       "losses?); check the loss column")
        for name in ("alpha", "beta"):
            if getattr(par, name).value <= EXPONENT_MIN * 1.01:
                out.append(f"parametric {name} sits at its lower bound {EXPONENT_MIN:g}: loss does not "
                           f"fall with {'model size' if name == 'alpha' else 'tokens'} in these data")
        if par.E.value >= points["loss"].min() * (1 - 1e-6):
            out.append("parametric E sits at the lowest observed loss (its upper bound): the data do not "
                       "identify an irreducible loss")
    if bootstrap and iso is not None and iso.thin_share > MAX_THIN_SHARE:
        out.append(f"isoflop intervals are UNRELIABLE: budget(s) {', '.join(f'{b:.3g}' for b in iso.thin_budgets)} "
                   f"FLOPs rest on exactly {MIN_POINTS_PER_BUDGET} sizes near the valley, so resampling "
                   "cannot show their noise. Sample more sizes per budget")
    if bootstrap:
        for label, dropped in (("isoflop", iso.bootstrap_failed if iso is not None else 0),
                               ("parametric", par.bootstrap_dropped if par is not None else 0)):
            if dropped > MAX_DROPPED_SHARE * bootstrap:
                out.append(f"{label} intervals are UNRELIABLE: {dropped} of {bootstrap} bootstrap "
                           "replicates were dropped (no fit on the resample); the interval comes from "
                           "the rest. Sample more sizes per budget, or more budgets")
    return out


def _agreement(iso, par):
    """Do the approaches' N_opt exponents a agree within their intervals?"""
    if iso is None or par is None:
        return ""
    a_i, a_p = iso.a, par.a
    text = f"a = {a_i.value:.3g} (isoflop) vs {a_p.value:.3g} (parametric)"
    if not (np.isfinite(a_i.low) and np.isfinite(a_p.low)):
        return f"not judged without bootstrap intervals: {text}"
    if a_i.low <= a_p.high and a_p.low <= a_i.high:
        return f"agree: {text}, intervals overlap"
    return (f"disagree beyond their intervals: N_opt exponent a {a_i} (isoflop) vs {a_p} (parametric); "
            "trust neither extrapolation until the sweep covers the valley at more budgets")


def _backtest(par, held, level, max_flops):
    """Held-out rows: observed loss, parametric prediction with interval, relative error."""
    import pandas as pd
    n, d = held["params"].to_numpy(), held["tokens"].to_numpy()
    pred = par.loss(n, d)
    lo = hi = np.full_like(pred, np.nan)
    if par.samples is not None and len(par.samples) >= 2:
        draws = np.array([parametric_loss(n, d, *row) for row in par.samples])
        lo, hi = np.array([_percentile_interval(col, level) for col in draws.T]).T
    obs = held["loss"].to_numpy()
    return pd.DataFrame({
        "row": held["row"].to_numpy(), "params": n, "tokens": d, "flops": held["flops"].to_numpy(),
        "loss": obs, "predicted": pred, "predicted_low": lo, "predicted_high": hi,
        "relative_error": pred / obs - 1, "inside_interval": (obs >= lo) & (obs <= hi),
        "extrapolated": held["flops"].to_numpy() > EXTRAPOLATION_FACTOR * max_flops,
    })


def _provenance(data, prep, **options):
    """Where every number came from: input and its hash, mapping, filters, options, versions."""
    import hashlib
    import importlib.metadata as md

    import pandas as pd
    import scipy

    if isinstance(data, (str, Path)):
        p = Path(data).expanduser()
        if "://" not in str(data) and p.is_file():
            digest = "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        else:  # a sweep folder or a remote table: hash the rows fitted
            digest = "sha256 of the rows fitted:" + _frame_hash(prep)
        source = str(data)
    else:
        source, digest = f"{type(data).__name__} in memory", "sha256:" + _frame_hash(prep)
    excl = options.pop("excluded")
    try:
        version = md.version("flops-fit")
    except md.PackageNotFoundError:
        version = "unknown"
    return {
        "input": source, "content": digest, "rows read": prep.raw_rows,
        "mapping": dict(options.pop("columns") or {}),
        "where": options.pop("where"), "holdout": options.pop("holdout"),
        "excluded": f"{int((excl['kind'] == 'row').sum())} row(s), {int((excl['kind'] == 'budget').sum())} budget(s)",
        "options": options,
        "versions": f"flops_fit {version}, numpy {np.__version__}, scipy {scipy.__version__}, pandas {pd.__version__}",
    }


def _frame_hash(prep):
    import hashlib

    import pandas as pd
    h = pd.util.hash_pandas_object(prep.points[["params", "tokens", "flops", "loss"]], index=False)
    return hashlib.sha256(h.to_numpy().tobytes()).hexdigest()[:16]
