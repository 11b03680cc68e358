"""When the worker loop reports and checkpoints, what a checkpoint holds, and resuming from one.

Apart from the loop (train.py) because a checkpoint is a contract of its own: how often one
is taken (a checkpoint travels with a Ray Train report, so the two share one cadence), what
it holds (everything a restarted attempt needs to continue bit-exactly), how it is stored
(uploaded in the background where Ray Train can, else copied before the loop goes on), and
how a new attempt reads it back. `run` below is the loop's `train.Run` (any object with the
same fields).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

CHECKPOINT_FILE = "state.pt"
REPORTS_PER_POINT = 20  # progress reports per point when Task.report_every is 0
CHECKPOINTS_PER_POINT = 10  # checkpoints per point when Task.checkpoint_every is 0
# With those defaults, reports and checkpoints are also at least this far apart (seconds).
# Ray Train's controller takes one report per health check (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)
# from a queue of one, so faster reports stall the step loop: frequent reports made a short
# point several times slower (benchmarks/RESULTS.md, "Defaults measured once"). A
# point shorter than the checkpoint gap reruns from the start faster than it would checkpoint.
MIN_REPORT_INTERVAL_S = 1.0
MIN_CHECKPOINT_INTERVAL_S = 10.0


class ReportWindow:
    """Training loss and time since the last report; kept on the device (no host sync per step)."""

    def __init__(self, run):
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


def report_due(run, window: ReportWindow):
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
    report_now = save or step == steps or task.report_every > 0 or now - window.start >= MIN_REPORT_INTERVAL_S
    mine = float(2 if save else 1 if report_now else 0) if run.rank == 0 else 0.0
    decision = torch.tensor(mine, device=run.accelerator.device)
    loss_sum, decided = run.accelerator.reduce(torch.stack([window.loss, decision]), "sum").tolist()
    train_loss = loss_sum / run.world / window.steps
    if math.isfinite(train_loss) and decided < 1:
        return None
    return decided == 2, train_loss


def report(metrics: dict, run, rank: int) -> None:
    """Every rank reports (a barrier); rank 0 attaches a checkpoint of `run` when given one."""
    import ray.train
    import torch

    if run is None or rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    upload = getattr(ray.train, "CheckpointUploadMode", None)
    if upload is None:  # a Train without asynchronous upload: rank 0 copies it before going on
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(checkpoint_state(run), Path(tmp) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step-{run.step:08d}")
        return
    # Ray Train uploads the checkpoint in the background and deletes the local copy once it is
    # stored, so the other ranks do not wait at the next step's all-reduce while rank 0 copies
    # it to the storage path (an object store on a cluster).
    tmp = tempfile.mkdtemp(prefix="flops_fit-checkpoint-")
    torch.save(checkpoint_state(run), Path(tmp) / CHECKPOINT_FILE)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                     checkpoint_dir_name=f"step-{run.step:08d}", checkpoint_upload_mode=upload.ASYNC)


def checkpoint_state(run) -> dict:
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


def load_checkpoint():
    """The state of the last checkpoint of this point, or None on a first attempt."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        # weights_only: checkpoints hold tensors and numbers only, never arbitrary pickles.
        return torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True)


def resume(run, state: dict | None) -> None:
    """Continue from a checkpoint's state (weights, optimizer, schedule, loss scaler, RNG and
    data position), or leave a fresh attempt as it is; either way every report then carries
    the attempt's start, number and the step it resumed from."""
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
