"""Dry runs: a sweep's whole Ray path with no training, each point's loss drawn from a law.

Apart from the loop (train.py) because nothing here trains: the loss of a point comes from
a scaling law (law.py's parametric_loss) with seeded noise and an optional learning-rate
term, so a sweep, its searches and its fit can be rehearsed on any machine in seconds.
"""

from __future__ import annotations

import hashlib
import math
import os
import time

import numpy as np

from .checkpointing import report
from .device import release
from .law import parametric_loss
from .plan import SweepPoint
from .task import Task

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
LAW_TERMS = ("E", "A", "B", "alpha", "beta")  # the arguments of law.parametric_loss


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
    clean = float(parametric_loss(point.params, point.tokens, **{k: law[k] for k in LAW_TERMS}))
    if lr is not None and law["lr_k"]:
        clean += law["lr_k"] * math.log(lr / (law["lr_c"] * point.params ** -law["lr_g"])) ** 2
    return clean * math.exp(law.get("noise", DRY_RUN_NOISE) * rng.standard_normal())


def dry_run_point(point: SweepPoint, law: dict, task: Task, settings: dict) -> dict:
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
    report(metrics, None, rank)
    release(accelerator)
    return metrics
