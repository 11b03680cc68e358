"""The public API's names and signatures, pinned: a change to either is a change users see,
and must come with a deprecation path (the older forms below still work and warn)."""

import inspect
import warnings

import pytest

import flops_fit as ff

PUBLIC = ["BracketSearchOptions", "FitError", "PlanWarning", "ScalingLaws", "SweepPlan", "SweepPoint",
          "SweepResults", "Task", "fit", "load_results", "plan_sweep", "run_sweep"]
# name -> (parameter, kind) in order; kinds: P positional-or-keyword, K keyword-only, V **kwargs
SIGNATURES = {
    "plan_sweep": [("task", "P"), ("budgets", "P"), ("sizes", "K"), ("points_per_budget", "K"),
                   ("param_convention", "K"), ("flops_convention", "K"), ("candidate_sizes", "K"),
                   ("tokens_per_param", "K"), ("size_spread", "K"), ("min_steps", "K"), ("deprecated", "V")],
    "run_sweep": [("task", "P"), ("plan", "P"), ("name", "K"), ("storage_path", "K"), ("num_workers", "K"),
                  ("use_gpu", "K"), ("resources_per_worker", "K"), ("max_concurrent", "K"), ("max_failures", "K"),
                  ("callbacks", "K"), ("dry_run", "K"), ("address", "K"), ("live_fit", "K"), ("verbose", "K"),
                  ("search", "K"), ("lr_search", "K"), ("deprecated", "V")],
    "fit": [("data", "P"), ("approach", "K"), ("optimum", "K"), ("bootstrap", "K"), ("seed", "K"),
            ("columns", "K"), ("where", "K"), ("holdout", "K"), ("holdout_budgets", "K"),
            ("drop_highest_loss", "K"), ("budget_rtol", "K"), ("level", "K"), ("tie_exponents", "K"),
            ("huber_delta", "K")],
    "load_results": [("path", "P"), ("keep_lr_unbracketed", "P")],
}
KINDS = {inspect.Parameter.POSITIONAL_OR_KEYWORD: "P", inspect.Parameter.KEYWORD_ONLY: "K",
         inspect.Parameter.VAR_KEYWORD: "V", inspect.Parameter.VAR_POSITIONAL: "A",
         inspect.Parameter.POSITIONAL_ONLY: "O"}
SCALING_LAWS_METHODS = ["compare", "plot", "predict", "predictions", "save_plots", "summary", "to_frame",
                        "to_markdown"]


def test_the_public_names_are_these():
    assert sorted(ff.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(ff, name) is not None


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_each_public_function_keeps_its_signature(name):
    params = inspect.signature(getattr(ff, name)).parameters.values()
    assert [(p.name, KINDS[p.kind]) for p in params] == SIGNATURES[name]


def test_scaling_laws_keeps_its_methods():
    for method in SCALING_LAWS_METHODS:
        assert hasattr(ff.ScalingLaws, method), method


def test_a_plan_warning_can_be_filtered_by_its_public_name():
    import flops_fit.plan

    assert ff.PlanWarning is flops_fit.plan.PlanWarning and issubclass(ff.PlanWarning, UserWarning)


def test_the_older_run_sweep_order_warns_and_is_swapped():
    from flops_fit.sweep_checks import task_then_plan
    from flops_fit.plan import SweepPlan
    from flops_fit.task import Task

    plan = SweepPlan.__new__(SweepPlan)
    task = Task.__new__(Task)
    with pytest.warns(DeprecationWarning, match=r"run_sweep\(task, plan"):
        assert task_then_plan(plan, task) == (task, plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert task_then_plan(task, plan) == (task, plan)


def test_the_older_flops_per_token_keyword_of_plan_sweep_warns(tmp_path):
    from flops_fit.data import TextCorpus
    from flops_fit.models import gpt, lm_loss

    data = TextCorpus(seq_len=32, cache_dir=str(tmp_path / "corpus-cache"))
    task = ff.Task(model_fn=gpt, data=data, loss_fn=lm_loss, tokens_per_sample=32, batch_size=8)
    with pytest.warns(DeprecationWarning, match="flops_convention"):
        old = ff.plan_sweep(task, [1e10], sizes=[1, 2, 3], flops_per_token="6N")
    new = ff.plan_sweep(task, [1e10], sizes=[1, 2, 3], flops_convention="6N")
    assert old.points == new.points and len(new.points) == 3
    with pytest.raises(TypeError, match="flops_per_tokens"):
        ff.plan_sweep(task, [1e10], sizes=[1, 2, 3], flops_per_tokens="6N")
