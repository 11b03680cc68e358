"""The baseline of the benchmarks: one sweep point trained in-process in plain PyTorch.

Same model, data order, optimizer, schedule and evaluation as the worker loop in
flops_fit/train.py, with no Ray, no Accelerate and no checkpoints: what training a point
costs when nothing surrounds it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import default_collate

from flops_fit.task import Task, lr_multiplier
from flops_fit.train import adamw


def fresh_state(point, task: Task):
    """Model, optimizer and schedule for `point`, built as the worker loop builds them."""
    torch.manual_seed(task.seed)
    model = task.model_fn(point.size)
    optimizer = adamw(model, task, task.learning_rate(point.params))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, point.steps, task.warmup_fraction, task.min_lr_fraction)
    )
    return model, optimizer, scheduler


def batch_at(step: int, task: Task, train_set, order) -> dict:
    """Optimizer step `step`'s global batch, in the worker loop's sample order."""
    start = step * task.batch_size
    return default_collate([train_set[int(order[p % len(order)])] for p in range(start, start + task.batch_size)])


def plain_step(model, batch, optimizer, scheduler, task: Task):
    """One optimizer step in plain PyTorch; returns the loss tensor."""
    loss = task.loss_fn(model, batch)
    loss.backward()
    if task.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def train_plain(point, task: Task, threads: int = 1, data=None) -> dict:
    """Train `point` for exactly point.steps steps; returns loss, tokens/s and timings."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train_set, val_set = data or task.data()
    model, optimizer, scheduler = fresh_state(point, task)
    order = np.random.default_rng(task.seed).permutation(len(train_set))
    model.train()
    t_first = time.perf_counter()
    for step in range(point.steps):
        plain_step(model, batch_at(step, task, train_set, order), optimizer, scheduler, task)
    t_last = time.perf_counter()
    model.eval()
    n = min(task.eval_samples, len(val_set))
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, task.batch_size):
            idx = range(i, min(n, i + task.batch_size))
            total += task.loss_fn(model, default_collate([val_set[j] for j in idx])).item() * len(idx)
    t_end = time.perf_counter()
    return {
        "point_id": point.point_id,
        "loss": total / n,
        "train_s": t_last - t_first,
        "total_s": t_end - t0,
        "tokens_per_s": point.tokens / (t_last - t_first),
    }
