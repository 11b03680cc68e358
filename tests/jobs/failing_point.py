"""A sweep job whose one point fails on its Ray Train worker (tests/test_job_submit.py):
the worker's error must reach `ray job logs`, and the job must end failed.

Usage: python failing_point.py STORAGE_PATH CACHE_DIR
Prints: run_sweep's progress and the worker's error; exits 0 when every point ended ok, 1 otherwise.
"""

import os
import sys

import flops_fit as ff
from flops_fit.data import TextCorpus
from flops_fit.models import gpt, lm_loss

WORKER_ERROR = "this model cannot be built on a training worker"
# Set in the job's driver only: Ray starts workers with the job's runtime environment, not
# with what its driver process put in os.environ afterwards.
DRIVER_MARK = "FAILING_POINT_JOB_DRIVER"


def model(size):
    """The reference GPT on the driver (where the plan probes it); an error on a worker."""
    if not os.environ.get(DRIVER_MARK):
        raise RuntimeError(WORKER_ERROR)
    return gpt(size)


def main() -> int:
    storage_path, cache_dir = sys.argv[1:3]
    os.environ[DRIVER_MARK] = "1"
    task = ff.Task(model_fn=model, data=TextCorpus(seq_len=32, cache_dir=cache_dir), loss_fn=lm_loss,
                   tokens_per_sample=32, batch_size=8, eval_samples=64)
    plan = ff.plan_sweep(task, [1e10], sizes=[1])
    results = ff.run_sweep(task, plan, name="failing-point", storage_path=storage_path, address="auto",
                           max_failures=0, live_fit=False)
    return 0 if (results.table.status == "ok").all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
