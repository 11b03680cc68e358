"""What the data cannot tell: warnings, and the backtest of held-out rows."""

from __future__ import annotations

import numpy as np

from flops_fit.law import parametric_loss
from flops_fit.optimize import EXPONENT_MIN
from flops_fit.fitting.bootstrap import MAX_DROPPED_SHARE, percentile_interval
from flops_fit.fitting.limits import limit_warnings
from flops_fit.fitting.result import EXTRAPOLATION_FACTOR

# Below this share of the variance of ln loss explained, the parametric law describes
# nothing in the data (published sets explain well over 90%).
MIN_EXPLAINED_VARIANCE = 0.5


def domain_warnings(points, iso, par, bootstrap):
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
    if bootstrap and par is not None and par.bootstrap_dropped > MAX_DROPPED_SHARE * bootstrap:
        out.append(f"parametric intervals are UNRELIABLE: {par.bootstrap_dropped} of {bootstrap} bootstrap "
                   "replicates were dropped (no fit on the resample); the interval comes from "
                   "the rest. Sample more sizes per budget, or more budgets")
    return out + limit_warnings(points, iso, par)


def backtest(par, held, level, max_flops):
    """Held-out rows: observed loss, parametric prediction with interval, relative error."""
    import pandas as pd
    n, d = held["params"].to_numpy(), held["tokens"].to_numpy()
    pred = par.loss(n, d)
    lo = hi = np.full_like(pred, np.nan)
    if par.samples is not None and len(par.samples) >= 2:
        draws = np.array([parametric_loss(n, d, *row) for row in par.samples])
        lo, hi = np.array([percentile_interval(col, level) for col in draws.T]).T
    obs = held["loss"].to_numpy()
    return pd.DataFrame({
        "row": held["row"].to_numpy(), "params": n, "tokens": d, "flops": held["flops"].to_numpy(),
        "loss": obs, "predicted": pred, "predicted_low": lo, "predicted_high": hi,
        "relative_error": pred / obs - 1, "inside_interval": (obs >= lo) & (obs <= hi),
        "extrapolated": held["flops"].to_numpy() > EXTRAPOLATION_FACTOR * max_flops,
    })
