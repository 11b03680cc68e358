"""flops_fit: compute-optimal N, D and loss for your model and data.

plan_sweep -> run_sweep (Ray) -> fit -> report. Importing this package imports neither
ray nor torch: the names below are loaded on first use, so a finished sweep can be
re-analysed on a machine without either.
"""

from importlib import import_module

# Imported eagerly (numpy only at import time): `flops_fit.fit` is the function; the
# fitting code lives in modules of other names so no submodule import can rebind it.
from .fitting import ScalingLaws, fit
from .fitting import FitError

__version__ = "0.1.0"

# public name -> module that defines it, loaded on first use
_EXPORTS = {
    "plan_sweep": "flops_fit.plan",
    "SweepPlan": "flops_fit.plan",
    "SweepPoint": "flops_fit.plan",
    "PlanWarning": "flops_fit.plan",
    "Task": "flops_fit.task",
    "run_sweep": "flops_fit.execute",
    "BracketSearchOptions": "flops_fit.search",
    "SweepResults": "flops_fit.results",
    "load_results": "flops_fit.results",
}

__all__ = sorted([*_EXPORTS, "fit", "ScalingLaws", "FitError"])


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flops_fit' has no attribute {name!r}")


def __dir__():
    return __all__ + ["__version__"]
