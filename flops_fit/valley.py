"""A budget's IsoFLOP valley judged from its finished points, and the sizes that close it
(numpy; never imports ray; torch only where `size_table` builds models on the meta device).

The fit keeps a budget when the vertex of a parabola in ln N through the points near its
lowest loss lies inside the sampled sizes (Hoffmann et al. 2022, Approach 2). The
bracket-seeking search (search.py) asks more of a finished budget before it stops adding
sizes there: the lowest loss not at an edge, and the vertex's standard error in ln N at
most `VERTEX_SE_TARGET`. This module holds that verdict (`check_valley`), the parabola and
its standard error behind it, the loss noise pooled over budgets, the power law N_opt(C)
through the budgets' optima, and the sizes that close a valley: beyond its edge
(`extension_sizes`) or around a predicted optimum (`recentred_sizes`), chosen from a
table of the model dial (`size_table`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from . import flops
from .contract import MIN_POINTS_PER_BUDGET
from .fitting.isoflop import valley_mask
from .fitting.regression import line_fit
from .plan import DEFAULT_SIZE_SPREAD, SweepPlan, steps_for
from .sizes import sizes_around_prior


# Budgets needed for a power law N_opt = k C^a through the bracketed optima (two points
# give a line; the fit itself needs fitting.MIN_BUDGETS for a line with a residual).
MIN_BUDGETS_TO_RECENTRE = 2

# The stopping rule. A budget is done when the fit would use it (vertex inside), its
# lowest loss is not at an edge (so at least MIN_SIZES_EACH_SIDE sizes lie on either side
# of the vertex), and the standard error of its vertex is at most VERTEX_SE_TARGET. A count
# of sizes per side says nothing about how well they pin the vertex (that depends on their
# spread, the valley's curvature and the loss noise); the standard error says it directly.
# The target was chosen by simulated sweeps of Chinchilla's law with 1 % loss noise,
# trading the bias and spread of the fitted N_opt exponent against points trained:
# benchmarks/search_bias.py, figures in benchmarks/RESULTS.md ("Search stopping rule").
VERTEX_SE_TARGET = 0.1  # natural log of N (0.1: the vertex's N known to about 10 %)
MIN_SIZES_EACH_SIDE = 1  # the fit's own minimum: lowest loss not at an edge
# The loss noise behind the standard error. A 3-point parabola leaves no residual degree of
# freedom, so the noise is pooled over the finished budgets' parabolas (relative residuals,
# budgets' losses differ) and shrunk towards ASSUMED_RELATIVE_NOISE with the weight of
# NOISE_PRIOR_DOF residuals: the scaled-inverse-chi-square posterior of a normal variance
# (Gelman et al. 2013, Bayesian Data Analysis, 3rd ed., Sec. 2.6).
# sd of a final held-out loss / the loss, assumed: the noise of the simulation that chose
# VERTEX_SE_TARGET; the pooled residuals outweigh it once budgets have finished.
ASSUMED_RELATIVE_NOISE = 0.01
NOISE_PRIOR_DOF = 3  # residual degrees of freedom the assumption is worth
# A vertex whose N is beyond float range is no location: a nearly straight profile
# (curvature ~0 from rounding) puts it anywhere up to ln N ~ +-1e300.
MAX_LOG_PARAMS = math.log(sys.float_info.max)

# Sizes added at one edge in one step. Past the extrapolated vertex by EXTRA_BEYOND_VERTEX
# step(s), so that the next check has a point on the far side; at most MAX_SIZES_PER_STEP,
# because a vertex extrapolated from a one-sided profile is rough.
EXTRA_BEYOND_VERTEX = 1
MAX_SIZES_PER_STEP = 3
SIZES_WITHOUT_VERTEX = 2  # no usable vertex (concave, too flat or too few sizes): two sizes past the edge

LOW, HIGH = "low", "high"


@dataclass(frozen=True)
class Parabola:
    """Least-squares parabola loss = c0 + c1 x + c2 x^2 through a budget's valley points,
    x = ln N - log_n_centre (N in parameters, loss in nats per token).

    xtx_inv: (X^T X)^-1 of its design matrix [1, x, x^2]; rss: residual sum of squares
    (nats^2); dof: residual degrees of freedom; mean_loss: mean loss of the points used;
    lo, hi: the smallest and largest x used."""

    log_n_centre: float
    c0: float
    c1: float
    c2: float
    xtx_inv: np.ndarray
    rss: float
    dof: int
    mean_loss: float
    lo: float
    hi: float

    @property
    def log_vertex(self) -> float:
        """ln N at the vertex; NaN where the parabola opens downward or is so flat that the
        vertex's N is beyond float range (no location)."""
        if not (np.isfinite(self.c1) and np.isfinite(self.c2) and self.c2 > 0):
            return math.nan
        x = -self.c1 / (2 * self.c2)
        return float(x + self.log_n_centre) if abs(x + self.log_n_centre) < MAX_LOG_PARAMS else math.nan


def valley_parabola(log_n, loss) -> Parabola | None:
    """The parabola of the fit's valley rule (through the points `fitting.isoflop.valley_mask`
    keeps near the lowest loss, as fitting.valley_vertex), with what its standard error
    needs. log_n: natural logs of model sizes (parameters); loss: nats per token. None with
    fewer than MIN_POINTS_PER_BUDGET distinct sizes."""
    log_n = np.asarray(log_n, float)
    loss = np.asarray(loss, float)
    keep = valley_mask(log_n, loss)
    if np.unique(log_n[keep]).size < MIN_POINTS_PER_BUDGET:
        return None
    centre = float(log_n[keep].mean())
    x, y = log_n[keep] - centre, loss[keep]  # centred for conditioning
    design = np.stack([np.ones_like(x), x, x * x], 1)
    xtx_inv = np.linalg.inv(design.T @ design)
    c = xtx_inv @ (design.T @ y)
    rss = float(np.sum((y - design @ c) ** 2))
    return Parabola(centre, float(c[0]), float(c[1]), float(c[2]), xtx_inv, rss, int(x.size - 3),
                    float(y.mean()), float(x.min()), float(x.max()))


def vertex_se(c1: float, c2: float, xtx_inv, sigma: float) -> float:
    """Standard error of the vertex x* = -c1 / (2 c2) of a least-squares parabola
    y = c0 + c1 x + c2 x^2, in the units of x (the search's x is ln N, so natural log of
    N: 0.1 means N known to about 10 %).

    Delta method (Casella & Berger 2002, Statistical Inference, 2nd ed., Sec. 5.5.4):
    var x* ~ g^T Cov(c) g with g = d x*/d(c0, c1, c2) = (0, -1/(2 c2), c1/(2 c2^2)) and
    Cov(c) = sigma^2 (X^T X)^-1 (xtx_inv, of the design matrix [1, x, x^2]); sigma: sd of
    y's noise, in y's units. Infinite where c2 <= 0 or a coefficient is not finite (no
    vertex to locate)."""
    if not (np.isfinite(c1) and np.isfinite(c2) and c2 > 0 and np.isfinite(sigma)):
        return math.inf
    g = np.array([0.0, -1.0 / (2 * c2), c1 / (2 * c2 * c2)])
    var = float(sigma * sigma * (g @ np.asarray(xtx_inv, float) @ g))
    return math.sqrt(var) if np.isfinite(var) and var >= 0 else math.inf


def pooled_relative_noise(parabolas, prior: float = ASSUMED_RELATIVE_NOISE, prior_dof: int = NOISE_PRIOR_DOF) -> float:
    """Relative sd of the loss noise (sd / loss) from the residuals of `parabolas` (finished
    budgets' valley parabolas), shrunk towards `prior` with the weight of `prior_dof`
    residual degrees of freedom: s^2 = (prior_dof prior^2 + sum rss_b / mean_loss_b^2) /
    (prior_dof + sum dof_b) (the scaled-inverse-chi-square posterior of a normal variance,
    Gelman et al. 2013, Sec. 2.6). `prior` alone where no parabola has a residual."""
    rss = sum(p.rss / p.mean_loss ** 2 for p in parabolas if p.dof > 0)
    dof = sum(p.dof for p in parabolas if p.dof > 0)
    return math.sqrt((prior_dof * prior * prior + rss) / (prior_dof + dof)) if dof else prior


def planned_vertex_se(log_sizes, log_vertex: float, curvature: float, sigma: float) -> float:
    """Standard error (natural log of N) the vertex of a budget would have if trained at
    `log_sizes` (ln N of its sizes) with its vertex at `log_vertex`, a valley of curvature
    `curvature` (c2, loss units per (ln N)^2) and loss noise `sigma` (loss units): `vertex_se`
    of the parabola with those coefficients on that design. inf with fewer than
    MIN_POINTS_PER_BUDGET distinct sizes."""
    x = np.asarray(log_sizes, float)
    if np.unique(x).size < MIN_POINTS_PER_BUDGET:
        return math.inf
    centre = x.mean()
    design = np.stack([np.ones_like(x), x - centre, (x - centre) ** 2], 1)
    c1 = -2 * curvature * (log_vertex - centre)
    return vertex_se(c1, curvature, np.linalg.inv(design.T @ design), sigma)


@dataclass(frozen=True)
class Valley:
    """The verdict on one budget's finished points.

    bracketed: the budget is done: the fit will use it (vertex inside the sampled sizes),
        its lowest loss is not at an edge, and its vertex's standard error is at most the
        target; edge: "low" / "high" / None, where to add sizes;
    params_opt: N at the vertex (or the lowest point without one); vertex: N at the
        parabola's vertex when the parabola opens upward (and the vertex is a location),
        else NaN; reason: why not.
    fit_bracketed: the fit's own verdict (vertex inside), used for re-centring.
    vertex_se: standard error of the vertex in ln N (`vertex_se`), inf without one.
    """

    bracketed: bool
    edge: str | None
    params_opt: float
    vertex: float
    reason: str
    fit_bracketed: bool
    vertex_se: float = math.inf


def check_valley(params, loss, relative_noise: float = ASSUMED_RELATIVE_NOISE,
                 se_target: float = VERTEX_SE_TARGET, each_side: int = MIN_SIZES_EACH_SIDE) -> Valley:
    """Judge one budget from its finished points (params in parameters, loss in nats per
    token; failed or diverged points left out by the caller). relative_noise: sd of the
    loss noise / the loss (`pooled_relative_noise`); se_target: the vertex's standard
    error allowed, natural log of N (math.inf: the fit's rule and the edge rule alone);
    each_side: sizes wanted on either side of the vertex."""
    params = np.asarray(params, float)
    loss = np.asarray(loss, float)
    if params.size == 0:
        return Valley(False, None, math.nan, math.nan, "no finished point", False)
    j = int(np.argmin(loss))
    low, high = params.min(), params.max()
    at_edge = LOW if params[j] <= low else (HIGH if params[j] >= high else None)
    if np.unique(params).size < MIN_POINTS_PER_BUDGET:
        if np.unique(params).size == 1:
            return Valley(False, None, float(params[j]), math.nan, "one finished size: no direction", False)
        return Valley(False, at_edge, float(params[j]), math.nan,
                      f"only {np.unique(params).size} finished sizes; lowest loss at the {at_edge} edge", False)
    par = valley_parabola(np.log(params), loss)
    log_vertex = par.log_vertex
    has_vertex = np.isfinite(log_vertex)
    inside = has_vertex and par.lo <= log_vertex - par.log_n_centre <= par.hi
    vertex = math.exp(log_vertex) if has_vertex else math.nan
    se = vertex_se(par.c1, par.c2, par.xtx_inv, relative_noise * par.mean_loss) if has_vertex else math.inf
    if inside and at_edge is None:
        below, above = sizes_each_side(params, vertex)
        if min(below, above) < each_side:
            edge = LOW if below < above else HIGH
            return Valley(False, edge, vertex, vertex,
                          f"only {min(below, above)} size {'below' if edge == LOW else 'above'} the vertex",
                          True, se)
        if se > se_target:
            # The side with fewer sizes beyond the vertex, else the one whose farthest size
            # is nearer to it: a size there adds the most leverage on the curvature.
            reach = (math.log(vertex) - math.log(low), math.log(high) - math.log(vertex))
            edge = LOW if (below, reach[0]) < (above, reach[1]) else HIGH
            return Valley(False, edge, vertex, vertex,
                          f"vertex standard error {se:.3g} in ln N above the target {se_target:.3g}",
                          True, se)
        return Valley(True, None, vertex, vertex, "", True, se)
    if inside:  # vertex inside, yet the best point is the first or last one sampled
        return Valley(False, at_edge, vertex, vertex,
                      f"lowest loss at the {'smallest' if at_edge == LOW else 'largest'} size", True, se)
    if has_vertex:  # the vertex is outside: go towards it
        edge = HIGH if log_vertex > math.log(params[j]) else LOW
        reason = f"vertex N={vertex:.3g} outside sampled sizes [{low:.3g}, {high:.3g}]"
    else:
        reason = ("parabola too flat to place a vertex" if par.c2 > 0 else "parabola opens downward (no minimum)")
        if at_edge is not None:
            edge = at_edge
        else:  # concave with an inner minimum (noise in a flat valley): follow the lower end
            edge = LOW if loss[np.argmin(params)] < loss[np.argmax(params)] else HIGH
    return Valley(False, edge, float(params[j]) if not has_vertex else vertex, vertex, reason, False, se)


def sizes_each_side(params, params_opt: float) -> tuple[int, int]:
    """(how many of the model sizes `params` lie below `params_opt`, how many at or above
    it), all in parameters: the one count behind every each-side rule of the search."""
    below = sum(1 for n in params if n < params_opt)
    return below, len(params) - below


def short_of_sizes_each_side(params, params_opt: float, each_side: int) -> bool:
    """Whether fewer than `each_side` of the model sizes `params` (parameters) lie below
    `params_opt`, or fewer than that at or above it."""
    return min(sizes_each_side(params, params_opt)) < each_side


def optimum_law(optima: dict):
    """(ln k, a) of N_opt = k C^a by least squares through {budget: N_opt} (FLOPs,
    parameters); None with fewer than MIN_BUDGETS_TO_RECENTRE budgets."""
    if len(optima) < MIN_BUDGETS_TO_RECENTRE:
        return None
    log_c = np.log(np.array(list(optima), float))
    log_n = np.log(np.array(list(optima.values()), float))
    fit = line_fit(log_c, log_n)  # the fit's own line through the optima (fitting/regression.py)
    return float(fit["intercept"][0]), float(fit["slope"][0])


# ---------------------------------------------------------------------------------------
# Which sizes next: beyond a valley's edge, or around a predicted optimum; the size tables
# (dial -> params, flops per token; batches under a batch rule) they choose from
# ---------------------------------------------------------------------------------------


def usable_sizes(budget, sizes: dict, batch_tokens, min_steps: int) -> list:
    """Dial values that can train at `budget`: at least `min_steps` optimizer steps of
    `batch_tokens` tokens (a number, or a dict size -> tokens per step under a batch rule;
    a size missing from it cannot train at this budget)."""
    per_size = batch_tokens if isinstance(batch_tokens, dict) else dict.fromkeys(sizes, batch_tokens)
    return sorted(s for s, (_, fpt) in sizes.items()
                  if s in per_size and steps_for(budget, fpt, per_size[s]) >= min_steps)


def extension_sizes(valley: Valley, ok_sizes, tried_sizes, usable, sizes: dict, room: int) -> list:
    """Sizes to add beyond `valley.edge` (at most `room`): spaced like the budget's own
    finished sizes (median gap in ln N) and reaching EXTRA_BEYOND_VERTEX step past the
    extrapolated vertex; never a size tried before, never outside `usable`.

    ok_sizes: dial values with a finished loss; tried_sizes: every dial value proposed at
    this budget (failed ones are not retried); sizes: dial -> (params, flops per token).
    """
    if valley.edge is None or room < 1 or not ok_sizes:
        return []
    log_n = {s: math.log(sizes[s][0]) for s in set(usable) | set(ok_sizes)}
    ok_logs = sorted(log_n[s] for s in ok_sizes)
    sign = 1 if valley.edge == HIGH else -1
    edge_log = ok_logs[-1] if sign > 0 else ok_logs[0]
    beyond = [s for s in usable if s not in tried_sizes and sign * (log_n[s] - edge_log) > 0]
    if not beyond:
        return []
    gaps = np.diff(ok_logs)
    gaps = gaps[gaps > 0]
    step = float(np.median(gaps)) if gaps.size else math.log(DEFAULT_SIZE_SPREAD)
    if valley.bracketed or valley.fit_bracketed:  # vertex inside: one size past the edge
        count = 1
    elif np.isfinite(valley.vertex) and sign * (math.log(valley.vertex) - edge_log) > 0:
        count = math.ceil(abs(math.log(valley.vertex) - edge_log) / step) + EXTRA_BEYOND_VERTEX
    else:
        count = SIZES_WITHOUT_VERTEX
    count = max(1, min(count, MAX_SIZES_PER_STEP, room))
    chosen = []
    for j in range(1, count + 1):
        target = edge_log + sign * step * j
        left = [s for s in beyond if s not in chosen]
        if not left:
            break
        chosen.append(min(left, key=lambda s: (abs(log_n[s] - target), sign * log_n[s])))
    return sorted(chosen, key=lambda s: sign * log_n[s])


class _SizeProbe:
    """The parameter counts of a size table, in the interface sizes.sizes_around_prior uses."""

    def __init__(self, sizes: dict):
        self.sizes = sizes

    def params(self, size):
        return self.sizes[size][0]


def recentred_sizes(budget: float, params_pred: float, planned_params, usable, sizes: dict,
                    count: int | None = None, each_side: int = 0) -> list:
    """`count` sizes (default: as many as the budget's plan has), log-spaced over the plan's
    own span, around the predicted N_opt (parameters), chosen among `usable` the way
    plan_sweep chooses them; with at least `each_side` of them on either side of the
    prediction, where the dial has them."""
    planned_params = sorted(planned_params)
    count = count or len(planned_params)
    if not usable or not planned_params:
        return []
    spread = math.sqrt(planned_params[-1] / planned_params[0]) if len(planned_params) > 1 else DEFAULT_SIZE_SPREAD
    spread = max(spread, 1 + 1e-9)
    # plan_sweep centres on N* = sqrt(C / (6 tokens_per_param)): the ratio that puts N* here
    tokens_per_param = budget / (flops.FLOPS_PER_PARAM_TOKEN * params_pred**2)
    chosen = sorted(sizes_around_prior(budget, list(usable), min(count, len(usable)), tokens_per_param,
                                        spread, _SizeProbe(sizes)))
    if not short_of_sizes_each_side([sizes[s][0] for s in chosen], params_pred, each_side):
        return chosen
    # A dial coarse for the plan's span (a GPT's N grows as the cube of its depth): the grid
    # can round two targets to one size and leave a single size on one side. Then take the
    # neighbouring usable sizes instead, half below the prediction and half above.
    order = sorted(usable, key=lambda s: sizes[s][0])
    first_above, _ = sizes_each_side([sizes[s][0] for s in order], params_pred)  # index of the first size above
    n = len(chosen)
    start = min(max(0, first_above - n // 2), len(order) - n)
    return order[start:start + n]


def size_table(task, plan: SweepPlan, candidate_sizes) -> dict:
    """Model dial -> (params, flops per token) under the plan's conventions, for every
    candidate size (models built on the meta device, as plan_sweep does)."""
    from .sizes import ModelProbe

    probe = ModelProbe(task, plan.param_convention, plan.flops_convention)
    table = {int(s): (int(probe.params(s)), float(probe.flops_per_token(s))) for s in candidate_sizes}
    for p in plan.points:  # the plan's own numbers win (a counted FLOP probe is not re-run)
        table[p.size] = (p.params, p.flops_per_token)
    return table


def batch_table(task, plan: SweepPlan, sizes: dict) -> dict:
    """Under a Task.batch_size rule: (budget, size) -> (batch in samples, tokens per step)
    for every plan budget and size of `sizes` (as plan_sweep resolves them); a size whose
    batch the rule cannot give there is left out (the search never adds it). {} otherwise."""
    from .plan import point_batch

    if not task.batch_rule:
        return {}
    table = {}
    for budget in plan.budgets:
        for size, (params, fpt) in sizes.items():
            try:
                table[(budget, size)] = point_batch(task, params, budget, fpt)
            except ValueError:
                continue
    return table
