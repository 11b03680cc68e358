"""Model and data helpers for Ray tests; importable on Ray workers (the session fixture
puts this folder on their path)."""

import math
from pathlib import Path

from flops_fit.data import TextCorpus
from flops_fit.models import gpt, lm_loss
from flops_fit.task import Task

DIVERGING_SIZE = 3  # gpt_nan(size) returns a model whose loss is NaN from the first step


def gpt_nan(size):
    """The reference GPT, except that size DIVERGING_SIZE has a NaN output layer."""
    model = gpt(size)
    if size == DIVERGING_SIZE:
        model.lm_head.weight.data.fill_(math.nan)
    return model


def corpus(tmp: Path, seq_len: int = 32) -> TextCorpus:
    """A small deterministic corpus: the default one (stdlib sources), cached under tmp."""
    return TextCorpus(seq_len=seq_len, cache_dir=str(tmp / "corpus-cache"))


def tiny_task(tmp: Path, model_fn=gpt, **overrides) -> Task:
    settings = dict(tokens_per_sample=32, batch_size=8, eval_samples=64)
    settings.update(overrides)
    return Task(model_fn=model_fn, data=corpus(tmp, settings["tokens_per_sample"]), loss_fn=lm_loss, **settings)
