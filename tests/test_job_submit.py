"""The main job as users run it on a cluster: `ray start --head` with token
authentication, `ray job submit` of examples/sweep.py --smoke (real training of the
example GPT), `ray job logs`; then what the job left: results, the fitted laws, the report.

The head is this test's own (loopback, free ports, its own temp folder and token file) and
is stopped through its own processes: `ray stop` would end every Ray on the machine, the
test session's included.
"""

import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import flops_fit as ff
from flops_fit.sweep_script import SMOKE_BOOTSTRAP
from driver_side import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
JOB_DEADLINE_S = 900  # the smoke sweep takes about 4 minutes on 2 cores
NAME = "job-smoke"
POINTS = 9  # 3 smoke budgets x 3 sizes
# Ports `ray start --head` would otherwise take at fixed defaults (6379, 8265, 52365, 10001):
# the session's Ray, or another one on this machine, may hold them.
PORT_FLAGS = ("--port", "--dashboard-port", "--metrics-export-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--ray-client-server-port", "--runtime-env-agent-port",
              "--node-manager-port", "--object-manager-port")


def head_processes(temp_dir):
    """The processes of the head started with --temp-dir=temp_dir, with their children
    (workers, the job's driver): found by the temp folder on their command lines."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in arg for arg in (p.info["cmdline"] or [])):
                found[p.pid] = p
                for child in p.children(recursive=True):
                    found[child.pid] = child
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_head(temp_dir):
    import psutil

    procs = head_processes(temp_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head on loopback with token authentication, shared by this module's jobs;
    yields (dashboard URL, env for Ray's CLI clients, its temp folder)."""
    temp_dir = tempfile.mkdtemp(prefix="ffjob-", dir="/tmp")  # short: Ray's socket paths have a length limit
    token = tmp_path_factory.mktemp("auth") / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT") and not k.startswith("PYTEST")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--temp-dir={temp_dir}", "--num-cpus=2", "--num-gpus=0",
           '--resources={"trial_slot": 100}', "--disable-usage-stats",
           *(f"{flag}={port}" for flag, port in ports.items())]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{ports['--dashboard-port']}", env, temp_dir
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_job(env, *args, timeout=60):
    out = subprocess.run([RAY, "job", *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"ray job {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr  # the CLI prints its status lines to stderr


def wait_for_job(env, url, job_id) -> str:
    """Poll `ray job status` until the job ends; returns the last status text."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        # "Status for job '<id>': RUNNING" while it runs; "Job '<id>' succeeded" at the end.
        status = ray_job(env, "status", "--address", url, job_id)
        if re.search(r"\b(succeeded|failed|stopped)\b", status, flags=re.I):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(5)


def test_the_main_job_submitted_with_ray_job_submit_trains_fits_and_reports(head, tmp_path):
    url, env, temp_dir = head
    # The job's working directory: a copy of the example alone (flops_fit is installed).
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    shutil.copy(ROOT / "examples" / "sweep.py", job_dir / "sweep.py")
    storage = f"file://{tmp_path / 'runs'}"  # a URI, as cloud storage is given
    job_id = f"flops-fit-{secrets.token_hex(4)}"

    # Without the token in the client's environment the head refuses the request.
    no_token = {**env, "RAY_AUTH_MODE": "disabled"}
    refused = subprocess.run([RAY, "job", "list", "--address", url], env=no_token,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower(), refused.stderr[-2000:]

    ray_job(env, "submit", "--address", url, "--submission-id", job_id, "--working-dir", str(job_dir),
            "--no-wait", "--", "python", "sweep.py", "--smoke", "--address", "auto",
            "--storage-path", storage, "--name", NAME, timeout=120)
    status = wait_for_job(env, url, job_id)
    logs = ray_job(env, "logs", "--address", url, job_id)
    assert re.search(r"\bsucceeded\b", status, flags=re.I), status + logs[-5000:]

    # One progress line per point, e.g. "[3/9] C4e+10-s2  ok  loss 2.71  (31 s)".
    progress = re.findall(rf"^\[(\d+)/{POINTS}\] (\S+)\s+(\S+)", logs, flags=re.M)
    results = ff.load_results(tmp_path / "runs" / NAME)
    table = results.table
    assert sorted(pid for _, pid, _ in progress) == sorted(table.point_id), logs[-5000:]
    assert sorted(int(k) for k, _, _ in progress) == list(range(1, POINTS + 1))
    assert {s for _, _, s in progress} == {"ok"}
    assert len(table) == POINTS and (table.status == "ok").all(), table[["point_id", "status", "error"]]
    assert (table.tokens == table.planned_tokens).all()
    # The sweep's closing summary: the status line, the fitted laws, the prediction, and
    # where the report went.
    assert f"{POINTS} points: {POINTS} ok" in logs
    assert "Compute-optimal allocation" in logs and "| approach |" in logs
    assert "Prediction for C = 8e+12 FLOPs" in logs and "Written:" in logs

    # The smoke design is fittable by both approaches: every budget's optimum is bracketed,
    # so all three enter the power law, with an interval (with 3 sizes per budget most
    # resamples lose a bracket, so it may be a single value). The job's own fit: the same
    # results, resamples and seed as the example's report.
    laws = ff.fit(results, bootstrap=SMOKE_BOOTSTRAP)
    assert laws.isoflop is not None and laws.parametric is not None
    assert laws.isoflop.optima["bracketed"].all(), laws.isoflop.optima
    a = laws.isoflop.a
    assert math.isfinite(a.low) and a.low <= a.value <= a.high

    # Results, report and plots are in the sweep folder...
    report = tmp_path / "runs" / NAME / "report"
    for name in ("summary.txt", "table.md", "prediction.csv", "isoflop_curves.png",
                 "optima_vs_compute.png", "parametric_residuals.png"):
        assert (report / name).stat().st_size > 0, name
        assert f"{storage}/{NAME}/report/{name}" in logs
    # ...and nothing in the job's working directory (a copy under the head's temp folder).
    copies = [p.parent for p in Path(temp_dir).rglob("sweep.py")]
    assert copies, "the job's working directory was not found under the head's temp folder"
    for copy in copies:
        assert sorted(p.name for p in copy.iterdir()) == ["sweep.py"], sorted(copy.iterdir())


def test_a_job_whose_point_fails_shows_the_workers_error_in_its_logs_and_ends_failed(head, tmp_path):
    from jobs.failing_point import WORKER_ERROR

    url, env, _ = head
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    shutil.copy(ROOT / "tests" / "jobs" / "failing_point.py", job_dir / "failing_point.py")
    job_id = f"flops-fit-fails-{secrets.token_hex(4)}"
    ray_job(env, "submit", "--address", url, "--submission-id", job_id, "--working-dir", str(job_dir),
            "--no-wait", "--", "python", "failing_point.py", str(tmp_path / "runs"), str(tmp_path / "cache"),
            timeout=120)
    status = wait_for_job(env, url, job_id)
    logs = ray_job(env, "logs", "--address", url, job_id)
    # The sweep exits 1 when a point failed, so the job is failed, not succeeded.
    assert re.search(r"\bfailed\b", status, flags=re.I), status + logs[-5000:]
    # The worker's own output (its traceback, through log_to_driver) and the point's
    # progress line, which ends with the first line of its error.
    worker_lines = [l for l in logs.splitlines() if WORKER_ERROR in l and "pid=" in l]
    assert worker_lines, logs[-5000:]
    progress = re.findall(r"^\[1/1\] \S+\s+failed\b.*$", logs, flags=re.M)
    assert progress and WORKER_ERROR in progress[0], logs[-5000:]
