"""Approach 2 of Hoffmann et al. 2022: per-budget IsoFLOP optima and power laws in C.

Units: compute C in FLOPs, model size N in parameters, loss in nats per token."""

from __future__ import annotations

import math

import numpy as np

from flops_fit.contract import MIN_BUDGETS, MIN_POINTS_PER_BUDGET
from flops_fit.fitting.regression import floor_fit, line_fit, t_quantile
from flops_fit.fitting.inputs import FitError
from flops_fit.fitting.estimate import Estimate
from flops_fit.fitting.result import IsoflopLaw

# The parabola is fitted to the points within this many decades of N on either side of
# the lowest-loss point: far from the valley an IsoFLOP profile is not quadratic in
# log N (Hoffmann et al. 2022 Fig. 3 fit near the minimum).
VALLEY_HALF_WIDTH_DECADES = 1.0
# The loss law L_opt = E + k C^-c has 3 parameters: with fewer budgets than this it has no
# residual of its own, and its floor E is taken from the parametric law where that ran.
MIN_FLOOR_BUDGETS = 4


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


def budget_optima(points, optimum, flops_per_param_token):
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
        with np.errstate(divide="ignore", over="ignore"):  # a far unbracketed vertex: N_opt 0 or inf
            tokens_opt = float(np.float64(budget) / (flops_per_param_token * n_opt))
        rec.update(params_opt=n_opt, tokens_opt=tokens_opt, loss_opt=l_opt)
        if optimum == "given":
            rec["tokens_opt"] = rec.pop("tokens_given")
        rows.append(rec)
    return pd.DataFrame(rows)


def isoflop_inputs(points, excluded, prep, optimum, budget_rtol, strict):
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


def isoflop_law(optima, optimum, flops_per_param_token, level, parametric_floor=None):
    """The power laws of N_opt and D_opt and the loss law with a floor through the bracketed
    budgets' optima (FLOPs, parameters, tokens, nats per token), with t intervals.

    parametric_floor: E of L(N, D), used as the floor when fewer than MIN_FLOOR_BUDGETS
    budgets leave the floor law no degree of freedom of its own."""
    used = optima[optima["bracketed"]].reset_index(drop=True)
    log_c = np.log(used["budget"].to_numpy())
    fits = {name: line_fit(log_c, np.log(used[f"{name}_opt"].to_numpy())[None, :])
            for name in ("params", "tokens")}
    loss = used["loss_opt"].to_numpy()[None, :]
    floor = "fitted"
    if len(used) < MIN_FLOOR_BUDGETS and parametric_floor is not None:
        fits["loss"], floor = floor_fit(log_c, loss, e_fixed=np.array([parametric_floor])), "parametric"
    else:
        fits["loss"] = floor_fit(log_c, loss)
    t = {name: float(t_quantile(level, fit["dof"])) for name, fit in fits.items()}

    def line_estimates(fit, tq):
        s = float(fit["s"][0])
        slope, intercept = float(fit["slope"][0]), float(fit["intercept"][0])
        half_slope = tq * s / math.sqrt(fit["sxx"])
        half_icpt = tq * s * math.sqrt(1 / fit["m"] + fit["x_mean"] ** 2 / fit["sxx"])
        with np.errstate(over="ignore"):
            k_est = Estimate(*(float(np.exp(v)) for v in (intercept, intercept - half_icpt, intercept + half_icpt)))
        return Estimate(slope, slope - half_slope, slope + half_slope), k_est

    a, k_n = line_estimates(fits["params"], t["params"])
    b, k_d = line_estimates(fits["tokens"], t["tokens"])
    lf = fits["loss"]
    sd = np.sqrt(np.clip(np.diag(np.nan_to_num(lf["cov"][0], nan=np.inf)), 0, None))
    c_val, c_sd = float(lf["c"][0]), float(sd[-1])
    if floor == "parametric":
        e_est = Estimate(float(parametric_floor))
    else:
        e_val = float(lf["E"][0])  # cross-entropy is never negative: the interval stops at 0
        e_est = Estimate(e_val, max(0.0, e_val - t["loss"] * sd[0]), e_val + t["loss"] * sd[0])
    with np.errstate(over="ignore"):
        k_l = Estimate(float(lf["k"][0] * np.exp(c_val * lf["log_c_ref"])))
    exponent = Estimate(-c_val, -c_val - t["loss"] * c_sd, -c_val + t["loss"] * c_sd)
    return IsoflopLaw(optimum, a, b, k_n, k_d, e_est, k_l, exponent, optima, flops_per_param_token, floor, fits,
                      level=level)
