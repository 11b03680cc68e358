"""Where the worker loop's gap to plain PyTorch comes from, measured side by side in one run.

    python benchmarks/worker_gap.py          # appends to benchmarks/RESULTS.md

(1) The plain loop (benchmarks/plain_loop.py, 1 torch thread) in this process, in a thread
    of this process, in a Ray actor of 1 CPU and in a thread of that actor: is a Ray worker
    process (or training off the main thread, as Ray Train does) slower by itself?
(2) In this process, the worker loop's step (a fresh Accelerator, prepared model and
    optimizer, autocast, accelerator.backward and clip_grad_norm_) against the plain step,
    300 steps each, alternating: what Accelerate's wrappers cost.
Same point as benchmarks/throughput.py.
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

    from flops_fit.train import _make_accelerator, _to_device

    train_set = data[0]
    order = np.random.default_rng(task.seed).permutation(len(train_set))
    model, opt, sched = fresh_state(point, task)
    if accelerate:
        acc = _make_accelerator(task)
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
            loss = task.loss_fn(model, _to_device(batch, acc.device))
        acc.backward(loss)
        if task.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), task.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window_loss += loss.detach().float()
    return STEPS / (time.perf_counter() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--label", default="")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the four places in (1)")
    p.add_argument("--pairs", type=int, default=8, help="alternating step comparisons in (2)")
    args = p.parse_args(argv)
    import ray
    import torch

    torch.set_num_threads(1)
    task = make_task(tempfile.mkdtemp(prefix="flops_fit-gap-"))
    point = ff.plan_sweep(task, [BUDGET], sizes=[SIZE]).points[0]

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
        for _ in range(args.rounds):
            places["this process"].append(plain_tokens_per_s(point, task, False))
            places["a thread of it"].append(plain_tokens_per_s(point, task, True))
            places["a Ray actor"].append(ray.get(actor.run.remote(False)))
            places["a thread of the actor"].append(ray.get(actor.run.remote(True)))
    finally:
        ray.shutdown()
    data = task.data()
    steps_per_s(point, task, data, False), steps_per_s(point, task, data, True)  # warm
    pairs = [(steps_per_s(point, task, data, False), steps_per_s(point, task, data, True))
             for _ in range(args.pairs)]
    base = statistics.median(places["this process"])
    lines = [f"point: {point.point_id}, {point.params:,} params, 1 torch thread",
             "(1) plain loop, tokens/s by where it runs (median; runs):"]
    for name, runs in places.items():
        lines.append(f"    {name:24s} {statistics.median(runs):8,.0f}  {statistics.median(runs) / base:.3f}x  "
                     f"({', '.join(f'{x:,.0f}' for x in runs)})")
    ratios = [a / p for p, a in pairs]
    lines += [f"(2) Accelerate step / plain step, {STEPS} steps each, {args.pairs} alternating pairs: "
              f"{', '.join(f'{r:.3f}' for r in ratios)}",
              f"    median {statistics.median(ratios):.3f}"]
    print("\n".join(lines))
    if not args.no_write:
        append_result("Worker-loop gap, by cause", "python benchmarks/worker_gap.py", lines, args.label)


if __name__ == "__main__":
    main()
