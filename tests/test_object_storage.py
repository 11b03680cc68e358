"""A sweep whose data and storage_path are in object storage (a local S3 server, fixture
s3_server): the token files, Tune's experiment, Train's checkpoints, the finished-point
records, the table and the lease all in one bucket; its driver killed and the sweep
resumed by a second driver."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import flops_fit as ff
from flops_fit import lease
from flops_fit import sweep_folder
from flops_fit.sweep_folder import SweepFolder
from driver_side import JOBS

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.oldest_ray]
TESTS_DIR = Path(__file__).resolve().parent
# The drivers beat this often (seconds; flops_fit.lease.HEARTBEAT_S, set in their
# process), so the killed driver's lease goes stale in STALE_HEARTBEATS x this, not 30 s.
DRIVER_HEARTBEAT_S = 0.5

def test_a_killed_driver_of_an_object_store_sweep_is_resumed_by_the_next(ray_session, s3_server, tmp_path):
    bucket = s3_server.bucket("sweeps")
    sweep = f"{bucket}/runs/on-s3"
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog. " * 800, dtype=np.uint8)
    for name, tokens in (("train.bin", text), ("val.bin", text[:4000])):  # nanoGPT's layout
        s3_server.client().put_object(Bucket="sweeps", Key=f"data/{name}", Body=tokens.astype("<u2").tobytes())
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(JOBS / "s3_sweep.py"), str(tmp_path), address, bucket, str(DRIVER_HEARTBEAT_S)]

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    done_before = {}
    while time.time() < deadline and first.poll() is None and not done_before:
        if s3_server.keys("sweeps", f"runs/on-s3/{sweep_folder.FINISHED_DIR}/"):
            done_before = SweepFolder(sweep).finished_records()
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(done_before) == 1, "the driver was not killed mid-sweep"
    assert f"runs/on-s3/{lease.LEASE_FILE}" in s3_server.keys("sweeps", "runs/on-s3/")  # left by the dead

    resumed = subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the dead driver's lease was watched, found stale and taken over
    assert f"{lease.LEASE_FILE} held by pid {first.pid} on" in resumed.stderr, resumed.stderr[-3000:]

    final = ff.load_results(sweep).table.set_index("point_id")
    assert (final.status == "ok").all(), final[["status", "error"]]
    for point_id, before in done_before.items():
        # Not trained again: the same recorded start time and attempts as before the kill.
        assert final.loc[point_id, "started_at"] == pytest.approx(before["started_at"], abs=1e-3)
        assert final.loc[point_id, "attempts"] == before["attempts"]
    keys = set(s3_server.keys("sweeps", "runs/on-s3/"))
    assert {f"runs/on-s3/{name}" for name in (sweep_folder.RESULTS_CSV, sweep_folder.PLAN_FILE, sweep_folder.TASK_FILE)} <= keys
    assert {f"runs/on-s3/{sweep_folder.FINISHED_DIR}/{p}.json" for p in final.index} <= keys
    assert any(k.startswith("runs/on-s3/train/") for k in keys)  # Train's runs, in the bucket too
    assert f"runs/on-s3/{lease.LEASE_FILE}" not in keys  # released by the driver that finished
