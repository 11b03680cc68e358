"""Orchestration overhead: the same 8 points in plain PyTorch and through run_sweep.

    python benchmarks/overhead.py            # appends to benchmarks/RESULTS.md

(a) the 8 points one after another in-process (benchmarks/plain_loop.py, torch using every
    core of the machine); (b) `flops_fit.run_sweep` with its defaults (1 worker per point,
    points in parallel as the cluster fits them). Both train every point for exactly its
    planned steps. Prints `ratio: X` (wall b / wall a) and `amortised overhead: Y s`
    ((wall b - wall a) / points), and per-trial latencies measured from Tune's trial start
    to the worker's first optimizer step and from the last step to Tune's trial end.
    During (b) it samples every process of the machine and prints the CPU seconds each
    kind of Ray process used (its title: ray::ImplicitFunc is a trial driver,
    ray::RayTrainWorker a training worker, ...), per point: where the overhead goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flops_fit as ff  # noqa: E402
from flops_fit.data import TextCorpus  # noqa: E402
from flops_fit.models import GPT, lm_loss  # noqa: E402
from plain_loop import train_plain  # noqa: E402
from process_sampler import ProcessSampler  # noqa: E402
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


class CpuByProcess(ProcessSampler):
    """Samples every process's CPU time (user + system, s) while running; groups new
    processes by title: a Ray worker's proctitle names its actor class (`ray::IDLE` until it
    gets one); non-Ray processes started meanwhile count under their executable name."""

    def __init__(self, interval_s: float = 0.2):
        super().__init__(interval_s)
        self.before = {p.pid: self._cpu(p) for p in self.psutil.process_iter()}
        self.cpu, self.title = {}, {}

    @staticmethod
    def _cpu(p) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system + t.children_user + t.children_system
        except Exception:
            return 0.0

    def sample(self) -> None:
        for p in self.psutil.process_iter():
            try:
                cmd = p.cmdline()
            except Exception:
                continue
            title = cmd[0].split(" ")[0] if cmd and cmd[0].startswith("ray::") else p.name()
            if not title.startswith("ray::IDLE") or p.pid not in self.title:
                self.title[p.pid] = title
            self.cpu[p.pid] = self._cpu(p) - self.before.get(p.pid, 0.0)

    def by_title(self, exclude_pid: int) -> dict:
        """CPU seconds by actor class. A Ray worker's title also names the method it runs
        (`ray::TrainController.run`) and is cut short while it changes (`ray::ImplicitFu`):
        both count under the class."""
        titles = {t.split(".")[0] for t in self.title.values()}
        full = {t: max((u for u in titles if u.startswith(t)), key=len) for t in titles}
        out = defaultdict(float)
        for pid, cpu in self.cpu.items():
            if pid != exclude_pid and cpu > 0:
                out[full[self.title[pid].split(".")[0]]] += cpu
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


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

        t0, c0 = time.perf_counter(), time.process_time()
        plain = [train_plain(pt, task, threads=os.cpu_count(), data=data) for pt in plan]
        wall_a, cpu_a = time.perf_counter() - t0, time.process_time() - c0

        from ray import tune

        class Timeline(tune.Callback):
            def __init__(self):
                self.start, self.end = {}, {}

            def on_trial_start(self, iteration, trials, trial, **info):
                self.start[trial.config["point"]["point_id"]] = time.time()

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.end[trial.config["point"]["point_id"]] = time.time()

        timeline = Timeline()
        own = time.process_time()
        with CpuByProcess() as sampler:
            t0 = time.perf_counter()
            res = ff.run_sweep(plan, task, name="overhead", storage_path=str(work / "runs"), live_fit=False,
                               verbose=False, callbacks=[timeline])
            wall_b = time.perf_counter() - t0
        cpu = sampler.by_title(exclude_pid=os.getpid())
        cpu["this script (Tune driver)"] = time.process_time() - own
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
        f"CPU seconds per point: (a) {cpu_a / n:.2f} (all of it training); (b) by process:",
        *[f"  {title:<32} {sec / n:6.2f}" for title, sec in cpu.items() if sec / n >= 0.05],
        f"  {'total':<32} {sum(cpu.values()) / n:6.2f}",
    ]
    print("\n".join(lines))
    if not args.no_write:
        append_result("Orchestration overhead", "python benchmarks/overhead.py", lines, args.label)


if __name__ == "__main__":
    main()
