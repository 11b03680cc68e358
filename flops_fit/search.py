"""Bracket-seeking sweeps: decide which sweep points to train next (pure; never imports ray).

A static IsoFLOP plan centres each budget's sizes on a prior tokens-per-parameter ratio;
when the prior is off (at small scale, or for a new architecture, by up to 10x) a budget's
smallest or largest model is its best one, the parabola's vertex lies outside the sampled
sizes, and the fit has to drop the budget (Hoffmann et al. 2022, Approach 2, needs the
minimum inside each IsoFLOP profile). `BracketSearch` closes that loop:

1. Budgets start in plan order from the plan's sizes.
2. When every point of a budget has finished, its valley is checked with the fit's own
   rule (`fitting.budget_optima`: vertex of a parabola in ln N near the lowest point) and the
   edge rule (lowest loss at the smallest or largest size), and wants two sizes on either
   side of the vertex. If any fails, sizes are added beyond that edge, spaced like the budget's own sizes and reaching one step past
   the extrapolated vertex, until the valley is bracketed or a limit is hit: sizes per
   budget, the model dial's range, `min_steps` optimizer steps.
3. Budgets not yet started are re-centred on N_opt(C) predicted by the power law through
   the bracketed budgets' optima, once there are two.
4. `max_points` bounds the points trained in all.

Every point it proposes carries `origin` (planned, extended, re-centred). Its state is the
points it proposed plus their results, so it is rebuilt from a sweep folder after the
driver was killed (see `searcher.py` for the Ray Tune side).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from . import checks
from . import flops as F
from .fitting import MIN_POINTS_PER_BUDGET, budget_optima
from .contract import ORIGIN_PLANNED
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
SIZES_WITHOUT_VERTEX = 2  # no usable vertex (concave or too few sizes): two sizes past the edge
# A budget not yet started keeps its planned sizes while the predicted N_opt lies within
# this fraction of their span (in ln N) of their centre, with as many of them on either side
# of it as a finished budget needs (MIN_SIZES_EACH_SIDE, or half its sizes where it has
# fewer than twice that): they bracket it with room to spare, and no size has to be added
# after the budget finishes, when the size would train alone at the end of the sweep.
RECENTRE_TOLERANCE = 0.25
# Budgets needed for a power law N_opt = k C^a through the bracketed optima (two points
# give a line; the fit itself needs fitting.MIN_BUDGETS for a line with a residual).
MIN_BUDGETS_TO_RECENTRE = 2

# Sizes wanted on each side of a budget's vertex before the search stops adding (the fit
# needs one). With one, loss noise that moves the vertex towards the sampled side ends the
# search early while noise the other way extends it: in simulated dry runs of Chinchilla's
# law (1 % noise) that biased the N_opt exponent by +0.011; two removed the bias and cut
# its spread from 0.026 to 0.017 for ~0.4 more points per sweep (see tests/test_search.py).
MIN_SIZES_EACH_SIDE = 2

LOW, HIGH = "low", "high"


# ---------------------------------------------------------------------------------------
# Decisions (pure functions on small tables)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valley:
    """The verdict on one budget's finished points.

    bracketed: the fit will use this budget (vertex inside the sampled sizes), its
        lowest loss is not at an edge, and MIN_SIZES_EACH_SIDE sizes lie on either side of
        the vertex; edge: "low" / "high" / None, where to add sizes;
    params_opt: N at the vertex (or the lowest point without one); vertex: N at the
        parabola's vertex when the parabola opens upward, else NaN; reason: why not.
    fit_bracketed: the fit's own verdict (vertex inside), used for re-centring.
    """

    bracketed: bool
    edge: str | None
    params_opt: float
    vertex: float
    reason: str
    fit_bracketed: bool


def check_valley(params, loss) -> Valley:
    """Judge one budget from its finished points (params in parameters, loss in nats per
    token; failed or diverged points left out by the caller)."""
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
    import pandas as pd

    rec = budget_optima(pd.DataFrame({"budget": 1.0, "params": params, "loss": loss}), "parabola",
                        F.FLOPS_PER_PARAM_PER_TOKEN).iloc[0]
    upward = np.isfinite(rec.c2) and rec.c2 > 0
    vertex = float(rec.params_opt) if upward else math.nan
    if rec.bracketed and at_edge is None:
        below, above = sizes_each_side(params, rec.params_opt)
        if min(below, above) < MIN_SIZES_EACH_SIDE:
            # One size beyond the vertex pins it poorly: add one more on that side.
            edge = LOW if below < above else HIGH
            return Valley(False, edge, float(rec.params_opt), vertex,
                          f"only {min(below, above)} size {'below' if edge == LOW else 'above'} the vertex", True)
        return Valley(True, None, float(rec.params_opt), vertex, "", True)
    if rec.bracketed:  # vertex inside, yet the best point is the first or last one sampled
        return Valley(False, at_edge, float(rec.params_opt), vertex,
                      f"lowest loss at the {'smallest' if at_edge == LOW else 'largest'} size", True)
    if upward:  # the vertex is outside: go towards it
        edge = HIGH if vertex > params[j] else LOW
    elif at_edge is not None:
        edge = at_edge
    else:  # concave with an inner minimum (noise in a flat valley): follow the lower end
        edge = LOW if loss[np.argmin(params)] < loss[np.argmax(params)] else HIGH
    return Valley(False, edge, float(rec.params_opt), vertex, str(rec.reason), False)


def sizes_each_side(params, params_opt: float) -> tuple[int, int]:
    """(how many of the model sizes `params` lie below `params_opt`, how many at or above
    it), all in parameters: the one count behind every each-side rule of the search."""
    below = sum(1 for n in params if n < params_opt)
    return below, len(params) - below


def short_of_sizes_each_side(params, params_opt: float, each_side: int) -> bool:
    """Whether fewer than `each_side` of the model sizes `params` (parameters) lie below
    `params_opt`, or fewer than that at or above it."""
    return min(sizes_each_side(params, params_opt)) < each_side


def usable_sizes(budget, sizes: dict, batch_tokens: int, min_steps: int) -> list:
    """Dial values that can train at `budget`: at least `min_steps` optimizer steps."""
    return sorted(s for s, (_, fpt) in sizes.items() if steps_for(budget, fpt, batch_tokens) >= min_steps)


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
    tokens_per_param = budget / (F.FLOPS_PER_PARAM_PER_TOKEN * params_pred**2)
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
    budget; min_steps: optimizer steps a point needs (as plan_sweep's).
    """

    plan: SweepPlan
    sizes: dict
    max_points: int | None = None
    max_added_per_budget: int = DEFAULT_MAX_ADDED_PER_BUDGET
    min_steps: int = DEFAULT_MIN_STEPS
    proposed: dict = field(default_factory=dict)  # point id -> point dict (with origin), in order
    results: dict = field(default_factory=dict)  # point id -> {"status", "loss"}
    queue: list = field(default_factory=list)  # point dicts decided, not yet proposed
    skipped: dict = field(default_factory=dict)  # planned point id -> why it is not trained
    log: list = field(default_factory=list)  # one line per decision, for people

    def __post_init__(self):
        self.max_points, self.max_added_per_budget, self.min_steps = check_search_arguments(
            self.plan, self.sizes, self.max_points, self.max_added_per_budget, self.min_steps)
        if self.max_points is None:
            self.max_points = len(self.plan) + self.max_added_per_budget * len(self.plan.budgets)
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

    def valley(self, budget: float) -> Valley:
        """The current verdict on `budget` from its finished points."""
        ok = self._ok(self._budgets[budget])
        return check_valley([p["params"] for p in ok], [self.results[p["point_id"]]["loss"] for p in ok])

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
        usable = usable_sizes(b.budget, self.sizes, self.plan.batch_tokens, self.min_steps)
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
            each_side = min(MIN_SIZES_EACH_SIDE, len(logs) // 2)
            if (abs(math.log(predicted) - centre) > RECENTRE_TOLERANCE * span
                    or short_of_sizes_each_side([p.params for p in b.planned], predicted, each_side)):
                usable = usable_sizes(b.budget, self.sizes, self.plan.batch_tokens, self.min_steps)
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

    def _point(self, budget: float, size: int, origin: str) -> dict:
        params, fpt = self.sizes[size]
        point = sweep_point(point_id(budget, size) + ADDED_ID_SUFFIX, budget, size, params, fpt,
                            steps_for(budget, fpt, self.plan.batch_tokens), self.plan.batch_tokens)
        return asdict(point) | {"origin": origin}

    # -- persistence ----------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-safe record of the search (written in the sweep folder as results.SEARCH_FILE)."""
        return {
            "max_points": self.max_points,
            "max_added_per_budget": self.max_added_per_budget,
            "min_steps": self.min_steps,
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
