"""Test helpers that run inside Ray workers and trial drivers, or build what they run: model
functions, data and tasks. Ray pickles these functions by module reference, so its workers
import this module: the session fixture (conftest.py), and the tests whose jobs start a Ray
of their own, put this folder on the PYTHONPATH that Ray's processes get."""

import math
from pathlib import Path

from flops_fit.data import TextCorpus
from flops_fit.models import gpt, lm_loss
from flops_fit.task import Task

DIVERGING_SIZE = 3  # gpt_nan(size) returns a model whose loss is NaN from the first step
FAILING_SIZE = 1  # gpt_failing(size) raises for this size, after noting the call


def gpt_nan(size):
    """The reference GPT, except that size DIVERGING_SIZE has a NaN output layer."""
    model = gpt(size)
    if size == DIVERGING_SIZE:
        model.lm_head.weight.data.fill_(math.nan)
    return model


def gpt_failing(size, calls: str):
    """The reference GPT, except that size FAILING_SIZE raises when a Ray actor (a Train
    worker) builds it (the planner's and the task check's probes in the test process pass);
    every such build appends a line to the file `calls`."""
    import ray

    model = gpt(size)
    if size == FAILING_SIZE and ray.is_initialized() and ray.get_runtime_context().get_actor_id():
        with open(calls, "a") as f:
            f.write("built\n")
        raise RuntimeError("model construction failed on purpose")
    return model


def workers_by_size(point) -> int:
    """A run_sweep(num_workers=...) function: 1 worker for size 1, 2 for the others."""
    return 1 if point.size == 1 else 2


def corpus(tmp: Path, seq_len: int = 32) -> TextCorpus:
    """A small deterministic corpus: the default one (stdlib sources), cached under tmp."""
    return TextCorpus(seq_len=seq_len, cache_dir=str(tmp / "corpus-cache"))


def tiny_task(tmp: Path, model_fn=gpt, **overrides) -> Task:
    """A Task small enough to train in seconds on one CPU: 32-token samples, batches of 8,
    64 evaluation samples, the corpus cached under tmp; `overrides` are further Task fields."""
    settings = dict(tokens_per_sample=32, batch_size=8, eval_samples=64)
    settings.update(overrides)
    return Task(model_fn=model_fn, data=corpus(tmp, settings["tokens_per_sample"]), loss_fn=lm_loss, **settings)
