"""Memory each concurrent point costs on the Ray head (where the sweep driver and Tune's
trial drivers run; on a cluster the training workers run elsewhere).

    python benchmarks/head_memory.py            # appends to benchmarks/RESULTS.md

Runs POINTS real points at once on a local Ray (each worker reserves 2/POINTS CPUs so that
they all fit) and samples, once a second, the unique memory (USS: pages no other process
shares) of every Ray process by title. At the sample with the most trial drivers alive it
prints, per kind of process, how many there were and their memory, and the memory per
point of the processes a point starts besides its training workers: its Tune trial driver
(ray::ImplicitFunc), Ray Train's controller and the processes it starts (placement-group
cleaner, report queue of TuneReportCallback, ...). ray#65443 reports ~600 MB per point.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flops_fit as ff  # noqa: E402
from overhead import make_task  # noqa: E402
from process_sampler import ProcessSampler  # noqa: E402
from results_file import append_result  # noqa: E402

POINTS = 4  # concurrent points
BUDGET = 1e11  # FLOPs; sizes 2..5: points short enough that 4 run at once on a small machine
SIZES = [2, 3, 4, 5]
MB = 2**20
# Processes that are the cluster's, not a point's; and the training workers (on a GPU
# cluster they run on the worker nodes, not the head).
NOT_PER_POINT = ("ray::IDLE", "ray::RayTrainWorker", "ray::TrainStateActor", "ray::_AutoscalingCoordinatorActor",
                 "ray::DashboardAgent", "ray::RuntimeEnvAgent")


class MemoryByTitle(ProcessSampler):
    """Per sample, the unique memory (USS, bytes) of every Ray process, by title."""

    def __init__(self, interval_s: float = 1.0):
        super().__init__(interval_s)
        self.samples = []  # per sample: {title: [uss bytes, ...]}

    def sample(self) -> None:
        sample = defaultdict(list)
        for p in self.psutil.process_iter():
            try:
                cmd = p.cmdline()
                if not (cmd and cmd[0].startswith("ray::")):
                    continue
                uss = p.memory_full_info().uss
            except (self.psutil.Error, OSError):
                continue
            sample[cmd[0].split(" ")[0].split(".")[0]].append(uss)
        self.samples.append(dict(sample))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="flops_fit-head-memory-"))
    try:
        task = make_task(str(work / "cache"))
        plan = ff.plan_sweep(task, [BUDGET], sizes=SIZES)
        with MemoryByTitle() as sampler:
            res = ff.run_sweep(task, plan, name="head-memory", storage_path=str(work / "runs"), live_fit=False,
                               verbose=False, max_concurrent=POINTS,
                               resources_per_worker={"CPU": (os.cpu_count() or 2) / POINTS})
        assert (res.table.status == "ok").all(), res.table[["status", "error"]]
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    def drivers(sample):
        return sum(len(v) for k, v in sample.items() if k.startswith("ray::ImplicitFu"))

    peak = max(sampler.samples, key=lambda s: (drivers(s), sum(map(sum, s.values()))))
    n = drivers(peak)
    per_point = {k: v for k, v in peak.items() if not k.startswith(NOT_PER_POINT)}
    lines = [f"points: {len(plan)}, at most {POINTS} at once; the sample with the most trial drivers alive ({n}):"]
    for title, uss in sorted(peak.items(), key=lambda kv: -sum(kv[1])):
        mark = "" if title in per_point else "  (not per point)"
        lines.append(f"  {title:<36} x{len(uss):<3} {sum(uss) / MB:8.0f} MB{mark}")
    total = sum(map(sum, per_point.values()))
    lines.append(f"per point on the head (unique memory, workers excluded): {total / max(n, 1) / MB:.0f} MB")
    print("\n".join(lines))
    if not args.no_write:
        append_result("Head memory per concurrent point", "python benchmarks/head_memory.py", lines)


if __name__ == "__main__":
    main()
