"""The pre-flight check: before any point trains, the task's data is opened on one node of
every node type that can hold a worker.

Each node of a Ray cluster may have a disk of its own. The driver checks the task where it
runs (task.check_task), but a point trains on whichever node Ray places its worker group:
data that only the driver's node holds fails every point, each after its start-up cost.
So one Ray task per node type, pinned to one of its nodes with
`NodeAffinitySchedulingStrategy` (Ray docs, "Scheduling": node affinity) and reserving what
a worker reserves, opens the data there: `task.data.check_readable()` where the source has
it (flops_fit.data's sources stat their files and read their first bytes), else
`task.data()` itself. Public Ray API only.

A node type is the node's `ray.io/node-group` label, which Ray sets from the launcher's and
KubeRay's node type name (RAY_NODE_TYPE_NAME, ray/_private/resource_and_label_spec.py);
where a node has none, its resource shape (memory left out: it differs between nodes of
one type).
"""

from __future__ import annotations

import time

from . import ray_setup
from .storage import NODE_FIX, mentions_uri

PREFLIGHT_TIMEOUT_S = 60.0  # the whole check: node types are checked at once
NODE_GROUP_LABEL = "ray.io/node-group"  # ray._raylet.RAY_NODE_GROUP_KEY (a private module: spelled here)
# resources that differ between nodes of one type, or name the node itself
NOT_SHAPE = ("memory", "object_store_memory")
FIX = NODE_FIX  # what a data path that only the driver's node holds needs


def check_before_sweep(task, resources: dict, *, address=None, verbose: bool = True) -> int:
    """Open the task's data on one node of each node type before the sweep starts a point.

    Returns the number of node types checked: 0 when every node that can hold a worker is
    the driver's own (check_task opened the data there already). Raises FileNotFoundError
    (a missing file) or RuntimeError (any other failure) naming the node, the path and the
    fix; no point has been trained then.
    """
    import ray.cloudpickle

    ray_setup.ensure_ray(address, verbose=verbose)
    return check_nodes(ray.cloudpickle.dumps(task), resources, verbose=verbose)


def node_type(node: dict) -> str:
    """The node's type: its ray.io/node-group label, else its resource shape."""
    label = (node.get("Labels") or {}).get(NODE_GROUP_LABEL)
    if label:
        return label
    shape = sorted((k, v) for k, v in node["Resources"].items()
                   if not k.startswith("node:") and k not in NOT_SHAPE)
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shape) + "}"


def node_types(resources: dict, driver_node: str | None = None) -> dict:
    """{node type: one alive node of that type (a ray.nodes() entry)}, for the nodes that
    can hold one worker of `resources` (Ray resource names -> amounts per worker); a node
    other than `driver_node` where the type has one (the driver's disk is the one known to
    hold the data)."""
    import ray

    out = {}
    alive = (n for n in ray.nodes() if n.get("Alive"))
    for node in sorted(alive, key=lambda n: (n["NodeID"] == driver_node, n["NodeID"])):
        if all(node["Resources"].get(k, 0) >= v for k, v in resources.items()):
            out.setdefault(node_type(node), node)
    return out


def check_nodes(task_pickle: bytes, resources: dict, *, verbose: bool = True,
                timeout_s: float = PREFLIGHT_TIMEOUT_S) -> int:
    """Open the data of the pickled task on one node of each node type (node_types); the
    number of node types checked. A check still running after timeout_s (its node busy, or
    a source without check_readable that is slow to build) is cancelled and reported on
    stdout, not raised: the points then report their own errors."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = ray.get_runtime_context().get_node_id()
    types = node_types(resources, driver_node)
    if all(n["NodeID"] == driver_node for n in types.values()):
        return 0  # task.check_task opened the data on this node, in this process
    options = _task_options(resources)
    remote = ray.remote(open_data)
    refs = {remote.options(**options, scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False)).remote(task_pickle): name
            for name, node in types.items()}
    start = time.monotonic()
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in done:
        failure = ray.get(ref)
        if failure is not None:
            node = types[refs[ref]]
            kind, message = failure
            where = (f"on node {node['NodeManagerAddress']} (type {refs[ref]}, id {node['NodeID'][:12]})")
            if kind == "FileNotFoundError":
                # flops_fit's sources name the fix themselves (storage.NODE_FIX, or the URI's)
                fix = "" if FIX in message or mentions_uri(message) else f"; {FIX}"
                raise FileNotFoundError(f"Pre-flight check {where}: {message.rstrip('.')}{fix}. "
                                        "No point was started.")
            raise RuntimeError(f"Pre-flight check {where}: opening the task's data raised {kind}: "
                               f"{message.rstrip('.')}. No point was started; every point there would fail so.")
    for ref in pending:
        ray.cancel(ref, force=True)
    if verbose:
        took = time.monotonic() - start
        names = ", ".join(refs[r] for r in done)
        print(f"Pre-flight check: the task's data opened on {len(done)} node type(s) ({names}) "
              f"in {took:.1f} s.", flush=True)
        if pending:
            print(f"Pre-flight check: no answer within {timeout_s:g} s from node type(s) "
                  f"{', '.join(refs[r] for r in pending)} (busy nodes, or slow data); the sweep goes on.",
                  flush=True)
    return len(done)


def _task_options(resources: dict) -> dict:
    """`ray.remote(...).options` reserving what one worker reserves (resources_per_worker)."""
    rest = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
    options = dict(num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU", 0), resources=rest,
                   max_retries=0)
    if "memory" in resources:
        options["memory"] = resources["memory"]
    return options


def open_data(task_pickle: bytes):
    """Runs on the checked node: None if the task's data opens, else (exception type name,
    message) — data for the driver's error line, which names the node."""
    import ray.cloudpickle

    try:
        data = ray.cloudpickle.loads(task_pickle).data
        check = getattr(data, "check_readable", None)
        check() if callable(check) else data()
    except Exception as e:  # returned, not raised: the driver names the node with it
        return type(e).__name__, str(e).splitlines()[0] if str(e) else ""
    return None
