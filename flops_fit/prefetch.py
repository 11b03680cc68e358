"""The worker loop's data path: which samples each optimizer step takes, and the batches of
the next steps built while the current one trains.

Apart from the loop (train.py) because it runs a thread of its own beside the training
thread, with its own hand-off and shutdown rules; the loop only asks it for the next step's
micro-batches. `run` below is the loop's `train.Run` (any object with the same fields).
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from .device import map_tensors

# Optimizer steps of batches built ahead of the one training on a GPU: one hides the build
# time; a second absorbs a slow sample (a page-cache miss) without stalling the device.
PREFETCH_STEPS = 2
# On a CPU worker none: each batch is built in the training thread when it is taken. There a
# builder thread has no idle device time to fill, only the GIL and the worker's CPUs to share,
# and in a Ray Train worker the hand-offs slowed every step (benchmarks/RESULTS.md,
# "Worker-loop throughput", (b) against (b')).
CPU_PREFETCH_STEPS = 0
QUEUE_POLL_S = 0.1  # how often a full prefetch queue checks that the loop still runs


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


def step_positions(run, step: int) -> list:
    """This rank's sample positions of optimizer step `step`, one range per micro-batch."""
    mine = shard_positions(step, run.task.batch_size, run.rank, run.world)
    micro = len(mine) // run.accum
    return [mine[i * micro:(i + 1) * micro] for i in range(run.accum)]


def shards_disjoint(accelerator, positions, world) -> bool:
    """Gather every rank's sample positions of one step and check they do not overlap."""
    import torch

    mine = torch.tensor(list(positions), dtype=torch.long, device=accelerator.device)
    everyone = accelerator.gather(mine).cpu().tolist()
    return len(set(everyone)) == len(everyone) == len(positions) * world


class Prefetcher:
    """Builds the micro-batches of the next optimizer steps in a background thread while the
    current step runs, in step order, from exactly the positions of `shard_positions`: the
    same samples as building them in the loop, so a resumed run stays bit-exact. On a GPU
    the batches are pinned, so the copy to the device overlaps the compute. Depth 0 (the
    default on a CPU, CPU_PREFETCH_STEPS) builds each batch in the calling thread when it
    is taken."""

    def __init__(self, run, depth: int | None = None):
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
            batch = map_tensors(lambda t: t.pin_memory(), batch)
        return batch

    def _build_step(self, step) -> list:
        return [self._batch(p) for p in step_positions(self._run, step)]

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
