"""A GPU point on a node that declares a GPU it does not have (tests/test_worker_loop.py):
what a GPU node with a broken CUDA stack (driver too old for torch's CUDA, a CPU build of
torch) looks like to Ray. A `ray.cluster_utils.Cluster` of one node with 1 CPU and 1
logical GPU; one point, use_gpu=True, no retries. The point must fail, not train on CPU.

Usage: python gpu_node_without_cuda.py TMP   (PYTHONPATH must name tests/: worker_side, driver_side)
Prints: one line "RESULT {json}": the point's status, its error, and its trained tokens
(null when none).
"""

import json
import os
import sys

# Set before Ray is imported, as if this process had been started with them.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"

from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import flops_fit as ff
from flops_fit.ray_setup import TRIAL_RESOURCE, pin_local_address

from driver_side import free_ports
from worker_side import tiny_task


def main() -> None:
    tmp = Path(sys.argv[1])
    pin_local_address()
    [dashboard_port] = free_ports(1)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 1, "resources": {TRIAL_RESOURCE: 10}, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port})
    try:
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"],
                                           "RAY_ADDRESS": os.environ["RAY_ADDRESS"]}})
        task = tiny_task(tmp)
        plan = ff.plan_sweep(task, [1e10], sizes=[2])
        # One attempt shows the failure; the default's retries (which on a cluster may land on
        # a node whose CUDA works) would only repeat it on this one node.
        res = ff.run_sweep(task, plan, name="no-cuda", storage_path=tmp / "runs", use_gpu=True,
                           max_failures=0, live_fit=False, verbose=False)
        row = res.table.iloc[0]
        print("RESULT", json.dumps({"status": row.status, "error": row.error,
                                    "tokens": None if row.tokens != row.tokens else row.tokens}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
