"""Layer 1 of the Ray stack: the worker loop, run on every worker of a point's Ray Train group.

For one sweep point it creates a fresh `accelerate.Accelerator`, builds the model for the
point's size, trains exactly the planned number of optimizer steps of the global batch
(the budget is enforced here, not just written down), evaluates on a fixed held-out set,
checkpoints through Ray Train so a restarted group resumes where it stopped, and reports
metrics. Every rank calls `ray.train.report` (it is a barrier); rank 0's metrics are the
ones Tune sees, and only rank 0 writes files.

Read top to bottom: `train_point` (what Ray Train runs), the loop, then its parts (set-up,
one optimizer step, when to report, the final evaluation). Beside it: device.py (the
Accelerator and the device), prefetch.py (which samples each step takes, built ahead),
checkpointing.py (what a checkpoint holds, how often, resuming), dry_run.py (the same Ray
path with losses from a law).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .contract import DIVERGED_STATUS, OK_STATUS
from .checkpointing import ReportWindow, load_checkpoint, report, report_due, resume
from .device import device_name, make_accelerator, release, to_device
from .dry_run import dry_run_point
from .hardware import peak_flops
from .plan import SweepPoint
from .prefetch import Prefetcher, shards_disjoint, step_positions
from .task import Task, lr_multiplier


def train_point(config: dict) -> dict:
    """Ray Train training function for one sweep point (runs on every worker).

    `config` keys: point (SweepPoint as dict), task_pickle (the Task as `ray.cloudpickle`
    bytes), dry_run (law dict or None), threads (torch threads per worker on CPU). Returns
    rank 0's final metrics.
    """
    import ray.cloudpickle

    point = SweepPoint.from_dict(config["point"])
    task: Task = ray.cloudpickle.loads(config["task_pickle"])
    if point.batch_size:  # a batch rule: this point's own batch, as the plan fixed it
        task = dataclasses.replace(task, batch_size=point.batch_size)
    settings = point_settings(config["point"], task)
    if config.get("dry_run") is not None:  # {} means "the default law"
        return dry_run_point(point, config["dry_run"], task, settings)
    return _train(point, task, settings, threads=config.get("threads", 0))


def point_settings(point: dict, task: Task) -> dict:
    """The point's peak `lr` and `warmup` (fraction of its steps): as the sweep's driver
    resolved them into the point (rule x LR-search multiplier), else from the task."""
    if point.get("lr") is not None and point.get("warmup") is not None:
        return {"lr": float(point["lr"]), "warmup": float(point["warmup"])}
    hp = task.hyperparameters(point["params"], point["tokens"], point["flops"])
    return {"lr": hp["lr"] * float(point.get("lr_multiplier") or 1.0), "warmup": hp["warmup"]}


@dataclass
class Run:
    """One attempt at one point on one worker: what the parts of the loop share."""

    point: SweepPoint
    task: Task
    rank: int
    world: int
    accum: int  # micro-batches per worker per optimizer step
    accelerator: Any
    model: Any  # as prepared by Accelerate (DDP-wrapped in a group of several)
    net: Any  # the bare module, the same parameters: checkpoints and evaluation
    optimizer: Any
    scheduler: Any
    train_set: Any
    val_set: Any
    peak_flops: float | None  # dense peak of this worker's device, FLOP/s (hardware.peak_flops)
    base: dict = field(default_factory=dict)  # metrics every report carries
    step: int = 0  # optimizer steps taken: the data position of the next step
    skipped_steps: int = 0  # fp16 steps the loss scaler skipped (inf/NaN gradients)
    meta: dict = field(default_factory=dict)


def _train(point: SweepPoint, task: Task, settings: dict, threads: int) -> dict:
    """Set up, resume, train the point's steps (reporting, checkpointing when due), evaluate."""
    run = _setup(point, task, settings, threads)
    resume(run, load_checkpoint())
    first = [p for micro in step_positions(run, run.step) for p in micro]
    run.base["shards_disjoint"] = shards_disjoint(run.accelerator, first, run.world)
    batches = Prefetcher(run)
    window = ReportWindow(run)
    metrics, status = {}, "running"
    try:
        while run.step < point.steps:
            window.add(optimizer_step(run, batches.next()))
            due = report_due(run, window)
            if due is None:
                continue
            save, train_loss = due
            metrics = _progress(run, window, train_loss)
            if not math.isfinite(train_loss):
                status = DIVERGED_STATUS
                metrics.update(status=status, loss=float("nan"), final=True,
                               error=f"training loss became {train_loss} at step {run.step}")
                report(metrics, None, run.rank)
                break
            report(metrics, run if save else None, run.rank)
            window.restart(saved=save)
    finally:
        batches.close()
    if status != DIVERGED_STATUS:
        metrics = _evaluate_and_finish(run, metrics)
    release(run.accelerator, run.model, run.optimizer)
    return metrics


def _setup(point: SweepPoint, task: Task, settings: dict, threads: int) -> Run:
    """Accelerator, data, model, optimizer and schedule of a fresh attempt at `point`."""
    import ray
    import ray.train
    import torch

    if threads:
        # Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this worker reserved.
        torch.set_num_threads(threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    accum = task.accumulation_steps(world)  # a clear error before any compute
    accelerator = make_accelerator(task)
    # Data factories may write a cache (TextCorpus tokenizes once): the first worker of each
    # node builds it while the node's others wait, then they read it.
    with accelerator.local_main_process_first():
        train_set, val_set = task.data()
    net, model, optimizer, scheduler = build(point, task, accelerator, settings)
    precision = str(accelerator.mixed_precision)
    device = device_name(accelerator)
    run = Run(point=point, task=task, rank=rank, world=world, accum=accum, accelerator=accelerator,
              model=model, net=net, optimizer=optimizer, scheduler=scheduler, train_set=train_set,
              val_set=val_set, peak_flops=peak_flops(device, precision))
    run.meta = {"started_at": time.time(), "attempts": 1, "restored_from_step": None}
    run.base = {
        "point_id": point.point_id,
        "steps": point.steps,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "precision": precision,
        "device": device or "cpu",
        "micro_batch_size": (task.batch_size // world) // accum,
        "accumulation_steps": accum,
        "node": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "worker_pid": os.getpid(),  # Tune fills "pid" with the trial driver's own
        "peak_lr": settings["lr"],
    }
    return run


def build(point: SweepPoint, task: Task, accelerator, settings: dict):
    """The bare model, the model to train (compiled if Task.compile, prepared by Accelerate),
    its optimizer and its LR schedule (peak `settings["lr"]`, warmup `settings["warmup"]`),
    all fresh."""
    import torch

    torch.manual_seed(task.seed)
    net = task.model_fn(point.size)
    optimizer = adamw(net, task, settings["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, point.steps, settings["warmup"], task.min_lr_fraction)
    )
    # Compiled once per point (a model of another size is another graph); the compiled module
    # shares `net`'s parameters, so checkpoints and evaluation use `net` unchanged.
    model = torch.compile(net) if task.compile else net
    # The scheduler is stepped by hand, once per optimizer step: a prepared scheduler would
    # step num_processes times per step (accelerate's default for unsplit batches).
    model, optimizer = accelerator.prepare(model, optimizer)
    return net, model, optimizer, scheduler


def adamw(model, task: Task, lr: float):
    """AdamW with weight decay on matrices only (nanoGPT's configure_optimizers)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": task.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=task.betas)


def optimizer_step(run: Run, micro_batches: list):
    """One optimizer step over this rank's micro-batches; the step's mean loss (a tensor).

    Gradients of the micro-batches add up locally (`no_sync`) and are all-reduced once, on
    the last one; each loss is divided by their number, so the update equals the one of the
    whole share at once (equal micro-batches, mean losses). The schedule advances only when
    the optimizer stepped: an fp16 loss scaler skips steps with inf/NaN gradients, and those
    must not eat into the warmup or the decay (torch.amp's recipe).
    """
    accelerator, model = run.accelerator, run.model
    total = None
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss = run.task.loss_fn(model, to_device(batch, accelerator.device))
            accelerator.backward(loss / run.accum)
        total = loss.detach().float() if total is None else total + loss.detach().float()
    if run.task.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), run.task.grad_clip)
    run.optimizer.step()
    if run.optimizer.step_was_skipped:
        run.skipped_steps += 1
    else:
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return total / run.accum


def _progress(run: Run, window: ReportWindow, train_loss: float) -> dict:
    """Metrics of a progress report: budget spent, loss, speed and hardware use."""
    task, point = run.task, run.point
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    tokens_per_s = window.steps * task.batch_tokens / elapsed
    # Model FLOP/s from the FLOPs per token the plan counts (PaLM's MFU, Chowdhery et al. 2022,
    # App. B): what the model needs, not what the hardware executed (no recomputation).
    flops_per_s = tokens_per_s * point.flops_per_token
    peak = run.peak_flops * run.accelerator.num_processes if run.peak_flops else None
    return {
        **run.base,
        "status": "running",
        "step": run.step,
        "tokens": run.step * task.batch_tokens,
        "flops": run.step * task.batch_tokens * point.flops_per_token,
        "train_loss": train_loss,
        "lr": run.scheduler.get_last_lr()[0],
        "tokens_per_s": tokens_per_s,
        "model_flops_per_s": flops_per_s,
        "mfu": flops_per_s / peak if peak else None,
        "skipped_steps": run.skipped_steps,
        "first_step_at": window.first_step_at,
    }


def _evaluate_and_finish(run: Run, metrics: dict) -> dict:
    """Evaluate on the held-out set and report the point's final metrics."""
    last_step_at = time.time()
    eval_loss = _evaluate(run.accelerator, run.net, run.task, run.val_set, run.rank, run.world)
    status = OK_STATUS if math.isfinite(eval_loss) else DIVERGED_STATUS
    # "final", never "done": Tune takes a reported done=True for the trial's end and kills
    # the trial driver at once, while the Train controller is still shutting down; the
    # worker group it then restarts holds its CPUs until the sweep ends (seen as a sweep
    # stuck after ~100 points, every CPU held by such placement groups).
    final = {
        **metrics,
        "status": status,
        "loss": eval_loss,
        "eval_samples": min(run.task.eval_samples, len(run.val_set)),
        "last_step_at": last_step_at,
        "finished_at": time.time(),
        "final": True,
    }
    if status == DIVERGED_STATUS:
        final["error"] = f"held-out loss is {eval_loss}"
    report(final, None, run.rank)
    return final


def _evaluate(accelerator, net, task: Task, val_set, rank: int, world: int) -> float:
    """Mean held-out loss (nats per token) over the first `eval_samples` validation samples.

    The set is the same for every point of the sweep, so losses are comparable across
    points; each rank evaluates a disjoint stride of it and the sums are reduced.
    """
    import torch
    from torch.utils.data import default_collate

    n = min(task.eval_samples, len(val_set))
    mine = list(range(rank, n, world))
    # Micro-batch sized chunks: evaluation must fit where training did.
    per_rank = max(1, task.micro_batch_size or task.batch_size // world)
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    net.eval()
    with torch.no_grad(), accelerator.autocast():
        for i in range(0, len(mine), per_rank):
            chunk = mine[i : i + per_rank]
            batch = to_device(default_collate([val_set[j] for j in chunk]), accelerator.device)
            total += task.loss_fn(net, batch).double() * len(chunk)
    return float(accelerator.reduce(total, "sum").item() / n)
