"""Layer 1 of the Ray stack: the worker loop, run on every worker of a point's Ray Train group.

For one sweep point it creates a fresh `accelerate.Accelerator`, builds the model for the
point's size, trains exactly the planned number of optimizer steps of the global batch
(the budget is enforced here, not just written down), evaluates on a fixed held-out set,
checkpoints through Ray Train so a restarted group resumes where it stopped, and reports
metrics. Every rank calls `ray.train.report` (it is a barrier); rank 0's metrics are the
ones Tune sees, and only rank 0 writes files.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from .plan import SweepPoint
from .task import Task, lr_multiplier

CHECKPOINT_FILE = "state.pt"
REPORTS_PER_POINT = 20  # progress reports per point when Task.report_every is 0
CHECKPOINTS_PER_POINT = 10  # checkpoints per point when Task.checkpoint_every is 0
# With those defaults, reports and checkpoints are also at least this far apart (seconds).
# Ray Train's controller takes one report per health check (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
# 0.2 s here) from a queue of one, so faster reports stall the step loop: 20 reports made a
# 1-second point take 4 s (benchmarks/RESULTS.md). A point shorter than the checkpoint gap
# reruns from the start faster than it would checkpoint.
MIN_REPORT_INTERVAL_S = 1.0
MIN_CHECKPOINT_INTERVAL_S = 10.0

# Default law for dry runs: Chinchilla's fit (Hoffmann et al. 2022, eq. 10), so a rehearsal
# produces realistic IsoFLOP valleys and a fit that can be checked against known values.
CHINCHILLA_LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
DRY_RUN_NOISE = 0.01  # relative (log-normal) noise on dry-run losses


def train_point(config: dict) -> dict:
    """Ray Train training function for one sweep point (runs on every worker).

    `config` keys: point (SweepPoint as dict), task_pickle (the Task as `ray.cloudpickle`
    bytes), dry_run (law dict or None), threads (torch threads per worker on CPU). Returns
    rank 0's final metrics.
    """
    import ray.cloudpickle
    import ray.train

    point = SweepPoint.from_dict(config["point"])
    task: Task = ray.cloudpickle.loads(config["task_pickle"])
    if config.get("dry_run") is not None:  # {} means "the default law"
        return _dry_run(point, config["dry_run"], task)
    return _train(point, task, threads=config.get("threads", 0))


def shard_positions(step: int, batch_size: int, rank: int, world_size: int) -> range:
    """Global sample positions of `rank`'s share of optimizer step `step`.

    Step s consumes positions [s·B, (s+1)·B) of one fixed sample order; rank r takes the
    r-th contiguous slice of B / world_size. Shards are disjoint and together cover the
    global batch, and the position depends only on the step, so a resumed run continues
    with exactly the samples the interrupted one would have seen.
    """
    per_rank = batch_size // world_size
    start = step * batch_size + rank * per_rank
    return range(start, start + per_rank)


def _train(point: SweepPoint, task: Task, threads: int) -> dict:
    import ray
    import ray.train
    import torch
    from accelerate import Accelerator
    from torch.utils.data import default_collate

    if threads:
        # Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this worker reserved.
        torch.set_num_threads(threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if task.batch_size % world:
        raise ValueError(
            f"Task.batch_size={task.batch_size} is not divisible by num_workers={world}; "
            "choose a batch size that is a multiple of the number of workers."
        )
    accelerator = _make_accelerator(task)
    train_set, val_set = task.data()

    torch.manual_seed(task.seed)
    model = task.model_fn(point.size)
    optimizer = _adamw(model, task, task.learning_rate(point.params))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, point.steps, task.warmup_fraction, task.min_lr_fraction)
    )
    state = _load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
    # The scheduler is stepped by hand, once per optimizer step: a prepared scheduler would
    # step num_processes times per step (accelerate's default for unsplit batches).
    model, optimizer = accelerator.prepare(model, optimizer)
    start_step, meta = 0, {"started_at": time.time(), "attempts": 1, "restored_from_step": None}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_step = int(state["step"])
        meta = {
            "started_at": float(state["started_at"]),
            "attempts": int(state["attempts"]) + 1,
            "restored_from_step": start_step,
        }

    order = np.random.default_rng(task.seed).permutation(len(train_set))
    device = accelerator.device
    per_rank = task.batch_size // world

    def batch_at(step):
        positions = shard_positions(step, task.batch_size, rank, world)
        samples = [train_set[int(order[p % len(order)])] for p in positions]
        return _to_device(default_collate(samples), device), positions

    report_every = task.report_every or max(1, point.steps // REPORTS_PER_POINT)
    checkpoint_every = task.checkpoint_every or max(1, point.steps // CHECKPOINTS_PER_POINT)
    base = {
        "point_id": point.point_id,
        "steps": point.steps,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "node": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "worker_pid": os.getpid(),  # Tune fills "pid" with the trial driver's own
        **meta,
    }
    shards_disjoint = _check_shards(accelerator, batch_at(start_step)[1], world)

    model.train()
    window_loss = torch.zeros((), device=device)
    window_steps, window_start = 0, time.perf_counter()
    last_save = window_start
    status, step = "running", start_step
    first_step_at = None
    while step < point.steps:
        batch, _ = batch_at(step)
        with accelerator.autocast():
            loss = task.loss_fn(model, batch)
        accelerator.backward(loss)
        if task.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), task.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # Accumulate on the device: no host synchronisation inside the step loop.
        window_loss += loss.detach().float()
        window_steps += 1
        step += 1
        if first_step_at is None:
            first_step_at = time.time()
        save_step = step % checkpoint_every == 0 and step < point.steps
        if step % report_every == 0 or save_step or step == point.steps:
            # Rank 0's clock decides whether to report (and save) now; the decision travels
            # in the same reduce as the loss, so every rank reports at the same steps.
            now = time.perf_counter()
            save = save_step and (task.checkpoint_every > 0 or now - last_save >= MIN_CHECKPOINT_INTERVAL_S)
            report = (save or step == point.steps or task.report_every > 0
                      or now - window_start >= MIN_REPORT_INTERVAL_S)
            decision = torch.tensor(float(2 if save else 1 if report else 0) if rank == 0 else 0.0, device=device)
            loss_sum, decided = accelerator.reduce(torch.stack([window_loss, decision]), "sum").tolist()
            train_loss = loss_sum / world / window_steps
            save, report = decided == 2, decided >= 1
            if math.isfinite(train_loss) and not report:
                continue
            elapsed = now - window_start
            metrics = {
                **base,
                "status": "running",
                "step": step,
                "tokens": step * task.batch_tokens,
                "flops": step * task.batch_tokens * point.flops_per_token,
                "train_loss": train_loss,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": window_steps * task.batch_tokens / max(elapsed, 1e-9),
                "first_step_at": first_step_at,
                "shards_disjoint": shards_disjoint,
            }
            if not math.isfinite(train_loss):
                status = "diverged"
                metrics.update(status=status, loss=float("nan"), final=True,
                               error=f"training loss became {train_loss} at step {step}")
                _report(metrics, None, rank)
                break
            _report(metrics, (model, optimizer, scheduler, step, meta) if save else None, rank,
                    accelerator=accelerator)
            window_loss.zero_()
            window_steps, window_start = 0, time.perf_counter()
            if save:
                last_save = window_start

    last_step_at = time.time()
    if status != "diverged":
        eval_loss = _evaluate(accelerator, model, task, val_set, rank, world)
        status = "ok" if math.isfinite(eval_loss) else "diverged"
        # "final", never "done": Tune takes a reported done=True for the trial's end and kills
        # the trial driver at once, while the Train controller is still shutting down; the
        # worker group it then restarts holds its CPUs until the sweep ends (seen as a sweep
        # stuck after ~100 points, every CPU held by such placement groups).
        final = {
            **metrics,
            "status": status,
            "loss": eval_loss,
            "eval_samples": min(task.eval_samples, len(val_set)),
            "last_step_at": last_step_at,
            "finished_at": time.time(),
            "final": True,
        }
        if status == "diverged":
            final["error"] = f"held-out loss is {eval_loss}"
        _report(final, None, rank)
        metrics = final
    _release(accelerator, model, optimizer)
    return metrics


def _dry_run(point: SweepPoint, law: dict, task: Task) -> dict:
    """Same Ray path, no training: the loss comes from `law` plus log-normal noise."""
    import ray
    import ray.train
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank = ray.train.get_context().get_world_rank()
    law = {**CHINCHILLA_LAW, **(law if isinstance(law, dict) else {})}
    rng = np.random.default_rng(abs(hash((point.point_id, task.seed))) % 2**32)
    clean = law["E"] + law["A"] / point.params ** law["alpha"] + law["B"] / point.tokens ** law["beta"]
    loss = clean * math.exp(law.get("noise", DRY_RUN_NOISE) * rng.standard_normal())
    now = time.time()
    metrics = {
        "point_id": point.point_id,
        "steps": point.steps,
        "num_processes": accelerator.num_processes,
        "worker_pid": os.getpid(),  # Tune fills "pid" with the trial driver's own
        "node_id": ray.get_runtime_context().get_node_id(),
        "started_at": now,
        "first_step_at": now,
        "last_step_at": now,
        "attempts": 1,
        "step": point.steps,
        "tokens": point.tokens,
        "flops": point.flops,
        "train_loss": loss,
        "status": "ok",
        "loss": loss,
        "dry_run": True,
        "finished_at": now,
        "final": True,
    }
    _report(metrics, None, rank)
    _release(accelerator)
    return metrics


def _make_accelerator(task: Task):
    import torch
    from accelerate import Accelerator

    on_gpu = torch.cuda.is_available()
    precision = task.precision
    if precision == "auto":
        # bf16 autocast is the standard for transformer training on GPUs (fp32 master
        # weights); CPUs run fp32, where bf16 matmuls are slow on most parts.
        precision = "bf16" if on_gpu else "no"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return Accelerator(mixed_precision=precision, cpu=not on_gpu)
    # A group of one: Ray's torch backend sets LOCAL_RANK even then, so Accelerate would
    # take it for a distributed run and wrap the model in DistributedDataParallel, whose
    # gradient bucketing and all-reduce cost ~4 % per step for nothing (benchmarks/RESULTS.md,
    # "the worker-loop gap"). Without it Accelerate sees the single process it is.
    local_rank = os.environ.pop("LOCAL_RANK", None)
    try:
        return Accelerator(mixed_precision=precision, cpu=not on_gpu)
    finally:
        if local_rank is not None:
            os.environ["LOCAL_RANK"] = local_rank


def _adamw(model, task: Task, lr: float):
    """AdamW with weight decay on matrices only (nanoGPT's configure_optimizers)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": task.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=task.betas)


def _to_device(batch, device):
    import torch

    return torch.utils._pytree.tree_map(
        lambda t: t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t, batch
    )


def _check_shards(accelerator, positions, world) -> bool:
    """Gather every rank's sample positions of one step and check they do not overlap."""
    import torch

    mine = torch.tensor(list(positions), dtype=torch.long, device=accelerator.device)
    everyone = accelerator.gather(mine).cpu().tolist()
    return len(set(everyone)) == len(everyone) == len(positions) * world


def _evaluate(accelerator, model, task: Task, val_set, rank: int, world: int) -> float:
    """Mean held-out loss (nats per token) over the first `eval_samples` validation samples.

    The set is the same for every point of the sweep, so losses are comparable across
    points; each rank evaluates a disjoint stride of it and the sums are reduced.
    """
    import torch
    from torch.utils.data import default_collate

    n = min(task.eval_samples, len(val_set))
    mine = list(range(rank, n, world))
    per_rank = max(1, task.batch_size // world)
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    net = accelerator.unwrap_model(model)
    net.eval()
    with torch.no_grad(), accelerator.autocast():
        for i in range(0, len(mine), per_rank):
            chunk = mine[i : i + per_rank]
            batch = _to_device(default_collate([val_set[j] for j in chunk]), accelerator.device)
            total += task.loss_fn(net, batch).double() * len(chunk)
    return float(accelerator.reduce(total, "sum").item() / n)


def _report(metrics: dict, to_save, rank: int, accelerator=None) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint when there is one."""
    import ray.train
    import torch

    if to_save is None:
        ray.train.report(metrics)
        return
    model, optimizer, scheduler, step, meta = to_save
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(
            {
                "model": accelerator.unwrap_model(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "step": step,  # the data position: the next optimizer step to take
                "started_at": meta["started_at"],
                "attempts": meta["attempts"],
            },
            Path(tmp) / CHECKPOINT_FILE,
        )
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"step-{step:08d}",
        )


def _load_checkpoint():
    """The state of the last checkpoint of this point, or None on a first attempt."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        # weights_only: checkpoints hold tensors and numbers only, never arbitrary pickles.
        return torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True)


def _release(accelerator, *objects) -> None:
    """Free the trial's memory: worker processes may outlive the trial."""
    import torch
    from accelerate.state import AcceleratorState

    accelerator.free_memory(*objects)
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    AcceleratorState._reset_state(reset_partial_state=False)
