"""run_sweep called once per case, in a process with no Ray of its own yet
(tests/test_reliability.py: bad input must fail before Ray starts). Every case runs the
plan of 5e9 FLOPs x sizes 1 and 2 of worker_side.tiny_task, as sweep "x" under TMP/runs,
with the run_sweep keywords its case gives.

Usage: python run_sweep_before_ray.py TMP CASES
    CASES: a JSON list of Python expressions, each a dict of run_sweep keywords; they may
    name `task`, `tmp` (TMP as a Path), `dataclasses` and `threading`.
Prints: one line "RESULTS [json]": per case its expression, the error it raised
("TypeName message", or null) and whether Ray had been started by then.
"""

import dataclasses
import json
import sys
import threading
from pathlib import Path

import ray

import flops_fit as ff

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: worker_side
from worker_side import tiny_task


def main() -> None:
    tmp, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    task = tiny_task(tmp)
    plan = ff.plan_sweep(task, [5e9], sizes=[1, 2])
    names = {**globals(), "dataclasses": dataclasses, "threading": threading, "task": task, "tmp": tmp}
    out = []
    for overrides in cases:
        kwargs = dict(name="x", storage_path=str(tmp / "runs"), task=task)
        kwargs.update(eval(overrides, names))
        try:
            ff.run_sweep(plan=plan, **kwargs)
            error = None
        except Exception as e:
            error = f"{type(e).__name__} {e}"
        out.append(dict(overrides=overrides, error=error, ray_started=ray.is_initialized()))
    print("RESULTS", json.dumps(out))


if __name__ == "__main__":
    main()
