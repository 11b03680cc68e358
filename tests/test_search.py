"""The bracket-seeking search's decisions on small synthetic sweeps (no Ray, no torch)."""

import math

import numpy as np
import pytest

from flops_fit.plan import SweepPlan, SweepPoint, point_id
from flops_fit.search import (
    ADDED_ID_SUFFIX,
    HIGH,
    LOW,
    MAX_SIZES_PER_STEP,
    ORIGIN_EXTENDED,
    ORIGIN_PLANNED,
    ORIGIN_RECENTRED,
    BracketSearch,
    check_valley,
    extension_sizes,
    optimum_law,
    recentred_sizes,
    steps_for,
)

# Chinchilla's fit (Hoffmann et al. 2022, eq. 10): N_opt = G (C/6)^a with a = 0.452.
LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
A_OPT = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
BATCH_TOKENS = 1024
DIAL = range(1, 41)


def params_of(size):
    """A GPT-like dial: N grows as the cube of the size."""
    return 768 * size**3


SIZES = {s: (params_of(s), 6.0 * params_of(s)) for s in DIAL}


def law_loss(params, tokens, noise=0.0, rng=None):
    clean = LAW["E"] + LAW["A"] / params ** LAW["alpha"] + LAW["B"] / tokens ** LAW["beta"]
    return clean * (math.exp(noise * rng.standard_normal()) if noise else 1.0)


def true_n_opt(budget):
    g = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))
    return g * (budget / 6) ** A_OPT


def make_plan(budgets, sizes_at):
    """A plan of `sizes_at(budget)` dial values per budget, 6N FLOPs, whole steps."""
    points = []
    for b in budgets:
        for s in sizes_at(b):
            params, fpt = SIZES[s]
            steps = steps_for(b, fpt, BATCH_TOKENS)
            points.append(SweepPoint(point_id(b, s), b, s, params, fpt, steps, steps * BATCH_TOKENS,
                                     fpt * steps * BATCH_TOKENS))
    return SweepPlan(tuple(points), BATCH_TOKENS, "non_embedding", "6N")


def prior_sizes(tokens_per_param, count=5, spread=4.0):
    """The dial values nearest a log grid around the prior optimum, as plan_sweep picks."""
    def at(budget):
        n_star = math.sqrt(budget / (6 * tokens_per_param))
        out = []
        for x in np.linspace(-1, 1, count):
            target = math.log(n_star) + x * math.log(spread)
            best = min(DIAL, key=lambda s: abs(math.log(params_of(s)) - target))
            if best not in out:
                out.append(best)
        return sorted(out)
    return at


def run(search, concurrency=2, noise=0.0, seed=0, stop_after=None):
    """Drive the search as Tune would: `concurrency` slots, the oldest running point ends
    first. Returns the point ids in the order they were proposed."""
    rng = np.random.default_rng(seed)
    running, order = [], []
    while True:
        while len(running) < concurrency:
            p = search.next_point()
            if p is None:
                break
            running.append(p)
            order.append(p["point_id"])
        if not running:
            assert search.finished
            return order
        if stop_after is not None and len(search.results) >= stop_after:
            return order
        p = running.pop(0)
        search.record(p["point_id"], "ok", law_loss(p["params"], p["tokens"], noise, rng))


def bracketed_budgets(search):
    return {b for b in search.plan.budgets if search.valley(b).fit_bracketed}


# --- one budget's verdict -----------------------------------------------------------------


def test_valley_with_its_lowest_loss_at_the_largest_size_is_extended_upwards():
    n = np.array([1e4, 2e4, 4e4, 8e4])
    v = check_valley(n, [3.2, 3.0, 2.9, 2.85])
    assert not v.bracketed and v.edge == HIGH


def test_valley_with_its_lowest_loss_at_the_smallest_size_is_extended_downwards():
    n = np.array([1e4, 2e4, 4e4, 8e4])
    v = check_valley(n, [2.85, 2.9, 3.0, 3.2])
    assert not v.bracketed and v.edge == LOW


def test_a_valley_with_an_inner_minimum_and_its_vertex_inside_is_bracketed():
    n = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    v = check_valley(n, [3.1, 2.95, 2.9, 2.93, 3.05])
    assert v.bracketed and v.fit_bracketed and v.edge is None
    assert 2e4 < v.params_opt < 8e4


def test_a_vertex_inside_with_the_lowest_loss_at_an_edge_still_gets_one_more_size():
    # The parabola's vertex (the fit's rule) is inside, but the last size is the best one.
    n = np.array([1e4, 2e4, 4e4, 8e4])
    loss = [3.0, 2.9, 2.88, 2.879]
    v = check_valley(n, loss)
    assert v.fit_bracketed and not v.bracketed and v.edge == HIGH
    sizes = {s: (float(p), 6.0 * p) for s, p in enumerate([1e4, 2e4, 4e4, 8e4, 1.6e5, 3.2e5], 1)}
    assert extension_sizes(v, [1, 2, 3, 4], {1, 2, 3, 4}, list(sizes), sizes, room=10) == [5]


def test_a_vertex_with_one_size_beyond_it_wants_a_second_there():
    # Bracketed for the fit (vertex inside, lowest loss inside), but only the largest size
    # lies above the vertex: noise at that one point moves the vertex a long way.
    n = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    v = check_valley(n, [3.4, 3.1, 2.95, 2.9, 2.93])
    assert v.fit_bracketed and not v.bracketed and v.edge == HIGH
    assert 8e4 < v.params_opt < 1.6e5
    sizes = {s: (float(p), 6.0 * p) for s, p in enumerate([1e4, 2e4, 4e4, 8e4, 1.6e5, 3.2e5], 1)}
    assert extension_sizes(v, [1, 2, 3, 4, 5], {1, 2, 3, 4, 5}, list(sizes), sizes, room=10) == [6]


def test_two_finished_sizes_point_to_their_lower_end():
    assert check_valley([1e4, 2e4], [3.0, 2.9]).edge == HIGH
    assert check_valley([1e4, 2e4], [2.9, 3.0]).edge == LOW
    assert check_valley([1e4], [2.9]).edge is None


# --- how many sizes, and which -------------------------------------------------------------


def one_sided(budget, sizes):
    """A valley sampled below its optimum at `budget` (law losses at these dial values)."""
    n = [params_of(s) for s in sizes]
    return check_valley(n, [law_loss(params_of(s), budget / (6 * params_of(s))) for s in sizes])


def test_added_sizes_are_spaced_like_the_budgets_own_and_reach_past_the_vertex():
    budget = 1e14  # N_opt ~ 1.3e6: dial ~12
    v = one_sided(budget, [2, 3, 4, 5, 6])
    assert v.edge == HIGH and v.vertex > params_of(6)
    new = extension_sizes(v, [2, 3, 4, 5, 6], {2, 3, 4, 5, 6}, list(DIAL), SIZES, room=10)
    assert len(new) == MAX_SIZES_PER_STEP  # the vertex is far: capped per step
    assert new == sorted(new) and min(new) > 6
    # Spacing like the budget's own (about ln(6/5)*3 .. ln(3/2)*3 per step in ln N).
    gaps = np.diff(np.log([params_of(s) for s in [6, *new]]))
    assert np.all(gaps > 0.3) and np.all(gaps < 1.5)


def test_sizes_near_the_vertex_need_fewer_additions():
    budget = 1e13
    v = one_sided(budget, [4, 5, 6, 7])  # N_opt ~ 4.5e5: dial ~8.3, just past the edge
    new = extension_sizes(v, [4, 5, 6, 7], {4, 5, 6, 7}, list(DIAL), SIZES, room=10)
    assert 1 <= len(new) <= 2 and min(new) == 8
    assert math.log(params_of(max(new))) > math.log(true_n_opt(budget))


def test_room_tried_sizes_and_the_dial_limit_the_additions():
    v = one_sided(1e14, [2, 3, 4, 5, 6])
    one = extension_sizes(v, [2, 3, 4, 5, 6], {2, 3, 4, 5, 6}, list(DIAL), SIZES, room=1)
    assert len(one) == 1 and one[0] > 6
    tried = {2, 3, 4, 5, 6, *one}  # tried and failed: not again
    assert one[0] not in extension_sizes(v, [2, 3, 4, 5, 6], tried, list(DIAL), SIZES, room=5)
    assert extension_sizes(v, [2, 3, 4, 5, 6], {2, 3, 4, 5, 6}, [1, 2, 3, 4, 5, 6], SIZES, room=5) == []


def test_min_steps_bounds_the_largest_size_of_a_budget():
    from flops_fit.search import usable_sizes

    budget = 1e11
    usable = usable_sizes(budget, SIZES, BATCH_TOKENS, min_steps=20)
    assert usable and all(steps_for(budget, SIZES[s][1], BATCH_TOKENS) >= 20 for s in usable)
    assert steps_for(budget, SIZES[max(usable) + 1][1], BATCH_TOKENS) < 20


# --- re-centring ----------------------------------------------------------------------------


def test_the_optimum_law_through_two_budgets_predicts_the_third():
    optima = {1e12: true_n_opt(1e12), 1e13: true_n_opt(1e13)}
    log_k, a = optimum_law(optima)
    assert a == pytest.approx(A_OPT, abs=1e-9)
    assert math.exp(log_k + a * math.log(1e14)) == pytest.approx(true_n_opt(1e14), rel=1e-9)
    assert optimum_law({1e12: 1e5}) is None


def test_recentred_sizes_surround_the_prediction_with_the_plans_span():
    planned = [params_of(s) for s in (2, 3, 4, 5, 6)]
    sizes = recentred_sizes(1e14, true_n_opt(1e14), planned, list(DIAL), SIZES)
    assert len(sizes) == 5
    logs = np.log([params_of(s) for s in sizes])
    assert logs.min() < math.log(true_n_opt(1e14)) < logs.max()
    assert logs.max() - logs.min() == pytest.approx(math.log(planned[-1] / planned[0]), rel=0.35)


# --- whole searches -------------------------------------------------------------------------

BUDGETS = [1e12, 3e12, 1e13, 3e13, 1e14]


def test_a_prior_off_by_40x_is_bracketed_everywhere_with_few_extra_points():
    plan = make_plan(BUDGETS, prior_sizes(300))
    static = make_plan(BUDGETS, prior_sizes(300))
    search = BracketSearch(plan, SIZES, max_points=35)
    order = run(search, noise=0.01)
    assert len(order) == len(set(order)) <= 35
    assert bracketed_budgets(search) == set(BUDGETS)
    origins = {p["origin"] for p in search.proposed.values()}
    assert ORIGIN_EXTENDED in origins and ORIGIN_RECENTRED in origins
    # Added points have ids of their own, never a planned point's.
    planned_ids = {p.point_id for p in static.points}
    for p in search.proposed.values():
        assert (p["point_id"] in planned_ids) == (p["origin"] == ORIGIN_PLANNED)
        if p["origin"] != ORIGIN_PLANNED:
            assert p["point_id"] == point_id(p["budget"], p["size"]) + ADDED_ID_SUFFIX
    # Every planned point is trained or skipped with a reason.
    assert planned_ids == ({i for i in search.proposed if i in planned_ids} | set(search.skipped))
    # The power law through the search's optima is close to the law's.
    optima = {b: search.valley(b).params_opt for b in BUDGETS}
    assert optimum_law(optima)[1] == pytest.approx(A_OPT, abs=0.03)


def test_the_first_budgets_start_as_planned_and_later_ones_are_recentred():
    plan = make_plan(BUDGETS, prior_sizes(300))
    search = BracketSearch(plan, SIZES)
    run(search, concurrency=1)  # one slot: every decision sees all earlier results
    first = [p for p in search.proposed.values() if p["budget"] == BUDGETS[0]]
    assert {p["origin"] for p in first} == {ORIGIN_PLANNED, ORIGIN_EXTENDED}
    last = [p for p in search.proposed.values() if p["budget"] == BUDGETS[-1]]
    assert ORIGIN_RECENTRED in {p["origin"] for p in last}
    # Re-centred on the law's optimum, the last budget needs no extension.
    assert ORIGIN_EXTENDED not in {p["origin"] for p in last}
    assert any("re-centred" in line for line in search.log)


def around_optimum(budget, below=2, above=2):
    """The dial values next to the law's N_opt at `budget`: `below` under it, `above` over it."""
    k = max(s for s in DIAL if params_of(s) < true_n_opt(budget))
    return list(range(k - below + 1, k + above + 1))


def test_a_budget_with_one_planned_size_below_the_predicted_optimum_is_recentred_to_two():
    # 3e13's plan (dial 9-12) is centred close to the law's N_opt (within RECENTRE_TOLERANCE
    # of its span) but only size 9 lies below it: the finished budget would need a size added,
    # which trains alone at the end of the sweep. Re-centred before it starts, it needs none.
    late = 3e13
    plan = make_plan([1e12, 3e12, 1e13, late], lambda b: around_optimum(b, 1, 3) if b == late else around_optimum(b))
    assert [p.size for p in plan.points if p.budget == late] == [9, 10, 11, 12]
    search = BracketSearch(plan, SIZES)
    run(search, concurrency=1)  # one slot: the late budget starts after the law is known
    trained = sorted(p["size"] for p in search.proposed.values() if p["budget"] == late)
    assert trained == around_optimum(late)
    assert any(line.startswith(f"budget {late:.3g}: re-centred") for line in search.log), search.log
    assert ORIGIN_EXTENDED not in {p["origin"] for p in search.proposed.values()}
    assert bracketed_budgets(search) == set(plan.budgets) and search.valley(late).bracketed


def test_a_good_prior_trains_exactly_the_plan():
    plan = make_plan(BUDGETS, lambda b: sorted({max(1, round((true_n_opt(b) / 768) ** (1 / 3) * f))
                                                for f in (0.55, 0.75, 1.0, 1.3, 1.75)}))
    search = BracketSearch(plan, SIZES)
    order = run(search, concurrency=1)
    assert sorted(order) == sorted(p.point_id for p in plan.points)
    assert not search.skipped


def test_max_added_per_budget_zero_adds_nothing_and_says_why():
    plan = make_plan(BUDGETS[:2], prior_sizes(300))
    search = BracketSearch(plan, SIZES, max_added_per_budget=0)
    order = run(search)
    assert sorted(order) == sorted(p.point_id for p in plan.points)
    assert any("max_added_per_budget" in line for line in search.log)


def test_max_points_bounds_the_search_and_skips_budgets_it_cannot_start():
    plan = make_plan(BUDGETS, prior_sizes(300))
    search = BracketSearch(plan, SIZES, max_points=12)
    order = run(search)
    assert len(order) <= 12
    assert search.skipped and all("max_points" in why for why in search.skipped.values())


def test_bad_search_arguments_are_refused_before_any_compute():
    plan = make_plan(BUDGETS[:1], prior_sizes(300))
    with pytest.raises(ValueError, match="max_points"):
        BracketSearch(plan, SIZES, max_points=2)
    with pytest.raises(ValueError, match="max_added_per_budget"):
        BracketSearch(plan, SIZES, max_added_per_budget=-1)
    with pytest.raises(ValueError, match="size table lacks"):
        BracketSearch(plan, {1: SIZES[1]})


# --- resume ---------------------------------------------------------------------------------


def test_a_search_rebuilt_from_its_record_continues_without_training_a_point_twice():
    plan = make_plan(BUDGETS, prior_sizes(300))
    first = BracketSearch(plan, SIZES, max_points=35)
    run(first, noise=0.01, stop_after=11)  # killed: 11 finished, some running
    state = first.state()
    running = [i for i in first.proposed if i not in first.results]
    assert running
    finished = {i: r for i, r in first.results.items()}

    again = BracketSearch(plan, SIZES, max_points=35)
    again.sync(state["proposed"], finished)
    proposed_again = []
    while True:  # the interrupted points come back first, under their own ids
        p = again.next_point()
        proposed_again.append(p["point_id"])
        if len(proposed_again) == len(running):
            break
    assert proposed_again == running
    for pid in proposed_again:
        p = again.proposed[pid]
        again.record(pid, "ok", law_loss(p["params"], p["tokens"]))
    order = run(again, noise=0.01, seed=1)
    every = list(finished) + proposed_again + order
    assert len(every) == len(set(every)) <= 35
    assert bracketed_budgets(again) == set(BUDGETS)


def test_sizes_added_before_a_restart_count_against_max_added_per_budget():
    plan = make_plan(BUDGETS[:1], prior_sizes(300))
    first = BracketSearch(plan, SIZES, max_points=20, max_added_per_budget=1)
    run(first, concurrency=1, stop_after=len(plan))  # killed while its one added size trains
    [running] = first.live
    assert first.proposed[running]["origin"] == ORIGIN_EXTENDED

    again = BracketSearch(plan, SIZES, max_points=20, max_added_per_budget=1)
    again.sync(first.state()["proposed"], first.results)
    run(again, concurrency=1)
    added = [p for p in again.proposed.values() if p["origin"] == ORIGIN_EXTENDED]
    assert len(added) == 1 and "max_added_per_budget" in again.log[-1]
