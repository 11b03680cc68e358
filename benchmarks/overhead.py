"""Orchestration overhead: the same 8 points in plain PyTorch and through run_sweep.

    python benchmarks/overhead.py            # appends to benchmarks/RESULTS.md

(a) the 8 points one after another in-process (benchmarks/plain_loop.py, torch using every
    core of the machine); (b) `flops_fit.run_sweep` with its defaults (1 worker per point,
    points in parallel as the cluster fits them). Both train every point for exactly its
    planned steps. Prints `ratio: X` (wall b / wall a) and `amortised overhead: Y s`
    ((wall b - wall a) / points), and per-trial latencies measured from Tune's trial start
    to the worker's first optimizer step and from the last step to Tune's trial end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flops_fit as ff  # noqa: E402
from flops_fit.data import TextCorpus  # noqa: E402
from flops_fit.models import GPT, lm_loss  # noqa: E402
from plain_loop import train_plain  # noqa: E402
from results_file import append_result  # noqa: E402

# 8 points of the tiny GPT (aspect 8, 64-token samples, 16-sample batch) that each train
# for about 7-20 s in-process on a 2-core machine.
BUDGETS = [2e11, 3e11]  # FLOPs
SIZES = [2, 3, 4, 5]


def make_task(cache_dir):
    import functools

    return ff.Task(
        model_fn=functools.partial(GPT.from_size, aspect=8, head_dim=8, seq_len=64),
        data=TextCorpus(seq_len=64, cache_dir=cache_dir),
        loss_fn=lm_loss,
        tokens_per_sample=64,
        batch_size=16,
        lr=1e-2,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    p.add_argument("--label", default="", help="a note stored with the numbers (e.g. 'before')")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="flops_fit-overhead-"))
    try:
        task = make_task(str(work / "cache"))
        plan = ff.plan_sweep(task, BUDGETS, sizes=SIZES)
        data = task.data()

        t0 = time.perf_counter()
        plain = [train_plain(pt, task, threads=os.cpu_count(), data=data) for pt in plan]
        wall_a = time.perf_counter() - t0

        from ray import tune

        class Timeline(tune.Callback):
            def __init__(self):
                self.start, self.end = {}, {}

            def on_trial_start(self, iteration, trials, trial, **info):
                self.start[trial.config["point"]["point_id"]] = time.time()

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.end[trial.config["point"]["point_id"]] = time.time()

        timeline = Timeline()
        t0 = time.perf_counter()
        res = ff.run_sweep(plan, task, name="overhead", storage_path=str(work / "runs"), live_fit=False,
                           verbose=False, callbacks=[timeline])
        wall_b = time.perf_counter() - t0
        t = res.table.set_index("point_id")
        assert (t.status == "ok").all(), t[["status", "error"]]
        to_first = [t.loc[k, "first_step_at"] - timeline.start[k] for k in timeline.start]
        from_last = [timeline.end[k] - t.loc[k, "last_step_at"] for k in timeline.end]
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    n = len(plan)
    lines = [
        f"points: {n} ({', '.join(f'{q.point_id}: {q.steps} steps' for q in plan)})",
        f"(a) plain in-process loop: {wall_a:.1f} s (training {sum(r['train_s'] for r in plain):.1f} s)",
        f"(b) run_sweep defaults:    {wall_b:.1f} s",
        f"trial start -> first step: median {statistics.median(to_first):.1f} s, max {max(to_first):.1f} s",
        f"last step -> trial end:    median {statistics.median(from_last):.1f} s, max {max(from_last):.1f} s",
        f"ratio: {wall_b / wall_a:.2f}",
        f"amortised overhead: {(wall_b - wall_a) / n:.1f} s",
    ]
    print("\n".join(lines))
    if not args.no_write:
        append_result("Orchestration overhead", "python benchmarks/overhead.py", lines, args.label)


if __name__ == "__main__":
    main()
