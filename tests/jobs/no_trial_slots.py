"""A dry-run sweep of two points on a cluster without trial slots (tests/test_placement.py):
a `ray.cluster_utils.Cluster` whose head looks like a GPU node (a logical GPU, the most
CPUs) and one CPU-only node; the trial drivers belong on the CPU-only node.

Usage: python no_trial_slots.py TMP   (PYTHONPATH must name tests/: worker_side, driver_side)
Prints: one line "RESULT {json}": the points' statuses, the node ids of the trial drivers
(Tune's ImplicitFunc actors), the CPU-only node's id and the head's.
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
from ray.util.state import list_actors

import flops_fit as ff
from flops_fit.ray_setup import pin_local_address

from driver_side import free_ports
from worker_side import tiny_task


def main() -> None:
    tmp = Path(sys.argv[1])
    pin_local_address()  # this cluster, not the test session's, is "the" Ray of its processes
    [dashboard_port] = free_ports(1)
    # The head looks like a GPU node (a logical GPU), and has the most CPUs; no trial slots.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 3, "num_gpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port})
    try:
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"],
                                           "RAY_ADDRESS": os.environ["RAY_ADDRESS"]}})
        cpu_node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        task = tiny_task(tmp)
        plan = ff.plan_sweep(task, [1e10], sizes=[1, 2])
        res = ff.run_sweep(task, plan, name="no-slots", storage_path=tmp / "runs", dry_run=True,
                           live_fit=False, verbose=False)
        drivers = [a.node_id for a in list_actors(limit=10_000) if a.class_name.split(".")[-1] == "ImplicitFunc"]
        print("RESULT", json.dumps({"statuses": list(res.table.status), "drivers": drivers,
                                    "cpu_node": cpu_node.node_id, "head": cluster.head_node.node_id}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
