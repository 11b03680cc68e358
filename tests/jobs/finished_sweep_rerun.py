"""run_sweep on a sweep whose every point already has its finished record
(tests/test_reliability.py: the table comes back without Ray being started). The sweep:
5e9 FLOPs x sizes 1 and 2 of worker_side.tiny_task, as TMP/runs/done, each point recorded
ok with loss 3 + size.

Usage: python finished_sweep_rerun.py TMP
Prints: "STATUS [statuses] [losses]" of the returned table, then "RAY_STARTED True|False".
"""

import sys
from pathlib import Path

import ray

import flops_fit as ff
from flops_fit.sweep_folder import SweepFolder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: worker_side
from worker_side import tiny_task


def main() -> None:
    tmp = Path(sys.argv[1])
    task = tiny_task(tmp)
    plan = ff.plan_sweep(task, [5e9], sizes=[1, 2])
    folder = str(tmp / "runs" / "done")
    SweepFolder(folder).claim(plan, task).release()
    for p in plan:
        record = dict(final=True, status="ok", loss=3.0 + p.size, tokens=p.tokens)
        SweepFolder(folder).write_finished(p.point_id, record)
    res = ff.run_sweep(task, plan, name="done", storage_path=str(tmp / "runs"), verbose=False)
    print("STATUS", list(res.table.status), list(res.table.loss))
    print("RAY_STARTED", ray.is_initialized())


if __name__ == "__main__":
    main()
