"""Where the worker loop's gap to plain PyTorch comes from, measured side by side in one run.

    python benchmarks/worker_gap.py          # appends to benchmarks/RESULTS.md

(1) The plain loop (benchmarks/plain_loop.py, 1 torch thread) in this process, in a thread
    of this process, in a Ray actor of 1 CPU and in a thread of that actor: is a Ray worker
    process (or training off the main thread, as Ray Train does) slower by itself?
(2) In this process, the worker loop's step (a fresh Accelerator, prepared model and
    optimizer, autocast, accelerator.backward and clip_grad_norm_) against the plain step,
    300 steps each, alternating: what Accelerate's wrappers cost.
(3) In this process, the worker loop's own step (`train.optimizer_step`) fed by its batch source
    (`prefetch.Prefetcher`) building batches ahead in a thread (depth PREFETCH_STEPS, the GPU
    default) against building each in the training thread (depth 0, the CPU default), for
    sizes 1, 2 and 4 at the budget of (1), alternating; once on an idle machine and once
    beside a busy process on every other core (as in a sweep, whose points fill the CPUs
    Ray gives them): what the hand-off between the two threads costs on a CPU.
Same point as benchmarks/throughput.py in (1) and (2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flops_fit as ff  # noqa: E402
from overhead import make_task  # noqa: E402
from plain_loop import batch_at, fresh_state, plain_step, train_plain  # noqa: E402
from results_file import append_result  # noqa: E402
from throughput import BUDGET, SIZE  # noqa: E402

STEPS = 300  # per in-process step comparison
DEPTH_SIZES = [1, 2, 4]  # (3): the smallest models have the shortest steps, where it shows most
SPIN = "while True: pass"  # (3): a neighbour that keeps one core busy


def _in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.update(r=fn()))
    t.start()
    t.join()
    return out["r"]


def plain_tokens_per_s(point, task, threaded: bool) -> float:
    run = lambda: train_plain(point, task, threads=1)["tokens_per_s"]  # noqa: E731
    return _in_thread(run) if threaded else run()


def steps_per_s(point, task, data, accelerate: bool) -> float:
    import numpy as np
    import torch

    from flops_fit.device import make_accelerator, to_device

    train_set = data[0]
    order = np.random.default_rng(task.seed).permutation(len(train_set))
    model, opt, sched = fresh_state(point, task)
    if accelerate:
        acc = make_accelerator(task)
        model, opt = acc.prepare(model, opt)
    window_loss = torch.zeros(())
    t = time.perf_counter()
    for step in range(STEPS):
        batch = batch_at(step, task, train_set, order)
        if not accelerate:
            window_loss += plain_step(model, batch, opt, sched, task).detach().float()
            continue
        # The step of flops_fit/train.py's worker loop.
        with acc.autocast():
            loss = task.loss_fn(model, to_device(batch, acc.device))
        acc.backward(loss)
        if task.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), task.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window_loss += loss.detach().float()
    return STEPS / (time.perf_counter() - t)


def worker_loop_steps_per_s(point, task, data, depth: int) -> float:
    """Optimizer steps per second of the worker loop's step, batches from Prefetcher(depth)."""
    import torch

    from flops_fit import prefetch
    from flops_fit import train
    from flops_fit.device import make_accelerator

    accelerator = make_accelerator(task)
    settings = {"lr": task.learning_rate(point.params), "warmup": task.warmup_fraction}  # as plain_loop's
    net, model, optimizer, scheduler = train.build(point, task, accelerator, settings)
    run = train.Run(point=point, task=task, rank=0, world=1, accum=task.accumulation_steps(1),
                 accelerator=accelerator, model=model, net=net, optimizer=optimizer, scheduler=scheduler,
                 train_set=data[0], val_set=data[1], peak_flops=None)
    steps = min(STEPS, point.steps)
    batches = prefetch.Prefetcher(run, depth)
    try:
        window_loss = torch.zeros(())
        t = time.perf_counter()
        for _ in range(steps):
            window_loss += train.optimizer_step(run, batches.next())
        return steps / (time.perf_counter() - t)
    finally:
        batches.close()


def where_the_plain_loop_runs(point, task, rounds: int) -> list:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})  # plain_loop for the actor
    try:
        @ray.remote(num_cpus=1)
        class Runner:
            def run(self, threaded):
                return plain_tokens_per_s(point, task, threaded)

        actor = Runner.remote()
        ray.get(actor.run.remote(False))  # not counted: the actor's imports and data cache
        places = {"this process": [], "a thread of it": [], "a Ray actor": [], "a thread of the actor": []}
        for _ in range(rounds):
            places["this process"].append(plain_tokens_per_s(point, task, False))
            places["a thread of it"].append(plain_tokens_per_s(point, task, True))
            places["a Ray actor"].append(ray.get(actor.run.remote(False)))
            places["a thread of the actor"].append(ray.get(actor.run.remote(True)))
    finally:
        ray.shutdown()
    base = statistics.median(places["this process"])
    lines = ["(1) plain loop, tokens/s by where it runs (median; runs):"]
    for name, runs in places.items():
        lines.append(f"    {name:24s} {statistics.median(runs):8,.0f}  {statistics.median(runs) / base:.3f}x  "
                     f"({', '.join(f'{x:,.0f}' for x in runs)})")
    return lines


def accelerate_wrappers(point, task, data, pairs: int) -> list:
    steps_per_s(point, task, data, False), steps_per_s(point, task, data, True)  # warm
    runs = [(steps_per_s(point, task, data, False), steps_per_s(point, task, data, True))
            for _ in range(pairs)]
    ratios = [a / p for p, a in runs]
    return [f"(2) Accelerate step / plain step, {STEPS} steps each, {pairs} alternating pairs: "
            f"{', '.join(f'{r:.3f}' for r in ratios)}",
            f"    median {statistics.median(ratios):.3f}"]


def batch_building(task, data, pairs: int) -> list:
    import os
    import subprocess

    from flops_fit.prefetch import PREFETCH_STEPS

    lines = [f"(3) worker-loop steps/s, batches built ahead in a thread (depth {PREFETCH_STEPS}) -> in the "
             f"training thread (depth 0), {STEPS} steps each, {pairs} alternating pairs; ratio = in / ahead:"]
    for neighbours in (0, (os.cpu_count() or 2) - 1):
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(neighbours)]
        try:
            lines.append(f"    {'idle machine' if not neighbours else f'beside {neighbours} busy process(es)'}:")
            for size in DEPTH_SIZES:
                sized = ff.plan_sweep(task, [BUDGET], sizes=[size]).points[0]
                worker_loop_steps_per_s(sized, task, data, 0)  # warm
                runs = [(worker_loop_steps_per_s(sized, task, data, PREFETCH_STEPS),
                         worker_loop_steps_per_s(sized, task, data, 0)) for _ in range(pairs)]
                ratios = [i / a for a, i in runs]
                lines.append(f"      size {size}: {statistics.median([a for a, _ in runs]):6.1f} -> "
                             f"{statistics.median([i for _, i in runs]):6.1f} steps/s, ratios "
                             f"{', '.join(f'{r:.3f}' for r in ratios)}, median {statistics.median(ratios):.3f}")
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--label", default="")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the four places in (1)")
    p.add_argument("--pairs", type=int, default=8, help="alternating step comparisons in (2), twice (3)'s")
    p.add_argument("--parts", default="123", help="which comparisons to run, e.g. 3")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    task = make_task(tempfile.mkdtemp(prefix="flops_fit-gap-"))
    point = ff.plan_sweep(task, [BUDGET], sizes=[SIZE]).points[0]
    data = task.data()
    lines = [f"point: {point.point_id}, {point.params:,} params, 1 torch thread"]
    if "1" in args.parts:
        lines += where_the_plain_loop_runs(point, task, args.rounds)
    if "2" in args.parts:
        lines += accelerate_wrappers(point, task, data, args.pairs)
    if "3" in args.parts:
        lines += batch_building(task, data, args.pairs // 2)
    print("\n".join(lines))
    if not args.no_write:
        append_result("Worker-loop gap, by cause", "python benchmarks/worker_gap.py", lines, args.label)


if __name__ == "__main__":
    main()
