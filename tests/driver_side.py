"""Test helpers for the test process and the sweep driver: Tune callbacks that kill or remove
what a trial runs on, ports, the examples as modules, and waiting on or stopping Ray's
processes. Nothing here runs on a Ray worker; Ray and psutil are imported where used, so this
module imports without them."""

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
JOBS = Path(__file__).resolve().parent / "jobs"  # programs the tests run as `python JOBS/name.py args`


# --- Tune callbacks (mixed into tune.Callback at use) -----------------------------------------
class RemoveTrainingNode:
    """A Tune callback (mixed in at use, so this module imports without Ray Tune) that removes
    the `ray.cluster_utils.Cluster` node a trial trains on, right after the trial's first
    checkpoint. Tune pickles its callbacks with the experiment state; the cluster holds
    locks, so it lives on the class (importable, pickled by reference), not the instance."""

    cluster = None
    nodes: list = []

    def __init__(self):
        self.removed = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        import threading
        if self.removed is None and result.get("checkpoint_path") and result["step"] < result["steps"]:
            node = next(n for n in type(self).nodes if n.node_id == result["node_id"])
            self.removed = node.node_id
            threading.Thread(target=type(self).cluster.remove_node, args=(node, False)).start()


class KillWorkerOnce:
    """A Tune callback (mixed in at use, like RemoveTrainingNode) that SIGKILLs a trial's
    training worker right after the trial's first checkpoint; `killed` is the step it was
    killed at."""

    def __init__(self):
        self.killed = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        import os
        import signal

        if self.killed is None and result.get("checkpoint_path") and result["step"] < result["steps"]:
            os.kill(result["worker_pid"], signal.SIGKILL)
            self.killed = result["step"]


class KillDriverOnce:
    """A Tune callback (mixed in at use, like KillWorkerOnce) that SIGKILLs the trial driver
    of point `point_id` right after that point's first checkpoint; `killed` is the step it
    was killed at."""

    def __init__(self, point_id: str):
        self.point_id = point_id
        self.killed = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        import os
        import signal

        if (self.killed is None and result.get("point_id") == self.point_id and result.get("checkpoint_path")
                and result["step"] < result["steps"]):
            os.kill(result["pid"], signal.SIGKILL)  # Tune's `pid`: the trial driver's process
            self.killed = result["step"]


# --- the test machine ------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """n TCP ports free on loopback now (for Ray processes that would take fixed defaults)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def load_example(name):
    """examples/<name>.py as a module, as `python examples/<name>.py` would run it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Ray's processes -------------------------------------------------------------------------
def worker_groups_holding_cpus() -> set:
    """Ids of the placement groups that exist and reserve CPUs (Ray Train worker groups)."""
    import ray

    return {pg_id for pg_id, pg in ray.util.placement_group_table().items()
            if pg["state"] == "CREATED" and any("CPU" in b for b in pg["bundles"].values())}


def wait_for(condition, timeout_s=60.0, poll_s=0.5) -> bool:
    """True as soon as `condition()` holds; False if it still does not after timeout_s."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


def stop_processes_under(folder: str, timeout_s: float = 15.0) -> None:
    """Terminate (then kill) the processes whose command line names `folder` (a Ray node
    started with --temp-dir=folder: its daemons and workers), with their children; never
    any other process, so other Ray clusters on the machine live on (`ray stop` would end
    them all)."""
    import os

    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(folder in arg for arg in (p.info["cmdline"] or [])):
                found[p.pid] = p
                found.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    procs = list(found.values())
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)


def job_result(name: str, *args, timeout: float, env: dict | None = None) -> dict:
    """Run tests/jobs/`name` with `args` (tests/ on its PYTHONPATH, so it and Ray's workers
    import the helpers) and return the JSON of the line it prints as `RESULT {...}`; an
    AssertionError with the tail of its output when it prints none."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(JOBS.parent), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, str(JOBS / name), *map(str, args)], env=env, capture_output=True,
                         text=True, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])
