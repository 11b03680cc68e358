"""The Task contract (validation, batch size in tokens, learning rates, pickling), the
learning-rate schedule, and how the worker loop shards a global batch across ranks."""

import math
import os
import pickle
import subprocess
import sys

import pytest
import ray.cloudpickle as cloudpickle  # what Ray uses to ship a Task to workers

from flops_fit.data import TextCorpus
from flops_fit.models import gpt, lm_loss
from flops_fit.task import Task, lr_multiplier
from flops_fit.prefetch import shard_positions
from driver_side import JOBS

SEQ_LEN = 128


def base_kwargs(**overrides):
    # TextCorpus() only records settings: nothing is read until it is called
    kwargs = dict(model_fn=gpt, data=TextCorpus(), loss_fn=lm_loss, tokens_per_sample=SEQ_LEN)
    kwargs.update(overrides)
    return kwargs


def sqrt_scaled_lr(params):
    """Peak lr 3e-3 at 1M parameters, scaled as N^-1/2 (a module-level function: it pickles)."""
    return 3e-3 * (1e6 / params) ** 0.5


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("model_fn", None, TypeError),
        ("model_fn", "gpt", TypeError),
        ("data", [1, 2], TypeError),
        ("loss_fn", 3, TypeError),
        ("tokens_per_sample", 0, ValueError),
        ("tokens_per_sample", 128.0, ValueError),
        ("tokens_per_sample", True, ValueError),
        ("batch_size", 0, ValueError),
        ("batch_size", -4, ValueError),
        ("eval_samples", 0, ValueError),
        ("checkpoint_every", -1, ValueError),
        ("checkpoint_every", 2.5, ValueError),
        ("report_every", -1, ValueError),
        ("lr", 0, ValueError),
        ("lr", -3e-3, ValueError),
        ("lr", float("nan"), ValueError),
        ("lr", float("inf"), ValueError),
        ("lr", "3e-3", ValueError),
        ("warmup_fraction", -0.01, ValueError),
        ("warmup_fraction", 1.5, ValueError),
        ("warmup_fraction", float("nan"), ValueError),
        ("min_lr_fraction", 2.0, ValueError),
        ("weight_decay", -0.1, ValueError),
        ("grad_clip", -1.0, ValueError),
        ("precision", "fp8", ValueError),
    ],
)
def test_each_bad_field_is_named(field, value, error):
    with pytest.raises(error, match=field):
        Task(**base_kwargs(**{field: value}))


def test_data_must_be_the_factory_not_the_datasets(tmp_path):
    with pytest.raises(TypeError, match="pass the factory, not the data"):
        Task(**base_kwargs(data=(range(3), range(2))))


@pytest.mark.parametrize("field", ["weight_decay", "grad_clip"])
def test_nan_regularisation_is_refused(field):
    with pytest.raises(ValueError, match=field):
        Task(**base_kwargs(**{field: float("nan")}))


@pytest.mark.parametrize(
    "field, value",
    [
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("betas", (-0.1, 0.95)),
        ("betas", (0.9, float("nan"))),
        ("betas", ("0.9", 0.95)),
        ("betas", 0.9),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", True),
        ("seed", 2**64),
        ("weight_decay", float("inf")),
        ("grad_clip", "1.0"),
    ],
)
def test_optimizer_settings_and_seed_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        Task(**base_kwargs(**{field: value}))


def test_edge_optimizer_settings_are_accepted():
    task = Task(**base_kwargs(betas=[0.0, 0.999], seed=2**64 - 1, weight_decay=0, grad_clip=0.0))
    assert task.grad_clip == 0.0  # 0 disables clipping: allowed


# --- batch and learning rate --------------------------------------------------------------


def test_batch_tokens_is_the_global_batch_in_tokens():
    assert Task(**base_kwargs(batch_size=32)).batch_tokens == 32 * 128
    # a vision transformer counts patches: 14 x 14 per 224-pixel image of 16-pixel patches
    assert Task(**base_kwargs(tokens_per_sample=196, batch_size=8)).batch_tokens == 1568


def test_constant_learning_rate_ignores_the_size():
    task = Task(**base_kwargs(lr=1))
    assert task.learning_rate(10_000) == task.learning_rate(10**9) == 1.0
    assert isinstance(task.learning_rate(10_000), float)


def test_callable_learning_rate_scales_with_params():
    task = Task(**base_kwargs(lr=sqrt_scaled_lr))
    assert task.learning_rate(1_000_000) == pytest.approx(3e-3)
    assert task.learning_rate(4_000_000) == pytest.approx(1.5e-3)  # 4x the params, half the lr
    assert task.learning_rate(250_000) == pytest.approx(6e-3)


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf"), None])
def test_callable_learning_rate_is_checked_per_size(bad):
    # construction cannot evaluate a function; the first size it fails for is named
    task = Task(**base_kwargs(lr=lambda params: bad))
    with pytest.raises(ValueError, match=r"lr\(123456\)"):
        task.learning_rate(123456)


# --- schedule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, warmup_fraction, min_lr",
    [(100, 0.1, 0.1), (20, 0.05, 0.1), (37, 0.3, 0.5), (1000, 0.02, 0.0), (50, 0.0, 0.1)],
)
def test_lr_schedule_warms_up_linearly_then_decays_to_the_floor(total, warmup_fraction, min_lr):
    m = [lr_multiplier(s, total, warmup_fraction, min_lr) for s in range(total + 1)]
    peak = m.index(1.0)  # first step at the peak learning rate
    warmup_steps = peak + 1  # steps 0 .. peak ramp up
    if warmup_fraction == 0:
        assert peak == 0
    else:
        # the ramp is the whole number of steps nearest to the fraction (at least one)
        assert abs(warmup_steps - max(1.0, warmup_fraction * total)) <= 0.5
        # linear: equal increments, reaching 1 on the last warmup step
        for s in range(warmup_steps):
            assert m[s] == pytest.approx((s + 1) / warmup_steps, rel=1e-12)
    decay = m[peak:]
    assert all(a > b for a, b in zip(decay[1:], decay[2:]))  # strictly decreasing after warmup
    # the lr after the last optimizer step is exactly the floor; beyond it, it stays there
    assert m[total] == min_lr
    assert lr_multiplier(total + 10, total, warmup_fraction, min_lr) == min_lr
    assert all(min_lr <= x <= 1.0 for x in decay)


def test_lr_schedule_is_a_half_cosine():
    total, min_lr = 110, 0.1
    # warmup 10 steps, then 100 steps of decay: halfway is the mean of peak and floor,
    # a quarter of the way is floor + (1 - floor)(1 + cos(pi/4))/2
    assert lr_multiplier(10 + 50, total, 10 / 110, min_lr) == pytest.approx(0.55, rel=1e-12)
    quarter = min_lr + (1 - min_lr) * (1 + math.cos(math.pi / 4)) / 2
    assert lr_multiplier(10 + 25, total, 10 / 110, min_lr) == pytest.approx(quarter, rel=1e-12)


# --- pickling -----------------------------------------------------------------------------


@pytest.mark.parametrize("dumps, loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)])
def test_task_pickles_and_still_trains(corpus, dumps, loads):
    import torch
    from torch.utils.data import default_collate

    task = Task(gpt, corpus, lm_loss, tokens_per_sample=SEQ_LEN, batch_size=2, lr=sqrt_scaled_lr, extra={"run": 1})
    copy = loads(dumps(task))
    # module-level factories travel by reference; the corpus by its settings
    assert copy.model_fn is gpt and copy.loss_fn is lm_loss and repr(copy.data) == repr(task.data)
    assert copy.batch_tokens == 2 * SEQ_LEN and copy.extra == {"run": 1}
    # a worker rebuilds everything from the copy: model, data, a loss at initialisation
    train, val = copy.data()
    torch.manual_seed(copy.seed)
    model = copy.model_fn(1)
    loss = copy.loss_fn(model, default_collate([train[0], train[1]]))
    # GPT-2 init gives near-uniform logits: about ln(256) nats over the byte vocabulary
    assert loss.item() == pytest.approx(math.log(256), abs=0.1)
    assert copy.learning_rate(4_000_000) == pytest.approx(1.5e-3)


def test_cloudpickle_ships_a_task_with_a_lambda_learning_rate(corpus):
    task = Task(gpt, corpus, lm_loss, tokens_per_sample=SEQ_LEN, lr=lambda n: 1e-3 * (1e6 / n))
    copy = pickle.loads(cloudpickle.dumps(task))
    assert copy.learning_rate(2_000_000) == pytest.approx(5e-4)


# --- sharding of the global batch ---------------------------------------------------------


@pytest.mark.parametrize("batch_size, world_size", [(32, 1), (32, 2), (32, 4), (24, 3), (8, 8)])
def test_shards_are_disjoint_and_cover_each_global_batch(batch_size, world_size):
    seen = []
    for step in range(5):
        shards = [shard_positions(step, batch_size, r, world_size) for r in range(world_size)]
        flat = [p for s in shards for p in s]
        assert len(set(flat)) == len(flat)  # disjoint
        assert sorted(flat) == list(range(step * batch_size, (step + 1) * batch_size))  # the global batch
        assert all(len(s) == batch_size // world_size for s in shards)  # equal shares
        seen += flat
    # consecutive steps are contiguous: five steps consume exactly the first 5·B positions
    assert sorted(seen) == list(range(5 * batch_size))


# --- dry runs -----------------------------------------------------------------------------


def test_dry_run_loss_is_the_same_in_every_process():
    # str hashes are salted per process (PYTHONHASHSEED): the noise must not depend on them
    outputs = {subprocess.run([sys.executable, str(JOBS / "dry_run_loss.py")], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": str(salt)}).stdout
               for salt in (1, 2, 3)}
    assert len(outputs) == 1
    loss = float(outputs.pop())
    # Chinchilla's law at N = 1e5, D = 1.6e6, within the dry run's default noise of a few per cent
    clean = 1.69 + 406.4 / 1e5**0.34 + 410.7 / 1.6e6**0.28
    assert loss == pytest.approx(clean, rel=0.05) and loss != clean
