"""Leave the top budgets out, predict them, and score the predictions against intervals
of a new observation (the optimum that budget would show), for both approaches.

A budget's observed optimum is the same valley rule the fit uses (`budget_optima`) applied
to its held-out points. A correct law should put ~95 % of those observations inside its
95 % prediction intervals; an interval of the law's mean is narrower and covers less.
The IsoFLOP prediction interval is the regression's (t, new observation); the parametric
one combines its bootstrap interval with the scatter of a budget's optimum about a smooth
law, read from the IsoFLOP regression's residuals when that ran (in ln, added in
quadrature), else it is the interval of the mean and the table says so.
"""

from __future__ import annotations

import numpy as np

from flops_fit.fitting.inputs import FitError
from flops_fit.fitting.isoflop import budget_optima
from flops_fit.fitting.regression import t_quantile

QUANTITIES = ("params", "loss")  # N_opt and L_opt; D_opt = C/(6 N_opt) adds nothing
COLUMNS = ["approach", "budget", "quantity", "observed", "predicted", "low", "high", "relative_error",
           "inside", "interval"]


def split_top_budgets(points, count):
    """(points fitted, points held out): the `count` largest budgets held out (FitError when
    fewer than 3 budgets would remain for the power laws)."""
    budgets = np.sort(points["budget"].unique())
    if count >= budgets.size - 2:
        raise FitError(f"holdout_budgets={count}: only {budgets.size} budgets; keep at least 3 to fit "
                       "(hold out fewer, e.g. holdout_budgets=1)")
    held = points["budget"].isin(budgets[budgets.size - count:])
    return points[~held].reset_index(drop=True), points[held].reset_index(drop=True)


def _observation_noise(iso, quantity, level):
    """Half-width in ln of one budget's optimum scattering about a smooth law (t * s), from
    the IsoFLOP regression's residuals; 0 when unknown."""
    if iso is None:
        return 0.0
    fit = iso.fits[quantity]
    return float(np.nan_to_num(t_quantile(level, fit["dof"]) * fit["s"][0]))


def backtest_budgets(held, iso, par, optimum, flops_per_param_token, level):
    """One row per approach x held budget x quantity: observed optimum, prediction, the
    prediction interval, relative error, inside. Held budgets without a bracketed optimum
    are left out (their observation is not an optimum)."""
    import pandas as pd

    observed = budget_optima(held, optimum, flops_per_param_token)
    observed = observed[observed["bracketed"]]
    rows = []
    if observed.empty:
        return pd.DataFrame(rows, columns=COLUMNS)
    budgets = observed["budget"].to_numpy()
    for name, law in (("isoflop", iso), ("parametric", par)):
        if law is None:
            continue
        if name == "isoflop":
            pred, kind = law.predict(budgets, level, new_observation=True), "prediction"
        else:
            pred, kind = law.predict(budgets, level), "prediction" if iso is not None else "mean only"
        for q in QUANTITIES:
            obs = observed[f"{q}_opt"].to_numpy()
            value, low, high = (pred[f"{q}{end}"].to_numpy() for end in ("", "_low", "_high"))
            if name == "parametric":
                half = np.hypot(np.log(high / low) / 2, _observation_noise(iso, q, level))
                centre = np.sqrt(low * high)
                low, high = centre * np.exp(-half), centre * np.exp(half)
            for j, b in enumerate(budgets):
                rows.append((name, float(b), q, float(obs[j]), float(value[j]), float(low[j]), float(high[j]),
                             float(value[j] / obs[j] - 1), bool(low[j] <= obs[j] <= high[j]), kind))
    return pd.DataFrame(rows, columns=COLUMNS)
