"""The fitted laws and their verdicts: what `fit` returns.

IsoflopLaw (Approach 2), ParametricLaw (Approach 3), ScalingLaws (both, with the rows used,
the exclusions, the warnings and the provenance). Presentation lives in `flops_fit.report`;
the methods here only delegate to it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from flops_fit.fitting.agreement import Agreement
from flops_fit.fitting.bootstrap import MAX_DROPPED_SHARE, percentile_interval
from flops_fit.fitting.estimate import Estimate, prediction_frame
from flops_fit.fitting.inputs import FitError
from flops_fit.law import HUBER_DELTA, compute_optimal_allocation, parametric_loss

if TYPE_CHECKING:
    import pandas as pd

# Two-sided bootstrap percentile interval level.
INTERVAL_LEVEL = 0.95
# A prediction more than this factor beyond the largest fitted FLOPs is an extrapolation.
EXTRAPOLATION_FACTOR = 100.0


@dataclass
class IsoflopLaw:
    """N_opt = k_N C^a, D_opt = k_D C^b, L_opt = E + k_L C^loss_exponent (C in FLOPs).

    `optima`: one row per budget (budget in FLOPs, params_opt, tokens_opt, loss_opt in nats
    per token, bracketed, reason, n_points); only bracketed budgets enter the laws.
    Intervals are t intervals from the scatter of the budgets' optima about each law
    (flops_fit.fitting.regression); `floor` says where E came from: "fitted" (the optima's
    own loss law) or "parametric" (fewer than 4 budgets: E of L(N, D)).
    `fits`: the regression fits behind predict (line fits of ln N_opt and ln D_opt on ln C,
    the floor fit of L_opt).
    """

    optimum: str
    a: Estimate
    b: Estimate
    k_N: Estimate
    k_D: Estimate
    E: Estimate
    k_L: Estimate
    loss_exponent: Estimate
    optima: pd.DataFrame = field(repr=False)
    flops_per_param_token: float
    floor: str = "fitted"
    fits: dict = field(default_factory=dict, repr=False)
    level: float = INTERVAL_LEVEL  # the fit's interval level: predict's default

    @property
    def largest_budget(self) -> float:
        """The largest budget (FLOPs) in the laws: the last one with a bracketed optimum."""
        return float(self.optima.loc[self.optima["bracketed"], "budget"].max())

    def predict(self, flops, level=None, new_observation=False) -> pd.DataFrame:
        """N_opt, D_opt, L_opt for compute C in FLOPs: one row per C, PREDICTION_COLUMNS,
        with intervals at `level` (default: the fit's own level).

        new_observation: the interval of the optimum a budget C would show (a prediction
        interval, for backtests), not of the law's mean."""
        from flops_fit.fitting.regression import floor_interval, line_interval

        level = self.level if level is None else level

        lc = np.log(np.atleast_1d(np.asarray(flops, float)))
        point, intervals = [], []
        for name in ("params", "tokens"):
            centre, half = (v[0] for v in line_interval(self.fits[name], lc, level, new_observation))
            with np.errstate(over="ignore"):
                point.append(np.exp(centre))
                intervals.append((np.exp(centre - half), np.exp(centre + half)))
        value, low, high = (v[0] for v in floor_interval(self.fits["loss"], lc, level, new_observation))
        point.append(value)
        intervals.append((low, high))
        return prediction_frame(np.exp(lc), point, intervals)


@dataclass
class ParametricLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta in nats per token (N parameters, D tokens).

    a, b: implied compute-optimal exponents of N_opt and D_opt (a = beta/(alpha+beta));
    G: Chinchilla eq. 4 coefficient, N_opt = G (C/k)^a, D_opt = G^-1 (C/k)^b.
    `samples`: bootstrap draws of (E, A, B, alpha, beta), (R, 5).
    huber_delta: the Huber threshold on the residual of ln loss the fit used;
    residual_median: median |ln L_fit - ln L_observed| over the fitted rows;
    local_optima: the distinct polished optima of the start grid, best first, as rows
    (ln A, ln B, ln E, alpha, beta).
    """

    E: Estimate
    A: Estimate
    B: Estimate
    alpha: Estimate
    beta: Estimate
    a: Estimate
    b: Estimate
    G: Estimate
    objective: float
    n_points: int
    flops_per_param_token: float
    samples: np.ndarray | None = field(default=None, repr=False)
    bootstrap_dropped: int = 0
    tie_exponents: bool = False
    huber_delta: float = HUBER_DELTA
    residual_median: float = math.nan
    local_optima: np.ndarray | None = field(default=None, repr=False)
    level: float = INTERVAL_LEVEL  # the fit's interval level: predict's default

    def loss(self, params, tokens):
        """Predicted loss in nats per token for N parameters trained on D tokens."""
        return parametric_loss(params, tokens, self.E.value, self.A.value, self.B.value,
                               self.alpha.value, self.beta.value)

    def predict(self, flops, level=None) -> pd.DataFrame:
        """N_opt, D_opt, L(N_opt, D_opt) for C in FLOPs: one row per C, PREDICTION_COLUMNS,
        with bootstrap intervals at `level` (default: the fit's own level)."""
        level = self.level if level is None else level
        c = np.atleast_1d(np.asarray(flops, float))
        k = self.flops_per_param_token

        def at(E, A, B, alpha, beta):
            n, d = compute_optimal_allocation(c, A, B, alpha, beta, k)
            with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
                loss = parametric_loss(n, d, E, A, B, alpha, beta)
            # A law with no finite allocation at C (exponents near zero) predicts nothing
            # there: NaN, which the fit's warnings state, not inf or 0.
            lost = ~(np.isfinite(n) & np.isfinite(d) & (n > 0) & (d > 0) & np.isfinite(loss))
            return tuple(np.where(lost, np.nan, v) for v in (n, d, loss))

        point = at(self.E.value, self.A.value, self.B.value, self.alpha.value, self.beta.value)
        if self.samples is None or len(self.samples) < 2:
            return prediction_frame(c, point, None)
        draws = [at(*row) for row in self.samples]
        intervals = []
        for j in range(len(point)):
            stack = np.array([d[j] for d in draws])
            intervals.append(np.array([percentile_interval(col, level) for col in stack.T]).T)
        return prediction_frame(c, point, intervals)


APPROACH_ISOFLOP = "isoflop"
APPROACH_PARAMETRIC = "parametric"


@dataclass
class ScalingLaws:
    """The fitted scaling laws of one sweep (or published data set).

    isoflop: IsoflopLaw (Approach 2); parametric: ParametricLaw (Approach 3);
    points: the rows used (params, tokens, flops, loss, budget, row);
    excluded: DataFrame of every row or budget left out, with its reason;
    notes: how the table was read (mappings, derived columns, FLOP convention).
    """

    isoflop: IsoflopLaw | None
    parametric: ParametricLaw | None
    points: pd.DataFrame = field(repr=False)
    excluded: pd.DataFrame = field(repr=False)
    notes: list = field(default_factory=list)
    bootstrap: int = 0
    seed: int = 0
    level: float = INTERVAL_LEVEL
    source: str = ""
    warnings: list = field(default_factory=list)  # shown first in the summary
    approaches: list = field(default_factory=list)  # which approach ran or not, and why
    agreement: Agreement = field(default_factory=Agreement)  # isoflop vs parametric, N_opt and loss
    backtest: pd.DataFrame | None = field(default=None, repr=False)  # held-out rows: observed vs predicted loss
    budget_backtest: pd.DataFrame | None = field(default=None, repr=False)  # held-out top budgets: both approaches
    provenance: dict = field(default_factory=dict, repr=False)

    # A prediction more than this factor beyond the largest fitted FLOPs is an extrapolation.
    extrapolation_factor: float = EXTRAPOLATION_FACTOR

    @property
    def unreliable(self) -> set:
        """Approaches whose intervals are unreliable: the parametric bootstrap dropped more
        than MAX_DROPPED_SHARE of its replicates."""
        out = set()
        if not self.bootstrap:
            return out
        par = self.parametric
        if par is not None and par.bootstrap_dropped > MAX_DROPPED_SHARE * self.bootstrap:
            out.add(APPROACH_PARAMETRIC)
        return out

    @property
    def max_fitted_flops(self) -> float:
        """Largest FLOPs among the fitted points (or optima)."""
        return float(self.points["flops"].max())

    def compare(self, flops) -> Agreement:
        """The approaches' agreement on N_opt and loss at the largest fitted budget and at
        `flops` (FLOPs), e.g. the budget a prediction is made for."""
        from flops_fit.fitting.agreement import compare

        c = _budgets(flops, "compare")
        largest = [self.isoflop.largest_budget] if self.isoflop is not None else []
        return compare(self.isoflop, self.parametric, largest + [float(v) for v in c], self.level)

    def predict(self, flops) -> pd.DataFrame:
        """One row per approach per C (FLOPs): params, tokens, loss (nats/token) with
        bootstrap interval columns *_low, *_high."""
        import pandas as pd
        c = _budgets(flops, "predict")
        frames = []
        for name, law in ((APPROACH_ISOFLOP, self.isoflop), (APPROACH_PARAMETRIC, self.parametric)):
            if law is not None:
                frame = law.predict(c, self.level)
                frame.insert(0, "approach", name)
                frame["extrapolated"] = c > EXTRAPOLATION_FACTOR * self.max_fitted_flops
                frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    @property
    def predictions(self) -> pd.DataFrame:
        """The Chinchilla-Table-3-style table as a DataFrame: `predict` at the swept budgets
        and a few decades above them, with tokens_per_param (D/N at the optimum)."""
        from flops_fit import report

        return report.chinchilla_table(self)

    @property
    def table(self) -> pd.DataFrame:
        """Deprecated name of `predictions` (a sweep's `.table` is its measured rows)."""
        warnings.warn("ScalingLaws.table is deprecated: use ScalingLaws.predictions (the name "
                      "`.table` belongs to a sweep's measured rows)", DeprecationWarning, stacklevel=2)
        return self.predictions

    def to_markdown(self, budgets=None) -> str:
        """That table as markdown text (at `budgets`, FLOPs, if given), intervals in brackets."""
        from flops_fit import report

        return report.markdown_table(self, budgets)

    def _repr_html_(self) -> str:
        """Jupyter shows the table."""
        return self.predictions.to_html()

    def to_frame(self) -> pd.DataFrame:
        """Fitted quantities as a tidy DataFrame: approach, quantity, value, low, high."""
        import pandas as pd
        rows = []
        iso = self.isoflop
        for name in ("a", "b", "k_N", "k_D", "E", "k_L", "loss_exponent") if iso is not None else ():
            e = getattr(iso, name)
            rows.append((APPROACH_ISOFLOP, name, e.value, e.low, e.high))
        if self.parametric is not None:
            for name in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):
                e = getattr(self.parametric, name)
                rows.append((APPROACH_PARAMETRIC, name, e.value, e.low, e.high))
        return pd.DataFrame(rows, columns=["approach", "quantity", "value", "low", "high"])

    def summary(self) -> str:
        """Human-readable text: exponents and coefficients with intervals, exclusions, counts."""
        from flops_fit import report

        return report.summary_text(self)

    def plot(self, out_dir=None) -> dict:
        """The plots this fit supports, {name: matplotlib Figure}: IsoFLOP curves, optima
        vs compute, parametric residuals, backtest (for a notebook; nothing is written).
        `save_plots` writes them; plot(out_dir), its older form, warns and does that."""
        if out_dir is not None:
            warnings.warn("ScalingLaws.plot(out_dir) is deprecated: use save_plots(out_dir) (plot() returns "
                          "the figures)", DeprecationWarning, stacklevel=2)
            return self.save_plots(out_dir)
        from flops_fit import plots

        for col in ("params", "tokens", "flops", "loss"):
            if np.isnan(plots.drawable(self.points[col])).any():
                raise FitError(f"plot: the fitted rows' {col} reach beyond 1e+-{plots.DRAWABLE_DECADES}, "
                               "past what a log-scale axis can draw; check that column's units")
        return plots.figures(self)

    def save_plots(self, out_dir) -> list:
        """Write the plots as PNG files into the local folder `out_dir` (made if missing): their paths."""
        from flops_fit import plots

        return plots.write_figures(self.plot(), out_dir)

    def __str__(self):
        return self.summary()


def _budgets(flops, call):
    """Compute budgets as a 1-d float array, or FitError naming `call` and the fix."""
    c = np.atleast_1d(np.asarray(flops, float))
    if not (np.all(np.isfinite(c)) and np.all(c > 0)):
        raise FitError(f"{call}: compute budgets must be positive finite FLOPs, e.g. {call}([1e21, 1e23])")
    return c
