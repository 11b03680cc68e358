"""Multi-start minimisation of the parametric objective (Hoffmann et al. 2022 App. D.2).

The start grid of the published recipe, a vectorised L-BFGS that advances many starts
together, and the full-grid fit used by `flops_fit.fitting`.
"""

from __future__ import annotations

import itertools

import numpy as np

from flops_fit.law import HUBER_DELTA, huber_lse_objective

# Grid of L-BFGS starts, Hoffmann et al. 2022 App. D.2 / Besiroglu et al. 2024 Sec. 2:
# alpha, beta in {0, 0.5, ..., 2}; e in {-1, -0.5, ..., 1}; a, b in {0, 5, ..., 25}.
GRID_ALPHA = np.arange(0.0, 2.0 + 1e-9, 0.5)
GRID_BETA = np.arange(0.0, 2.0 + 1e-9, 0.5)
GRID_E = np.arange(-1.0, 1.0 + 1e-9, 0.5)
GRID_A = np.arange(0.0, 25.0 + 1e-9, 5.0)
GRID_B = np.arange(0.0, 25.0 + 1e-9, 5.0)

# The grid is EVALUATED (objective only) in chunks of at most GRID_CHUNK_ELEMENTS
# start x row terms, so memory stays bounded as rows grow (~16 MB per float64 array);
# the POLISH_STARTS best distinct starts are then minimised by scipy's L-BFGS-B with the
# analytic gradient and the domain bounds, the optimiser of the published recipe. On the
# Epoch data the best grid start alone already lies in the published basin.
GRID_CHUNK_ELEMENTS = 2_000_000
POLISH_STARTS = 5
# L-BFGS-B tolerances: the objective is ~1e-3 and flat near its minimum; scipy's default
# factr stops ~1e-4 short in A and B of the published digits.
POLISH_FTOL = 1e-15
POLISH_GTOL = 1e-10
POLISH_MAX_ITER = 5000

# Batched L-BFGS for the bootstrap refits, which all start next to the full-data optimum.
LBFGS_MEMORY = 10
LBFGS_FTOL = 1e-12  # relative decrease in objective below which a start has converged
LBFGS_MAX_STEP = 2.0  # largest change of any of (a, b, e, alpha, beta) in one step
ARMIJO_C1 = 1e-4
MAX_BACKTRACKS = 40

# Bootstrap refits of the parametric law start from the full-data optimum plus the
# best BOOTSTRAP_EXTRA_STARTS other distinct local optima of the full-data polish.
# A resample moves the optimum only a little, so re-running the whole grid 1,000 times
# would spend ~4,500x the work to find the same basin; the extra starts guard against a
# resample whose best basin is a different one.
BOOTSTRAP_EXTRA_STARTS = 3
BOOTSTRAP_ITERATIONS = 300
# Bootstrap replicates x starts x rows per batch (bounds memory like GRID_CHUNK_ELEMENTS).
BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000

# Domain of the law: alpha, beta > 0 (loss falls with N and D), 0 < E <= lowest observed
# loss. A fitted exponent at EXPONENT_MIN means the data do not show that fall.
EXPONENT_MIN = 1e-4


def domain_bounds(log_loss):
    """(lower, upper) arrays for theta = (a, b, e, alpha, beta): e <= ln(min loss)."""
    lower = np.array([-np.inf, -np.inf, -np.inf, EXPONENT_MIN, EXPONENT_MIN])
    upper = np.array([np.inf, np.inf, float(np.min(log_loss)), np.inf, np.inf])
    return lower, upper


def tie(theta):
    """theta with beta set to alpha (the alpha = beta constraint of e.g. Muennighoff et al. 2023)."""
    theta = np.array(theta, float)
    theta[..., 4] = theta[..., 3]
    return theta


def start_grid():
    """The 4,500 grid starts (a, b, e, alpha, beta) of Hoffmann et al. 2022 App. D.2."""
    return np.array(list(itertools.product(GRID_A, GRID_B, GRID_E, GRID_ALPHA, GRID_BETA)))


def batched_lbfgs(fun_grad, x0, *, max_iter, memory=LBFGS_MEMORY, ftol=LBFGS_FTOL,
                  lower=None, upper=None):
    """Minimise S independent smooth problems together with L-BFGS (Nocedal & Wright
    2006, Alg. 7.4 two-loop recursion; Armijo backtracking, Alg. 3.1).

    fun_grad(x, rows) -> (f, grad) evaluates problems `rows` (int array) at x (len(rows), d).
    lower, upper: (d,) bounds; trial points are projected onto them (projected line search).
    Every numpy operation acts on all still-running problems at once, which is what makes
    4,500 starts cost about as much as a handful of sequential ones.
    Returns (x, f, iterations_run).
    """
    x = np.array(x0, float)
    n_start, dim = x.shape
    f, g = fun_grad(x, np.arange(n_start))
    # Each start's last `memory` updates (s, y, rho), slot j holding update j % memory.
    history = {"s": np.zeros((n_start, memory, dim)), "y": np.zeros((n_start, memory, dim)),
               "rho": np.zeros((n_start, memory)), "stored": np.zeros(n_start, int)}
    active = np.ones(n_start, bool)
    it = 0
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        p, slope = _search_direction(g[idx], history, idx, memory)
        step, f_new, g_new, stuck = _armijo_steps(fun_grad, x, f, idx, p, slope, lower, upper)
        # Starts with no acceptable step are at a (numerical) minimum: stop them there.
        moved = ~stuck
        mi = idx[moved]
        s_new = step[moved, None] * p[moved]
        if lower is not None:
            s_new = np.clip(x[mi] + s_new, lower, upper) - x[mi]
        _store_pairs(history, mi, s_new, g_new[moved] - g[mi], memory)
        f_old = f[mi]
        x[mi] += s_new
        f[mi] = f_new[moved]
        g[mi] = g_new[moved]
        converged = (f_old - f[mi]) <= ftol * np.maximum(np.abs(f_old), np.abs(f[mi])).clip(min=1e-300)
        active[mi[converged]] = False
        active[idx[stuck]] = False
    return x, f, it


def _search_direction(gi, history, idx, memory):
    """(p, slope): the L-BFGS direction of starts `idx` from their gradients `gi` by the
    two-loop recursion over their stored pairs, steepest descent where that is not
    downhill, capped at LBFGS_MAX_STEP per coordinate; slope = p . gi."""
    s_hist, y_hist, rho = history["s"], history["y"], history["rho"]
    q = gi.copy()
    stored = history["stored"][idx]
    alphas = np.zeros((idx.size, memory))

    def pair(back):
        """(s, y, rho) of the update `back` steps ago; rho 0 where there is none yet."""
        slot_pos = stored - 1 - back
        slot = np.mod(slot_pos, memory)
        return s_hist[idx, slot], y_hist[idx, slot], np.where(slot_pos >= 0, rho[idx, slot], 0.0)

    for back in range(memory):
        s, y, r = pair(back)
        al = r * np.einsum("ij,ij->i", s, q)
        alphas[:, back] = al
        q -= al[:, None] * y
    last = np.mod(stored - 1, memory)
    s_l = s_hist[idx, last]
    y_l = y_hist[idx, last]
    yy = np.einsum("ij,ij->i", y_l, y_l)
    sy = np.einsum("ij,ij->i", s_l, y_l)
    gamma = np.where((stored > 0) & (yy > 0), sy / np.where(yy > 0, yy, 1.0), 1.0)
    q *= gamma[:, None]
    for back in reversed(range(memory)):
        s, y, r = pair(back)
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
    return p, np.einsum("ij,ij->i", p, gi)


def _armijo_steps(fun_grad, x, f, idx, p, slope, lower, upper):
    """Armijo backtracking (halving from 1) along p for starts `idx`, evaluating only the
    starts whose step was rejected. Returns (step, f_new, g_new, stuck): stuck where no
    step of MAX_BACKTRACKS halvings was accepted."""
    step = np.ones(idx.size)
    f_new = np.empty(idx.size)
    g_new = np.empty((idx.size, x.shape[1]))
    pending = np.arange(idx.size)
    for _ in range(MAX_BACKTRACKS):
        xt = x[idx[pending]] + step[pending, None] * p[pending]
        if lower is not None:
            xt = np.clip(xt, lower, upper)
        ft, gt = fun_grad(xt, idx[pending])
        accept = np.isfinite(ft) & (ft <= f[idx[pending]] + ARMIJO_C1 * step[pending] * slope[pending])
        f_new[pending[accept]] = ft[accept]
        g_new[pending[accept]] = gt[accept]
        pending = pending[~accept]
        if pending.size == 0:
            break
        step[pending] *= 0.5
    stuck = np.zeros(idx.size, bool)
    stuck[pending] = True
    return step, f_new, g_new, stuck


def _store_pairs(history, rows, s_new, y_new, memory) -> None:
    """Keep the update (s, y) of starts `rows`, only where its curvature s . y is positive
    (keeps the inverse Hessian SPD)."""
    sy_new = np.einsum("ij,ij->i", s_new, y_new)
    good = sy_new > 1e-12 * np.einsum("ij,ij->i", y_new, y_new).clip(min=1e-300) ** 0.5
    slot = np.mod(history["stored"][rows], memory)
    kept = rows[good]
    history["s"][kept, slot[good]] = s_new[good]
    history["y"][kept, slot[good]] = y_new[good]
    history["rho"][kept, slot[good]] = 1.0 / sy_new[good]
    history["stored"][kept] += 1


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


def fit_parametric_params(log_n, log_d, log_loss, *, delta=HUBER_DELTA, tie_exponents=False):
    """Full-grid Huber/LSE fit (Hoffmann et al. 2022 App. D.2). Returns (theta, f, local_optima).

    theta = (a, b, e, alpha, beta) of the best polished start, within `domain_bounds`;
    local_optima are the distinct polished optima (best first), used as extra bootstrap
    starts. tie_exponents: fit with beta = alpha.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    ones = np.ones_like(log_n)
    lower, upper = domain_bounds(log_loss)
    xs = np.clip(start_grid(), lower, upper)
    if tie_exponents:
        xs = np.unique(tie(xs), axis=0)
    chunk = max(1, GRID_CHUNK_ELEMENTS // max(1, log_n.size))
    fs = np.concatenate([
        huber_lse_objective(xs[i : i + chunk], log_n, log_d, log_loss, ones, delta)[0]
        for i in range(0, len(xs), chunk)
    ])
    candidates = _distinct_best(xs, fs, POLISH_STARTS)
    dims = 4 if tie_exponents else 5

    def scalar(x):
        theta = tie(np.append(x, x[3])) if tie_exponents else x
        fv, gv = huber_lse_objective(theta[None, :], log_n, log_d, log_loss, ones, delta)
        g = gv[0]
        if tie_exponents:
            g = np.append(g[:3], g[3] + g[4])
        return float(fv[0]), g

    bounds = list(zip(lower[:dims], upper[:dims]))
    bounds = [(None if np.isinf(lo) else lo, None if np.isinf(hi) else hi) for lo, hi in bounds]
    found = []
    # L-BFGS-B's linear algebra is on 5x5 matrices: a BLAS thread pool only spin-waits there,
    # and on a busy machine that made the whole fit slower (benchmarks/RESULTS.md,
    # "Parametric fit speed").
    with threadpool_limits(limits=1, user_api="blas"):
        for i in candidates:
            res = minimize(scalar, xs[i][:dims], jac=True, method="L-BFGS-B", bounds=bounds,
                           options=dict(ftol=POLISH_FTOL, gtol=POLISH_GTOL, maxiter=POLISH_MAX_ITER))
            theta = tie(np.append(res.x, res.x[3])) if tie_exponents else res.x
            found.append((float(res.fun), theta))
    found.sort(key=lambda t: t[0])
    thetas = np.array([t for _, t in found])
    order = _distinct_best(thetas, np.array([f for f, _ in found]), BOOTSTRAP_EXTRA_STARTS + 1)
    return found[0][1], found[0][0], thetas[order]
