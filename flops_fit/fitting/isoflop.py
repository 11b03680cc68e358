"""Approach 2 of Hoffmann et al. 2022: per-budget IsoFLOP optima and power laws in C.

Units: compute C in FLOPs, model size N in parameters, loss in nats per token."""

from __future__ import annotations

import math

import numpy as np

from flops_fit.contract import MIN_BUDGETS, MIN_POINTS_PER_BUDGET
from flops_fit.fitting.bootstrap import redraw_degenerate, weighted_loglog
from flops_fit.fitting.inputs import FitError
from flops_fit.fitting.result import IsoflopLaw, estimate

# The parabola is fitted to the points within this many decades of N on either side of
# the lowest-loss point: far from the valley an IsoFLOP profile is not quadratic in
# log N (Hoffmann et al. 2022 Fig. 3 fit near the minimum).
VALLEY_HALF_WIDTH_DECADES = 1.0


def valley_mask(log_n, loss):
    centre = log_n[np.argmin(loss)]
    mask = np.abs(log_n - centre) <= VALLEY_HALF_WIDTH_DECADES * math.log(10)
    return mask if mask.sum() >= MIN_POINTS_PER_BUDGET else np.ones_like(mask)


def weighted_parabolas(x, y, w):
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


def exp_text(log_value: float) -> str:
    """exp(log_value) as .3g text without overflow: a nearly straight profile puts its
    vertex at ln N ~ 1e300, beyond what a float's exp can hold."""
    if not math.isfinite(log_value):
        return "inf" if log_value > 0 else "0"
    exponent = math.floor(log_value / math.log(10))
    mantissa = math.exp(log_value - exponent * math.log(10))
    return f"{mantissa * 10.0 ** exponent:.3g}" if abs(exponent) < 300 else f"{mantissa:.3g}e{exponent:+d}"


def valley_vertex(log_n, loss):
    """The IsoFLOP valley rule: vertex of a parabola in ln N through the points within
    VALLEY_HALF_WIDTH_DECADES of the lowest loss (Hoffmann et al. 2022 Fig. 3).

    log_n: natural logs of model sizes (parameters); loss: nats/token, same length.
    Returns a dict: log_n_opt, loss_opt, bracketed (vertex inside the sampled sizes),
    reason (why not, else ""), and the parabola c0, c1, c2 in x = ln N - log_n_centre.
    """
    log_n = np.asarray(log_n, float)
    loss = np.asarray(loss, float)
    mask = valley_mask(log_n, loss)
    centre = log_n[mask].mean()
    x = log_n[mask] - centre  # centred for conditioning
    c0, c1, c2 = (float(v[0]) for v in weighted_parabolas(x, loss[mask], np.ones((1, x.size))))
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
                   f"vertex N={exp_text(xv + centre)} outside sampled sizes "
                   f"[{exp_text(lo + centre)}, {exp_text(hi + centre)}]")
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
            with np.errstate(over="ignore"):  # a far unbracketed vertex is inf, never used in a law
                n_opt = float(np.exp(v["log_n_opt"]))
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


def loglog_fit(log_c, log_y, mask):
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


def isoflop_law(points, optima, optimum, k, bootstrap, rng, level):
    used = optima[optima["bracketed"]].reset_index(drop=True)
    log_c = np.log(used["budget"].to_numpy())
    targets = [np.log(used[c].to_numpy()) for c in ("params_opt", "tokens_opt", "loss_opt")]
    full = np.ones((1, len(used)), bool)
    fitted = [tuple(float(v[0]) for v in loglog_fit(log_c, t[None, :], full)) for t in targets]

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
            intercept, slope = weighted_loglog(log_c, t, counts[enough].astype(float))
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
                mask = valley_mask(log_n, loss)
                centre = log_n[mask].mean()
                x = log_n[mask] - centre
                if np.unique(x).size <= MIN_POINTS_PER_BUDGET:
                    thin_budgets.append(float(budget))
                # A resample that draws fewer than 3 distinct valley sizes has no parabola:
                # it is a degenerate draw of the design, not a failed fit, so it is drawn
                # again (resampling conditioned on a determinate fit; Davison & Hinkley
                # 1997 Sec. 6.2.4). Only a vertex outside the sizes sampled drops a replicate.
                counts = redraw_degenerate(counts, mask, x, rng)
                w = counts[:, mask].astype(float)
                c0, c1, c2 = weighted_parabolas(x, loss[mask], w)
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
            intercept, slope = loglog_fit(log_c, y, valid_ok)
            cols += [intercept, slope]
        samples = np.column_stack(cols)

    def est(idx_k, idx_e, pair):
        ks = None if samples is None else np.exp(samples[:, idx_k])
        es = None if samples is None else samples[:, idx_e]
        return estimate(math.exp(pair[0]), ks, level), estimate(pair[1], es, level)

    thin = thin_budgets if (bootstrap and optimum == "parabola") else []
    k_n, a = est(0, 1, fitted[0])
    k_d, b = est(2, 3, fitted[1])
    k_l, lexp = est(4, 5, fitted[2])
    return IsoflopLaw(optimum, a, b, k_n, k_d, k_l, lexp, optima, k, samples, failed, thin)
