"""Scaling-law fits: IsoFLOP optima, power laws in compute, parametric L(N, D), bootstrap.

Three layers, kept apart (lmfit style):

1. pure math   -- `parametric_loss`, `power_law`, `compute_optimal_allocation`, the
                  Huber / log-sum-exp objective and its analytic gradient;
2. the engine  -- reading and validating a results table, per-budget optima, the
                  vectorised multi-start L-BFGS, the bootstrap, `fit()`;
3. the result  -- `ScalingLaws` and friends. Presentation (tables, summary text, plots)
                  lives in `flops_fit.report`; the methods here only delegate to it.

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

Importing this module imports neither ray nor torch (DESIGN.md, import rules).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

# pandas and scipy are imported inside the functions that use them: every Ray worker
# imports this package (whose `fit` is bound eagerly), and the two cost about 0.6 s of CPU
# per process, paid by every trial of a sweep (benchmarks/RESULTS.md, import costs).

# ---------------------------------------------------------------------------------------
# Named constants
# ---------------------------------------------------------------------------------------

# Training FLOPs per parameter per token for a dense transformer: 2 (forward) + 4
# (backward), Kaplan et al. 2020 eq. 2.1; Chinchilla uses C = 6ND throughout.
FLOPS_PER_PARAM_TOKEN = 6.0

# When the table has no `budget` column, points whose FLOPs agree within this relative
# tolerance form one IsoFLOP group. Planned sweeps hit their budget to well under 1%;
# 5% still separates budgets that are a factor 1.5 or more apart.
BUDGET_RTOL = 0.05

# A measured flops/(N*D) ratio further than this from 6 is reported as a different
# FLOP convention (e.g. counted attention FLOPs, forward-only FLOPs).
FLOPS_CONVENTION_RTOL = 0.01

# Huber threshold on the log-loss residual, Hoffmann et al. 2022 App. D.2.
HUBER_DELTA = 1e-3

# Grid of L-BFGS starts, Hoffmann et al. 2022 App. D.2 / Besiroglu et al. 2024 Sec. 2:
# alpha, beta in {0, 0.5, ..., 2}; e in {-1, -0.5, ..., 1}; a, b in {0, 5, ..., 25}.
GRID_ALPHA = np.arange(0.0, 2.0 + 1e-9, 0.5)
GRID_BETA = np.arange(0.0, 2.0 + 1e-9, 0.5)
GRID_E = np.arange(-1.0, 1.0 + 1e-9, 0.5)
GRID_A = np.arange(0.0, 25.0 + 1e-9, 5.0)
GRID_B = np.arange(0.0, 25.0 + 1e-9, 5.0)

# Batched L-BFGS settings. All grid starts are advanced together for a few iterations;
# then only the best are carried on (successive halving): most of the 4,500 starts fall
# into a handful of basins within ~10 iterations, so running each to convergence would
# repeat the same work. Each stage is (starts kept, iterations). The POLISH_STARTS best
# distinct results are then polished by scipy's L-BFGS-B with the analytic gradient, the
# optimiser of the published recipe.
LBFGS_MEMORY = 10
GRID_STAGES = ((None, 10), (500, 30), (50, 400))  # None: every grid start
POLISH_STARTS = 5
LBFGS_FTOL = 1e-12  # relative decrease in objective below which a start has converged
LBFGS_MAX_STEP = 2.0  # largest change of any of (a, b, e, alpha, beta) in one step
ARMIJO_C1 = 1e-4
MAX_BACKTRACKS = 40

# Bootstrap refits of the parametric law start from the full-data optimum plus the
# best BOOTSTRAP_EXTRA_STARTS other distinct local optima of the full-data grid run.
# A resample moves the optimum only a little, so re-running the whole grid 1,000 times
# would spend ~4,500x the work to find the same basin; the extra starts guard against a
# resample whose best basin is a different one.
BOOTSTRAP_EXTRA_STARTS = 3
BOOTSTRAP_ITERATIONS = 300

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

OPTIMA = ("parabola", "lowest")
REQUIRED_COLUMNS = ("params", "tokens", "loss")
OPTIONAL_COLUMNS = ("flops", "budget", "status", "error")
OK_STATUS = "ok"


class FitError(ValueError):
    """The data cannot support the requested fit (bad input or not enough data yet).

    Raised before any optimisation; the message names the column or argument and how
    to fix it. A live-fit callback during a sweep catches it to mean "not enough data".
    """


# ---------------------------------------------------------------------------------------
# 1. Pure math
# ---------------------------------------------------------------------------------------


def training_flops(params, tokens, flops_per_param_token=FLOPS_PER_PARAM_TOKEN):
    """Training compute in FLOPs for N parameters trained on D tokens: C = k*N*D."""
    return flops_per_param_token * np.asarray(params, float) * np.asarray(tokens, float)


def power_law(flops, coefficient, exponent):
    """y = k * C^exponent, C in FLOPs."""
    return coefficient * np.asarray(flops, float) ** exponent


def parametric_loss(params, tokens, E, A, B, alpha, beta):
    """L(N, D) = E + A/N^alpha + B/D^beta in nats per token (Hoffmann et al. 2022 eq. 2)."""
    n = np.asarray(params, float)
    d = np.asarray(tokens, float)
    return E + A / n**alpha + B / d**beta


def compute_optimal_allocation(flops, A, B, alpha, beta,
                               flops_per_param_token=FLOPS_PER_PARAM_TOKEN):
    """N_opt and D_opt minimising L(N, D) subject to C = k*N*D (Hoffmann et al. 2022 eq. 4).

    N_opt = G (C/k)^a, D_opt = G^-1 (C/k)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta). Returns (parameters, tokens).
    """
    a_exp = beta / (alpha + beta)
    b_exp = alpha / (alpha + beta)
    g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    c_over_k = np.asarray(flops, float) / flops_per_param_token
    return g * c_over_k**a_exp, c_over_k**b_exp / g


def huber(residual, delta=HUBER_DELTA):
    """Huber loss: quadratic for |r| <= delta, linear beyond (Huber 1964)."""
    r = np.abs(residual)
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def huber_lse_objective(theta, log_n, log_d, log_loss, weights, delta=HUBER_DELTA):
    """Summed Huber objective of Hoffmann et al. 2022 App. D.2 and its analytic gradient.

    theta: (S, 5) rows (a, b, e, alpha, beta) with A, B, E = exp(a, b, e); log_n, log_d,
    log_loss: (n,) natural logs of parameters, tokens and loss; weights: (n,) or (S, n)
    per-point multiplicities (bootstrap counts). The residual is
    r = LSE(a - alpha ln N, b - beta ln D, e) - ln L, the model's log loss minus the
    observed one; the objective is sum_i w_i Huber(r_i). Returns (f (S,), grad (S, 5)).
    """
    theta = np.atleast_2d(theta)
    a, b, e, alpha, beta = (theta[:, j : j + 1] for j in range(5))
    u1 = a - alpha * log_n
    u2 = b - beta * log_d
    u3 = np.broadcast_to(e, u1.shape)
    top = np.maximum(np.maximum(u1, u2), u3)
    e1 = np.exp(u1 - top)
    e2 = np.exp(u2 - top)
    e3 = np.exp(u3 - top)
    total = e1 + e2 + e3
    r = top + np.log(total) - log_loss
    # psi = d Huber / dr = clip(r, -delta, delta), and Huber(r) = psi (r - psi/2) exactly
    # in both branches, which saves a branch over the (S, n) array.
    psi = np.clip(r, -delta, delta)
    f = (weights * (psi * (r - 0.5 * psi))).sum(axis=1)
    # d LSE / d u_k = softmax weight e_k / total.
    wpsi = weights * psi / total
    g1 = wpsi * e1
    g2 = wpsi * e2
    grad = np.empty_like(theta)
    grad[:, 0] = g1.sum(axis=1)
    grad[:, 1] = g2.sum(axis=1)
    grad[:, 2] = (wpsi * e3).sum(axis=1)
    grad[:, 3] = -(g1 * log_n).sum(axis=1)
    grad[:, 4] = -(g2 * log_d).sum(axis=1)
    return f, grad


def start_grid():
    """The 4,500 grid starts (a, b, e, alpha, beta) of Hoffmann et al. 2022 App. D.2."""
    return np.array(list(itertools.product(GRID_A, GRID_B, GRID_E, GRID_ALPHA, GRID_BETA)))


# ---------------------------------------------------------------------------------------
# 2. Engine: batched L-BFGS
# ---------------------------------------------------------------------------------------


def batched_lbfgs(fun_grad, x0, *, max_iter, memory=LBFGS_MEMORY, ftol=LBFGS_FTOL):
    """Minimise S independent smooth problems together with L-BFGS (Nocedal & Wright
    2006, Alg. 7.4 two-loop recursion; Armijo backtracking, Alg. 3.1).

    fun_grad(x, rows) -> (f, grad) evaluates problems `rows` (int array) at x (len(rows), d).
    Every numpy operation acts on all still-running problems at once, which is what makes
    4,500 starts cost about as much as a handful of sequential ones.
    Returns (x, f, iterations_run).
    """
    x = np.array(x0, float)
    n_start, dim = x.shape
    rows = np.arange(n_start)
    f, g = fun_grad(x, rows)
    s_hist = np.zeros((n_start, memory, dim))
    y_hist = np.zeros((n_start, memory, dim))
    rho = np.zeros((n_start, memory))
    n_stored = np.zeros(n_start, int)
    active = np.ones(n_start, bool)
    it = 0
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        gi = g[idx]
        # Two-loop recursion over the circular history (slot j holds update j % memory).
        q = gi.copy()
        k = n_stored[idx]
        alphas = np.zeros((idx.size, memory))
        for back in range(memory):
            slot_pos = k - 1 - back
            ok = slot_pos >= 0
            slot = np.mod(slot_pos, memory)
            s = s_hist[idx, slot]
            y = y_hist[idx, slot]
            r = np.where(ok, rho[idx, slot], 0.0)
            al = r * np.einsum("ij,ij->i", s, q)
            alphas[:, back] = al
            q -= al[:, None] * y
        last = np.mod(k - 1, memory)
        s_l = s_hist[idx, last]
        y_l = y_hist[idx, last]
        yy = np.einsum("ij,ij->i", y_l, y_l)
        sy = np.einsum("ij,ij->i", s_l, y_l)
        gamma = np.where((k > 0) & (yy > 0), sy / np.where(yy > 0, yy, 1.0), 1.0)
        q *= gamma[:, None]
        for back in reversed(range(memory)):
            slot_pos = k - 1 - back
            ok = slot_pos >= 0
            slot = np.mod(slot_pos, memory)
            s = s_hist[idx, slot]
            y = y_hist[idx, slot]
            r = np.where(ok, rho[idx, slot], 0.0)
            be = r * np.einsum("ij,ij->i", y, q)
            q += s * (alphas[:, back] - be)[:, None]
        p = -q
        # Fall back to steepest descent where the quasi-Newton direction is not downhill.
        slope = np.einsum("ij,ij->i", p, gi)
        bad = ~(slope < 0)
        p[bad] = -gi[bad]
        slope[bad] = -np.einsum("ij,ij->i", gi[bad], gi[bad])
        # Cap the step so one iteration cannot throw a start into overflow territory.
        biggest = np.abs(p).max(axis=1)
        p *= np.minimum(1.0, LBFGS_MAX_STEP / np.where(biggest > 0, biggest, 1.0))[:, None]
        slope = np.einsum("ij,ij->i", p, gi)
        # Armijo backtracking, evaluating only the starts whose step was rejected.
        step = np.ones(idx.size)
        f_new = np.empty(idx.size)
        g_new = np.empty((idx.size, dim))
        pending = np.arange(idx.size)
        for _ in range(MAX_BACKTRACKS):
            xt = x[idx[pending]] + step[pending, None] * p[pending]
            ft, gt = fun_grad(xt, idx[pending])
            accept = np.isfinite(ft) & (ft <= f[idx[pending]] + ARMIJO_C1 * step[pending] * slope[pending])
            f_new[pending[accept]] = ft[accept]
            g_new[pending[accept]] = gt[accept]
            pending = pending[~accept]
            if pending.size == 0:
                break
            step[pending] *= 0.5
        # Starts with no acceptable step are at a (numerical) minimum: stop them there.
        stuck = np.zeros(idx.size, bool)
        stuck[pending] = True
        moved = ~stuck
        mi = idx[moved]
        s_new = step[moved, None] * p[moved]
        y_new = g_new[moved] - g[mi]
        sy_new = np.einsum("ij,ij->i", s_new, y_new)
        # Store the pair only where curvature is positive (keeps the inverse Hessian SPD).
        good = sy_new > 1e-12 * np.einsum("ij,ij->i", y_new, y_new).clip(min=1e-300) ** 0.5
        slot = np.mod(n_stored[mi], memory)
        gi_rows = mi[good]
        s_hist[gi_rows, slot[good]] = s_new[good]
        y_hist[gi_rows, slot[good]] = y_new[good]
        rho[gi_rows, slot[good]] = 1.0 / sy_new[good]
        n_stored[gi_rows] += 1
        f_old = f[mi]
        x[mi] += s_new
        f[mi] = f_new[moved]
        g[mi] = g_new[moved]
        converged = (f_old - f[mi]) <= ftol * np.maximum(np.abs(f_old), np.abs(f[mi])).clip(min=1e-300)
        active[mi[converged]] = False
        active[idx[stuck]] = False
    return x, f, it


def _distinct_best(x, f, count, decimals=4):
    """Indices of the `count` lowest-f rows of x that differ after rounding."""
    order = np.argsort(f, kind="stable")
    seen = set()
    keep = []
    for i in order:
        if not np.isfinite(f[i]):
            continue
        key = tuple(np.round(x[i], decimals))
        if key in seen:
            continue
        seen.add(key)
        keep.append(int(i))
        if len(keep) == count:
            break
    return np.array(keep, int)


def fit_parametric_params(log_n, log_d, log_loss, *, delta=HUBER_DELTA):
    """Full-grid Huber/LSE fit (Hoffmann et al. 2022 App. D.2). Returns (theta, f, local_optima).

    theta = (a, b, e, alpha, beta) of the best start after scipy L-BFGS-B polishing with the
    analytic gradient; local_optima are the distinct converged survivors (best first), used
    as extra bootstrap starts.
    """
    ones = np.ones_like(log_n)

    def fun_grad(x, rows):
        return huber_lse_objective(x, log_n, log_d, log_loss, ones, delta)

    xs = start_grid()
    for keep, iterations in GRID_STAGES:
        if keep is not None:
            fs = np.where(np.isfinite(fs), fs, np.inf)
            xs = xs[np.argsort(fs, kind="stable")[:keep]]
        xs, fs, _ = batched_lbfgs(fun_grad, xs, max_iter=iterations)
    candidates = _distinct_best(xs, fs, POLISH_STARTS)

    from scipy.optimize import minimize

    def scalar(theta):
        fv, gv = huber_lse_objective(theta[None, :], log_n, log_d, log_loss, ones, delta)
        return float(fv[0]), gv[0]

    best_theta, best_f = None, np.inf
    for i in candidates:
        res = minimize(scalar, xs[i], jac=True, method="L-BFGS-B")
        if res.fun < best_f:
            best_theta, best_f = res.x, float(res.fun)
    order = _distinct_best(xs, fs, BOOTSTRAP_EXTRA_STARTS + 1)
    return best_theta, best_f, xs[order]


# ---------------------------------------------------------------------------------------
# 2. Engine: reading and validating the table
# ---------------------------------------------------------------------------------------


def read_table(data) -> pd.DataFrame:
    """Any supported input -> a fresh DataFrame (no validation yet).

    data: DataFrame; list of dicts; an object with a `.table` DataFrame (SweepResults);
    a path to a CSV, a JSON list of records, JSON lines, or a stored sweep directory.
    """
    import pandas as pd
    if isinstance(data, pd.DataFrame):
        return data.copy()
    if isinstance(getattr(data, "table", None), pd.DataFrame):
        return data.table.copy()
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise FitError(f"data: no such file or directory: {path}")
        if path.is_dir():
            # Lazy: results.py is only needed for stored sweeps.
            from flops_fit.results import load_results

            return load_results(path).table.copy()
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix in (".json", ".jsonl", ".ndjson"):
            text = path.read_text()
            stripped = text.lstrip()
            if stripped.startswith("["):
                return pd.DataFrame(json.loads(text))
            if stripped.startswith("{") and suffix == ".json" and "\n{" not in stripped:
                obj = json.loads(text)
                # {"column": [values...]} layout
                return pd.DataFrame(obj)
            return pd.DataFrame([json.loads(line) for line in text.splitlines() if line.strip()])
        raise FitError(f"data: cannot read {path.name!r}; use a .csv, .json or .jsonl file "
                       "or a stored sweep directory")
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if not all(isinstance(r, Mapping) for r in data):
            raise FitError("data: a list must hold one dict per run (keys params, tokens, loss, ...)")
        return pd.DataFrame(list(data))
    raise FitError(f"data: unsupported type {type(data).__name__}; pass a DataFrame, a list of "
                   "dicts, a path to CSV/JSON/JSONL, a sweep directory or a SweepResults")


_EVAL_ERRORS = (NameError, SyntaxError, KeyError, AttributeError, TypeError, ValueError)


def _evaluate(frame, expression, what):
    """Column name or pandas expression (backticks around names with spaces or '/')."""
    if expression in frame.columns:
        return frame[expression]
    try:
        return frame.eval(expression, engine="python")
    except _EVAL_ERRORS as err:
        raise FitError(
            f"{what}: {expression!r} is neither a column nor an expression over the columns "
            f"({err}). Columns present: {list(frame.columns)}. Quote names with spaces or "
            "'/' in backticks, e.g. `Model Size`."
        ) from None


@dataclass
class _Prepared:
    points: pd.DataFrame  # usable rows: params, tokens, flops, loss, budget, row
    excluded: list  # dict records
    notes: list
    flops_per_param_token: float
    budget_given: bool


def _row_record(frame, i, reason):
    rec = {"kind": "row", "row": i, "reason": reason}
    for col in ("budget", "params", "tokens", "flops", "loss"):
        if col in frame.columns:
            v = frame.at[i, col]
            rec[col] = float(v) if isinstance(v, (int, float, np.number)) else v
    return rec


def prepare(data, *, columns=None, where=None, drop_highest_loss=0, budget_rtol=BUDGET_RTOL):
    """Read, map, filter and validate a results table; raise FitError on bad input."""
    import pandas as pd
    raw = read_table(data)
    raw = raw.reset_index(drop=True)
    notes = []
    frame = raw.copy()
    for ours, theirs in (columns or {}).items():
        if ours not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            raise FitError(f"columns: unknown target {ours!r}; map to one of "
                           f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
        frame[ours] = _evaluate(raw, theirs, f"columns[{ours!r}]")
        notes.append(f"{ours} <- {theirs}")

    present = set(frame.columns)
    for col in ("params", "tokens", "flops", "budget", "loss"):
        if col in present and not pd.api.types.is_numeric_dtype(frame[col]):
            # e.g. FLOP counts above 2^63 that pandas keeps as text
            converted = pd.to_numeric(frame[col], errors="coerce")
            bad = converted.isna() & frame[col].notna()
            if bad.any():
                rows = list(np.flatnonzero(bad.to_numpy())[:10])
                raise FitError(f"column {col!r}: non-numeric values in rows {rows}; "
                               "fix the file or map the column to a numeric one")
            frame[col] = converted
    flops_given = "flops" in present
    if "loss" not in present or sum(c in present for c in ("params", "tokens", "flops")) < 2:
        missing = [c for c in ("params", "tokens", "loss") if c not in present]
        raise FitError(
            f"missing column(s) {missing}: need loss and two of params/tokens/flops. "
            f"Columns present: {list(raw.columns)}. Rename them or map them, e.g. "
            "columns={'params': 'Model Size'} (CLI: --map params=\"Model Size\")."
        )
    k_assumed = FLOPS_PER_PARAM_TOKEN
    if "params" not in present:
        frame["params"] = frame["flops"] / (k_assumed * frame["tokens"])
        notes.append("params derived as N = C/(6 D) (no params column)")
    if "tokens" not in present:
        frame["tokens"] = frame["flops"] / (k_assumed * frame["params"])
        notes.append("tokens derived as D = C/(6 N) (no tokens column)")
    if "flops" not in present:
        frame["flops"] = training_flops(frame["params"], frame["tokens"])

    excluded = []
    usable = np.ones(len(frame), bool)
    if "status" in present:
        status = frame["status"].astype(str).str.strip().str.lower()
        for i in np.flatnonzero((status != OK_STATUS).to_numpy()):
            reason = f"status={frame.at[i, 'status']}"
            if "error" in frame.columns and pd.notna(frame.at[i, "error"]) and str(frame.at[i, "error"]).strip():
                reason += f": {frame.at[i, 'error']}"
            excluded.append(_row_record(frame, i, reason))
            usable[i] = False

    wheres = [where] if isinstance(where, str) else list(where or [])
    for expr in wheres:
        mask = _evaluate(frame, expr, "where")
        mask = np.asarray(mask, dtype=object)
        if mask.shape != (len(frame),) or not all(isinstance(m, (bool, np.bool_)) for m in mask):
            raise FitError(f"where: {expr!r} must give one True/False per row")
        for i in np.flatnonzero(usable & ~mask.astype(bool)):
            excluded.append(_row_record(frame, i, f"where: not ({expr})"))
            usable[i] = False

    loss = frame["loss"].to_numpy(float)
    for i in np.flatnonzero(usable & np.isinf(loss)):
        excluded.append(_row_record(frame, i, "non-finite loss (inf): diverged run"))
        usable[i] = False

    check = ["params", "tokens", "loss", "flops"] + (["budget"] if "budget" in present else [])
    for col in check:
        v = frame[col].to_numpy(float)
        bad = usable & ~(np.isfinite(v) & (v > 0))
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(str(r) for r in rows[:10]) + (" ..." if rows.size > 10 else "")
            raise FitError(
                f"column {col!r}: {rows.size} usable row(s) have non-positive or NaN values "
                f"(rows {shown}); mark them status='failed', drop them with where=..., or fix the data"
            )

    if drop_highest_loss:
        if int(drop_highest_loss) != drop_highest_loss or drop_highest_loss < 0:
            raise FitError(f"drop_highest_loss: must be a non-negative integer, got {drop_highest_loss!r}")
        idx = np.flatnonzero(usable)
        if drop_highest_loss >= idx.size:
            raise FitError(f"drop_highest_loss={drop_highest_loss} would drop all {idx.size} usable rows")
        worst = idx[np.argsort(-loss[idx], kind="stable")[: int(drop_highest_loss)]]
        for i in worst:
            excluded.append(_row_record(frame, i, f"drop_highest_loss={drop_highest_loss}"))
            usable[i] = False

    pts = frame.loc[usable, ["params", "tokens", "flops", "loss"]].astype(float).copy()
    pts["row"] = np.flatnonzero(usable)
    if pts.empty:
        raise FitError("data: no usable rows (every row was excluded); see the exclusion reasons")

    # FLOP convention. With a measured flops column, the data say how many FLOPs one
    # parameter-token costs; D_opt = C/(k N_opt) must use the same k or the tokens are off.
    k = FLOPS_PER_PARAM_TOKEN
    if flops_given and "params" in present and "tokens" in present:
        k = float(np.median(pts["flops"] / (pts["params"] * pts["tokens"])))
        if abs(k / FLOPS_PER_PARAM_TOKEN - 1) > FLOPS_CONVENTION_RTOL:
            notes.append(f"flops column is not 6ND: using k = median flops/(N D) = {k:.4g} "
                         "FLOPs per parameter per token for D = C/(k N)")
        else:
            k = FLOPS_PER_PARAM_TOKEN

    budget_given = "budget" in present
    if budget_given:
        pts["budget"] = frame.loc[usable, "budget"].astype(float).to_numpy()
    else:
        pts["budget"] = group_by_flops(pts["flops"].to_numpy(), budget_rtol)
        notes.append(f"no budget column: grouped points whose FLOPs agree within "
                     f"{budget_rtol:.0%} (budget_rtol); budget C = mean FLOPs of the group")
    return _Prepared(pts.reset_index(drop=True), excluded, notes, k, budget_given)


def group_by_flops(flops, rtol=BUDGET_RTOL):
    """IsoFLOP groups: sort by FLOPs, start a new group when a point exceeds the group's
    smallest FLOPs by more than rtol. Returns the mean FLOPs of each point's group."""
    flops = np.asarray(flops, float)
    order = np.argsort(flops, kind="stable")
    label = np.empty(flops.size, int)
    group, first = -1, None
    for i in order:
        if first is None or flops[i] > first * (1 + rtol):
            group += 1
            first = flops[i]
        label[i] = group
    means = np.array([flops[label == g].mean() for g in range(group + 1)])
    return means[label]


# ---------------------------------------------------------------------------------------
# 2. Engine: IsoFLOP optima and power laws (Hoffmann et al. 2022 Approach 2)
# ---------------------------------------------------------------------------------------


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


def budget_optima(points, optimum, k):
    """Per-budget optimum. Returns a DataFrame with one row per budget (FLOPs order)."""
    import pandas as pd
    rows = []
    for budget, grp in points.groupby("budget", sort=True):
        log_n = np.log(grp["params"].to_numpy())
        loss = grp["loss"].to_numpy()
        rec = {"budget": float(budget), "n_points": len(grp),
               "params_min": float(np.exp(log_n.min())), "params_max": float(np.exp(log_n.max()))}
        if optimum == "parabola":
            mask = _valley_mask(log_n, loss)
            centre = log_n[mask].mean()
            x = log_n[mask] - centre  # centred for conditioning
            c0, c1, c2 = (float(v[0]) for v in _weighted_parabolas(x, loss[mask], np.ones((1, x.size))))
            rec.update(n_valley=int(mask.sum()), curvature=c2, log_n_centre=centre,
                       c0=c0, c1=c1, c2=c2)
            lo, hi = x.min(), x.max()
            if not np.isfinite(c2):
                rec.update(bracketed=False, reason="parabola undetermined (fewer than 3 distinct sizes)")
                xv, lv = x[np.argmin(loss[mask])], loss[mask].min()
            elif c2 <= 0:
                rec.update(bracketed=False, reason="parabola opens downward (no minimum)")
                xv, lv = x[np.argmin(loss[mask])], loss[mask].min()
            else:
                xv = -c1 / (2 * c2)
                lv = c0 + c1 * xv + c2 * xv * xv
                inside = lo <= xv <= hi
                rec.update(bracketed=bool(inside),
                           reason="" if inside else
                           f"vertex N={math.exp(xv + centre):.3g} outside sampled sizes "
                           f"[{math.exp(lo + centre):.3g}, {math.exp(hi + centre):.3g}]")
            n_opt = math.exp(xv + centre)
            l_opt = float(lv)
        else:
            j = int(np.argmin(loss))
            n_opt = float(np.exp(log_n[j]))
            l_opt = float(loss[j])
            edge = log_n[j] <= log_n.min() or log_n[j] >= log_n.max()
            rec.update(bracketed=not edge,
                       reason="lowest loss at the smallest or largest size sampled" if edge else "")
        rec.update(params_opt=n_opt, tokens_opt=float(budget) / (k * n_opt), loss_opt=l_opt)
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


def _percentile_interval(samples, level):
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return (math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return (float(lo), float(hi))


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
class IsoflopLaws:
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

    def predict(self, flops, level=INTERVAL_LEVEL):
        """(N_opt, D_opt, L_opt) for compute C in FLOPs, each (value, low, high) arrays."""
        c = np.atleast_1d(np.asarray(flops, float))
        lc = np.log(c)
        point = [np.exp(np.log(k.value) + e.value * lc) for k, e in
                 ((self.k_N, self.a), (self.k_D, self.b), (self.k_L, self.loss_exponent))]
        out = []
        for j, val in enumerate(point):
            if self.samples is None or len(self.samples) < 2:
                out.append((val, np.full_like(val, np.nan), np.full_like(val, np.nan)))
                continue
            draws = np.exp(self.samples[:, 2 * j, None] + self.samples[:, 2 * j + 1, None] * lc)
            lo, hi = np.array([_percentile_interval(d, level) for d in draws.T]).T
            out.append((val, lo, hi))
        return out


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

    def loss(self, params, tokens):
        """Predicted loss in nats per token for N parameters trained on D tokens."""
        return parametric_loss(params, tokens, self.E.value, self.A.value, self.B.value,
                               self.alpha.value, self.beta.value)

    def predict(self, flops, level=INTERVAL_LEVEL):
        """(N_opt, D_opt, L(N_opt, D_opt)) for C in FLOPs, each (value, low, high)."""
        c = np.atleast_1d(np.asarray(flops, float))
        k = self.flops_per_param_token

        def at(E, A, B, alpha, beta):
            n, d = compute_optimal_allocation(c, A, B, alpha, beta, k)
            return n, d, parametric_loss(n, d, E, A, B, alpha, beta)

        point = at(self.E.value, self.A.value, self.B.value, self.alpha.value, self.beta.value)
        if self.samples is None or len(self.samples) < 2:
            return [(v, np.full_like(v, np.nan), np.full_like(v, np.nan)) for v in point]
        draws = [at(*row) for row in self.samples]
        out = []
        for j, val in enumerate(point):
            stack = np.array([d[j] for d in draws])
            lo, hi = np.array([_percentile_interval(col, level) for col in stack.T]).T
            out.append((val, lo, hi))
        return out


APPROACH_ISOFLOP = "isoflop"
APPROACH_PARAMETRIC = "parametric"


@dataclass
class ScalingLaws:
    """The fitted scaling laws of one sweep (or published data set).

    isoflop: IsoflopLaws (Approach 2); parametric: ParametricLaw (Approach 3);
    points: the rows used (params, tokens, flops, loss, budget, row);
    excluded: DataFrame of every row or budget left out, with its reason;
    notes: how the table was read (mappings, derived columns, FLOP convention).
    """

    isoflop: IsoflopLaws
    parametric: ParametricLaw | None
    points: pd.DataFrame
    excluded: pd.DataFrame
    notes: list = field(default_factory=list)
    bootstrap: int = 0
    seed: int = 0
    level: float = INTERVAL_LEVEL
    source: str = ""

    def predict(self, flops) -> pd.DataFrame:
        """One row per approach per C (FLOPs): params, tokens, loss (nats/token) with
        bootstrap interval columns *_low, *_high."""
        import pandas as pd
        c = np.atleast_1d(np.asarray(flops, float))
        if not (np.all(np.isfinite(c)) and np.all(c > 0)):
            raise FitError(f"predict: compute budgets must be positive FLOPs, got {flops!r}")
        frames = []
        approaches = [(APPROACH_ISOFLOP, self.isoflop.predict(c, self.level))]
        if self.parametric is not None:
            approaches.append((APPROACH_PARAMETRIC, self.parametric.predict(c, self.level)))
        for name, (n, d, l) in approaches:
            frames.append(pd.DataFrame({
                "approach": name, "flops": c,
                "params": n[0], "params_low": n[1], "params_high": n[2],
                "tokens": d[0], "tokens_low": d[1], "tokens_high": d[2],
                "loss": l[0], "loss_low": l[1], "loss_high": l[2],
            }))
        return pd.concat(frames, ignore_index=True)

    def default_budgets(self):
        """The sweep's budgets plus the next DEFAULT_EXTRA_DECADES powers of ten above."""
        from flops_fit import report

        return report.default_budgets(self)

    def table(self, budgets=None) -> str:
        """Chinchilla-Table-3-style markdown table (FLOPs, parameters, tokens, tokens per
        parameter, loss) per approach."""
        from flops_fit import report

        return report.markdown_table(self, budgets)

    def to_frame(self) -> pd.DataFrame:
        """Fitted quantities as a tidy DataFrame: approach, quantity, value, low, high."""
        import pandas as pd
        rows = []
        iso = self.isoflop
        for name in ("a", "b", "k_N", "k_D", "k_L", "loss_exponent"):
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

    def plot(self, out_dir) -> list:
        """Write the IsoFLOP, optima-vs-compute and residual PNGs to out_dir; return paths."""
        from flops_fit import report

        return report.plot_all(self, out_dir)

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
    if bootstrap:
        # Stratified bootstrap: resample points WITH REPLACEMENT WITHIN each budget
        # (Efron & Tibshirani 1993 Sec. 8.2). The budgets are the design of the sweep, not
        # a random sample, and resampling budgets would leave some draws with fewer than
        # three budgets (no line); the within-budget noise is what moves each optimum.
        n_used = len(used)
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
                w = counts[:, mask].astype(float)
                c0, c1, c2 = _weighted_parabolas(x, loss[mask], w)
                present = w > 0
                lo = np.where(present, x, np.inf).min(1)
                hi = np.where(present, x, -np.inf).max(1)
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

    k_n, a = est(0, 1, fitted[0])
    k_d, b = est(2, 3, fitted[1])
    k_l, lexp = est(4, 5, fitted[2])
    return IsoflopLaws(optimum, a, b, k_n, k_d, k_l, lexp, optima, k, samples, failed)


def _parametric_law(points, k, bootstrap, rng, level):
    log_n = np.log(points["params"].to_numpy())
    log_d = np.log(points["tokens"].to_numpy())
    log_l = np.log(points["loss"].to_numpy())
    theta, fbest, local = fit_parametric_params(log_n, log_d, log_l)

    samples = None
    if bootstrap:
        # Bootstrap over data points (Besiroglu et al. 2024 Sec. 3): each replicate is the
        # same objective with multinomial point counts as weights, so all replicates x
        # starts run as one batch.
        n = log_n.size
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)
        starts = np.vstack([theta[None, :], local])
        n_starts = starts.shape[0]
        x0 = np.tile(starts, (bootstrap, 1))
        weights = np.repeat(counts, n_starts, axis=0)

        def fun_grad(x, rows):
            return huber_lse_objective(x, log_n, log_d, log_l, weights[rows])

        xb, fb, _ = batched_lbfgs(fun_grad, x0, max_iter=BOOTSTRAP_ITERATIONS)
        fb = np.where(np.isfinite(fb), fb, np.inf).reshape(bootstrap, n_starts)
        pick = fb.argmin(1)
        best = xb.reshape(bootstrap, n_starts, 5)[np.arange(bootstrap), pick]
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
        flops_per_param_token=k, samples=samples,
    )


EXCLUDED_COLUMNS = ["kind", "row", "budget", "params", "tokens", "flops", "loss", "reason"]


def fit(data, *, optimum="parabola", bootstrap=1000, seed=0, columns=None, where=None,
        drop_highest_loss=0, budget_rtol=BUDGET_RTOL, level=INTERVAL_LEVEL,
        parametric=True) -> ScalingLaws:
    """Fit IsoFLOP power laws (Approach 2) and the parametric L(N, D) (Approach 3).

    data: DataFrame, list of dicts, path to CSV/JSON/JSONL, a stored sweep directory, or
        an object with a `.table` DataFrame. Columns params (parameters), tokens, loss
        (nats per token); optional flops (FLOPs, default 6ND), budget (nominal FLOPs of the
        IsoFLOP group), status (only 'ok' rows are used) and error.
    optimum: "parabola" (vertex of a parabola in ln N near the valley) or "lowest".
    bootstrap: number of bootstrap replicates for the intervals; 0 disables them.
    seed: seed of the bootstrap's random generator.
    columns: {our column: their column or pandas expression}, e.g.
        {"params": "Model Size", "flops": "`Training FLOP`"}.
    where: pandas expression(s); rows where it is False are excluded (reason recorded).
    drop_highest_loss: exclude this many highest-loss usable rows (Besiroglu et al. 2024
        drop the 5 highest-loss points of the digitised Chinchilla data).
    budget_rtol: relative FLOPs tolerance for grouping when there is no budget column.
    level: bootstrap interval level (two-sided percentile).
    parametric: also fit L(N, D).
    """
    import pandas as pd
    if optimum not in OPTIMA:
        raise FitError(f"optimum: unknown value {optimum!r}; use one of {list(OPTIMA)}")
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise FitError(f"bootstrap: must be a non-negative integer, got {bootstrap!r}")
    if not 0 < level < 1:
        raise FitError(f"level: must be between 0 and 1, got {level!r}")
    if not budget_rtol > 0:
        raise FitError(f"budget_rtol: must be positive, got {budget_rtol!r}")
    bootstrap = int(bootstrap)
    prep = prepare(data, columns=columns, where=where, drop_highest_loss=drop_highest_loss,
                   budget_rtol=budget_rtol)
    points = prep.points
    excluded = list(prep.excluded)

    sizes = points.groupby("budget")["params"].nunique()
    small = sizes[sizes < MIN_POINTS_PER_BUDGET]
    # A budget planned with too few sizes is a design error; one left short because some of
    # its runs diverged, failed or are unfinished is data: it is excluded and reported.
    lost = pd.Series([e.get("budget") for e in excluded if e.get("kind") == "row"], dtype=float).value_counts()
    designed_small = small[[n + int(lost.get(b, 0)) < MIN_POINTS_PER_BUDGET for b, n in small.items()]]
    if prep.budget_given and len(designed_small):
        listing = ", ".join(f"{b:.3g} ({n} size{'s' if n != 1 else ''})" for b, n in designed_small.items())
        raise FitError(
            f"budget: {len(designed_small)} budget(s) have fewer than {MIN_POINTS_PER_BUDGET} model sizes "
            f"for a parabola: {listing}. Drop them, e.g. where='budget != {designed_small.index[0]:.3g}', "
            "or run more sizes at those budgets"
        )
    for b, n in small.items():
        why = (f"only {n} usable model size(s) left after excluded rows (need {MIN_POINTS_PER_BUDGET})"
               if prep.budget_given else
               # Groups formed by FLOPs tolerance are not planned budgets; small ones are noted.
               f"only {n} model size(s) at this FLOPs (need {MIN_POINTS_PER_BUDGET})")
        excluded.append({"kind": "budget", "budget": float(b), "reason": why})
    enough = sizes[sizes >= MIN_POINTS_PER_BUDGET]
    if len(enough) < MIN_BUDGETS:
        raise FitError(
            f"budget: only {len(enough)} budget(s) with at least {MIN_POINTS_PER_BUDGET} model "
            f"sizes; a power law needs {MIN_BUDGETS}. "
            + ("Add budgets to the sweep." if prep.budget_given else
               f"Points are grouped by FLOPs within budget_rtol={budget_rtol:g}; give a budget "
               "column or a larger budget_rtol (CLI: --budget-rtol).")
        )
    iso_points = points[points["budget"].isin(enough.index)]
    optima = budget_optima(iso_points, optimum, prep.flops_per_param_token)
    for rec in optima[~optima["bracketed"]].itertuples():
        excluded.append({"kind": "budget", "budget": rec.budget, "params": rec.params_opt,
                         "loss": rec.loss_opt, "reason": f"optimum not bracketed: {rec.reason}"})
    if optima["bracketed"].sum() < MIN_BUDGETS:
        raise FitError(
            f"optimum={optimum!r}: only {int(optima['bracketed'].sum())} budget(s) have a bracketed "
            f"optimum; a power law needs {MIN_BUDGETS}. Sample sizes on both sides of the "
            "minimum" + (" or try optimum='lowest'" if optimum == "parabola" else "")
        )
    if parametric and len(points) < MIN_PARAMETRIC_POINTS:
        raise FitError(f"data: {len(points)} usable points; the parametric fit needs at least "
                       f"{MIN_PARAMETRIC_POINTS} (or pass parametric=False)")

    rng = np.random.default_rng(seed)
    iso = _isoflop_laws(iso_points, optima, optimum, prep.flops_per_param_token, bootstrap, rng, level)
    par = _parametric_law(points, prep.flops_per_param_token, bootstrap, rng, level) if parametric else None

    excl = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)
    source = str(data) if isinstance(data, (str, Path)) else type(data).__name__
    return ScalingLaws(iso, par, points, excl, prep.notes, bootstrap, seed, level, source)
