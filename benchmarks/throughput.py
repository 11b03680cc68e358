"""Worker-loop throughput against plain PyTorch, same model, batch and threads, one run.

    python benchmarks/throughput.py          # appends to benchmarks/RESULTS.md

Tokens per second between the first and the last optimizer step of one point (size 4 of
the tiny GPT, 64-token samples, 16-sample global batch): (a) benchmarks/plain_loop.py
in-process with 1 torch thread, run before and after the Ray runs (the mean is the baseline); (b) flops_fit's worker loop (Ray Train + Accelerate) with
1 worker of 1 CPU; (c) the same with 2 workers of 1 CPU each (data parallel, gloo).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flops_fit as ff  # noqa: E402
from overhead import make_task  # noqa: E402
from plain_loop import train_plain  # noqa: E402
from results_file import append_result  # noqa: E402

BUDGET = 8e11  # FLOPs: about 20 s of training for size 4 on one core
SIZE = 4


def worker_tokens_per_s(plan, task, storage, num_workers) -> float:
    res = ff.run_sweep(plan, task, name=f"throughput-{num_workers}", storage_path=storage,
                       num_workers=num_workers, live_fit=False, verbose=False)
    row = res.table.iloc[0]
    assert row.status == "ok", row.error
    # The first step's timestamp is taken after it, so count the steps after it.
    return (row.tokens - task.batch_tokens) / (row.last_step_at - row.first_step_at)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="flops_fit-throughput-"))
    try:
        task = make_task(str(work / "cache"))
        plan = ff.plan_sweep(task, [BUDGET], sizes=[SIZE])
        # Plain runs before and after the Ray runs: run-to-run noise here is 3-5 %, so the
        # baseline is their mean and both are shown.
        plain_runs = [train_plain(plan.points[0], task, threads=1)["tokens_per_s"]]
        one = worker_tokens_per_s(plan, task, str(work / "runs"), 1)
        two = worker_tokens_per_s(plan, task, str(work / "runs"), 2)
        plain_runs.append(train_plain(plan.points[0], task, threads=1)["tokens_per_s"])
        plain = sum(plain_runs) / len(plain_runs)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    point = plan.points[0]
    lines = [
        f"point: {point.point_id}, {point.params:,} params, {point.steps} steps of {task.batch_tokens} tokens",
        f"(a) plain PyTorch, 1 thread:        {plain:,.0f} tokens/s  (mean of {plain_runs[0]:,.0f} before "
        f"and {plain_runs[1]:,.0f} after the Ray runs)",
        f"(b) worker loop, 1 worker x 1 CPU:  {one:,.0f} tokens/s  ({one / plain:.2f}x plain)",
        f"(c) worker loop, 2 workers x 1 CPU: {two:,.0f} tokens/s  ({two / plain:.2f}x plain)",
    ]
    print("\n".join(lines))
    if not args.no_write:
        append_result("Worker-loop throughput", "python benchmarks/throughput.py", lines, args.label)


if __name__ == "__main__":
    main()
