"""Layer 1 of the Ray stack: the worker loop, run on every worker of a point's Ray Train group.

For one sweep point it creates a fresh `accelerate.Accelerator`, builds the model for the
point's size, trains exactly the planned number of optimizer steps of the global batch
(the budget is enforced here, not just written down), evaluates on a fixed held-out set,
checkpoints through Ray Train so a restarted group resumes where it stopped, and reports
metrics. Every rank calls `ray.train.report` (it is a barrier); rank 0's metrics are the
ones Tune sees, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import math
import os
import queue
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .hardware import choose_precision, peak_flops
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
# Optimizer steps of batches built ahead of the one training on a GPU: one hides the build
# time; a second absorbs a slow sample (a page-cache miss) without stalling the device.
PREFETCH_STEPS = 2
# On a CPU worker none: each batch is built in the training thread when it is taken. There a
# builder thread has no idle device time to fill, only the GIL and the worker's CPUs to share,
# and in a Ray Train worker the hand-offs slowed every step (benchmarks/RESULTS.md).
CPU_PREFETCH_STEPS = 0
QUEUE_POLL_S = 0.1  # how often a full prefetch queue checks that the loop still runs

# Default law for dry runs: Chinchilla's fit (Hoffmann et al. 2022, eq. 10), so a rehearsal
# produces realistic IsoFLOP valleys and a fit that can be checked against known values.
CHINCHILLA_LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
DRY_RUN_NOISE = 0.01  # relative (log-normal) noise on dry-run losses
# The dry run's learning-rate term: L(N, D, lr) = L(N, D) + lr_k * ln(lr / lr*(N))^2 with
# lr*(N) = lr_c * N^-lr_g (nats per token; lr the point's peak LR). lr_c and lr_g are set
# to this project's CPU GPTs, whose best peak LR of {1e-3, 3e-3, 1e-2} was 1e-2 at 7e3-3e4
# parameters and 3e-3 at 1e5-4e5 (budget 3e11, seq 128, batch 32). lr_k is 0 unless a dry
# run asks for it (dry_run={"lr_k": 0.05}): a rehearsal then keeps measuring the law it
# was given whatever its learning rate, and the term is a question one asks.
DRY_RUN_LR_LAW = {"lr_k": 0.0, "lr_c": 0.9, "lr_g": 0.47}


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
    if point.batch_size:  # a batch rule: this point's own batch, as the plan fixed it
        task = dataclasses.replace(task, batch_size=point.batch_size)
    settings = point_settings(config["point"], task)
    if config.get("dry_run") is not None:  # {} means "the default law"
        return _dry_run(point, config["dry_run"], task, settings)
    return _train(point, task, settings, threads=config.get("threads", 0))


def point_settings(point: dict, task: Task) -> dict:
    """The point's peak `lr` and `warmup` (fraction of its steps): as the sweep's driver
    resolved them into the point (rule x LR-search multiplier), else from the task."""
    if point.get("lr") is not None and point.get("warmup") is not None:
        return {"lr": float(point["lr"]), "warmup": float(point["warmup"])}
    hp = task.hyperparameters(point["params"], point["tokens"], point["flops"])
    return {"lr": hp["lr"] * float(point.get("lr_multiplier") or 1.0), "warmup": hp["warmup"]}


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


@dataclass
class _Run:
    """One attempt at one point on one worker: what the small functions of the loop share."""

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
    run = _setup(point, task, settings, threads)
    _resume(run, _load_checkpoint())
    batches = Prefetcher(run)
    window = _Window(run)
    metrics, status = {}, "running"
    try:
        while run.step < point.steps:
            window.add(_step(run, batches.next()))
            decision = _decide(run, window)
            if decision is None:
                continue
            save, train_loss = decision
            metrics = _progress(run, window, train_loss)
            if not math.isfinite(train_loss):
                status = "diverged"
                metrics.update(status=status, loss=float("nan"), final=True,
                               error=f"training loss became {train_loss} at step {run.step}")
                _report(metrics, None, run.rank)
                break
            _report(metrics, run if save else None, run.rank)
            window.restart(saved=save)
    finally:
        batches.close()
    if status != "diverged":
        metrics = _finish(run, metrics)
    _release(run.accelerator, run.model, run.optimizer)
    return metrics


def _setup(point: SweepPoint, task: Task, settings: dict, threads: int) -> _Run:
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
    accelerator = _make_accelerator(task)
    # Data factories may write a cache (TextCorpus tokenizes once): the first worker of each
    # node builds it while the node's others wait, then they read it.
    with accelerator.local_main_process_first():
        train_set, val_set = task.data()
    net, model, optimizer, scheduler = _build(point, task, accelerator, settings)
    precision = str(accelerator.mixed_precision)
    device_name = torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else None
    run = _Run(point=point, task=task, rank=rank, world=world, accum=accum, accelerator=accelerator,
               model=model, net=net, optimizer=optimizer, scheduler=scheduler, train_set=train_set,
               val_set=val_set, peak_flops=peak_flops(device_name, precision))
    run.meta = {"started_at": time.time(), "attempts": 1, "restored_from_step": None}
    run.base = {
        "point_id": point.point_id,
        "steps": point.steps,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "precision": precision,
        "device": device_name or "cpu",
        "micro_batch_size": (task.batch_size // world) // accum,
        "accumulation_steps": accum,
        "node": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "worker_pid": os.getpid(),  # Tune fills "pid" with the trial driver's own
        "peak_lr": settings["lr"],
    }
    return run


def _build(point: SweepPoint, task: Task, accelerator, settings: dict):
    """The bare model, the model to train (compiled if Task.compile, prepared by Accelerate),
    its optimizer and its LR schedule (peak `settings["lr"]`, warmup `settings["warmup"]`),
    all fresh."""
    import torch

    torch.manual_seed(task.seed)
    net = task.model_fn(point.size)
    optimizer = _adamw(net, task, settings["lr"])
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


def _resume(run: _Run, state: dict | None) -> None:
    """Continue from a checkpoint's state (weights, optimizer, schedule, loss scaler, RNG and
    data position), or leave a fresh attempt as it is; then check the data shards."""
    import torch

    if state is not None:
        run.net.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if run.accelerator.scaler is not None and state.get("scaler"):
            run.accelerator.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        run.step = int(state["step"])
        run.skipped_steps = int(state.get("skipped_steps", 0))
        run.meta = {
            "started_at": float(state["started_at"]),
            "attempts": int(state["attempts"]) + 1,
            "restored_from_step": run.step,
        }
    run.base.update(run.meta)
    first = _positions(run, run.step)
    run.base["shards_disjoint"] = _check_shards(run.accelerator, [p for m in first for p in m], run.world)


def _positions(run: _Run, step: int) -> list:
    """This rank's sample positions of optimizer step `step`, one range per micro-batch."""
    mine = shard_positions(step, run.task.batch_size, run.rank, run.world)
    micro = len(mine) // run.accum
    return [mine[i * micro:(i + 1) * micro] for i in range(run.accum)]


def _step(run: _Run, micro_batches: list):
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
                loss = run.task.loss_fn(model, _to_device(batch, accelerator.device))
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


class _Window:
    """Training loss and time since the last report; kept on the device (no host sync per step)."""

    def __init__(self, run: _Run):
        import torch

        self.run = run
        self.loss = torch.zeros((), device=run.accelerator.device)
        self.steps = 0
        self.start = self.last_save = time.perf_counter()
        self.first_step_at = None
        self.report_every = run.task.report_every or max(1, run.point.steps // REPORTS_PER_POINT)
        self.checkpoint_every = run.task.checkpoint_every or max(1, run.point.steps // CHECKPOINTS_PER_POINT)

    def add(self, loss) -> None:
        self.loss += loss
        self.steps += 1
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def restart(self, saved: bool) -> None:
        self.loss.zero_()
        self.steps, self.start = 0, time.perf_counter()
        if saved:
            self.last_save = self.start


def _decide(run: _Run, window: _Window):
    """After a step: None (go on), or (save a checkpoint?, mean training loss of the window).

    Rank 0's clock decides whether to report (and save) now; the decision travels in the same
    reduce as the loss, so every rank reports at the same steps. A non-finite loss is always
    reported (the point has diverged).
    """
    import torch

    step, steps, task = run.step, run.point.steps, run.task
    save_step = step % window.checkpoint_every == 0 and step < steps
    if not (step % window.report_every == 0 or save_step or step == steps):
        return None
    now = time.perf_counter()
    save = save_step and (task.checkpoint_every > 0 or now - window.last_save >= MIN_CHECKPOINT_INTERVAL_S)
    report = save or step == steps or task.report_every > 0 or now - window.start >= MIN_REPORT_INTERVAL_S
    mine = float(2 if save else 1 if report else 0) if run.rank == 0 else 0.0
    decision = torch.tensor(mine, device=run.accelerator.device)
    loss_sum, decided = run.accelerator.reduce(torch.stack([window.loss, decision]), "sum").tolist()
    train_loss = loss_sum / run.world / window.steps
    if math.isfinite(train_loss) and decided < 1:
        return None
    return decided == 2, train_loss


def _progress(run: _Run, window: _Window, train_loss: float) -> dict:
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


def _finish(run: _Run, metrics: dict) -> dict:
    """Evaluate on the held-out set and report the point's final metrics."""
    last_step_at = time.time()
    eval_loss = _evaluate(run.accelerator, run.net, run.task, run.val_set, run.rank, run.world)
    status = "ok" if math.isfinite(eval_loss) else "diverged"
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
    if status == "diverged":
        final["error"] = f"held-out loss is {eval_loss}"
    _report(final, None, run.rank)
    return final


class Prefetcher:
    """Builds the micro-batches of the next optimizer steps in a background thread while the
    current step runs, in step order, from exactly the positions of `shard_positions`: the
    same samples as building them in the loop, so a resumed run stays bit-exact. On a GPU
    the batches are pinned, so the copy to the device overlaps the compute. Depth 0 (the
    default on a CPU, CPU_PREFETCH_STEPS) builds each batch in the calling thread when it
    is taken."""

    def __init__(self, run: _Run, depth: int | None = None):
        import torch

        if depth is None:
            depth = CPU_PREFETCH_STEPS if run.accelerator.device.type == "cpu" else PREFETCH_STEPS
        self._run, self._pin = run, run.accelerator.device.type == "cuda"
        self._order = np.random.default_rng(run.task.seed).permutation(len(run.train_set))
        self._collate = torch.utils.data.default_collate
        self._next_step = run.step  # depth 0: the step whose batch `next` builds
        self._thread = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._fill, args=(run.step,), daemon=True,
                                            name="flops_fit-prefetch")
            self._thread.start()

    def _batch(self, positions):
        samples = [self._run.train_set[int(self._order[p % len(self._order)])] for p in positions]
        batch = self._collate(samples)
        if self._pin:
            import torch

            batch = torch.utils._pytree.tree_map(
                lambda t: t.pin_memory() if isinstance(t, torch.Tensor) else t, batch)
        return batch

    def _build_step(self, step) -> list:
        return [self._batch(p) for p in _positions(self._run, step)]

    def _fill(self, step):
        try:
            for s in range(step, self._run.point.steps):
                if not self._put(self._build_step(s)):
                    return
        except BaseException as e:  # handed to the training thread, which raises it
            self._put(e)

    def _put(self, item) -> bool:
        """Queue `item` unless the loop has stopped taking batches; False once it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=QUEUE_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> list:
        if self._thread is None:
            try:
                item = self._build_step(self._next_step)
            except Exception as e:
                item = e
            else:
                self._next_step += 1
        else:
            item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"building the batch of step {self._run.step} failed: {item!r}") from item
        return item

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


def dry_run_loss(point: SweepPoint, law: dict | bool, seed: int, lr: float | None = None) -> float:
    """A dry run's loss for `point`, nats/token: `law` (over CHINCHILLA_LAW and
    DRY_RUN_LR_LAW) times log-normal noise; with the point's peak `lr` and lr_k > 0, plus
    lr_k * ln(lr / lr*(N))^2 with lr*(N) = lr_c * N^-lr_g.

    The noise is seeded from the point id and the task seed through a stable hash (blake2b):
    Python's hash() of a string is salted per process, so the same dry run would differ
    between runs and between a driver and its rerun.
    """
    law = {**CHINCHILLA_LAW, **DRY_RUN_LR_LAW, **(law if isinstance(law, dict) else {})}
    key = hashlib.blake2b(f"{point.point_id}|{seed}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(key, "little"))
    clean = law["E"] + law["A"] / point.params ** law["alpha"] + law["B"] / point.tokens ** law["beta"]
    if lr is not None and law["lr_k"]:
        clean += law["lr_k"] * math.log(lr / (law["lr_c"] * point.params ** -law["lr_g"])) ** 2
    return clean * math.exp(law.get("noise", DRY_RUN_NOISE) * rng.standard_normal())


def _dry_run(point: SweepPoint, law: dict, task: Task, settings: dict) -> dict:
    """Same Ray path, no training: the loss comes from `law` plus log-normal noise."""
    import ray
    import ray.train
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank = ray.train.get_context().get_world_rank()
    loss = dry_run_loss(point, law, task.seed, settings["lr"])
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
        "peak_lr": settings["lr"],
        "finished_at": now,
        "final": True,
    }
    _report(metrics, None, rank)
    _release(accelerator)
    return metrics


def _make_accelerator(task: Task):
    """A fresh Accelerator for this attempt, in the precision the device supports.

    A worker that reserved a GPU but sees no usable CUDA device fails here, at once: training
    on the CPU of a GPU node would spend the point's whole budget at a hundredth of the speed.
    """
    import torch
    from accelerate import Accelerator

    gpus = _reserved_gpus()
    if gpus and not torch.cuda.is_available():
        raise RuntimeError(_no_cuda_message(gpus))
    on_gpu = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if on_gpu else None
    precision = choose_precision(task.precision, capability)
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


def _reserved_gpus() -> list:
    """The GPU ids Ray assigned to this worker (empty for a CPU worker or outside Ray)."""
    import ray

    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def _no_cuda_message(gpus: list) -> str:
    import torch

    return (
        f"This worker reserved GPU(s) {gpus} on node {socket.gethostname()} but torch sees no usable "
        f"CUDA device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
        f"torch {torch.__version__}, built for CUDA {torch.version.cuda}). Install a CUDA build of "
        "torch that the node's NVIDIA driver supports (nvidia-smi shows the driver's CUDA version), "
        "or run without use_gpu / --gpu to train on CPUs."
    )


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
            batch = _to_device(default_collate([val_set[j] for j in chunk]), accelerator.device)
            total += task.loss_fn(net, batch).double() * len(chunk)
    return float(accelerator.reduce(total, "sum").item() / n)


def _report(metrics: dict, run: _Run | None, rank: int) -> None:
    """Every rank reports (a barrier); rank 0 attaches a checkpoint of `run` when given one."""
    import ray.train
    import torch

    if run is None or rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    upload = getattr(ray.train, "CheckpointUploadMode", None)
    if upload is None:  # a Train without asynchronous upload: rank 0 copies it before going on
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(_checkpoint_state(run), Path(tmp) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step-{run.step:08d}")
        return
    # Ray Train uploads the checkpoint in the background and deletes the local copy once it is
    # stored, so the other ranks do not wait at the next step's all-reduce while rank 0 copies
    # it to the storage path (an object store on a cluster).
    tmp = tempfile.mkdtemp(prefix="flops_fit-checkpoint-")
    torch.save(_checkpoint_state(run), Path(tmp) / CHECKPOINT_FILE)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                     checkpoint_dir_name=f"step-{run.step:08d}", checkpoint_upload_mode=upload.ASYNC)


def _checkpoint_state(run: _Run) -> dict:
    """All a resumed attempt needs to continue exactly: tensors and numbers only."""
    import torch

    scaler = run.accelerator.scaler
    return {
        "model": run.net.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        # fp16: the loss scale and its growth counter, else a resumed run restarts the scale at
        # 2**16 and skips steps (without advancing the schedule) until it has backed off again.
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": torch.get_rng_state(),
        "step": run.step,  # the data position: the next optimizer step to take
        "skipped_steps": run.skipped_steps,
        "started_at": run.meta["started_at"],
        "attempts": run.meta["attempts"],
    }


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
