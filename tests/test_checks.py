"""One rule for numbers at every public entry point (flops_fit/checks.py): numpy scalars are
accepted wherever a Python number is, and stored as plain numbers; bools are refused; the
message names the call and the argument as `call(arg=value)`."""

import json

import numpy as np
import pytest

import flops_fit as ff
from flops_fit import checks
from flops_fit.data import TextCorpus
from flops_fit.models import gpt, lm_loss
from flops_fit.fitting import FitError

BATCH = 8
SEQ_LEN = 32


def make_task(**overrides):
    kwargs = dict(model_fn=gpt, data=TextCorpus(seq_len=SEQ_LEN), loss_fn=lm_loss, tokens_per_sample=SEQ_LEN,
                  batch_size=BATCH)
    kwargs.update(overrides)
    return ff.Task(**kwargs)


# --- the checks themselves ----------------------------------------------------------------


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(2), 3, 0.25])
def test_numpy_and_python_numbers_pass_and_come_back_plain(value):
    out = checks.positive_number(value, "f", "x")
    assert type(out) is float and out == pytest.approx(float(value))


@pytest.mark.parametrize("check", [
    lambda v: checks.positive_number(v, "f", "x"),
    lambda v: checks.non_negative_number(v, "f", "x"),
    lambda v: checks.fraction(v, "f", "x"),
    lambda v: checks.integer(v, "f", "x"),
])
@pytest.mark.parametrize("value", [True, np.bool_(True)])
def test_a_bool_is_not_a_number(check, value):
    with pytest.raises(ValueError, match=r"f\(x=(np\.)?(True|true_)"):
        check(value)


def test_message_names_call_argument_need_and_fix():
    with pytest.raises(ValueError) as e:
        checks.integer(np.int64(0), "run_sweep", "num_workers", "workers per point")
    assert str(e.value) == "run_sweep(num_workers=np.int64(0)) must be an int >= 1: workers per point"
    with pytest.raises(FitError, match=r"^fit\(level=1.0\) must be a number in \(0, 1\)\.$"):
        checks.fraction(1.0, "fit", "level", open_low=True, open_high=True, error=FitError)


@pytest.mark.parametrize("value", ["0.5", None, float("nan"), float("inf"), 2**2000])
def test_not_a_usable_number_is_a_value_error_naming_it(value):
    for check in (checks.positive_number, checks.non_negative_number, checks.fraction):
        with pytest.raises(ValueError, match=r"^f\(x="):
            check(value, "f", "x")


def test_integer_refuses_floats_even_whole_ones():
    assert type(checks.integer(np.int32(4), "f", "n")) is int
    with pytest.raises(ValueError, match=r"f\(n=4.0\) must be an int >= 1"):
        checks.integer(4.0, "f", "n")


# --- every public entry point that takes numbers ------------------------------------------


def test_plan_sweep_takes_numpy_budgets_sizes_and_settings():
    task = make_task()
    expected = ff.plan_sweep(task, [1e11, 1e12], points_per_budget=3, tokens_per_param=20.0, size_spread=4.0,
                             min_steps=2, candidate_sizes=range(1, 9))
    plan = ff.plan_sweep(task, np.array([1e11, 1e12], dtype=np.float64), points_per_budget=np.int64(3),
                         tokens_per_param=np.float32(20.0), size_spread=np.float32(4.0), min_steps=np.int64(2),
                         candidate_sizes=np.arange(1, 9))
    assert plan == expected
    json.loads(plan.to_json())  # plain numbers: the plan's JSON holds no numpy scalar
    assert ff.plan_sweep(task, [np.float32(1e9)], sizes=np.array([1, 2, 3])).budgets == [float(np.float32(1e9))]


@pytest.mark.parametrize("kwargs, match", [
    (dict(points_per_budget=True), r"plan_sweep\(points_per_budget=True\)"),
    (dict(min_steps=True), r"plan_sweep\(min_steps=True\)"),
    (dict(size_spread=True), r"plan_sweep\(size_spread=True\)"),
    (dict(sizes=[np.True_, 2]), r"plan_sweep\(sizes=...\): (np\.)?True_? is not a positive int"),
])
def test_plan_sweep_refuses_bools(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ff.plan_sweep(make_task(), [1e10], **kwargs)


def test_task_takes_numpy_fields_and_stores_plain_numbers():
    data = TextCorpus(seq_len=SEQ_LEN)
    task = make_task(data=data, tokens_per_sample=np.int64(SEQ_LEN), batch_size=np.int64(BATCH), lr=np.float32(3e-3),
                     warmup_fraction=np.float32(0.1), min_lr_fraction=np.float64(0.1), weight_decay=np.float32(0.1),
                     grad_clip=np.int64(1), seed=np.uint64(2**63), eval_samples=np.int32(16),
                     micro_batch_size=np.int64(4), checkpoint_every=np.int64(0), betas=(np.float32(0.9), 0.95))
    assert (type(task.batch_size), type(task.lr), type(task.seed), type(task.grad_clip)) == (int, float, int, float)
    assert task.batch_tokens == BATCH * SEQ_LEN and task.learning_rate(1000) == pytest.approx(3e-3)
    # the sweep record compares Tasks: numpy and Python settings are the same Task
    assert task == make_task(data=data, lr=float(np.float32(3e-3)), warmup_fraction=float(np.float32(0.1)), min_lr_fraction=0.1,
                             weight_decay=float(np.float32(0.1)), grad_clip=1.0, seed=2**63, eval_samples=16,
                             micro_batch_size=4, betas=(np.float32(0.9), 0.95))


def test_a_learning_rate_function_may_return_a_numpy_scalar():
    task = make_task(lr=lambda n: np.float32(1e-3))
    assert task.learning_rate(10_000) == pytest.approx(1e-3)


@pytest.mark.parametrize("field", ["batch_size", "lr", "warmup_fraction", "weight_decay", "seed", "eval_samples"])
def test_task_refuses_bools(field):
    with pytest.raises(ValueError, match=rf"Task\({field}=True\)"):
        make_task(**{field: True})


def test_run_sweep_takes_numpy_ints(tmp_path):
    task = make_task()
    plan = ff.plan_sweep(task, [1e9], sizes=[1, 2, 3])
    # every integer argument passes; the resources check after them refuses, before Ray starts
    with pytest.raises(ValueError, match=r"run_sweep\(resources_per_worker\['CPU'\]=np.float32\(0.0\)\)"):
        ff.run_sweep(task, plan, name="x", storage_path=str(tmp_path), num_workers=np.int64(2),
                     max_failures=np.int64(-1), max_concurrent=np.int32(1),
                     resources_per_worker={"CPU": np.float32(0)})


@pytest.mark.parametrize("arg", ["num_workers", "max_failures", "max_concurrent"])
def test_run_sweep_refuses_bools(tmp_path, arg):
    task = make_task()
    plan = ff.plan_sweep(task, [1e9], sizes=[1, 2, 3])
    with pytest.raises(ValueError, match=rf"run_sweep\({arg}=True\)"):
        # a bad resource after it: were the bool let through, the call still stops before Ray
        ff.run_sweep(task, plan, name="x", storage_path=str(tmp_path), resources_per_worker={"CPU": 0},
                     **{arg: True})


def test_fit_takes_numpy_options(sweep):
    plain = ff.fit(sweep, bootstrap=20, seed=3, level=float(np.float32(0.9)), budget_rtol=0.05, drop_highest_loss=1)
    numpy = ff.fit(sweep, bootstrap=np.int64(20), seed=np.int32(3), level=np.float32(0.9),
                   budget_rtol=np.float32(0.05), drop_highest_loss=np.int64(1))
    assert numpy.parametric.alpha.value == plain.parametric.alpha.value
    assert numpy.parametric.alpha.low == plain.parametric.alpha.low  # same seed, same replicates


@pytest.mark.parametrize("option", ["bootstrap", "seed", "drop_highest_loss", "level", "budget_rtol"])
def test_fit_refuses_bools(sweep, option):
    with pytest.raises(FitError, match=rf"fit\({option}=True\)"):
        ff.fit(sweep, **{option: True})
