"""The bracket-seeking search's decisions on small synthetic sweeps (no Ray, no torch)."""

import math

import numpy as np
import pytest

from flops_fit.plan import SweepPlan, SweepPoint, point_id, steps_for
from flops_fit.search import ADDED_ID_SUFFIX, ORIGIN_EXTENDED, ORIGIN_PLANNED, ORIGIN_RECENTRED, BracketSearch
from flops_fit.valley import (
    ASSUMED_RELATIVE_NOISE,
    HIGH,
    LOW,
    MAX_SIZES_PER_STEP,
    NOISE_PRIOR_DOF,
    VERTEX_SE_TARGET,
    check_valley,
    extension_sizes,
    optimum_law,
    pooled_relative_noise,
    recentred_sizes,
    sizes_each_side,
    valley_parabola,
    vertex_se,
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


# A valley of curvature 0.15 nats per (ln N)^2 at loss 3 (Chinchilla's profiles near their
# optimum curve about this much relative to their loss), vertex at N = 1e6.
VERTEX_LOG_N = math.log(1e6)


def parabola_losses(log_offsets, curvature=0.15):
    x = VERTEX_LOG_N + np.asarray(log_offsets, float)
    return np.exp(x), 3.0 + curvature * (x - VERTEX_LOG_N) ** 2


def test_a_noisy_valley_with_sizes_tight_around_its_vertex_is_not_done_until_its_vertex_is_pinned():
    # Five sizes 10 % apart around the vertex: bracketed for the fit, but 1 % loss noise
    # moves a vertex fitted through so narrow a span by far more than the target.
    n, loss = parabola_losses([-0.2, -0.1, 0.0, 0.1, 0.2])
    v = check_valley(n, loss, relative_noise=0.01)
    assert v.fit_bracketed and not v.bracketed and v.edge in (LOW, HIGH)
    assert v.vertex_se > VERTEX_SE_TARGET and "standard error" in v.reason
    # The same valley with a size 1.2 in ln N out on either side: pinned.
    n, loss = parabola_losses([-1.2, -0.2, -0.1, 0.0, 0.1, 0.2, 1.2])
    v = check_valley(n, loss, relative_noise=0.01)
    assert v.bracketed and v.vertex_se < VERTEX_SE_TARGET
    # Less noise pins the narrow one too: the rule reads the noise, not a count of sizes.
    n, loss = parabola_losses([-0.2, -0.1, 0.0, 0.1, 0.2])
    assert check_valley(n, loss, relative_noise=0.0005).bracketed


def test_a_clean_valley_with_one_size_on_one_side_far_enough_is_done():
    n, loss = parabola_losses([-1.5, -1.0, -0.5, 1.0])
    v = check_valley(n, loss)
    assert sizes_each_side(n, v.vertex) == (3, 1)
    assert v.bracketed and v.edge is None and v.params_opt == pytest.approx(1e6, rel=1e-9)
    # The count rule this replaces (two sizes each side) would have wanted one more above.
    assert check_valley(n, loss, each_side=2).edge == HIGH


def test_a_valley_short_of_its_target_gets_a_size_on_its_thinner_side():
    n, loss = parabola_losses([-0.6, -0.4, -0.2, 0.3])
    v = check_valley(n, loss)
    assert not v.bracketed and v.edge == HIGH
    n_all = np.exp(VERTEX_LOG_N + np.array([-0.6, -0.4, -0.2, 0.3, 0.8]))
    sizes = {s: (float(p), 6.0 * p) for s, p in enumerate(n_all, 1)}
    assert extension_sizes(v, [1, 2, 3, 4], {1, 2, 3, 4}, list(sizes), sizes, room=10) == [5]


def test_vertex_se_is_the_spread_of_refitted_vertices():
    # Monte Carlo: refit the parabola to 20,000 noisy draws of the same design.
    rng = np.random.default_rng(0)
    x = np.array([-1.0, -0.5, 0.0, 0.4, 1.1])
    c0, c1, c2, sigma = 3.0, 0.06, 0.15, 0.01
    design = np.stack([np.ones_like(x), x, x * x], 1)
    y = design @ [c0, c1, c2] + sigma * rng.standard_normal((20_000, x.size))
    coef = np.linalg.lstsq(design, y.T, rcond=None)[0]
    vertices = -coef[1] / (2 * coef[2])
    xtx_inv = np.linalg.inv(design.T @ design)
    assert vertex_se(c1, c2, xtx_inv, sigma) == pytest.approx(vertices.std(), rel=0.05)
    assert vertex_se(c1, -c2, xtx_inv, sigma) == math.inf  # no vertex to locate
    assert vertex_se(c1, c2, xtx_inv, 2 * sigma) == pytest.approx(2 * vertex_se(c1, c2, xtx_inv, sigma))


def test_the_noise_is_pooled_from_the_residuals_and_the_assumption_fills_in_without_them():
    four_n, four_loss = parabola_losses([-1.0, -0.5, 0.0, 0.5])
    three = valley_parabola(np.log(four_n[:3]), four_loss[:3])
    assert three.dof == 0 and pooled_relative_noise([three]) == ASSUMED_RELATIVE_NOISE
    rng = np.random.default_rng(1)
    noisy = []
    for _ in range(200):  # 200 budgets of 6 sizes with 3 % relative noise: the data win
        n, loss = parabola_losses([-1.0, -0.6, -0.2, 0.2, 0.6, 1.0])
        noisy.append(valley_parabola(np.log(n), loss * np.exp(0.03 * rng.standard_normal(n.size))))
    assert pooled_relative_noise(noisy) == pytest.approx(0.03, rel=0.1)
    clean = valley_parabola(np.log(four_n), four_loss)
    assert clean.dof == 1 and clean.rss == pytest.approx(0, abs=1e-20)
    # One clean residual dof beside the assumption's NOISE_PRIOR_DOF pulls the estimate down.
    assert pooled_relative_noise([clean]) == pytest.approx(
        ASSUMED_RELATIVE_NOISE * math.sqrt(NOISE_PRIOR_DOF / (NOISE_PRIOR_DOF + 1)))


def test_the_search_and_the_fit_see_the_same_vertex():
    from flops_fit.fitting import budget_optima
    import pandas as pd

    profiles = [parabola_losses([-1.5, -1.0, -0.5, 1.0]), parabola_losses([0.5, 1.0, 1.5, 2.0]),
                (np.array([1e4, 2e4, 4e4, 8e4, 1.6e5, 1e8]), np.array([3.1, 2.95, 2.9, 2.93, 3.05, 2.95]))]
    for n, loss in profiles:
        rec = budget_optima(pd.DataFrame({"budget": 1.0, "params": n, "loss": loss}), "parabola", 6.0).iloc[0]
        v = check_valley(n, loss)
        assert v.fit_bracketed == rec.bracketed
        assert v.params_opt == pytest.approx(rec.params_opt, rel=1e-9)


@pytest.mark.parametrize("profile", ["linear", "constant", "nearly straight"])
def test_a_flat_profile_is_a_decision_not_an_exception(profile):
    # Losses straight in ln N leave a curvature of zero or rounding noise, and a vertex at
    # ln N ~ +-1e300 (whose N overflows a float): the search goes towards the lower end.
    n = np.array([1e4, 2e4, 4e4, 8e4, 1.6e5])
    loss = {"linear": 3.0 - 0.05 * np.log(n), "constant": np.full(n.size, 3.0),
            "nearly straight": 3.0 - 0.05 * np.log(n) + 1e-6 * np.log(n) ** 2}[profile]
    v = check_valley(n, loss)
    assert not v.bracketed and v.reason
    assert n.min() <= v.params_opt <= n.max()
    assert v.edge == (LOW if profile == "constant" else HIGH)
    assert v.vertex_se > 1e6 * VERTEX_SE_TARGET


def test_a_sweep_of_flat_profiles_ends_with_every_budget_settled_and_explained():
    plan = make_plan(BUDGETS[:2], prior_sizes(20))
    search = BracketSearch(plan, SIZES)
    while (p := search.next_point()) is not None:
        search.record(p["point_id"], "ok", 3.0 - 0.05 * math.log(p["params"]) + 1e-9 * math.log(p["params"]) ** 2)
    assert search.finished and not search.bracketed_optima()
    assert all(b.settled.startswith("not bracketed") for b in search._budgets.values())


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
    from flops_fit.valley import usable_sizes

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


def test_a_budget_whose_planned_sizes_would_miss_the_se_target_is_recentred_half_each_side():
    # 3e13's plan (dial 9-12) is centred close to the law's N_opt (within RECENTRE_TOLERANCE
    # of its span) but only size 9 lies below it: the vertex's standard error there would
    # miss the target, and a size added after the budget finished would train alone at the
    # end of the sweep. Re-centred before it starts, two sizes lie on either side.
    late = 3e13
    plan = make_plan([1e12, 3e12, 1e13, late], lambda b: around_optimum(b, 1, 3) if b == late else around_optimum(b))
    assert [p.size for p in plan.points if p.budget == late] == [9, 10, 11, 12]
    search = BracketSearch(plan, SIZES)
    run(search, concurrency=1)  # one slot: the late budget starts after the law is known
    started = sorted(p["size"] for p in search.proposed.values()
                     if p["budget"] == late and p["origin"] != ORIGIN_EXTENDED)
    assert started == around_optimum(late)
    assert any(line.startswith(f"budget {late:.3g}: re-centred") for line in search.log), search.log
    assert bracketed_budgets(search) == set(plan.budgets) and search.valley(late).bracketed
    # The count rule this replaces (two each side, no precision target) re-centred it too.
    count_rule = BracketSearch(plan, SIZES, vertex_se_target=math.inf, min_sizes_each_side=2)
    run(count_rule, concurrency=1)
    assert sorted(p["size"] for p in count_rule.proposed.values() if p["budget"] == late) == around_optimum(late)


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
    with pytest.raises(ValueError, match="vertex_se_target"):
        BracketSearch(plan, SIZES, vertex_se_target=0)
    with pytest.raises(ValueError, match="vertex_se_target"):
        BracketSearch(plan, SIZES, vertex_se_target=float("nan"))
    with pytest.raises(ValueError, match="min_sizes_each_side"):
        BracketSearch(plan, SIZES, min_sizes_each_side=0)


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


# --- the stopping rule's bias (benchmarks/search_bias.py is the full simulation) -------------

SIMULATED_SWEEPS = 150  # Monte-Carlo standard error of the mean exponent ~0.0017
BIAS_TOLERANCE = 0.005  # ~3 Monte-Carlo standard errors; the count rule it replaced: +0.006


def test_the_default_rule_leaves_the_n_opt_exponent_unbiased_at_a_good_prior():
    plan = make_plan(BUDGETS, prior_sizes(20))
    slopes = []
    for i in range(SIMULATED_SWEEPS):
        search = BracketSearch(plan, SIZES)
        run(search, noise=0.01, seed=i)
        slopes.append(optimum_law({b: search.valley(b).params_opt for b in bracketed_budgets(search)})[1])
    assert np.mean(slopes) == pytest.approx(A_OPT, abs=BIAS_TOLERANCE)
