"""A Ray cluster whose nodes share no data folder: sweeps read their data from object storage,
and data that only the driver's node holds is refused before any point trains.

The cluster: a head started with `ray start --head` (no CPUs for training workers, trial
slots for the trial drivers: ray_setup.TRIAL_RESOURCE) and a worker node started inside
`unshare --mount --pid` with a tmpfs mounted over the test's data folder, so the worker
node sees /work and the virtual environment but not what the head writes into that
folder (its own Ray temp dir lives in the tmpfs too). Worker groups can only land on the
worker node. Killing the worker node's first process ends its PID namespace, and with it
every process of that node; the head is stopped through its own processes (`ray stop`
would end every Ray on the machine, the test session's included).

The sweeps run in a driver process of their own (the pytest process may hold the
session's Ray); the S3 server is the session's (fixture s3_server, AWS_* variables).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from flops_fit.data import write_token_file
from flops_fit.preflight import PREFLIGHT_TIMEOUT_S
from flops_fit.ray_setup import LOCAL_RAY_ENV, TRIAL_RESOURCE
from driver_side import JOBS, free_ports, stop_processes_under

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

TESTS_DIR = Path(__file__).resolve().parent
RAY = str(Path(sys.executable).with_name("ray"))
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
NODE_START_TIMEOUT_S = 180  # `ray start --head` took over 90 s on a 2-core machine under load
DRIVER_TIMEOUT_S = 600  # one tiny point on a 2-CPU node: up to a few minutes on a shared 2-core machine
OBJECT_STORE_BYTES = 200 * 2**20  # per node: the sweeps move checkpoints, not datasets
WORKER_NODE_CPUS = 2
STOP_TIMEOUT_S = 5  # SIGTERM, then SIGKILL: the clusters' state is thrown away with them
HEAD_PORT_FLAGS = ("--port", "--dashboard-port", "--metrics-export-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--ray-client-server-port", "--runtime-env-agent-port",
                   "--node-manager-port", "--object-manager-port")
NODE_PORT_FLAGS = ("--metrics-export-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                   "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT") and not k.startswith("PYTEST")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]), **extra)
    return env


@pytest.fixture(scope="module")
def cluster(s3_server):
    """(GCS address, the folder only the head sees, the worker node's view of it as a
    cache folder); both nodes are stopped at the end."""
    base = Path(tempfile.mkdtemp(prefix="ffsd-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    head_dir, hidden = base / "head", base / "local"
    head_dir.mkdir()
    hidden.mkdir()
    ports = dict(zip(HEAD_PORT_FLAGS, free_ports(len(HEAD_PORT_FLAGS))))
    address = f"127.0.0.1:{ports['--port']}"
    # RAY_ADDRESS: Train's placement-group cleaner and state actor find their cluster by it,
    # not by scanning the machine, which runs other Rays (ray_setup.pin_local_address).
    # LOCAL_RAY_ENV: the settings flops_fit gives a Ray of its own on a small machine.
    # RAY_worker_maximum_startup_concurrency: a head of 0 CPUs would start its trial drivers
    # one at a time (RAY-NOTES, ray/_private/services.py maximum_startup_concurrency).
    env = _env(RAY_ADDRESS=address, RAY_worker_maximum_startup_concurrency="2", **LOCAL_RAY_ENV)
    node = None
    try:
        started = subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
             f"--temp-dir={head_dir}", "--num-cpus=0", "--num-gpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}",
             f'--resources={{"{TRIAL_RESOURCE}": 100}}', "--disable-usage-stats",
             *(f"{flag}={port}" for flag, port in ports.items())],
            env=env, capture_output=True, text=True, timeout=NODE_START_TIMEOUT_S)
        assert started.returncode == 0, started.stdout + started.stderr
        node_ports = " ".join(f"{flag}={port}" for flag, port in zip(NODE_PORT_FLAGS, free_ports(len(NODE_PORT_FLAGS))))
        script = (f"mount -t tmpfs tmpfs {hidden} && mkdir {hidden}/ray && exec {RAY} start --address={address} "
                  f"--node-ip-address=127.0.0.1 --temp-dir={hidden}/ray --num-cpus={WORKER_NODE_CPUS} --num-gpus=0 "
                  f"--object-store-memory={OBJECT_STORE_BYTES} --disable-usage-stats {node_ports} --block")
        # --kill-child: the node's first process dies with unshare; its PID namespace with it
        node = subprocess.Popen([UNSHARE, "--mount", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        yield dict(address=address, hidden=hidden, base=base, env=env)
    finally:
        if node is not None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
        stop_processes_under(str(head_dir), timeout_s=STOP_TIMEOUT_S)
        stop_processes_under(str(hidden), timeout_s=STOP_TIMEOUT_S)
        shutil.rmtree(base, ignore_errors=True)


def _tokens() -> np.ndarray:
    """About 200k byte-level tokens (vocab 256): the bytes of a few standard-library files."""
    import email

    text = b"".join(p.read_bytes() for p in sorted(Path(email.__file__).parent.glob("*.py")))
    return np.frombuffer(text, dtype=np.uint8)[:200_000]


def _run(cluster: dict, args: dict, timeout: float) -> str:
    """The sweep driver jobs/separate_disks_sweep.py on the cluster, with `args`: its output."""
    out = subprocess.run([sys.executable, str(JOBS / "separate_disks_sweep.py"),
                          json.dumps(dict(args, address=cluster["address"]))],
                         env={**cluster["env"], "PYTHONPATH": str(TESTS_DIR)},
                         capture_output=True, text=True, timeout=timeout)
    return out.stdout + "\n" + out.stderr[-4000:]


def _line(output: str, tag: str):
    found = [line[len(tag) + 1:] for line in output.splitlines() if line.startswith(tag + " ")]
    assert found, output
    return json.loads(found[-1])


def test_a_sweep_with_data_and_storage_in_s3_trains_on_a_node_that_shares_no_disk(cluster, s3_server):
    bucket = s3_server.bucket("separate-disks")
    local = cluster["base"] / "upload"
    write_token_file(local / "train.bin", _tokens())
    client = s3_server.client()
    client.upload_file(str(local / "train.bin"), "separate-disks", "data/train.bin")
    cache = str(cluster["hidden"] / "cache")  # on the worker node: inside its tmpfs, its own disk
    marker = cluster["hidden"] / "written-by-the-head"
    marker.write_text("only the head sees this")
    out = _run(cluster, dict(data=f"{bucket}/data", cache=cache, probe=str(marker),
                             storage=f"{bucket}/runs", name="s3-data"), DRIVER_TIMEOUT_S)
    table = _line(out, "TABLE")
    assert [row["status"] for row in table] == ["ok"], table
    assert "Pre-flight check: the task's data opened on 1 node type(s)" in out
    keys = s3_server.keys("separate-disks", "runs/s3-data/")
    assert "runs/s3-data/results.csv" in keys
    # the worker node copied the object into its own cache; the head's folder is not its
    seen, copies = _line(out, "SEES")
    assert not seen
    assert [c.split("-", 1)[1] for c in copies] == ["train.bin"]


def test_data_only_on_the_drivers_disk_is_refused_before_any_point_trains(cluster, s3_server):
    bucket = s3_server.bucket("separate-disks")
    data = cluster["hidden"] / "data"  # written by the head; hidden from the worker node by its tmpfs
    write_token_file(data / "train.bin", _tokens())
    out = _run(cluster, dict(data=str(data), cache=str(cluster["base"] / "cache"),
                             storage=f"{bucket}/runs", name="local-data"), DRIVER_TIMEOUT_S)
    refused = _line(out, "REFUSED")
    assert refused["type"] == "FileNotFoundError", refused
    error = refused["error"]
    assert "\n" not in error
    # the worker node: its address, its type (its resource shape: it has no node-group label), its id
    assert re.search(rf"on node [0-9.]+ \(type \{{CPU: {WORKER_NODE_CPUS}\}}, id [0-9a-f]+\)", error), error
    assert f"{data / 'train.bin'} does not exist on this node" in error
    assert "put the data on a shared mount or in object storage" in error
    # run_sweep refused within the check's bound plus check_task's probe step and the claim
    # of the sweep folder (a check that outlives its bound lets the sweep go on: no refusal)
    assert refused["seconds"] < 2 * PREFLIGHT_TIMEOUT_S
    keys = s3_server.keys("separate-disks", "runs/local-data/")
    assert not [k for k in keys if "/train/" in k or "/finished/" in k or k.endswith("results.csv")], keys
