"""Starting or joining Ray, checking the cluster can hold a point, and concurrency.

A Ray that flops_fit starts itself (a laptop, a CI machine) gets settings that help on a
few cores; a cluster the user joins keeps its own and Ray's defaults. Public Ray API only.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Tune reserves resources for each trial's driver process. On a CPU machine a driver
# holding 1 CPU starves its own worker group (docs/architecture.md: "the driver deadlock"), so
# drivers take one unit of a logical resource instead; a local Ray gets plenty of them.
TRIAL_RESOURCE = "trial_slot"
LOCAL_TRIAL_SLOTS = 1000
# Where a cluster lacks TRIAL_RESOURCE, drivers take this sliver of a CPU, on the nodes
# driver_nodes() chooses: a driver on a GPU node would keep it from scaling down, and one on
# a spot node dies with it.
FALLBACK_DRIVER_CPU = 0.01
# Node labels Ray sets itself (Ray docs, "Use labels to control scheduling", default node
# labels; Ray 2.49+): every node's id, the accelerator type of a node with accelerators, and
# the market type ("spot" / "on-demand") where the cluster declares it (KubeRay, the autoscaler).
NODE_ID_LABEL = "ray.io/node-id"
ACCELERATOR_LABEL = "ray.io/accelerator-type"
MARKET_TYPE_LABEL = "ray.io/market-type"
SPOT = "spot"
# Ray resources of accelerators (Ray docs, "Accelerator Support"): a node with any of them is
# not a node for drivers.
ACCELERATOR_RESOURCES = ("GPU", "TPU", "neuron_cores", "HPU", "NPU", "RBLN")

# Set for every sweep (a user's own value wins: setdefault).
RAY_ENV = {
    # Train V2 is what the trial driver's TorchTrainer + TuneReportCallback pattern needs;
    # the default from Ray 2.54 on, opt-in in 2.53 (the oldest supported: the first with
    # Train's placement-group cleaner, which frees the group of a trial driver that died). Read at import of ray.train, in
    # the sweep driver, the trial drivers and the workers alike.
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_USAGE_STATS_ENABLED": "0",  # never phone home
    # Train runs (named after their points) and their worker actors in the dashboard.
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
}
# Only for a Ray that flops_fit starts on this machine (benchmarks/RESULTS.md, "Defaults
# measured once"): the Train controller's health-check poll (Ray's default
# 2 s) gates every report and the teardown, and the preemption watcher and Train's metrics
# cost CPU that training needs. RAY_CHDIR_TO_TRIAL_DIR=0 keeps Tune's trainable in its start
# folder and spares Train V2 its working-directory set-up per worker group: faster from trial
# start to first step in every paired repeat (benchmarks/RESULTS.md, "Orchestration overhead
# against Ray's floor: Ray settings"); flops_fit's own paths are absolute. On a cluster the
# user's and Ray's defaults win.
LOCAL_RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}

# Set on clusters whose nodes come and go (cluster.yaml exports it): resources missing now
# may appear later, so they are not an error and concurrency is not capped by them.
AUTOSCALING_ENV = "FLOPS_FIT_AUTOSCALING"
DASHBOARD_HOST = "127.0.0.1"  # loopback only; reach it from elsewhere through an SSH tunnel


def set_ray_env(local: bool) -> dict:
    """Put RAY_ENV (and for a local Ray, LOCAL_RAY_ENV) into this process's environment,
    keeping values the user set; returns the variables to hand to Ray's processes."""
    wanted = {**RAY_ENV, **(LOCAL_RAY_ENV if local else {})}
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in wanted}


# Before `import ray.train` anywhere in this process (Ray 2.53 chooses V1 or V2 then).
set_ray_env(local=False)


def ensure_ray(address: str | None = None, *, verbose: bool = True) -> bool:
    """Join `address` / RAY_ADDRESS, or start a local Ray with its dashboard on loopback.

    Returns True when this call started a local Ray (which then has the laptop settings).
    A Ray already initialised in this process is used as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # "auto" attaches to a Ray started with `ray start --head` on this machine
        env = set_ray_env(local=False)
        # On a cluster the driver's output is what `ray job logs` shows: worker output and
        # Ray Train's restart messages go there too (the local run keeps them out, its
        # progress lines and results.csv carry each point's outcome and error).
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        return False
    env = set_ray_env(local=True)
    env["RAY_ADDRESS"] = pin_local_address()
    ctx = ray.init(
        address="local",  # a fresh Ray, never one left running by another program
        resources={TRIAL_RESOURCE: LOCAL_TRIAL_SLOTS},
        include_dashboard=True,
        dashboard_host=DASHBOARD_HOST,
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    if verbose and ctx.dashboard_url:
        print(
            f"Ray dashboard: http://{ctx.dashboard_url}  (loopback only; Ray's token is in "
            f"{Path('~/.ray/auth_token').expanduser()}: paste it when the page asks)",
            flush=True,
        )
    return True


def pin_local_address() -> str:
    """Choose the GCS port of a Ray about to start here and export it as RAY_ADDRESS.

    Parts of Ray Train (its placement-group cleaner, its state actor) find "their" cluster
    by RAY_ADDRESS, else by scanning this machine; with two Ray instances on one machine
    (a test cluster beside another, a stale one) the scan picks the wrong one and worker
    groups never start. Processes the new Ray starts inherit this environment.
    """
    from ray.util import get_node_ip_address

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
    return os.environ["RAY_ADDRESS"]


def driver_resources():
    """What each trial driver reserves, as `tune.with_resources` takes it.

    A trial slot where the cluster has them (a local Ray, cluster.yaml's nodes): they are
    placed where the slots are. Otherwise FALLBACK_DRIVER_CPU of a CPU, kept on the nodes
    `driver_nodes` chooses (CPU-only, not spot) by a label selector on Ray's default
    `ray.io/node-id` label, where such nodes exist and others do too; with none of them, or
    nothing else, anywhere a CPU is.
    """
    import ray
    from ray import tune

    if ray.cluster_resources().get(TRIAL_RESOURCE):
        return {TRIAL_RESOURCE: 1}
    demand = {"CPU": FALLBACK_DRIVER_CPU}
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= FALLBACK_DRIVER_CPU]
    chosen = driver_nodes(nodes)
    if not chosen or len(chosen) == len(nodes):
        return demand
    # `in(a, b)` is Ray's set operator for label selectors (ray/_private/label_utils.py, 2.53
    # and 2.60); placement_group(bundle_label_selector=...) exists in both.
    selector = chosen[0] if len(chosen) == 1 else f"in({','.join(chosen)})"
    return tune.PlacementGroupFactory([demand], bundle_label_selector=[{NODE_ID_LABEL: selector}])


def driver_nodes(nodes: list) -> list:
    """Ids of the nodes (`ray.nodes()` entries) where trial drivers belong: alive, with a
    CPU, no accelerator (an accelerator resource or the `ray.io/accelerator-type` label) and
    not labelled spot (`ray.io/market-type: spot`). The order of `nodes` is kept."""
    def fits(node) -> bool:
        res, labels = node.get("Resources", {}), node.get("Labels") or {}
        accelerator = any(res.get(k, 0) > 0 for k in ACCELERATOR_RESOURCES) or ACCELERATOR_LABEL in labels
        return (node.get("Alive", False) and res.get("CPU", 0) >= FALLBACK_DRIVER_CPU and not accelerator
                and labels.get(MARKET_TYPE_LABEL, "").lower() != SPOT)

    return [n["NodeID"] for n in nodes if fits(n)]


def driver_demand(resources) -> dict:
    """The Ray resources one trial driver reserves, from what driver_resources() returned."""
    if isinstance(resources, dict):
        return dict(resources)
    return dict(resources.required_resources)


def autoscaling() -> bool:
    return bool(os.environ.get(AUTOSCALING_ENV))


def concurrency(groups, points: int, driver: dict | None = None) -> int:
    """How many points to train at once: as many as the cluster holds, each one worker group
    and its trial driver (`driver`: the resources one driver reserves), for the largest of
    `groups` (pairs of resources per worker and workers); at least 1. On an autoscaling
    cluster every point, so that the pending demand scales it up."""
    import ray

    if autoscaling():
        return max(1, points)
    total = ray.cluster_resources()
    driver = driver or {}
    fits = []
    for resources, num_workers in groups:
        need = {k: v * num_workers for k, v in resources.items()}
        for k, v in driver.items():
            need[k] = need.get(k, 0) + v
        fits += [int(total.get(k, 0) // v) for k, v in need.items() if v > 0]
    return max(1, min(fits) if fits else 1)


def check_cluster_fits(resources: dict, num_workers: int, use_gpu: bool, point_id: str | None = None) -> None:
    """Fail now, not as a forever-pending trial, when no node can ever hold a worker, or
    the cluster never holds the group; `point_id` names the point whose group it is, where
    groups differ from point to point."""
    import ray

    where = f"Point {point_id}: " if point_id else ""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if use_gpu and not any(n["Resources"].get("GPU", 0) > 0 for n in nodes):
        if not autoscaling():
            raise RuntimeError(
                "use_gpu=True but no node of this Ray cluster has a GPU. Run without --gpu, "
                "connect to a GPU cluster (address=... / RAY_ADDRESS), or set "
                f"{AUTOSCALING_ENV}=1 if GPU nodes will be added by the autoscaler."
            )
        return
    if autoscaling():
        return
    fits_one = [n for n in nodes if all(n["Resources"].get(k, 0) >= v for k, v in resources.items())]
    if not fits_one:
        have = [{k: n["Resources"].get(k, 0) for k in resources} for n in nodes]
        raise RuntimeError(
            f"{where}No node can hold one worker with resources_per_worker={resources}; nodes have {have}. "
            "Lower resources_per_worker or add bigger nodes."
        )
    capacity = sum(min(int(n["Resources"].get(k, 0) // v) for k, v in resources.items() if v > 0) for n in fits_one)
    if capacity < num_workers:
        raise RuntimeError(
            f"{where}num_workers={num_workers} workers of {resources} never fit this cluster at once "
            f"(room for {capacity}). Lower num_workers or resources_per_worker."
        )
