"""cluster.yaml and the on-prem variant in docs/cluster.md, checked offline.

Both are validated with the installed Ray's own cluster-launcher code
(`prepare_config` merges the provider's defaults, `validate_config` applies
ray-schema.json, which rejects unknown keys). These are private functions: they
are checked against the installed Ray, which the test asserts is in pyproject.toml's
supported range. Neither function
bootstraps the cloud provider; network access is blocked to prove it.

The security properties are read from the configs themselves: they are the part
of the file that is easy to loosen by accident and costly when loosened.
"""

import re
import shlex
import socket
import tomllib
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"

PROJECT_MOUNT = "~/flops_fit"
TOKEN_FILE = "~/.ray/auth_token"
WORLD = {"0.0.0.0/0", "::/0"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Validation must not reach AWS (or anything): fail on any connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _doc_block(heading_word: str, lang: str) -> str:
    """The first ```lang block after the first heading containing heading_word."""
    text = CLUSTER_DOC.read_text()
    heading = re.search(rf"^#+ .*{re.escape(heading_word)}.*$", text, re.MULTILINE)
    assert heading, f"docs/cluster.md has no heading with {heading_word!r}"
    block = re.compile(rf"^```{lang}\n(.*?)^```", re.MULTILINE | re.DOTALL)
    match = block.search(text, heading.end())
    assert match, f"no ```{lang} block under the {heading_word!r} heading"
    return match.group(1)


def _aws_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _onprem_config() -> dict:
    return yaml.safe_load(_doc_block("On-prem", "yaml"))


CONFIGS = {"aws": _aws_config, "onprem": _onprem_config}


@pytest.fixture(params=sorted(CONFIGS))
def raw(request) -> dict:
    return CONFIGS[request.param]()


@pytest.fixture
def prepared(raw) -> dict:
    config = prepare_config(raw)
    validate_config(config)
    return config


def test_ray_is_a_range_and_the_installed_ray_is_in_it():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")]
    assert len(pins) == 1, pins
    low, high = re.fullmatch(r"ray\[[a-z,]+\]>=([\d.]+),<([\d.]+)", pins[0]).groups()
    version = tuple(int(x) for x in ray.__version__.split(".")[:2])
    assert tuple(int(x) for x in low.split(".")) <= version < (int(high),), (pins, ray.__version__)


def test_validates_against_ray_schema(prepared):
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_unknown_keys_are_rejected():
    # Guards the guard: a typo must fail validation rather than be ignored.
    config = _aws_config()
    config["idle_timout_minutes"] = 5
    with pytest.raises(Exception, match="idle_timout_minutes"):
        validate_config(prepare_config(config))


def test_project_is_mounted_and_installed_from_its_pyproject(prepared):
    assert prepared["file_mounts"][PROJECT_MOUNT] == "."
    # "." is the repository root when `ray up` runs there, as documented.
    assert (ROOT / "pyproject.toml").is_file()
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [c for c in prepared[key] if f"pip install -e {PROJECT_MOUNT}" in c]
        assert installs, f"{key} do not install {PROJECT_MOUNT}"


def _ray_start(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, commands
    return starts[0]


def test_head_start_keeps_dashboard_local_and_auth_on(prepared):
    start = _ray_start(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "--disable-usage-stats" in start
    assert "RAY_AUTH_MODE=token" in start
    assert "0.0.0.0" not in start


def test_workers_join_with_token_auth(prepared):
    start = _ray_start(prepared["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start
    assert "--disable-usage-stats" in start


def test_token_is_created_on_head_and_synced_to_workers(prepared):
    generate = [c for c in prepared["head_setup_commands"] if "get-auth-token" in c]
    assert len(generate) == 1
    # The command prints the token: it must not land in `ray up` logs.
    assert "> /dev/null" in generate[0] and "chmod 600" in generate[0]
    assert TOKEN_FILE in prepared["cluster_synced_files"]


def test_head_offers_trial_slots(raw):
    # Tune trial drivers reserve `trial_slot`, never a CPU (RAY-NOTES deadlock).
    if raw["provider"]["type"] == "local":
        start = _ray_start(raw["head_start_ray_commands"])
        assert re.search(r"--resources='\{\"trial_slot\": \d+\}'", start), start
    else:
        head = raw["available_node_types"][raw["head_node_type"]]
        assert head["resources"]["trial_slot"] >= 1
        assert head["resources"]["CPU"] == 0


def _ip_permissions(node):
    """Every IpPermissions rule anywhere in the config."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "IpPermissions":
                yield from value
            else:
                yield from _ip_permissions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _ip_permissions(item)


def test_no_ingress_rule_open_to_the_world(raw):
    for rule in _ip_permissions(raw):
        cidrs = {r["CidrIp"] for r in rule.get("IpRanges", [])}
        cidrs |= {r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])}
        assert not cidrs & WORLD, f"rule open to the internet: {rule}"


def test_aws_tells_flops_fit_that_gpu_nodes_come_on_demand():
    # GPU workers scale from zero, so at submit time the cluster has no GPU;
    # flops_fit.execute rejects --gpu then unless FLOPS_FIT_AUTOSCALING is set.
    config = _aws_config()
    gpu_types = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu_types and all(t.get("min_workers", 0) == 0 for t in gpu_types)
    assert any("export FLOPS_FIT_AUTOSCALING=1" in c for c in config["setup_commands"])


def test_aws_nodes_use_a_precreated_security_group():
    # Without SecurityGroupIds, Ray 2.60 creates a group whose SSH rule is
    # 0.0.0.0/0 whatever provider.security_group says (aws/config.py).
    config = _aws_config()
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), name


def test_documented_security_group_opens_only_ssh_to_outside():
    commands = _doc_block("Security group", "bash").replace("\\\n", " ")
    ingress = [
        shlex.split(line)
        for line in commands.splitlines()
        if "authorize-security-group-ingress" in line
    ]
    assert ingress, "no ingress rules documented"
    for argv in ingress:
        if "--cidr" in argv:
            assert argv[argv.index("--port") + 1] == "22", argv
            assert argv[argv.index("--cidr") + 1] not in WORLD, argv
        else:
            assert "--source-group" in argv, argv
