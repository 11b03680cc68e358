"""Approach 3 of Hoffmann et al. 2022: L(N, D) = E + A/N^alpha + B/D^beta.

Huber on log loss via log-sum-exp, L-BFGS from a grid of starts, the objective summed over
points (Besiroglu et al. 2024, arXiv:2404.10102), and a bootstrap over runs."""

from __future__ import annotations

import math

import numpy as np

from flops_fit.law import huber_lse_objective
from flops_fit.optimize import (BOOTSTRAP_CHUNK_ELEMENTS, BOOTSTRAP_ITERATIONS, batched_lbfgs, domain_bounds,
                                fit_parametric_params, tie)
from flops_fit.fitting.result import ParametricLaw, estimate

def parametric_law(points, k, bootstrap, rng, level, tie_exponents=False):
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
        E=estimate(E, col(0), level), A=estimate(A, col(1), level), B=estimate(B, col(2), level),
        alpha=estimate(alpha, col(3), level), beta=estimate(beta, col(4), level),
        a=estimate(a_val, ds[0], level), b=estimate(b_val, ds[1], level),
        G=estimate(g_val, ds[2], level), objective=fbest, n_points=int(log_n.size),
        flops_per_param_token=k, samples=samples, bootstrap_dropped=dropped,
        tie_exponents=tie_exponents,
    )
