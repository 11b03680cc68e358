"""Laws through the per-budget optima and their sampling distributions (pure numpy).

The IsoFLOP approach's intervals come from the scatter of the budgets' optima about the
fitted law, not from resampling points inside each budget: a budget's optimum is one noisy
observation, and the scatter of those observations is what the law's uncertainty is made
of. The power laws ln N_opt = ln k + a ln C are ordinary least squares, whose intervals are
Student-t with m - 2 degrees of freedom for m budgets (e.g. Draper & Smith 1998, "Applied
Regression Analysis", ch. 3); Porian et al. 2024 (arXiv:2406.19146) likewise fit their
power laws by regression on the per-budget optima. The loss law with a floor,
L_opt = E + k C^-c, is weighted non-linear least squares on relative residuals, its
covariance from the Jacobian (Seber & Wild 1989, "Nonlinear Regression", Sec. 2.1) and
t with m - 3 degrees of freedom.

Every function takes R sweeps at once (arrays (R, m)), so the calibration of these
intervals is checked over thousands of simulated sweeps in seconds (tests/test_coverage.py).
Intervals are analytic (t quantiles; the delta method for the floor law), so they are the
same on every run and cost nothing.
"""

from __future__ import annotations

import numpy as np

# The floor law's exponent c in L_opt = E + k C^-c is searched in this range: published
# compute-optimal loss exponents lie near 0.05-0.3 (Chinchilla: alpha*beta/(alpha+beta) ~
# 0.15); outside (0, 2] a loss law is not a scaling law.
FLOOR_EXPONENT_GRID = np.linspace(0.005, 2.0, 200)
GOLDEN_ITERATIONS = 40  # golden-section refinement of c between grid neighbours (~1e-9 of the step)


def line_fit(x, y):
    """OLS y = intercept + slope x for each row of y (R, m), x (m,) shared.

    Returns dict: intercept, slope (R,), s (residual standard deviation, R,), dof (m - 2),
    x_mean, sxx (for the covariance: var(slope) = s^2/sxx, var(mean at x_mean) = s^2/m)."""
    x = np.asarray(x, float)
    y = np.atleast_2d(np.asarray(y, float))
    m = x.size
    xm = x.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = ((y - y.mean(1, keepdims=True)) @ (x - xm)) / sxx
    at_mean = y.mean(1)
    resid = y - (at_mean[:, None] + slope[:, None] * (x - xm)[None, :])
    dof = m - 2
    s = np.sqrt((resid**2).sum(1) / dof) if dof > 0 else np.full(y.shape[0], np.nan)
    return dict(intercept=at_mean - slope * xm, slope=slope, at_mean=at_mean, s=s, dof=dof, x_mean=xm,
                sxx=sxx, m=m)


def t_quantile(level, dof):
    """Two-sided Student-t quantile for `level` (e.g. 0.95) with `dof` degrees of freedom;
    NaN without any (an exact fit has no interval)."""
    from scipy.stats import t

    dof = np.asarray(dof, float)
    with np.errstate(invalid="ignore"):
        return np.where(dof > 0, t.ppf(0.5 + level / 2, np.maximum(dof, 1)), np.nan)


def line_interval(fit, x_new, level, new_observation=False):
    """(centre, half-width) of the line at x_new (R, K or K,): the mean's t interval, or a new
    observation's (the budget's optimum that a new budget would show) with new_observation."""
    x_new = np.asarray(x_new, float)
    centre = fit["at_mean"][:, None] + fit["slope"][:, None] * (x_new - fit["x_mean"])
    spread = 1.0 / fit["m"] + (x_new - fit["x_mean"]) ** 2 / fit["sxx"] + (1.0 if new_observation else 0.0)
    return centre, t_quantile(level, fit["dof"]) * fit["s"][:, None] * np.sqrt(spread)


def _weighted_affine(x, y, w, e_fixed):
    """Weighted LS of y = E + k x per row (x, y, w (R, m)); E >= 0, or E = e_fixed (R,) when
    given. Returns E, k, weighted SSE."""
    sw, swx, swy = w.sum(-1), (w * x).sum(-1), (w * y).sum(-1)
    swxx, swxy = (w * x * x).sum(-1), (w * x * y).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if e_fixed is None:
            den = sw * swxx - swx * swx
            k = (sw * swxy - swx * swy) / den
            e = (swy - k * swx) / sw
            # cross-entropy cannot fall below 0: a negative floor is refitted with E = 0
            k0 = swxy / swxx
            neg = e < 0
            e, k = np.where(neg, 0.0, e), np.where(neg, k0, k)
        else:
            e = np.broadcast_to(e_fixed, sw.shape)
            k = (swxy - e * swx) / swxx
    r = y - e[..., None] - k[..., None] * x
    return e, k, (w * r * r).sum(-1)


def floor_fit(log_c, loss, e_fixed=None):
    """L_opt = E + k (C/C_ref)^-c through per-budget optimal losses, for R sweeps at once.

    log_c: ln C (m,) in ln FLOPs; loss: (R, m) nats per token; e_fixed: (R,) floors to use
    instead of fitting E (e.g. the parametric law's E), or None. Weights 1/L^2 make the
    residuals relative (loss noise is multiplicative). c is found on FLOOR_EXPONENT_GRID,
    then refined by golden section. Returns dict: E, k (at C_ref), c, log_c_ref, cov (R, p, p)
    of (E, k, c) or of (k, c) when E is fixed, s (relative residual sd), dof = m - p.
    """
    loss = np.atleast_2d(np.asarray(loss, float))
    log_c = np.asarray(log_c, float)
    ref = float(log_c.mean())
    u = log_c - ref
    w = 1.0 / loss**2
    ef = None if e_fixed is None else np.asarray(e_fixed, float)

    def sse(c):  # c: (R,) or (R, G)
        x = np.exp(-c[..., None] * u)
        return _weighted_affine(x, loss[:, None, :] if c.ndim == 2 else loss, w[:, None, :] if c.ndim == 2
                                else w, None if ef is None else (ef[:, None] if c.ndim == 2 else ef))

    grid = np.broadcast_to(FLOOR_EXPONENT_GRID, (loss.shape[0], FLOOR_EXPONENT_GRID.size))
    j = np.argmin(np.nan_to_num(sse(grid)[2], nan=np.inf), axis=1)
    step = FLOOR_EXPONENT_GRID[1] - FLOOR_EXPONENT_GRID[0]
    lo = np.maximum(FLOOR_EXPONENT_GRID[j] - step, FLOOR_EXPONENT_GRID[0])
    hi = np.minimum(FLOOR_EXPONENT_GRID[j] + step, FLOOR_EXPONENT_GRID[-1])
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(GOLDEN_ITERATIONS):
        c1, c2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        left = sse(c1)[2] <= sse(c2)[2]
        hi, lo = np.where(left, c2, hi), np.where(left, lo, c1)
    c = (lo + hi) / 2
    e, k, rss = sse(c)
    p = 2 if ef is not None else 3
    dof = log_c.size - p
    x = np.exp(-c[:, None] * u)
    cols = [x, -k[:, None] * x * u] if ef is not None else [np.ones_like(x), x, -k[:, None] * x * u]
    jac = np.stack(cols, -1)  # (R, m, p): d L / d (E, k, c)
    info = np.einsum("rm,rmi,rmj->rij", w, jac, jac)
    s2 = rss / dof if dof > 0 else np.full(rss.shape, np.nan)
    with np.errstate(invalid="ignore"):
        cov = np.linalg.pinv(info) * s2[:, None, None]
    return dict(E=e, k=k, c=c, log_c_ref=ref, cov=cov, s=np.sqrt(s2), dof=dof, at_bound=(
        (c <= FLOOR_EXPONENT_GRID[0] + 1e-9) | (c >= FLOOR_EXPONENT_GRID[-1] - 1e-9)))


def floor_interval(fit, log_c_new, level, new_observation=False):
    """(L_opt, low, high) of the floor law at ln C = log_c_new (K,), for each of R fits.

    Delta method in ln L (the residuals are relative): ln L +- t * sqrt(g cov g') / L, plus
    the residual variance for a new observation. The point stays above E; the interval's
    low end may not, when E itself is uncertain."""
    u = np.asarray(log_c_new, float)[None, :] - fit["log_c_ref"]
    k, c = fit["k"][:, None], fit["c"][:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.exp(-c * u)
        value = fit["E"][:, None] + k * x
        grads = [x, -k * x * u] if fit["cov"].shape[-1] == 2 else [np.ones_like(x), x, -k * x * u]
        g = np.stack(grads, -1)  # (R, K, p)
        var = np.einsum("rki,rij,rkj->rk", g, fit["cov"], g) / value**2
        if new_observation:
            var = var + fit["s"][:, None] ** 2
        half = t_quantile(level, fit["dof"]) * np.sqrt(var)
        return value, value * np.exp(-half), value * np.exp(half)
