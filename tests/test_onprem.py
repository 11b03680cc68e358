"""examples/cluster-onprem.yaml, really booted with `ray up` against this machine.

The "remote" host is an sshd that this test starts on 127.0.0.1 (a free port) with
its own host key, its own authorized_keys and its own HOME for the logged-in user:
nothing of the machine's SSH set-up (/etc/ssh, ~/.ssh) or the user's home is read
or written. Ray's local provider points at it with no workers; `ray up` runs the
file's setup and head start commands over SSH, `ray exec` runs a three-point dry run
on the head, `ray down` stops it.

Isolation: the file's start commands, and `ray down`, run `ray stop`, which kills
every Ray process it can see -- this pytest session's own Ray (conftest.py
ray_session) and anyone else's on the machine. So sshd runs in its own PID
namespace (`unshare --pid --mount-proc`): everything run over SSH sees only that
namespace's processes, which the test checks before anything can run `ray stop`.
Killing the namespace's first process (sshd) makes the kernel kill all the rest,
so no process of the test outlives it. The head gets its own ports and temp dir.

What the test's copy of the file changes, and why (everything else is the file):
  - provider.head_ip 127.0.0.1, no worker_ips; auth: this user, the test's key, and
    a ProxyCommand to the test's port (Ray's auth has no port setting);
  - file_mounts: the repository itself (absolute path, not the launcher's cwd);
  - setup: the shared storage path becomes a folder of the test; the two pip lines
    are left out because the node runs this checkout's own virtual environment
    (first on its PATH, the file's stated precondition), which is what they install:
    re-running them would repoint the venv's editable install at the node's copy;
  - the head's `ray start` gets free ports and a temp dir of its own.
"""

import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from driver_side import JOBS, free_ports

ROOT = Path(__file__).resolve().parents[1]
ONPREM_YAML = ROOT / "examples" / "cluster-onprem.yaml"
SSHD = "/usr/sbin/sshd"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
VENV_BIN = Path(sys.executable).parent  # the node runs this interpreter's environment

SSHD_START_TIMEOUT_S = 20
RAY_UP_TIMEOUT_S = 600  # setup + head start over SSH; about a minute on 2 cores
RAY_EXEC_TIMEOUT_S = 600  # the dry run on the head
RAY_DOWN_TIMEOUT_S = 180
SWEEP_NAME = "onprem-dry-run"
SHARED_STORAGE = "/mnt/shared/flops_fit"  # the file's FLOPS_FIT_STORAGE
# Ports of a Ray head besides the GCS port, each given a free one (`ray start` flags).
HEAD_PORT_FLAGS = (
    "--dashboard-port", "--ray-client-server-port", "--node-manager-port",
    "--object-manager-port", "--metrics-export-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
)
RAY_DAEMONS = ("raylet", "gcs_server")

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


def _skip_unless_possible():
    if sys.platform != "linux":
        pytest.skip("needs Linux PID namespaces (unshare) to isolate the node's `ray stop`")
    for tool in (SSHD, UNSHARE, shutil.which("rsync"), shutil.which("ssh-keygen"), shutil.which("ssh")):
        if not tool or not os.access(tool, os.X_OK):
            pytest.skip(f"needs {tool or 'rsync/ssh/ssh-keygen'} (apt-get install openssh-server rsync)")
    if os.geteuid() != 0:
        # sshd's privilege separation switches to the `sshd` user, which an unprivileged
        # user namespace (only our uid mapped) cannot do.
        pytest.skip(f"needs root to run sshd in its own PID namespace (running as uid {os.geteuid()})")
    probe = subprocess.run([UNSHARE, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot create a PID namespace here (unshare --pid: {probe.stderr.strip()})")


class Node:
    """sshd on 127.0.0.1:port in a PID namespace of its own; HOME of the login is `home`."""

    def __init__(self, work: Path):
        self.work = work
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.home = work / "home"
        self.home.mkdir(mode=0o700)
        self.key = work / "id_ed25519"
        self.port = free_ports(1)[0]
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(self.key), "-C", "flops-fit-test-client"], check=True)
        subprocess.run([*keygen, "-f", str(work / "host_key"), "-C", "flops-fit-test-host"], check=True)
        (work / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        (work / "authorized_keys").chmod(0o600)
        (work / "sshd_config").write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {work / 'host_key'}
AuthorizedKeysFile {work / 'authorized_keys'}
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers {self.user}
SetEnv HOME={self.home}
MaxSessions 64
MaxStartups 64
LogLevel VERBOSE
""")
        # The node's login shell (Ray runs `bash --login -i` and sources ~/.bashrc):
        # this checkout's venv first on PATH, so the node's python/pip/ray are the venv's.
        (self.home / ".bashrc").write_text(f"export PATH={shlex.quote(str(VENV_BIN))}:$PATH\n")
        self.proxy = f"{sys.executable} {JOBS / 'ssh_relay.py'} {self.port}"
        # /run/sshd (privilege separation) does not exist unless the machine runs sshd:
        # then a tmpfs /run is mounted in the namespace's own mount table, not the machine's.
        inner = ("[ -d /run/sshd ] || { mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd; }; "
                 f'exec {SSHD} -D -e -f "$0"')
        self.log = open(work / "sshd.log", "w")
        self.proc = subprocess.Popen(
            [UNSHARE, "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", inner, str(work / "sshd_config")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + SSHD_START_TIMEOUT_S
        while self.ssh("true", check=False).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sshd did not start:\n{(work / 'sshd.log').read_text()}")
            time.sleep(0.2)

    def ssh(self, command: str, check=True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}",
             "-o", f"ProxyCommand={self.proxy}", "-o", "ConnectTimeout=5",
             f"{self.user}@127.0.0.1", command],
            capture_output=True, text=True, check=check, timeout=60,
        )

    def stop(self):
        """Kill unshare; --kill-child kills sshd, the namespace's init, and with it the
        kernel kills every process left in the namespace."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()


def _test_config(node: Node, name: str, gcs_port: int, temp_dir: str) -> dict:
    """The file, with this machine's values in place of the YOUR-... ones."""
    config = yaml.safe_load(ONPREM_YAML.read_text())
    config["cluster_name"] = name
    assert set(config["provider"]) == {"type", "head_ip", "worker_ips"} and config["provider"]["type"] == "local"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    assert set(config["auth"]) == {"ssh_user", "ssh_private_key"}
    config["auth"].update(ssh_user=node.user, ssh_private_key=str(node.key), ssh_proxy_command=node.proxy)
    assert list(config["file_mounts"].values()) == ["."]
    config["file_mounts"] = {target: str(ROOT) for target in config["file_mounts"]}

    setup = config["setup_commands"]
    assert sum(SHARED_STORAGE in c for c in setup) == 1, "the storage line of setup_commands moved"
    kept = [c.replace(SHARED_STORAGE, str(node.home / "runs")) for c in setup if not c.startswith("pip install")]
    assert len(setup) - len(kept) == 2, "setup_commands no longer end with the two pip installs"
    config["setup_commands"] = kept

    head_ports = free_ports(len(HEAD_PORT_FLAGS))
    extra = " ".join(f"{flag}={port}" for flag, port in zip(HEAD_PORT_FLAGS, head_ports))
    starts = []
    for command in config["head_start_ray_commands"]:
        if "ray start" in command:
            assert "--port=6379" in command
            command = command.replace("--port=6379", f"--port={gcs_port}") + f" {extra} --temp-dir={temp_dir}"
        starts.append(command)
    assert starts[0] == "ray stop"  # the reason for the namespace
    config["head_start_ray_commands"] = starts
    return config


def _ray_cli(*args, timeout):
    """`ray <args>` from this venv; output kept for the assertion message."""
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args], capture_output=True, text=True, timeout=timeout,
        # Not this session's RAY_ADDRESS: the launcher talks to the node over SSH only.
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_USAGE_STATS_ENABLED": "0"},
        cwd=ROOT,
    )


def _namespace_pids(node: Node) -> set[int]:
    """Host pids of the processes in the node's PID namespace (found through the host /proc)."""
    ns = os.readlink(f"/proc/{node.proc.pid}/ns/pid_for_children")
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") == ns:
                    pids.add(int(entry.name))
            except OSError:  # exited meanwhile
                pass
    return pids


def _daemon_pids_in(pids) -> set[int]:
    out = set()
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm in RAY_DAEMONS:
            out.add(pid)
    return out


def test_ray_up_onprem_yaml_runs_a_dry_run_sweep_and_comes_down(tmp_path, ray_session):
    """ray_session: this session's own Ray, which the node's `ray stop` must not reach."""
    _skip_unless_possible()
    # Unix socket paths in Ray's temp dir must stay short (108 bytes): not under tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="ffonprem-")
    name = f"flops-fit-onprem-test-{os.getpid()}"
    # The local provider's node state, kept by the launcher and by the head alike.
    state_files = [Path(tempfile.gettempdir(), "ray", f"cluster-{name}.{ext}") for ext in ("state", "lock")]
    gcs_port = free_ports(1)[0]
    node = Node(tmp_path)
    try:
        # Isolation first, before anything that runs `ray stop`: the node's shell is in
        # another PID namespace, sees none of this machine's processes (this one
        # included) and has the test's HOME.
        probe = node.ssh("readlink /proc/self/ns/pid; echo $HOME; ps -eo pid=,args=")
        ns_line, home_line, *processes = probe.stdout.splitlines()
        assert ns_line != os.readlink("/proc/self/ns/pid"), "the node shares this machine's PID namespace"
        assert home_line == str(node.home)
        own = Path(f"/proc/{os.getpid()}/cmdline").read_text().replace("\0", " ").strip()
        assert not any(line.split(None, 1)[1].strip() == own for line in processes if " " in line.strip())
        assert len(processes) < 20, f"the node sees more than its own processes:\n{probe.stdout}"
        assert not _daemon_pids_in(_namespace_pids(node)), "Ray already running in the fresh namespace"

        config_path = tmp_path / "cluster-onprem.yaml"
        config_path.write_text(yaml.safe_dump(_test_config(node, name, gcs_port, temp_dir)))

        up = _ray_cli("up", str(config_path), "-y", "--no-config-cache", timeout=RAY_UP_TIMEOUT_S)
        assert up.returncode == 0, f"ray up failed:\n{up.stdout[-6000:]}\n{up.stderr[-6000:]}"
        # The head's Ray runs inside the namespace, from this checkout's venv.
        daemons = _daemon_pids_in(_namespace_pids(node))
        assert {Path(f"/proc/{p}/comm").read_text().strip() for p in daemons} == set(RAY_DAEMONS)
        assert (node.home / "flops_fit" / "examples" / "sweep.py").is_file()  # file_mounts
        assert (node.home / ".ray" / "auth_token").is_file()  # head_setup_commands

        sweep = (
            f"cd ~/flops_fit && python -c 'import ray, sys; print(\"NODE\", sys.executable, ray.__version__)' && "
            # Three dry-run points of one budget: enough to show the head runs a sweep into
            # the file's storage (too few to fit, which the example reports and exits 1:
            # no answer); the whole smoke sweep runs as a job in test_job_submit.py.
            f"python examples/sweep.py --dry-run --budgets 4e10 --sizes 2 3 5 "
            f"--address=127.0.0.1:{gcs_port} --name={SWEEP_NAME}; echo SWEEP_EXIT=$?"
        )
        run = _ray_cli("exec", str(config_path), sweep, timeout=RAY_EXEC_TIMEOUT_S)
        output = run.stdout + run.stderr
        assert run.returncode == 0 and "SWEEP_EXIT=1" in output, f"dry run failed on the head:\n{output[-8000:]}"
        assert "too small to fit the scaling laws" in output, output[-8000:]
        import ray

        assert f"NODE {sys.executable} {ray.__version__}" in output
        # The sweep read FLOPS_FIT_STORAGE from the file's setup (the env file in ~/.bashrc).
        results = pd.read_csv(node.home / "runs" / SWEEP_NAME / "results.csv")
        assert len(results) == 3 and (results["status"] == "ok").all(), results.to_string()
        assert results["loss"].notna().all()

        down = _ray_cli("down", str(config_path), "-y", timeout=RAY_DOWN_TIMEOUT_S)
        assert down.returncode == 0, f"ray down failed:\n{down.stdout[-6000:]}\n{down.stderr[-6000:]}"
        # `ray stop` ran on the head: no raylet or GCS is left in the namespace.
        deadline = time.monotonic() + 30
        while _daemon_pids_in(_namespace_pids(node)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _daemon_pids_in(_namespace_pids(node)), "ray down left Ray running on the head"
        # ... and this session's Ray outlived the node's `ray stop`s.
        assert [n for n in ray_session.nodes() if n["Alive"]], "the node's ray stop reached this session's Ray"
    finally:
        ns_pids = _namespace_pids(node) if node.proc.poll() is None else set()
        node.stop()
        for pid in ns_pids:  # the kernel kills them with the namespace's init; wait for it
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for path in state_files:
            path.unlink(missing_ok=True)
    assert not [p for p in ns_pids if Path(f"/proc/{p}").exists()], "processes of the node outlived it"
