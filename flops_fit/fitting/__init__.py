"""Scaling-law fits: IsoFLOP optima and power laws (Approach 2), the parametric L(N, D)
(Approach 3), intervals and the checks of what the data can tell.

One job a module: inputs (reading a table), prepare (mapping, filters), grouping (budgets),
isoflop, regression (t intervals, the floor law), parametric, bootstrap, agreement,
backtest, diagnostics and limits (warnings), estimate, result (what `fit` returns), api
(`fit` itself). Importing this package imports neither ray nor torch, and pandas and scipy
only inside the functions that use them: every Ray worker imports the package, and those
imports would cost each worker process start-up time for nothing it uses.
"""

import warnings as _warnings

from flops_fit.contract import MIN_BUDGETS, MIN_PARAMETRIC_POINTS, MIN_POINTS_PER_BUDGET
from flops_fit.fitting.api import APPROACHES, OPTIMUM_RULES, fit
from flops_fit.fitting.bootstrap import MAX_BOOTSTRAP
from flops_fit.fitting.inputs import FitError
from flops_fit.fitting.isoflop import budget_optima, valley_vertex
from flops_fit.fitting.prepare import BUDGET_RTOL
from flops_fit.fitting.estimate import Estimate
from flops_fit.fitting.result import IsoflopLaw, ParametricLaw, ScalingLaws

__all__ = ["fit", "ScalingLaws", "IsoflopLaw", "ParametricLaw", "Estimate", "FitError", "valley_vertex",
           "budget_optima", "APPROACHES", "OPTIMUM_RULES", "MAX_BOOTSTRAP", "BUDGET_RTOL", "MIN_BUDGETS",
           "MIN_PARAMETRIC_POINTS", "MIN_POINTS_PER_BUDGET"]


def __getattr__(name):
    if name == "OPTIMA":  # the old name, too close to a law's `.optima` table
        _warnings.warn("flops_fit.fitting.OPTIMA is deprecated: use OPTIMUM_RULES", DeprecationWarning, stacklevel=2)
        return OPTIMUM_RULES
    raise AttributeError(f"module 'flops_fit.fitting' has no attribute {name!r}")
