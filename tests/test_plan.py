"""IsoFLOP planning: parameter conventions, budget arithmetic, size choice, JSON, validation.

Models are only ever built on the meta device here, so these tests stay fast whatever the
sizes; the corpus is a dozen small text files under tmp_path.
"""

import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from flops_fit.flops import count_params
from flops_fit.models import gpt, lm_loss
from flops_fit.plan import SweepPlan, plan_sweep, point_id
from flops_fit.task import Task

SEQ_LEN = 128  # gpt()'s context length; corpus windows must match it
VOCAB = 256  # gpt()'s byte vocabulary
ASPECT = 16  # gpt(): n_embd = 16 * size
BATCH_SIZE = 4  # samples per step: small, so small budgets still give many steps
BATCH_TOKENS = BATCH_SIZE * SEQ_LEN


def meta_gpt(size):
    with torch.device("meta"):
        return gpt(size)


@pytest.fixture
def task(corpus):
    return Task(gpt, corpus, lm_loss, tokens_per_sample=SEQ_LEN, batch_size=BATCH_SIZE)


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("convention, key", [("non_embedding", "non_embedding"), ("all", "total")])
def test_params_are_counted_under_the_convention(task, convention, key):
    plan = plan_sweep(task, [1e12], sizes=[1, 2, 3], param_convention=convention)
    for p in plan:
        model = meta_gpt(p.size)
        # the generic counter and the GPT's analytic, per-component count agree
        assert p.params == count_params(model, convention) == model.param_counts()[key]


def test_conventions_differ_by_exactly_the_embedding_tables(task):
    kaplan = plan_sweep(task, [1e12], sizes=[1, 2, 3])
    chinchilla = plan_sweep(task, [1e12], sizes=[1, 2, 3], param_convention="all")
    for k, c in zip(kaplan, chinchilla):
        d = ASPECT * k.size
        assert c.params - k.params == (VOCAB + SEQ_LEN) * d  # wte + wpe
        # 6N FLOPs follow N: the larger N of "all" means fewer tokens for the same budget
        assert c.flops_per_token == 6 * c.params and c.tokens < k.tokens


# --- budget arithmetic --------------------------------------------------------------------


def test_tokens_are_whole_steps_that_spend_the_budget(task):
    plan = plan_sweep(task, [3e11, 1e11, 1e12], sizes=[4, 1, 3, 2])
    assert len(plan) == 12
    # sorted by budget, then size, whatever order they were given in
    assert [(p.budget, p.size) for p in plan] == sorted((p.budget, p.size) for p in plan)
    assert plan.budgets == [1e11, 3e11, 1e12]
    for p in plan:
        assert p.flops_per_token == 6 * p.params
        assert p.tokens == p.steps * BATCH_TOKENS
        assert p.flops == p.tokens * p.flops_per_token
        step_flops = p.flops_per_token * BATCH_TOKENS
        # rounding to whole optimizer steps misses the budget by at most half a step
        assert abs(p.flops - p.budget) <= step_flops / 2
    assert plan.total_flops == pytest.approx(sum(p.flops for p in plan), rel=1e-15)


def test_point_ids_are_deterministic_and_distinct(task):
    first = plan_sweep(task, [1e11, 1e12], sizes=[1, 2, 3])
    again = plan_sweep(task, [1e12, 1e11], sizes=[3, 2, 1])
    ids = [p.point_id for p in first]
    assert ids == [p.point_id for p in again]
    assert len(set(ids)) == len(ids)
    # ids name Tune trial folders: nothing that a path would split on
    assert not any(os.sep in i or " " in i for i in ids)
    assert point_id(1e12, 4) == "C1e+12-s4"


def test_budgets_whose_ids_would_clash_are_refused(task):
    with pytest.raises(ValueError, match=r"budgets: 1000000000000.0 and 1000010000000.0 agree to 4 "
                                         r"significant digits, so their point ids clash.*merge each group"):
        plan_sweep(task, [1e12, 1.00001e12], sizes=[2])


# --- sizes chosen around the prior optimum ------------------------------------------------


@pytest.fixture(scope="module")
def counts():
    """Non-embedding parameters of every default candidate size (built once: ~1 s)."""
    return {s: meta_gpt(s).param_counts()["non_embedding"] for s in range(1, 33)}


def nearest_in_log(target, counts):
    return min(counts, key=lambda s: abs(math.log(counts[s]) - math.log(target)))


def test_default_sizes_bracket_the_prior_optimum(task, counts):
    budgets = [1e14, 3e14, 1e15]  # priors well inside the candidate range (7e3 .. 1e8 params)
    spread = 4.0
    plan = plan_sweep(task, budgets, size_spread=spread)
    medians = []
    for c in budgets:
        pts = [p for p in plan if p.budget == c]
        params = sorted(p.params for p in pts)
        n_star = math.sqrt(c / (6 * 20))  # Chinchilla's 20 tokens per parameter
        assert 5 <= len(pts) <= 7  # dense candidates here: few collapse onto one size
        assert params[0] < n_star < params[-1]
        # the ends of the grid are the candidates nearest to N*/spread and N*·spread
        assert pts[0].size == nearest_in_log(n_star / spread, counts)
        assert pts[-1].size == nearest_in_log(n_star * spread, counts)
        medians.append(params[len(params) // 2])
    assert medians == sorted(medians) and len(set(medians)) == len(medians)


def test_points_per_budget_is_an_upper_bound(task, counts):
    few = range(1, 17)  # enough candidates for these budgets; fewer meta models to build
    plan = plan_sweep(task, [3e14], points_per_budget=3, candidate_sizes=few)
    assert len(plan) == 3
    assert nearest_in_log(math.sqrt(3e14 / 120), counts) in [p.size for p in plan]


@pytest.mark.parametrize("budget, candidates", [(1e9, range(1, 17)), (3e14, range(1, 4))])
def test_a_prior_outside_the_candidates_is_refused_naming_the_budget(task, budget, candidates):
    # the prior optimum lies below (1e9) or above (3e14 with sizes 1..3) the candidates, so
    # every target maps to one or two edge sizes: too few for a parabola on that budget
    with pytest.raises(ValueError, match=re.escape(f"budget {budget:.4g}:") + ".*Widen candidate_sizes.*give `sizes`"):
        plan_sweep(task, [budget], min_steps=1, candidate_sizes=candidates)


# --- dropped points -----------------------------------------------------------------------


def test_points_with_too_few_steps_are_dropped_and_reported(task):
    budgets, sizes, min_steps = [1e9, 1e12], [1, 2, 3, 4], 20
    plan = plan_sweep(task, budgets, sizes=sizes, min_steps=min_steps)
    expected_dropped = set()
    for c in budgets:
        for s in sizes:
            n = meta_gpt(s).param_counts()["non_embedding"]
            if round(c / (6 * n) / BATCH_TOKENS) < min_steps:
                expected_dropped.add((c, s))
    assert expected_dropped and len(expected_dropped) < len(budgets) * len(sizes)  # a mixed case
    assert {(d["budget"], d["size"]) for d in plan.dropped} == expected_dropped
    assert {(p.budget, p.size) for p in plan}.isdisjoint(expected_dropped)
    assert len(plan) + len(plan.dropped) == len(budgets) * len(sizes)
    assert all(p.steps >= min_steps for p in plan)
    for d in plan.dropped:
        assert f"min_steps={min_steps}" in d["reason"]
        assert f"dropped: budget {d['budget']:.3g}, size {d['size']}:" in plan.summary()


def test_a_plan_with_every_point_dropped_is_an_error(task):
    with pytest.raises(ValueError, match="min_steps") as e:
        plan_sweep(task, [1e6, 1e7], sizes=[1, 2])
    message = str(e.value)
    assert "raise `budgets`" in message and "1e+06 / size 1" in message and "1e+07 / size 2" in message


# --- counted FLOPs ------------------------------------------------------------------------

DEVICES_SEEN = []  # device types of the models and batches the planner builds


def recording_gpt(size):
    model = gpt(size)
    DEVICES_SEEN.append(("model", next(model.parameters()).device.type))
    return model


def recording_loss(model, batch):
    DEVICES_SEEN.append(("batch", batch.device.type))
    return lm_loss(model, batch)


def test_counted_flops_include_attention_and_are_counted_on_meta(corpus):
    DEVICES_SEEN.clear()
    task = Task(recording_gpt, corpus, recording_loss, tokens_per_sample=SEQ_LEN, batch_size=BATCH_SIZE)
    plan = plan_sweep(task, [1e12], sizes=[1, 2, 4], flops_convention="counted")
    assert DEVICES_SEEN and set(DEVICES_SEEN) == {("model", "meta"), ("batch", "meta")}
    for p in plan:
        d, layers = ASPECT * p.size, p.size
        assert p.flops_per_token > 6 * p.params
        # matmul weights = non-embedding params minus the LayerNorm weights (2 per block + final),
        # which cost no matmul FLOPs; attention adds QK^T and AV, 2·T·d each per layer forward,
        # charged for the full T x T square (no causal discount), x3 for forward + backward.
        matmul_params = p.params - (2 * layers + 1) * d
        attention = 3 * 4 * SEQ_LEN * d * layers
        assert p.flops_per_token == pytest.approx(6 * matmul_params + attention, rel=1e-12)
        assert p.flops == p.tokens * p.flops_per_token
        assert abs(p.flops - p.budget) <= p.flops_per_token * BATCH_TOKENS / 2
    assert "FLOPs per token = counted" in plan.summary()
    assert SweepPlan.from_json(plan.to_json()).flops_convention == "counted"
    # more FLOPs per token than 6N: fewer tokens for the same budget
    six_n = plan_sweep(task, [1e12], sizes=[1, 2, 4])
    assert all(c.tokens < s.tokens for c, s in zip(plan, six_n))


# --- summary and JSON ---------------------------------------------------------------------


@pytest.fixture
def plan_with_drops(task):
    plan = plan_sweep(task, [1e9, 1e12], sizes=[1, 2, 3, 4])
    assert plan.dropped  # the round trip must carry dropped points too
    return plan


def test_summary_lists_every_point_and_the_total(plan_with_drops):
    plan = plan_with_drops
    text = plan.summary()
    assert f"{len(plan)} points over 2 budgets, total {plan.total_flops:.3g} FLOPs" in text
    point_lines = [line for line in text.splitlines() if line.strip().startswith("C")]
    assert [line.split()[0] for line in point_lines] == [p.point_id for p in plan]
    for p, line in zip(plan, point_lines):
        assert f"{p.tokens:,d}" in line and f"{p.params:,d}" in line


def test_json_round_trip(plan_with_drops, tmp_path):
    plan = plan_with_drops
    assert SweepPlan.from_json(plan.to_json()) == plan
    path = tmp_path / "plan.json"
    text = plan.to_json(path)
    assert path.read_text() == text
    assert SweepPlan.from_json(path) == plan
    assert SweepPlan.from_json(str(path)) == plan


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "{}",
        '{"points": 5, "batch_tokens": 512, "param_convention": "all", "flops_convention": "6N"}',
        '{"points": [{"point_id": "C1e+12-s2"}], "batch_tokens": 512, '
        '"param_convention": "all", "flops_convention": "6N"}',
    ],
)
def test_from_json_of_garbage_is_a_value_error(text):
    with pytest.raises(ValueError, match="Not a flops_fit sweep plan"):
        SweepPlan.from_json(text)


def test_from_json_of_a_garbage_file_is_a_value_error(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{ this is not a plan")
    with pytest.raises(ValueError, match="Not a flops_fit sweep plan"):
        SweepPlan.from_json(path)


@pytest.mark.parametrize("text", ["", "[1, 2]", "not a plan\nat all"])
def test_from_json_of_non_object_text_is_a_value_error(text):
    with pytest.raises(ValueError, match="Not a flops_fit sweep plan .*Give the text or file that SweepPlan.to_json wrote"):
        SweepPlan.from_json(text)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budgets, kwargs, match",
    [
        ([], {}, "budgets is empty"),
        ([1e12, 0], {}, r"budgets=...\): 0 is not a finite positive"),
        ([-1e12], {}, r"budgets=...\): -1"),
        ([float("nan")], {}, r"budgets=...\): nan"),
        ([float("inf")], {}, r"budgets=...\): inf"),
        (["1e12"], {}, r"budgets=...\): '1e12'"),
        ([1e12, 3e12, 1e12], {}, r"budgets=...\): \[1000000000000.0\] appear more than once"),
        ([1e12], {"sizes": []}, "sizes is empty"),
        ([1e12], {"sizes": [2, 2.5]}, r"\(sizes=...\): 2.5 is not a positive int"),
        ([1e12], {"sizes": [0, 1]}, r"\(sizes=...\): 0 is not a positive int"),
        ([1e12], {"sizes": [True]}, r"\(sizes=...\): True is not a positive int"),
        ([1e12], {"sizes": [1, 2, 1]}, r"\(sizes=...\): \[1\] appear more than once"),
        ([1e12], {"candidate_sizes": [1, -2]}, r"candidate_sizes=...\): -2"),
        ([1e12], {"points_per_budget": 2}, r"plan_sweep\(points_per_budget=2\) must be an int >= 3"),
        ([1e12], {"points_per_budget": 5.0}, r"plan_sweep\(points_per_budget=5.0\)"),
        ([1e12], {"param_convention": "kaplan"}, "param_convention='kaplan'"),
        ([1e12], {"flops_convention": "5N"}, "flops_convention='5N'"),
        ([1e12], {"size_spread": 1.0}, r"plan_sweep\(size_spread=1.0\) must be a finite number > 1"),
        ([1e12], {"size_spread": float("nan")}, "size_spread=nan"),
    ],
)
def test_bad_arguments_are_named(task, budgets, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_sweep(task, budgets, **kwargs)


@pytest.mark.parametrize("tokens_per_param", [0, -1.0, float("nan")])
def test_bad_tokens_per_param_is_named(task, tokens_per_param):
    with pytest.raises(ValueError, match="tokens_per_param"):
        plan_sweep(task, [3e14], tokens_per_param=tokens_per_param, candidate_sizes=range(1, 17))


def test_numpy_sizes_and_budgets_plan_like_python_numbers(task):
    expected = plan_sweep(task, [10**12], sizes=[1, 2, 3])
    assert plan_sweep(task, np.array([10**12]), sizes=np.arange(1, 4)) == expected


def gpt_without_size_3(size):
    if size == 3:
        raise RuntimeError("no such depth")
    return gpt(size)


def not_a_module(size):
    return {"n_layer": size}


def only_embeddings(size):
    return nn.Embedding(VOCAB, ASPECT * size)


def test_model_fn_errors_name_the_size(corpus):
    def make(model_fn):
        return Task(model_fn, corpus, lm_loss, tokens_per_sample=SEQ_LEN, batch_size=BATCH_SIZE)

    with pytest.raises(ValueError, match=r"model_fn\(3\) raised RuntimeError: no such depth"):
        plan_sweep(make(gpt_without_size_3), [1e12], sizes=[1, 2, 3, 4])
    with pytest.raises(TypeError, match=r"model_fn\(2\) returned dict.*torch.nn.Module"):
        plan_sweep(make(not_a_module), [1e12], sizes=[2])
    with pytest.raises(ValueError, match=r"model_fn\(2\) has no non_embedding parameters"):
        plan_sweep(make(only_embeddings), [1e12], sizes=[2])
    # under the convention that counts embeddings the same model is fine
    plan = plan_sweep(make(only_embeddings), [1e12], sizes=[2], param_convention="all")
    assert plan.points[0].params == VOCAB * ASPECT * 2


# --- designs the fit cannot use: refused or warned about before any compute ---------------


def fixed_size_gpt(size):
    """A model_fn that ignores its size dial."""
    return gpt(2)


def test_model_fn_whose_size_does_not_change_n_is_refused(corpus):
    task = Task(fixed_size_gpt, corpus, lm_loss, tokens_per_sample=SEQ_LEN, batch_size=BATCH_SIZE)
    n = meta_gpt(2).param_counts()["non_embedding"]
    with pytest.raises(ValueError, match=re.escape(f"model_fn: sizes [1, 2, 3] all give N = {n:,} parameters")):
        plan_sweep(task, [1e12], sizes=[1, 2, 3])


def test_thin_designs_warn_before_compute(task):
    from flops_fit.plan import PlanWarning

    with pytest.warns(PlanWarning) as caught:
        plan_sweep(task, [1e11, 1e12], sizes=[1, 2])
    text = [str(w.message) for w in caught]
    assert any("1e+11 (2 sizes), 1e+12 (2 sizes) FLOPs have fewer than 3 distinct model sizes" in t for t in text)
    assert any("0 budget(s) with at least 3 sizes; the IsoFLOP power laws need 3" in t for t in text)
    with pytest.warns(PlanWarning, match=r"budget\(s\) 1e\+06 FLOPs lost every point to min_steps"):
        plan_sweep(task, [1e6, 1e11, 1e12, 3e12], sizes=[1, 2, 3])


def test_a_full_design_plans_without_warnings(task):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_sweep(task, [1e11, 3e11, 1e12], sizes=[1, 2, 3])
