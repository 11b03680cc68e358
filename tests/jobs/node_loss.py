"""A sweep of one point that loses the node it trains on (tests/test_sweep.py): a
`ray.cluster_utils.Cluster` of a head with trial slots and no CPUs and two 1-CPU nodes; the
node of the trial's worker is removed right after the first checkpoint
(driver_side.RemoveTrainingNode), and the point must resume on the other node.

Usage: python node_loss.py TMP   (PYTHONPATH must name tests/: worker_side, driver_side)
Prints: one line "RESULT {json}": the point's status, the id of the removed node, the node
it finished on, its attempts, its trained and its planned tokens.
"""

import json
import os
import sys

# Set before Ray is imported, as if this process had been started with them.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"

from pathlib import Path

import ray
from ray import tune
from ray.cluster_utils import Cluster

import flops_fit as ff
from flops_fit.ray_setup import TRIAL_RESOURCE, pin_local_address

from driver_side import RemoveTrainingNode, free_ports
from worker_side import tiny_task


class RemoveNode(RemoveTrainingNode, tune.Callback):
    pass


def main() -> None:
    tmp = Path(sys.argv[1])
    pin_local_address()  # this cluster, not the test session's, is "the" Ray of its processes
    [dashboard_port] = free_ports(1)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {TRIAL_RESOURCE: 100}, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port})
    try:
        # Connect while the head is the only node: Ray 2.53 (not 2.60) attaches a driver to any
        # raylet on its host, and this test removes a worker node under the sweep.
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"],
                                           "RAY_ADDRESS": os.environ["RAY_ADDRESS"]}})
        assert ray.get_runtime_context().get_node_id() == cluster.head_node.node_id
        nodes = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
        cluster.wait_for_nodes()
        RemoveTrainingNode.cluster, RemoveTrainingNode.nodes = cluster, nodes
        task = tiny_task(tmp, checkpoint_every=40, report_every=20)
        plan = ff.plan_sweep(task, [1e10], sizes=[2])
        cb = RemoveNode()
        res = ff.run_sweep(task, plan, name="node-loss", storage_path=tmp / "runs", live_fit=False,
                           callbacks=[cb])
        row = res.table.iloc[0]
        print("RESULT", json.dumps({"status": row.status, "removed": cb.removed, "node": row.node_id,
                                    "attempts": int(row.attempts), "tokens": int(row.tokens),
                                    "planned": int(row.planned_tokens)}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
