"""The fitted laws and their verdicts: what `fit` returns.

IsoflopLaw (Approach 2), ParametricLaw (Approach 3), ScalingLaws (both, with the rows used,
the exclusions, the warnings and the provenance). Presentation lives in `flops_fit.report`;
the methods here only delegate to it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from flops_fit.fitting.bootstrap import MAX_DROPPED_SHARE, MAX_THIN_SHARE, percentile_interval
from flops_fit.fitting.inputs import FitError
from flops_fit.law import HUBER_DELTA, compute_optimal_allocation, parametric_loss

if TYPE_CHECKING:
    import pandas as pd

# Two-sided bootstrap percentile interval level.
INTERVAL_LEVEL = 0.95
# A prediction more than this factor beyond the largest fitted FLOPs is an extrapolation.
EXTRAPOLATION_FACTOR = 100.0


# What every predict returns, one row per compute budget C: flops (C, FLOPs), then
# params (N_opt), tokens (D_opt) and loss (nats per token), each with its bootstrap
# interval (*_low, *_high; NaN without bootstrap).
PREDICTED = ("params", "tokens", "loss")
PREDICTION_COLUMNS = ["flops"] + [f"{q}{end}" for q in PREDICTED for end in ("", "_low", "_high")]


def prediction_frame(flops, point, intervals) -> pd.DataFrame:
    """PREDICTION_COLUMNS from the point predictions and their (low, high) intervals."""
    import pandas as pd
    columns = {"flops": flops}
    for j, name in enumerate(PREDICTED):
        low, high = intervals[j] if intervals is not None else (np.full_like(point[j], np.nan),) * 2
        columns.update({name: point[j], f"{name}_low": low, f"{name}_high": high})
    return pd.DataFrame(columns, columns=PREDICTION_COLUMNS)


@dataclass(frozen=True)
class Estimate:
    """A fitted number and its bootstrap percentile interval (NaN when bootstrap=0)."""

    value: float
    low: float = math.nan
    high: float = math.nan

    def __float__(self):
        return float(self.value)

    def __format__(self, spec):
        spec = spec or ".4g"
        if np.isfinite(self.low):
            return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"
        return f"{self.value:{spec}}"

    def __str__(self):
        return format(self, "")


def estimate(value, samples, level):
    lo, hi = percentile_interval(samples, level) if samples is not None else (math.nan, math.nan)
    return Estimate(float(value), lo, hi)


@dataclass
class IsoflopLaw:
    """N_opt = k_N C^a, D_opt = k_D C^b, L_opt = k_L C^loss_exponent (C in FLOPs).

    `optima`: one row per budget (budget in FLOPs, params_opt, tokens_opt, loss_opt in nats
    per token, bracketed, reason, n_points); only bracketed budgets enter the laws.
    `samples`: bootstrap draws of (ln k_N, a, ln k_D, b, ln k_L, loss_exponent), (R, 6).
    """

    optimum: str
    a: Estimate
    b: Estimate
    k_N: Estimate
    k_D: Estimate
    k_L: Estimate
    loss_exponent: Estimate
    optima: pd.DataFrame
    flops_per_param_token: float
    samples: np.ndarray | None = None
    bootstrap_failed: int = 0
    # budgets whose parabola rests on exactly 3 sizes: resampling cannot show their noise
    thin_budgets: list = field(default_factory=list)

    @property
    def thin_share(self) -> float:
        """Share of the budgets in the power laws whose parabola rests on exactly 3 sizes."""
        return len(self.thin_budgets) / max(1, int(self.optima["bracketed"].sum()))

    def predict(self, flops, level=INTERVAL_LEVEL) -> pd.DataFrame:
        """N_opt, D_opt, L_opt for compute C in FLOPs: one row per C, PREDICTION_COLUMNS."""
        c = np.atleast_1d(np.asarray(flops, float))
        lc = np.log(c)
        point = [np.exp(np.log(k.value) + e.value * lc) for k, e in
                 ((self.k_N, self.a), (self.k_D, self.b), (self.k_L, self.loss_exponent))]
        if self.samples is None or len(self.samples) < 2:
            return prediction_frame(c, point, None)
        intervals = []
        for j in range(len(point)):
            draws = np.exp(self.samples[:, 2 * j, None] + self.samples[:, 2 * j + 1, None] * lc)
            intervals.append(np.array([percentile_interval(d, level) for d in draws.T]).T)
        return prediction_frame(c, point, intervals)


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
    samples: np.ndarray | None = None
    bootstrap_dropped: int = 0
    tie_exponents: bool = False
    huber_delta: float = HUBER_DELTA
    residual_median: float = math.nan
    local_optima: np.ndarray | None = None

    def loss(self, params, tokens):
        """Predicted loss in nats per token for N parameters trained on D tokens."""
        return parametric_loss(params, tokens, self.E.value, self.A.value, self.B.value,
                               self.alpha.value, self.beta.value)

    def predict(self, flops, level=INTERVAL_LEVEL) -> pd.DataFrame:
        """N_opt, D_opt, L(N_opt, D_opt) for C in FLOPs: one row per C, PREDICTION_COLUMNS."""
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
    points: pd.DataFrame
    excluded: pd.DataFrame
    notes: list = field(default_factory=list)
    bootstrap: int = 0
    seed: int = 0
    level: float = INTERVAL_LEVEL
    source: str = ""
    warnings: list = field(default_factory=list)  # shown first in the summary
    approaches: list = field(default_factory=list)  # which approach ran or not, and why
    agreement: str = ""  # whether the two approaches agree on a = d ln N_opt / d ln C
    backtest: pd.DataFrame | None = None  # held-out rows: observed vs predicted loss
    provenance: dict = field(default_factory=dict)

    # A prediction more than this factor beyond the largest fitted FLOPs is an extrapolation.
    extrapolation_factor: float = EXTRAPOLATION_FACTOR

    @property
    def unreliable(self) -> set:
        """Approaches whose intervals are unreliable: the bootstrap dropped more than
        MAX_DROPPED_SHARE of its replicates (or, IsoFLOP, most budgets rest on 3 sizes)."""
        out = set()
        if not self.bootstrap:
            return out
        iso, par = self.isoflop, self.parametric
        if iso is not None and (iso.bootstrap_failed > MAX_DROPPED_SHARE * self.bootstrap
                                or iso.thin_share > MAX_THIN_SHARE):
            out.add(APPROACH_ISOFLOP)
        if par is not None and par.bootstrap_dropped > MAX_DROPPED_SHARE * self.bootstrap:
            out.add(APPROACH_PARAMETRIC)
        return out

    @property
    def max_fitted_flops(self) -> float:
        """Largest FLOPs among the fitted points (or optima)."""
        return float(self.points["flops"].max())

    def predict(self, flops) -> pd.DataFrame:
        """One row per approach per C (FLOPs): params, tokens, loss (nats/token) with
        bootstrap interval columns *_low, *_high."""
        import pandas as pd
        c = np.atleast_1d(np.asarray(flops, float))
        if not (np.all(np.isfinite(c)) and np.all(c > 0)):
            raise FitError(f"predict: compute budgets must be positive FLOPs, got {flops!r}")
        frames = []
        for name, law in ((APPROACH_ISOFLOP, self.isoflop), (APPROACH_PARAMETRIC, self.parametric)):
            if law is not None:
                frame = law.predict(c, self.level)
                frame.insert(0, "approach", name)
                frame["extrapolated"] = c > EXTRAPOLATION_FACTOR * self.max_fitted_flops
                frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    @property
    def table(self) -> pd.DataFrame:
        """The Chinchilla-Table-3-style table as a DataFrame: `predict` at the swept budgets
        and a few decades above them, with tokens_per_param (D/N at the optimum)."""
        from flops_fit import report

        return report.chinchilla_table(self)

    def to_markdown(self, budgets=None) -> str:
        """That table as markdown text (at `budgets`, FLOPs, if given), intervals in brackets."""
        from flops_fit import report

        return report.markdown_table(self, budgets)

    def _repr_html_(self) -> str:
        """Jupyter shows the table."""
        return self.table.to_html()

    def to_frame(self) -> pd.DataFrame:
        """Fitted quantities as a tidy DataFrame: approach, quantity, value, low, high."""
        import pandas as pd
        rows = []
        iso = self.isoflop
        for name in ("a", "b", "k_N", "k_D", "k_L", "loss_exponent") if iso is not None else ():
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

    def plot(self, out_dir=None):
        """The plots this fit supports: IsoFLOP curves, optima vs compute, parametric
        residuals, backtest. Without out_dir, {name: matplotlib Figure} (for a notebook;
        nothing is written); with out_dir, PNG files written there, and their paths."""
        from flops_fit import report

        for col in ("params", "tokens", "flops", "loss"):
            if np.isnan(report.drawable(self.points[col])).any():
                raise FitError(f"plot: the fitted rows' {col} reach beyond 1e+-{report.DRAWABLE_DECADES}, "
                               "past what a log-scale axis can draw; check that column's units")
        if out_dir is None:
            return report.figures(self)
        return report.write_figures(self, out_dir)

    def __str__(self):
        return self.summary()
