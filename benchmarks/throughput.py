"""Worker-loop throughput against plain PyTorch, same model, batch and threads, one run.

    python benchmarks/throughput.py          # appends to benchmarks/RESULTS.md

Tokens per second between the first and the last optimizer step of one point (size 4 of
the tiny GPT, 64-token samples, 16-sample global batch): (a) benchmarks/plain_loop.py
in-process with 1 torch thread; (b) flops_fit's worker loop (Ray Train + Accelerate) with
1 worker of 1 CPU, batches built in its training thread (the CPU default); (b') the same
with batches built ahead in a thread of the worker (the GPU default, forced on the CPU
through a Ray worker set-up hook); (c) (b) with 2 workers of 1 CPU each (data parallel,
gloo); (e) (b) and (b') with the machine full, as in a sweep: two 1-worker points at once
(sizes 3 and 4 at the same budget), alternating; (d) the model FLOP/s of (a) and (b)
against the machine's measured single-thread fp32 matmul FLOP/s (the CPU's counterpart of
MFU).
Plain runs alternate with the 1-worker runs (plain, worker, worker', plain, ..., plain):
on a shared machine speed drifts by 5-20 % between runs, so each worker run is compared
with the mean of the plain runs on either side, and the median of those ratios is the
result. Every worker run starts its own local Ray (as `run_sweep` does), so (b) and (b')
differ only in the hook.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flops_fit as ff  # noqa: E402
from overhead import make_task  # noqa: E402
from plain_loop import train_plain  # noqa: E402
from results_file import append_result  # noqa: E402

BUDGET = 4e11  # FLOPs: a short training of size 4 on one core, long enough to time steps
SIZE = 4
FULL_SIZES = [3, 4]  # (e): one point per core of a 2-core machine
MATMUL_N = 512  # square fp32 matmul for the machine's single-thread peak: big enough for the
# kernel's steady state, small enough to stay in cache like the tiny models' matmuls
MATMUL_REPEATS = 5  # timed blocks; the fastest is the peak (a shared machine only slows things)


def matmul_flops_per_s(n: int = MATMUL_N, repeats: int = MATMUL_REPEATS) -> float:
    """Measured fp32 matmul FLOP/s of one torch thread (2 n^3 FLOPs per product): the CPU
    counterpart of a GPU's datasheet peak, against which a loop's model FLOP/s is read."""
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        products = max(1, int(2e9 / (2 * n**3)))  # ~2 GFLOP per timed block
        best = 0.0
        for _ in range(repeats + 1):  # the first block warms up
            t = time.perf_counter()
            for _ in range(products):
                a @ b
            best = max(best, products * 2 * n**3 / (time.perf_counter() - t))
        return best
    finally:
        torch.set_num_threads(threads)


def build_batches_ahead_on_cpu():
    """Ray worker set-up hook of (b'): CPU workers build batches as GPU workers do."""
    from flops_fit import prefetch

    prefetch.CPU_PREFETCH_STEPS = prefetch.PREFETCH_STEPS


def worker_tokens_per_s(plan, task, storage, num_workers, name, build_ahead: bool = False):
    """Worker-loop tokens/s of each point of the plan, in plan order."""
    import ray

    from flops_fit.ray_setup import LOCAL_TRIAL_SLOTS, TRIAL_RESOURCE, set_ray_env

    runtime_env = {"env_vars": {**set_ray_env(local=True), "PYTHONPATH": str(HERE)}}
    if build_ahead:
        runtime_env["worker_process_setup_hook"] = "throughput.build_batches_ahead_on_cpu"
    ray.init(address="local", resources={TRIAL_RESOURCE: LOCAL_TRIAL_SLOTS}, include_dashboard=False,
             runtime_env=runtime_env, log_to_driver=False)
    try:
        res = ff.run_sweep(task, plan, name=name, storage_path=storage,
                           num_workers=num_workers, live_fit=False, verbose=False)
    finally:
        ray.shutdown()
    assert (res.table.status == "ok").all(), res.table.error.tolist()
    # The first step's timestamp is taken after it, so count the steps after it.
    return [(row.tokens - task.batch_tokens) / (row.last_step_at - row.first_step_at)
            for row in res.table.itertuples()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--label", default="")
    p.add_argument("--repeats", type=int, default=3, help="1-worker runs, each between two plain runs")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="flops_fit-throughput-"))
    try:
        task = make_task(str(work / "cache"))
        plan = ff.plan_sweep(task, [BUDGET], sizes=[SIZE])
        storage = str(work / "runs")

        def plain_run():
            return train_plain(plan.points[0], task, threads=1)["tokens_per_s"]

        plain_runs, ones, aheads = [plain_run()], [], []
        for i in range(args.repeats):
            ones += worker_tokens_per_s(plan, task, storage, 1, f"one-{i}")
            aheads += worker_tokens_per_s(plan, task, storage, 1, f"ahead-{i}", build_ahead=True)
            plain_runs.append(plain_run())
        [two] = worker_tokens_per_s(plan, task, storage, 2, "two")
        full = ff.plan_sweep(task, [BUDGET], sizes=FULL_SIZES)
        full_runs = []  # (in-thread rates, built-ahead rates) per repeat, one rate per point
        for i in range(args.repeats):
            full_runs.append((worker_tokens_per_s(full, task, storage, 1, f"full-{i}"),
                              worker_tokens_per_s(full, task, storage, 1, f"full-ahead-{i}", build_ahead=True)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [w / ((plain_runs[i] + plain_runs[i + 1]) / 2) for i, w in enumerate(ones)]
    inline_vs_ahead = [w / a for w, a in zip(ones, aheads)]
    full_ratios = [i / a for inline, ahead in full_runs for i, a in zip(inline, ahead)]
    plain = statistics.median(plain_runs)
    point = plan.points[0]
    peak = matmul_flops_per_s()

    def flops(tokens_per_s):  # model FLOP/s and the share of the measured matmul peak
        f = tokens_per_s * point.flops_per_token
        return f"{f / 1e9:.2f} GFLOP/s = {100 * f / peak:.1f} % of it"
    lines = [
        f"point: {point.point_id}, {point.params:,} params, {point.steps} steps of {task.batch_tokens} tokens",
        f"(a) plain PyTorch, 1 thread:        {plain:,.0f} tokens/s  (median; runs: "
        f"{', '.join(f'{x:,.0f}' for x in plain_runs)})",
        f"(b) worker loop, 1 worker x 1 CPU:  {statistics.median(ones):,.0f} tokens/s  (median; runs: "
        f"{', '.join(f'{x:,.0f}' for x in ones)})",
        f"    each against the plain runs beside it: {', '.join(f'{r:.3f}' for r in ratios)}",
        f"    worker / plain: {statistics.median(ratios):.2f}x (median)",
        f"(b') batches built ahead in a thread: {statistics.median(aheads):,.0f} tokens/s  (median; runs: "
        f"{', '.join(f'{x:,.0f}' for x in aheads)})",
        f"    (b) / (b') run by run: {', '.join(f'{r:.3f}' for r in inline_vs_ahead)}; "
        f"median {statistics.median(inline_vs_ahead):.2f}x",
        f"(c) worker loop, 2 workers x 1 CPU: {two:,.0f} tokens/s  ({two / plain:.2f}x the plain median)",
        f"(e) two 1-worker points at once ({', '.join(p.point_id for p in full.points)}), tokens/s per "
        f"point, in the training thread | built ahead:",
        *[f"    {', '.join(f'{x:,.0f}' for x in inline)} | {', '.join(f'{x:,.0f}' for x in ahead)}"
          for inline, ahead in full_runs],
        f"    (b) / (b') point by point: {', '.join(f'{r:.3f}' for r in full_ratios)}; "
        f"median {statistics.median(full_ratios):.2f}x",
        f"(d) single-thread fp32 matmul ({MATMUL_N}^3), measured: {peak / 1e9:.2f} GFLOP/s; model FLOP/s "
        f"({point.flops_per_token:,.0f} FLOPs/token):",
        f"    plain {flops(plain)}; worker loop {flops(statistics.median(ones))}",
    ]
    print("\n".join(lines))
    if not args.no_write:
        append_result("Worker-loop throughput", "python benchmarks/throughput.py", lines, args.label)


if __name__ == "__main__":
    main()
