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
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import checks
from .contract import MIN_POINTS_PER_BUDGET, ORIGIN_EXTENDED, ORIGIN_PLANNED, ORIGIN_RECENTRED
from .plan import (
    DEFAULT_CANDIDATE_SIZES,
    DEFAULT_MIN_STEPS,
    SweepPlan,
    check_sizes,
    point_id,
    steps_for,
    sweep_point,
)
from .valley import (
    ASSUMED_RELATIVE_NOISE,
    HIGH,
    LOW,
    MIN_SIZES_EACH_SIDE,
    VERTEX_SE_TARGET,
    Parabola,
    Valley,
    check_valley,
    extension_sizes,
    optimum_law,
    planned_vertex_se,
    pooled_relative_noise,
    recentred_sizes,
    short_of_sizes_each_side,
    batch_table,
    size_table,
    usable_sizes,
    valley_parabola,
)

# Ids of added points: the plan's id of (budget, size) plus this suffix, so an added point
# can never take a planned point's id (nor its trial folder).
ADDED_ID_SUFFIX = "-add"

DEFAULT_MAX_ADDED_PER_BUDGET = 4  # sizes added to one budget beyond the ones it started with
# A budget not yet started keeps its planned sizes while the predicted N_opt lies within
# this fraction of their span (in ln N) of their centre and their vertex there would meet
# VERTEX_SE_TARGET (predicted with the curvature and noise of the budgets finished so far):
# no size has to be added after the budget finishes, when the size would train alone at
# the end of the sweep.
RECENTRE_TOLERANCE = 0.25


# ---------------------------------------------------------------------------------------
# The search: which point next
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BracketSearchOptions:
    """A bracket-seeking sweep, as `run_sweep(task, plan, search=BracketSearchOptions(...))`
    runs it: it starts from the plan, adds sizes where a budget's valley is not bracketed
    and re-centres budgets not yet started on the power law of those that are. A sweep
    resumes the way it started."""

    # Points trained in all, planned ones included; None: the plan's points plus
    # max_added_per_budget per budget.
    max_points: int | None = None
    # Model dial values the search may add, each one model_fn accepts; None: the plan's
    # sizes and plan.DEFAULT_CANDIDATE_SIZES.
    sizes: tuple | None = None
    max_added_per_budget: int = DEFAULT_MAX_ADDED_PER_BUDGET  # sizes added to one budget at most
    vertex_se_target: float = VERTEX_SE_TARGET  # a budget is done at this vertex standard error (ln N)
    min_sizes_each_side: int = MIN_SIZES_EACH_SIDE  # sizes wanted on either side of a budget's vertex

    def __post_init__(self):
        call = "BracketSearchOptions"
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(check_sizes(self.sizes, "sizes", call=call)))
        max_points, added, _ = check_search_arguments(self.max_points, self.max_added_per_budget,
                                                      DEFAULT_MIN_STEPS, call)
        target, each_side = check_rule_arguments(self.vertex_se_target, self.min_sizes_each_side, call)
        for name, value in (("max_points", max_points), ("max_added_per_budget", added),
                            ("vertex_se_target", target), ("min_sizes_each_side", each_side)):
            object.__setattr__(self, name, value)


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
        _check_size_table(self.plan, self.sizes)
        self.max_points, self.max_added_per_budget, self.min_steps = check_search_arguments(
            self.max_points, self.max_added_per_budget, self.min_steps)
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

    @classmethod
    def from_options(cls, plan: SweepPlan, task, options: BracketSearchOptions) -> "BracketSearch":
        """The search run_sweep runs for `options`: every size it may use probed on the meta
        device (`size_table`) before Ray starts, its batches under a batch rule (`batch_table`)."""
        given = DEFAULT_CANDIDATE_SIZES if options.sizes is None else options.sizes
        sizes = size_table(task, plan, sorted(set(given) | {p.size for p in plan}))
        return cls(plan, sizes, max_points=options.max_points, max_added_per_budget=options.max_added_per_budget,
                   vertex_se_target=options.vertex_se_target, min_sizes_each_side=options.min_sizes_each_side,
                   batches=batch_table(task, plan, sizes))

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


def check_search_arguments(max_points, max_added_per_budget, min_steps, call: str = "BracketSearch") -> tuple:
    """(max_points, max_added_per_budget, min_steps) as plain ints, checked (`call`: the
    name the errors give)."""
    if max_points is not None:
        max_points = checks.integer(
            max_points, call, "max_points",
            f"points trained in all, planned ones included, or None for the plan's points plus "
            f"{DEFAULT_MAX_ADDED_PER_BUDGET} per budget", minimum=MIN_POINTS_PER_BUDGET)
    max_added_per_budget = checks.integer(max_added_per_budget, call, "max_added_per_budget",
                                          "0 adds no size", minimum=0)
    min_steps = checks.integer(min_steps, call, "min_steps", "optimizer steps a point needs")
    return max_points, max_added_per_budget, min_steps


def check_rule_arguments(vertex_se_target, min_sizes_each_side, call: str = "BracketSearch") -> tuple:
    """(vertex_se_target, min_sizes_each_side) of the stopping rule as float and int, checked."""
    if not (checks.is_real(vertex_se_target) and vertex_se_target > 0):
        raise ValueError(f"{call}(vertex_se_target={vertex_se_target!r}): needs a number > 0, the standard "
                         f"error of a budget's vertex in natural log of N (default {VERTEX_SE_TARGET}; math.inf "
                         "stops each budget once it is bracketed).")
    min_sizes_each_side = checks.integer(min_sizes_each_side, call, "min_sizes_each_side",
                                         f"sizes wanted on either side of a budget's vertex (default "
                                         f"{MIN_SIZES_EACH_SIDE})", minimum=1)
    return float(vertex_se_target), min_sizes_each_side


def _check_size_table(plan, sizes: dict) -> None:
    if not isinstance(plan, SweepPlan):
        raise TypeError(f"BracketSearch(plan=...) needs a SweepPlan, got {type(plan).__name__}.")
    missing = sorted({p.size for p in plan.points} - set(sizes))
    if missing:
        raise ValueError(f"the size table lacks the plan's sizes {missing}: build it with size_table(task, plan, ...).")
