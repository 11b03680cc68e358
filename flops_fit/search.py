"""Bracket-seeking sweeps: decide which sweep points to train next (pure; never imports ray).

A static IsoFLOP plan centres each budget's sizes on a prior tokens-per-parameter ratio;
when the prior is off (at small scale, or for a new architecture, by up to 10x) a budget's
smallest or largest model is its best one, the parabola's vertex lies outside the sampled
sizes, and the fit has to drop the budget (Hoffmann et al. 2022, Approach 2, needs the
minimum inside each IsoFLOP profile). `BracketSearch` closes that loop:

1. Budgets start in plan order from the plan's sizes.
2. When every point of a budget has finished, its valley is checked with the fit's own
   rule (vertex of a parabola in ln N near the lowest point, inside the sampled sizes), the
   edge rule (lowest loss not at the smallest or largest size) and the precision rule (the
   vertex's standard error in ln N at most `VERTEX_SE_TARGET`). If any fails, sizes are
   added beyond an edge, spaced like the budget's own sizes and reaching one step past the
   extrapolated vertex, until the budget is done or a limit is hit: sizes per budget, the
   model dial's range, `min_steps` optimizer steps.
3. Budgets not yet started are re-centred on N_opt(C) predicted by the power law through
   the bracketed budgets' optima, once there are two, when their planned sizes are off
   its centre or would not meet the precision rule there.
4. `max_points` bounds the points trained in all.

Every point it proposes carries `origin` (planned, extended, re-centred). Its state is the
points it proposed plus their results, so it is rebuilt from a sweep folder after the
driver was killed (see `searcher.py` for the Ray Tune side).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import checks
from . import flops as F
from .contract import MIN_POINTS_PER_BUDGET, ORIGIN_PLANNED
from .fitting.isoflop import valley_mask
from .plan import (
    DEFAULT_MIN_STEPS,
    DEFAULT_SIZE_SPREAD,
    SweepPlan,
    _sizes_around_prior,
    point_id,
    steps_for,
    sweep_point,
)

ORIGIN_EXTENDED = "extended"  # added beyond the edge of a budget whose valley was not bracketed
ORIGIN_RECENTRED = "re-centred"  # a size of a budget re-centred on the fitted power law
# Ids of added points: the plan's id of (budget, size) plus this suffix, so an added point
# can never take a planned point's id (nor its trial folder).
ADDED_ID_SUFFIX = "-add"

DEFAULT_MAX_ADDED_PER_BUDGET = 4  # sizes added to one budget beyond the ones it started with
# Sizes added at one edge in one step. Past the extrapolated vertex by EXTRA_BEYOND_VERTEX
# step(s), so that the next check has a point on the far side; at most MAX_SIZES_PER_STEP,
# because a vertex extrapolated from a one-sided profile is rough.
EXTRA_BEYOND_VERTEX = 1
MAX_SIZES_PER_STEP = 3
SIZES_WITHOUT_VERTEX = 2  # no usable vertex (concave, too flat or too few sizes): two sizes past the edge
# A budget not yet started keeps its planned sizes while the predicted N_opt lies within
# this fraction of their span (in ln N) of their centre and their vertex there would meet
# VERTEX_SE_TARGET (predicted with the curvature and noise of the budgets finished so far):
# no size has to be added after the budget finishes, when the size would train alone at
# the end of the sweep.
RECENTRE_TOLERANCE = 0.25
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

LOW, HIGH = "low", "high"


# ---------------------------------------------------------------------------------------
# Decisions (pure functions on small tables)
# ---------------------------------------------------------------------------------------


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


def optimum_law(optima: dict):
    """(ln k, a) of N_opt = k C^a by least squares through {budget: N_opt} (FLOPs,
    parameters); None with fewer than MIN_BUDGETS_TO_RECENTRE budgets."""
    if len(optima) < MIN_BUDGETS_TO_RECENTRE:
        return None
    log_c = np.log(np.array(list(optima), float))
    log_n = np.log(np.array(list(optima.values()), float))
    slope, intercept = np.polyfit(log_c, log_n, 1)
    return float(intercept), float(slope)


class _SizeProbe:
    """The parameter counts of a size table, in the interface plan._sizes_around_prior uses."""

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
    tokens_per_param = budget / (F.FLOPS_PER_PARAM_TOKEN * params_pred**2)
    chosen = sorted(_sizes_around_prior(budget, list(usable), min(count, len(usable)), tokens_per_param,
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


# ---------------------------------------------------------------------------------------
# The search: which point next
# ---------------------------------------------------------------------------------------


@dataclass
class _Budget:
    budget: float
    planned: list  # SweepPoints of the plan at this budget
    started: bool = False
    settled: str = ""  # why no more sizes are added ("" while open)


@dataclass
class BracketSearch:
    """The state of a bracket-seeking sweep and its decisions (no Ray).

    sizes: model dial -> (params, flops per token) for every size the search may use
    (see `size_table`); max_points: points trained in all (default: the plan's points plus
    DEFAULT_MAX_ADDED_PER_BUDGET per budget); max_added_per_budget: sizes added to one
    budget; min_steps: optimizer steps a point needs (as plan_sweep's);
    vertex_se_target: the standard error of a budget's vertex (natural log of N) below
    which it is done (math.inf: done once bracketed with its lowest loss inside);
    min_sizes_each_side: sizes wanted on either side of a budget's vertex.
    """

    plan: SweepPlan
    sizes: dict
    max_points: int | None = None
    max_added_per_budget: int = DEFAULT_MAX_ADDED_PER_BUDGET
    min_steps: int = DEFAULT_MIN_STEPS
    vertex_se_target: float = VERTEX_SE_TARGET
    min_sizes_each_side: int = MIN_SIZES_EACH_SIDE
    proposed: dict = field(default_factory=dict)  # point id -> point dict (with origin), in order
    results: dict = field(default_factory=dict)  # point id -> {"status", "loss"}
    queue: list = field(default_factory=list)  # point dicts decided, not yet proposed
    skipped: dict = field(default_factory=dict)  # planned point id -> why it is not trained
    log: list = field(default_factory=list)  # one line per decision, for people
    # Under a Task.batch_size rule (plan.batch_tokens == 0): (budget, size) -> (batch in
    # samples, tokens per step) of every size the search may use there (`batch_table`).
    batches: dict = field(default_factory=dict)

    def __post_init__(self):
        self.max_points, self.max_added_per_budget, self.min_steps = check_search_arguments(
            self.plan, self.sizes, self.max_points, self.max_added_per_budget, self.min_steps)
        self.vertex_se_target, self.min_sizes_each_side = check_rule_arguments(
            self.vertex_se_target, self.min_sizes_each_side)
        if self.max_points is None:
            self.max_points = len(self.plan) + self.max_added_per_budget * len(self.plan.budgets)
        self._noise_key, self._noise = None, ASSUMED_RELATIVE_NOISE
        self._budgets = {}
        for p in self.plan.points:
            self._budgets.setdefault(p.budget, _Budget(p.budget, [])).planned.append(p)
        for p in self.proposed.values():  # a restored search
            self._budgets[p["budget"]].started = True

    # -- what Tune asks -------------------------------------------------------------------
    def next_point(self) -> dict | None:
        """The next point to train (a SweepPoint dict plus "origin"), or None for now."""
        if not self.queue:
            self._decide()
        if not self.queue:
            return None
        point = self.queue.pop(0)
        self.proposed[point["point_id"]] = point
        return point

    @property
    def finished(self) -> bool:
        """Nothing running, nothing queued and nothing left to decide."""
        if self.queue or self.live:
            return False
        self._decide()
        return not self.queue

    @property
    def live(self) -> list:
        return [i for i in self.proposed if i not in self.results]

    def record(self, point_id: str, status: str, loss: float | None = None) -> None:
        """A proposed point ended: status ok / diverged / failed, loss in nats per token."""
        if point_id not in self.proposed:
            raise KeyError(f"point {point_id!r} was never proposed by this search")
        self.results[point_id] = {"status": status, "loss": None if loss is None else float(loss)}

    def sync(self, proposed: list, results: dict) -> None:
        """Take in a sweep folder's record: the points proposed there (in order) and the
        results of those that finished. Points it proposed that neither finished nor are
        running here are queued first, to be trained again under the same id."""
        for p in proposed:
            if p["point_id"] not in self.proposed and all(q["point_id"] != p["point_id"] for q in self.queue):
                self._budgets[p["budget"]].started = True
                if p["point_id"] in results:
                    self.proposed[p["point_id"]] = p
                else:
                    self.queue.append(p)
        for pid, res in results.items():
            if pid in self.proposed:
                self.results[pid] = {"status": res["status"], "loss": res.get("loss")}
        # An interrupted point first: it holds a budget's remaining data.
        self.queue.sort(key=lambda q: q["point_id"] not in {p["point_id"] for p in proposed})

    # -- decisions --------------------------------------------------------------------------
    def _room(self) -> int:
        return self.max_points - len(self.proposed) - len(self.queue)

    def _decide(self) -> None:
        """Queue the next points: sizes beyond the edge of a finished, unbracketed budget
        first (its other points are paid for), else the next budget of the plan."""
        for b in self._budgets.values():
            if b.started and not b.settled and self._budget_done(b):
                self._extend(b)
                if self.queue:
                    return
        for b in self._budgets.values():
            if not b.started:
                self._start(b)
                if self.queue:
                    return

    def _points_of(self, b: _Budget) -> list:
        return [p for p in self.proposed.values() if p["budget"] == b.budget]

    def _budget_done(self, b: _Budget) -> bool:
        return all(p["point_id"] in self.results for p in self._points_of(b)) and not any(
            q["budget"] == b.budget for q in self.queue)

    def _ok(self, b: _Budget) -> list:
        return [p for p in self._points_of(b) if self.results[p["point_id"]]["status"] == "ok"]

    def _finished_points(self, b: _Budget) -> tuple:
        """(params, losses) of a budget's points that finished ok."""
        ok = self._ok(b)
        return [p["params"] for p in ok], [self.results[p["point_id"]]["loss"] for p in ok]

    def _parabola(self, b: _Budget) -> Parabola | None:
        """The valley parabola of a finished budget (None while a point runs or with too few sizes)."""
        if not (b.started and self._budget_done(b)):
            return None
        params, loss = self._finished_points(b)
        return valley_parabola(np.log(params), loss) if len(params) else None

    def relative_noise(self) -> float:
        """Relative sd of the loss noise pooled over the finished budgets (`pooled_relative_noise`)."""
        # Cached per state of the record: valley() asks for it at every decision.
        key = (tuple((i, r["status"], r["loss"]) for i, r in self.results.items()), len(self.queue))
        if key != self._noise_key:
            pars = [p for p in map(self._parabola, self._budgets.values()) if p is not None]
            self._noise_key, self._noise = key, pooled_relative_noise(pars)
        return self._noise

    def valley(self, budget: float) -> Valley:
        """The current verdict on `budget` from its finished points."""
        return check_valley(*self._finished_points(self._budgets[budget]), self.relative_noise(),
                            self.vertex_se_target, self.min_sizes_each_side)

    def _extend(self, b: _Budget) -> None:
        valley = self.valley(b.budget)
        if valley.bracketed:
            b.settled = "bracketed"
            self._note(f"budget {b.budget:.3g}: bracketed, N_opt ~ {valley.params_opt:.3g}")
            return
        # Every point of a finished budget has been proposed, so this counts all its additions.
        added = sum(1 for p in self._points_of(b) if p.get("origin") == ORIGIN_EXTENDED)
        room = min(self._room(), self.max_added_per_budget - added)
        tried = {p["size"] for p in self._points_of(b)}
        ok_sizes = [p["size"] for p in self._ok(b)]
        usable = usable_sizes(b.budget, self.sizes, self._batch_tokens(b.budget), self.min_steps)
        new = extension_sizes(valley, ok_sizes, tried, usable, self.sizes, room)
        if not new and valley.fit_bracketed and valley.edge is not None:
            # Bracketed, wanting precision: a size past the other edge serves too.
            valley = replace(valley, edge=LOW if valley.edge == HIGH else HIGH)
            new = extension_sizes(valley, ok_sizes, tried, usable, self.sizes, room)
        if not new:
            limit = (f"{self.max_added_per_budget} sizes added already (max_added_per_budget)"
                     if added >= self.max_added_per_budget else
                     "max_points reached" if self._room() < 1 else
                     "no model size left beyond that edge (the dial's range or min_steps)"
                     if valley.edge else "no direction to extend")
            b.settled = f"not bracketed ({valley.reason}); stopped: {limit}"
            self._note(f"budget {b.budget:.3g}: {b.settled}")
            return
        self._note(f"budget {b.budget:.3g}: {valley.reason}; adding size(s) {new} at the {valley.edge} edge")
        self.queue += [self._point(b.budget, s, ORIGIN_EXTENDED) for s in new]

    def _start(self, b: _Budget) -> None:
        b.started = True
        room = self._room()
        if room < MIN_POINTS_PER_BUDGET:
            for p in b.planned:
                self.skipped[p.point_id] = "max_points reached before this budget started"
            b.settled = "not started: max_points reached"
            self._note(f"budget {b.budget:.3g}: {b.settled}")
            return
        planned = {p.size: p for p in b.planned}
        law = optimum_law(self.bracketed_optima())
        sizes = list(planned)
        if law is not None:
            predicted = math.exp(law[0] + law[1] * math.log(b.budget))
            logs = [math.log(p.params) for p in b.planned]
            centre, span = (max(logs) + min(logs)) / 2, max(logs) - min(logs)
            # Planned sizes that would miss the precision rule there are re-centred with half
            # of them on either side of the prediction: a design balanced about the vertex
            # gives it the smallest standard error for the sizes' span.
            imprecise = self._planned_se(logs, math.log(predicted)) > self.vertex_se_target
            each_side = len(logs) // 2 if imprecise else min(self.min_sizes_each_side, len(logs) // 2)
            if (imprecise or abs(math.log(predicted) - centre) > RECENTRE_TOLERANCE * span
                    or short_of_sizes_each_side([p.params for p in b.planned], predicted, each_side)):
                usable = usable_sizes(b.budget, self.sizes, self._batch_tokens(b.budget), self.min_steps)
                # As many sizes as the plan's fullest budget (a coarse dial can give a budget
                # fewer distinct sizes than asked for).
                count = max(len(x.planned) for x in self._budgets.values())
                sizes = recentred_sizes(b.budget, predicted, [p.params for p in b.planned], usable,
                                        self.sizes, count, each_side) or sizes
            if sorted(sizes) != sorted(planned):
                self._note(
                    f"budget {b.budget:.3g}: re-centred on N_opt = {predicted:.3g} (power law a = {law[1]:.3f} "
                    f"through {len(self.bracketed_optima())} bracketed budgets): sizes {sorted(sizes)} "
                    f"instead of {sorted(planned)}")
        wanted = set(sizes)
        if len(sizes) > room:  # the sizes nearest the centre of the budget's range
            centre = np.median([math.log(self.sizes[s][0]) for s in sizes])
            sizes = sorted(sorted(sizes, key=lambda s: abs(math.log(self.sizes[s][0]) - centre))[:room])
        for s, p in planned.items():
            if s not in sizes:
                self.skipped[p.point_id] = ("max_points reached" if s in wanted else
                                            "re-centred: replaced by sizes around the fitted N_opt")
        self.queue += [asdict(planned[s]) | {"origin": ORIGIN_PLANNED} if s in planned
                       else self._point(b.budget, s, ORIGIN_RECENTRED) for s in sorted(sizes)]

    def _planned_se(self, log_sizes, log_vertex: float) -> float:
        """The vertex standard error (ln N) of a budget not yet started, trained at `log_sizes`
        with its vertex at `log_vertex`, predicted with the curvature and loss level of the
        largest bracketed budget finished so far and the pooled noise; 0 (no prediction)
        before one is finished."""
        done = [b for b in self._budgets.values() if b.budget in self.bracketed_optima()]
        par = self._parabola(max(done, key=lambda b: b.budget)) if done else None
        if par is None:
            return 0.0
        return planned_vertex_se(log_sizes, log_vertex, par.c2, self.relative_noise() * par.mean_loss)

    def _note(self, line: str) -> None:
        """Log a decision once: a search rebuilt from its record (sync) re-judges finished
        budgets and reaches the same verdicts again."""
        if line not in self.log:
            self.log.append(line)

    def bracketed_optima(self) -> dict:
        """{budget: N_opt} of the finished budgets the fit would use (vertex inside)."""
        out = {}
        for b in self._budgets.values():
            if b.started and self._budget_done(b) and self._ok(b):
                v = self.valley(b.budget)
                if v.fit_bracketed:
                    out[b.budget] = v.params_opt
        return out

    def _batch_tokens(self, budget: float):
        """Tokens per optimizer step at `budget`: the plan's, or per size under a batch rule."""
        if self.plan.batch_tokens:
            return self.plan.batch_tokens
        return {s: bt for (b, s), (_, bt) in self.batches.items() if b == budget}

    def _point(self, budget: float, size: int, origin: str) -> dict:
        params, fpt = self.sizes[size]
        batch, batch_tokens = (0, self.plan.batch_tokens) if self.plan.batch_tokens else self.batches[(budget, size)]
        point = sweep_point(point_id(budget, size) + ADDED_ID_SUFFIX, budget, size, params, fpt,
                            steps_for(budget, fpt, batch_tokens), batch_tokens, batch)
        return asdict(point) | {"origin": origin}

    # -- persistence ----------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-safe record of the search (written in the sweep folder as sweep_folder.SEARCH_FILE)."""
        return {
            "max_points": self.max_points,
            "max_added_per_budget": self.max_added_per_budget,
            "min_steps": self.min_steps,
            "vertex_se_target": self.vertex_se_target,
            "min_sizes_each_side": self.min_sizes_each_side,
            "proposed": list(self.proposed.values()),
            "skipped": dict(self.skipped),
            "log": list(self.log),
        }


def size_table(task, plan: SweepPlan, candidate_sizes) -> dict:
    """Model dial -> (params, flops per token) under the plan's conventions, for every
    candidate size (models built on the meta device, as plan_sweep does)."""
    from .plan import _Probe

    probe = _Probe(task, plan.param_convention, plan.flops_convention)
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


def check_search_arguments(plan, sizes, max_points, max_added_per_budget, min_steps) -> tuple:
    """(max_points, max_added_per_budget, min_steps) as plain ints, checked."""
    if not isinstance(plan, SweepPlan):
        raise TypeError(f"BracketSearch(plan=...) needs a SweepPlan, got {type(plan).__name__}.")
    missing = sorted({p.size for p in plan.points} - set(sizes))
    if missing:
        raise ValueError(f"the size table lacks the plan's sizes {missing}: build it with size_table(task, plan, ...).")
    if max_points is not None:  # given to run_sweep
        max_points = checks.integer(
            max_points, "run_sweep", "max_points",
            f"points trained in all, planned ones included, or None for the plan's points plus "
            f"{DEFAULT_MAX_ADDED_PER_BUDGET} per budget", minimum=MIN_POINTS_PER_BUDGET)
    max_added_per_budget = checks.integer(max_added_per_budget, "BracketSearch", "max_added_per_budget",
                                          "0 adds no size", minimum=0)
    min_steps = checks.integer(min_steps, "BracketSearch", "min_steps", "optimizer steps a point needs")
    return max_points, max_added_per_budget, min_steps


def check_rule_arguments(vertex_se_target, min_sizes_each_side) -> tuple:
    """(vertex_se_target, min_sizes_each_side) of the stopping rule as float and int, checked."""
    if not (checks.is_real(vertex_se_target) and vertex_se_target > 0):
        raise ValueError(f"BracketSearch(vertex_se_target={vertex_se_target!r}): needs a number > 0, the standard "
                         f"error of a budget's vertex in natural log of N (default {VERTEX_SE_TARGET}; math.inf "
                         "stops each budget once it is bracketed).")
    min_sizes_each_side = checks.integer(min_sizes_each_side, "BracketSearch", "min_sizes_each_side",
                                         f"sizes wanted on either side of a budget's vertex (default "
                                         f"{MIN_SIZES_EACH_SIDE})", minimum=1)
    return float(vertex_se_target), min_sizes_each_side
