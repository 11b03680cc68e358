"""Scaling-law fits: IsoFLOP optima and power laws (Approach 2), the parametric L(N, D)
(Approach 3), intervals and the checks of what the data can tell.

One job a module: inputs (reading a table), prepare (mapping, filtering, grouping),
isoflop, parametric, bootstrap (resampling, intervals), diagnostics (warnings, agreement,
backtest), result (what `fit` returns), api (`fit` itself). Importing this package imports
neither ray nor torch; pandas and scipy are imported inside the functions that use them:
every Ray worker imports the package, and the two cost about 0.6 s of CPU per process.
"""

from flops_fit.contract import MIN_BUDGETS, MIN_PARAMETRIC_POINTS, MIN_POINTS_PER_BUDGET
from flops_fit.fitting.api import APPROACHES, OPTIMA, fit
from flops_fit.fitting.bootstrap import MAX_BOOTSTRAP
from flops_fit.fitting.inputs import FitError
from flops_fit.fitting.isoflop import budget_optima, valley_vertex
from flops_fit.fitting.prepare import BUDGET_RTOL
from flops_fit.fitting.estimate import Estimate
from flops_fit.fitting.result import IsoflopLaw, ParametricLaw, ScalingLaws

__all__ = ["fit", "ScalingLaws", "IsoflopLaw", "ParametricLaw", "Estimate", "FitError", "valley_vertex",
           "budget_optima", "APPROACHES", "OPTIMA", "MAX_BOOTSTRAP", "BUDGET_RTOL", "MIN_BUDGETS",
           "MIN_PARAMETRIC_POINTS", "MIN_POINTS_PER_BUDGET"]
