"""What the user hands over: a model family, data, a loss and per-size hyperparameters.

A `Task` is small and picklable: it holds *factories* (a model function, a data factory)
and numbers, never a built model or a loaded corpus. Ray ships it to every worker, and
each worker builds the heavy objects itself (docs/architecture.md, "Ray in three layers").

Units: a *sample* is one row of a batch (a text window, an image); *tokens per sample* is
how many tokens of the scaling law one sample counts for (the window length for text,
patches per image for a vision transformer). D in the law is samples x tokens per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from . import checks
from . import hyperparameters

# Hyperparameter defaults: nanoGPT/nanochat-style AdamW with warmup + cosine decay. They
# are fine for the tiny CPU GPTs of the examples; for a real sweep, tune them at the
# smallest size and scale the learning rate with N (see `lr`), or search it per point
# (run_sweep(lr_search=...)).
# A number, a function of N alone, or a rule of the point (N, D, C): flops_fit.hyperparameters.
LearningRate = Union[float, Callable[[int], float], hyperparameters.Rule]

PRECISIONS = ("auto", "no", "bf16", "fp16")
_SEED_LIMIT = 2**64  # torch.manual_seed takes an unsigned 64-bit seed


@dataclass(frozen=True)
class Task:
    """One model family + data + loss, trained the same way at every size.

    Args:
        model_fn: size -> torch.nn.Module. One integer dial; must be a module-level
            function (or functools.partial of one) so Ray can pickle it.
        data: zero-argument factory returning (train_dataset, validation_dataset), both
            map-style torch Datasets of samples; e.g. `flops_fit.data.TextCorpus()`.
            Called once on every worker.
        loss_fn: (model, batch) -> 0-dim tensor, the mean loss per token in nats.
            `batch` is what the default collate makes of a list of samples.
        tokens_per_sample: tokens of the scaling law per sample (text: window length).
    """

    model_fn: Callable[[int], Any]
    data: Callable[[], tuple]
    loss_fn: Callable[[Any, Any], Any]
    tokens_per_sample: int
    # samples per optimizer step, summed over all workers (global batch): a number, or a rule
    # of the point (N, D, C) from flops_fit.hyperparameters (its value rounded to whole
    # micro-batches; a rule in tokens goes through hyperparameters.batch_in_samples)
    batch_size: Union[int, hyperparameters.Rule] = 32
    # Samples per forward/backward on one worker (nanoGPT / nanochat's device batch). 0: a
    # worker's whole share of the batch at once. Smaller: the share is split into micro-batches
    # whose gradients are accumulated and synchronised once per optimizer step, so a GPU holds
    # only micro_batch_size samples of activations; tokens per optimizer step are unchanged.
    micro_batch_size: int = 0
    # peak AdamW learning rate: a number, a function params -> lr, or a rule of the point
    # (N, D, C) from flops_fit.hyperparameters (power_law, deepseek_lr, step_law_lr, ...)
    lr: LearningRate = 3e-3
    # linear warmup over this fraction of a point's own steps: a number or a rule of (N, D, C)
    warmup_fraction: Union[float, hyperparameters.Rule] = 0.05
    min_lr_fraction: float = 0.1  # cosine decay ends at this fraction of the peak (Chinchilla: 10x decay)
    weight_decay: float = 0.1  # AdamW decoupled weight decay (nanoGPT default)
    betas: tuple = (0.9, 0.95)  # AdamW betas (nanoGPT / GPT-3)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # "auto": from the device (bf16 autocast on GPUs that support it, compute capability >= 8.0;
    # fp16 with a loss scaler on older GPUs; fp32 on CPU), or "no" (fp32), "bf16", "fp16".
    precision: str = "auto"
    compile: bool = False  # torch.compile the model on each worker (GPU speed; minutes of compile per size)
    seed: int = 0  # model init and data order; the same for every point, so points differ only in N, D
    eval_samples: int = 256  # fixed held-out samples evaluated at the end of every point
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = about 10 per point
    report_every: int = 0  # optimizer steps between progress reports; 0 = about 20 per point
    extra: dict = field(default_factory=dict)  # free-form, recorded with the sweep

    def __post_init__(self):
        if not callable(self.model_fn):
            raise TypeError("Task(model_fn=...) must be callable: size (int) -> torch.nn.Module.")
        if not callable(self.data):
            raise TypeError(
                "Task(data=...) must be a zero-argument factory returning (train, validation) "
                "datasets, e.g. flops_fit.data.TextCorpus(); pass the factory, not the data."
            )
        if not callable(self.loss_fn):
            raise TypeError("Task(loss_fn=...) must be callable: (model, batch) -> scalar loss tensor.")
        # numpy scalars are accepted and stored as plain numbers: the sweep record compares
        # Tasks field by field, and np.int64(32) must mean what 32 means
        for name in ("tokens_per_sample", "eval_samples") + (() if self.batch_rule else ("batch_size",)):
            self._set(name, checks.integer(getattr(self, name), "Task", name))
        for name in ("checkpoint_every", "report_every", "micro_batch_size"):
            self._set(name, checks.integer(getattr(self, name), "Task", name, "0 picks a default", minimum=0))
        if not callable(self.lr):
            self._set("lr", checks.positive_number(self.lr, "Task", "lr", "the peak AdamW learning rate"))
        if not isinstance(self.warmup_fraction, hyperparameters.Rule):
            self._set("warmup_fraction", checks.fraction(self.warmup_fraction, "Task", "warmup_fraction",
                                                    "the share of a point's steps spent warming up"))
        self._set("min_lr_fraction", checks.fraction(self.min_lr_fraction, "Task", "min_lr_fraction",
                                                "the share of the peak lr the cosine decay ends at"))
        for name in ("weight_decay", "grad_clip"):  # `value < 0` alone would let a NaN through
            self._set(name, checks.non_negative_number(getattr(self, name), "Task", name))
        _check_betas(self.betas)
        # numpy's default_rng refuses negative seeds; torch.manual_seed takes 64 bits
        self._set("seed", checks.integer(self.seed, "Task", "seed", "a seed in [0, 2**64)", minimum=0,
                                    maximum=_SEED_LIMIT - 1))
        checks.one_of(self.precision, "Task", "precision", PRECISIONS)
        if not isinstance(self.compile, bool):
            raise ValueError(f"Task(compile={self.compile!r}) must be True or False.")
        if self.batch_rule:  # each point's batch is a whole number of micro-batches (batch_at)
            return
        if self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"Task(micro_batch_size={self.micro_batch_size}) is larger than batch_size={self.batch_size}; "
                "the micro-batch is a part of one worker's share of the global batch."
            )
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"Task(batch_size={self.batch_size}) is not a multiple of micro_batch_size="
                f"{self.micro_batch_size}; pick a micro-batch that divides the global batch."
            )

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # the dataclass is frozen once built

    @property
    def batch_rule(self) -> bool:
        """True when batch_size is a rule of the point (each point has its own batch)."""
        return isinstance(self.batch_size, hyperparameters.Rule)

    @property
    def batch_tokens(self) -> int:
        """Tokens per optimizer step of the global batch (a number batch_size only; with a
        rule, each point's batch is planned: SweepPoint.batch_size)."""
        if self.batch_rule:
            raise ValueError("Task.batch_size is a rule: the batch is per point (SweepPoint.batch_size); "
                             "use Task.batch_at(N, D, C).")
        return self.batch_size * self.tokens_per_sample

    def batch_at(self, params: float, tokens: float, flops: float) -> int:
        """Samples per optimizer step at the point (N, D, C): the number, or the rule's value
        rounded to a whole number of micro-batches (micro_batch_size, else 1), at least one.

        Raises ValueError naming the field when the rule gives less than half a micro-batch."""
        if not self.batch_rule:
            return self.batch_size
        value = hyperparameters.evaluate(self.batch_size, params, tokens, flops, "Task(batch_size=<rule>)")
        unit = self.micro_batch_size or 1
        if not value >= unit / 2:
            raise ValueError(f"Task(batch_size=<rule>) gives {value:.3g} samples per step at N={params:.4g}, "
                             f"D={tokens:.4g}; the batch must be at least {unit} sample(s) (a rule in tokens "
                             "goes through hyperparameters.batch_in_samples).")
        return int(round(value / unit)) * unit

    def accumulation_steps(self, num_workers: int, batch_size: int | None = None) -> int:
        """Micro-batches per worker per optimizer step, for a group of `num_workers` and a
        global batch of `batch_size` samples (default: Task.batch_size, a number).

        Raises ValueError when the global batch does not split evenly into num_workers x
        micro_batch_size (the tokens per step would otherwise differ from the plan's).
        """
        batch = self.batch_size if batch_size is None else batch_size
        what = "Task.batch_size" if batch_size is None else "the point's batch (Task.batch_size rule)"
        if batch % num_workers:
            raise ValueError(
                f"{what}={batch} is not divisible by num_workers={num_workers}; "
                "each worker takes an equal share of the global batch: choose a batch size that is "
                "a multiple of the number of workers."
            )
        share = batch // num_workers
        micro = self.micro_batch_size or share
        if share % micro:
            raise ValueError(
                f"{what}={batch} over num_workers={num_workers} gives {share} samples per "
                f"worker, not a multiple of micro_batch_size={micro}; choose batch_size as a multiple of "
                f"num_workers x micro_batch_size ({num_workers * micro})."
            )
        return share // micro

    def learning_rate(self, params: int, tokens: float | None = None, flops: float | None = None) -> float:
        """Peak learning rate for a model of `params` parameters trained on `tokens` tokens
        with `flops` FLOPs (a rule of N alone needs only `params`)."""
        if not callable(self.lr):
            return self.lr  # checked when the Task was built
        if isinstance(self.lr, hyperparameters.Rule):
            if tokens is None or flops is None:
                raise ValueError("Task(lr=<rule>) is a rule of the point: learning_rate needs tokens and flops too.")
            value = hyperparameters.evaluate(self.lr, params, tokens, flops, "Task(lr=<rule>)")
            return checks.positive_number(value, "Task", f"lr({params})", "lr must suit every planned point")
        return checks.positive_number(self.lr(params), "Task", f"lr({params})", "lr must suit every planned N")

    def hyperparameters(self, params: int, tokens: float, flops: float) -> dict:
        """The point's own settings: peak `lr`, `warmup` (fraction of its steps) and
        `batch_size` (samples per optimizer step), each from its number or rule.

        Raises ValueError naming the field when a rule's value is not usable there.
        """
        warmup = self.warmup_fraction
        if isinstance(warmup, hyperparameters.Rule):
            warmup = checks.fraction(hyperparameters.evaluate(warmup, params, tokens, flops, "Task(warmup_fraction=<rule>)"),
                                     "Task", "warmup_fraction(<point>)", "a share of the point's steps")
        return {"lr": self.learning_rate(params, tokens, flops), "warmup": warmup,
                "batch_size": self.batch_at(params, tokens, flops)}


def check_task(task: Task, plan) -> list:
    """Run the task once on the driver, before any Ray compute: fail in seconds, not hours.

    Loads the data, checks it holds enough samples for the plan, and trains one probe
    step of the smallest model on two real samples (loss must be a finite scalar); the
    largest model runs the same batch on the meta device (shapes only, no memory), which
    catches a sample longer than the model's context. Returns warnings (strings), e.g. a
    corpus that the largest point will repeat.
    """
    import warnings

    import torch
    from torch.utils.data import default_collate

    from .device import map_tensors

    splits = task.data()
    if not (isinstance(splits, (tuple, list)) and len(splits) == 2):
        raise TypeError(
            f"Task(data=...)() returned {type(splits).__name__}; it must return (train, validation) datasets."
        )
    train, val = splits
    for name, ds in (("train", train), ("validation", val)):
        if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__") or len(ds) < 1:
            raise ValueError(f"Task(data=...): the {name} dataset is empty or not a map-style dataset.")
    notes = []
    needed = max(p.steps * (p.batch_size or task.batch_size) for p in plan)
    if needed > len(train):
        epochs = needed / len(train)
        notes.append(
            f"the largest point needs {needed:,} training samples and the corpus has {len(train):,}: "
            f"it will repeat the data {epochs:.1f} times (repeated tokens are worth less than new ones; "
            "Muennighoff et al. 2023). Add data or lower the budgets to avoid it."
        )
    if task.eval_samples > len(val):
        notes.append(
            f"eval_samples={task.eval_samples} but the validation split has {len(val)} samples: "
            f"every point is evaluated on those {len(val)}."
        )
    batch = default_collate([train[i % len(train)] for i in range(2)])
    smallest, largest = min(plan, key=lambda p: p.params), max(plan, key=lambda p: p.params)
    # the probe seeds torch for a reproducible initialisation, inside a fork of the RNG state
    # so that the caller's global torch RNG is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        try:
            model = task.model_fn(smallest.size)
            loss = task.loss_fn(model, batch)
        except Exception as e:  # re-raised with what was being probed
            raise ValueError(
                f"Probe step failed for size {smallest.size} on a batch of 2 training samples: "
                f"{type(e).__name__}: {e}"
            ) from e
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"Task(loss_fn=...) returned {shape}; it must return a 0-dim tensor, the mean loss per "
            "token in nats (e.g. F.cross_entropy(...) with the default reduction='mean')."
        )
    if not torch.isfinite(loss):
        raise ValueError(f"Task(loss_fn=...) gave {loss.item()} on a probe batch at initialisation; "
                         "check the model's initialisation and the loss.")
    loss.backward()
    meta_batch = map_tensors(lambda t: t.to("meta"), batch)
    try:
        with torch.device("meta"):
            task.loss_fn(task.model_fn(largest.size), meta_batch)
    except Exception as e:  # re-raised with what was being probed
        raise ValueError(
            f"Probe forward failed for size {largest.size} (the largest): {type(e).__name__}: {e}"
        ) from e
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return notes


def lr_multiplier(step: int, total_steps: int, warmup_fraction: float, min_lr_fraction: float) -> float:
    """Linear warmup then cosine decay to `min_lr_fraction`, over a point's own steps.

    Chinchilla (Hoffmann et al. 2022, sec. 3.1 and App. B) shows the cosine cycle must match
    the run's length; a schedule set for a longer run overstates the loss of shorter ones.
    `step` counts optimizer steps already taken (0-based); the return value multiplies
    the peak learning rate for the next step.
    """
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return min_lr_fraction + (1.0 - min_lr_fraction) * cosine


def _check_betas(betas):
    """AdamW's (beta1, beta2): moment decay rates, each in [0, 1) or the averages never forget."""
    ok = (
        isinstance(betas, (tuple, list))
        and len(betas) == 2
        and all(checks.is_real(b) and math.isfinite(b) and 0 <= b < 1 for b in betas)
    )
    if not ok:
        raise ValueError(f"Task(betas={betas!r}) must be two numbers in [0, 1), e.g. (0.9, 0.95).")
