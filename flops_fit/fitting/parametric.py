"""Approach 3 of Hoffmann et al. 2022: L(N, D) = E + A/N^alpha + B/D^beta.

Huber on log loss via log-sum-exp, L-BFGS from a grid of starts, the objective summed over
points (Besiroglu et al. 2024, arXiv:2404.10102), and a bootstrap over runs."""

from __future__ import annotations

import math

import numpy as np

from flops_fit.law import HUBER_DELTA, allocation_exponents, huber_lse_objective
from flops_fit.optimize import (BOOTSTRAP_CHUNK_ELEMENTS, BOOTSTRAP_ITERATIONS, batched_lbfgs, domain_bounds,
                                fit_parametric_params, tie)
from flops_fit.fitting.inputs import FitError
from flops_fit.fitting.estimate import estimate
from flops_fit.fitting.result import ParametricLaw

# ln of the largest float: a fitted ln A or ln B beyond it has no value as a number.
LOG_FLOAT_MAX = math.log(np.finfo(float).max)


def parametric_law(points, flops_per_param_token, bootstrap, rng, level, tie_exponents=False, huber_delta=HUBER_DELTA):
    """The parametric law fitted to `points` (params, tokens, loss in nats per token), with
    bootstrap intervals; huber_delta is the Huber threshold on the residual of ln loss."""
    log_n = np.log(points["params"].to_numpy())
    log_d = np.log(points["tokens"].to_numpy())
    log_l = np.log(points["loss"].to_numpy())
    theta, fbest, local = fit_parametric_params(log_n, log_d, log_l, delta=huber_delta,
                                                tie_exponents=tie_exponents)
    _check_finite(theta, fbest)
    samples, dropped = None, 0
    if bootstrap:
        run_of_row = _run_of_row(points)
        best = _bootstrap_thetas(np.vstack([theta[None, :], local]), log_n, log_d, log_l, run_of_row,
                                 bootstrap, rng, tie_exponents, huber_delta)
        ok = np.all(np.isfinite(best), axis=1) & np.all(best[:, :3] < LOG_FLOAT_MAX, axis=1)
        dropped = int((~ok).sum())
        best = best[ok]
        samples = np.column_stack([np.exp(best[:, 2]), np.exp(best[:, 0]), np.exp(best[:, 1]),
                                   best[:, 3], best[:, 4]])

    E, A, B, alpha, beta = math.exp(theta[2]), math.exp(theta[0]), math.exp(theta[1]), theta[3], theta[4]
    a_val, b_val, g_val = _allocation(alpha, beta, theta[0], theta[1])
    ds = (None, None, None)
    if samples is not None:
        ds = _allocation(samples[:, 3], samples[:, 4], best[:, 0], best[:, 1])
    col = (lambda j: None if samples is None else samples[:, j])
    model = np.logaddexp(np.logaddexp(theta[0] - theta[3] * log_n, theta[1] - theta[4] * log_d), theta[2])
    return ParametricLaw(
        E=estimate(E, col(0), level), A=estimate(A, col(1), level), B=estimate(B, col(2), level),
        alpha=estimate(alpha, col(3), level), beta=estimate(beta, col(4), level),
        a=estimate(a_val, ds[0], level), b=estimate(b_val, ds[1], level),
        G=estimate(g_val, ds[2], level), objective=fbest, n_points=int(log_n.size),
        flops_per_param_token=flops_per_param_token, samples=samples, bootstrap_dropped=dropped,
        tie_exponents=tie_exponents, huber_delta=float(huber_delta),
        residual_median=float(np.median(np.abs(model - log_l))), local_optima=local, level=level,
    )


def _check_finite(theta, objective):
    """FitError when the best fit left the floats: the rows do not follow L(N, D)."""
    names = ("A", "B", "E")
    off = [f"{n} = e^{v:.4g}" for n, v in zip(names, theta[:3]) if not v < LOG_FLOAT_MAX]
    if off or not (np.isfinite(objective) and np.all(np.isfinite(theta))):
        raise FitError(f"parametric: the fit ran off to {', '.join(off) or 'a non-finite objective'}, "
                       "beyond a float: the loss does not follow E + A/N^alpha + B/D^beta in these rows "
                       "(random or mislabelled losses?); check the loss column, or fit the IsoFLOP laws "
                       "alone (approach='isoflop')")


def _allocation(alpha, beta, log_a, log_b):
    """(a, b, G) of Chinchilla eq. 4 from the exponents and ln A, ln B: exponents near their
    lower bound put G beyond a float (inf, then stated by the fit's warnings)."""
    a, b, log_g = allocation_exponents(alpha, beta, log_a, log_b)
    with np.errstate(over="ignore"):
        g = np.exp(log_g)
    if np.ndim(g) == 0:
        return float(a), float(b), float(g)
    return a, b, g


def _run_of_row(points):
    """Bootstrap over runs (Besiroglu et al. 2024 Sec. 3 resample data points; rows of one
    run, e.g. its checkpoints, are not independent, so they are drawn together)."""
    import pandas as pd

    return pd.factorize(points["run"])[0] if "run" in points.columns else np.arange(len(points))


def _bootstrap_thetas(starts, log_n, log_d, log_l, run_of_row, bootstrap, rng, tie_exponents, huber_delta):
    """(bootstrap, 5) best theta per replicate, NaN rows where no start ended finite.

    Each replicate is the same objective with multinomial run counts as weights, so
    replicates x starts run as one batch, in chunks that bound memory."""
    lower, upper = domain_bounds(log_l)
    n_runs = int(run_of_row.max()) + 1
    counts = rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=bootstrap)
    n_starts = starts.shape[0]
    per_chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // (n_starts * log_n.size))
    best = np.empty((bootstrap, 5))
    for c0 in range(0, bootstrap, per_chunk):
        reps = counts[c0 : c0 + per_chunk][:, run_of_row].astype(float)
        x0 = np.tile(starts, (len(reps), 1))
        weights = np.repeat(reps, n_starts, axis=0)

        def fun_grad(x, rows, weights=weights):
            f, g = huber_lse_objective(tie(x) if tie_exponents else x, log_n, log_d, log_l, weights[rows],
                                       huber_delta)
            if tie_exponents:
                g[:, 3] = g[:, 4] = 0.5 * (g[:, 3] + g[:, 4])
            return f, g

        xb, fb, _ = batched_lbfgs(fun_grad, x0, max_iter=BOOTSTRAP_ITERATIONS, lower=lower, upper=upper)
        fb = np.where(np.isfinite(fb), fb, np.inf).reshape(len(reps), n_starts)
        pick = fb.argmin(1)
        chosen = xb.reshape(len(reps), n_starts, 5)[np.arange(len(reps)), pick]
        chosen[~np.isfinite(fb[np.arange(len(reps)), pick])] = np.nan
        best[c0 : c0 + len(reps)] = chosen
    return best
