"""cluster.yaml and the on-prem variant (examples/cluster-onprem.yaml), checked offline.

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
ONPREM_YAML = ROOT / "examples" / "cluster-onprem.yaml"

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
    return yaml.safe_load(ONPREM_YAML.read_text())


CONFIGS = {"aws": _aws_config, "onprem": _onprem_config}


@pytest.fixture(params=sorted(CONFIGS))
def raw(request) -> dict:
    return CONFIGS[request.param]()


@pytest.fixture
def prepared(raw) -> dict:
    config = prepare_config(raw)
    validate_config(config)
    return config


def _ray_range() -> tuple:
    """pyproject's Ray range as (low, high) version tuples."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")]
    assert len(pins) == 1, pins
    low, high = re.fullmatch(r"ray\[[a-z,]+\]>=([\d.]+),<([\d.]+)", pins[0]).groups()
    return tuple(int(x) for x in low.split(".")), tuple(int(x) for x in high.split("."))


def test_ray_is_a_range_and_the_installed_ray_is_in_it():
    low, high = _ray_range()
    version = tuple(int(x) for x in ray.__version__.split(".")[:len(low)])
    assert low <= version < high, (low, high, ray.__version__)


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
    # Tune trial drivers reserve `trial_slot`, never a CPU (docs/architecture.md, "the driver deadlock").
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


# --- the stack: one consistent pairing (docs/cluster.md, "The stack") -------------------------
# Facts the pairing rests on, with their sources. torch's Linux wheels on PyPI: 2.13.0 is built
# for CUDA 13.0 and tagged manylinux_2_28 (glibc >= 2.28); CUDA 13.0 needs an NVIDIA driver
# >= 580 (CUDA 13.0 release notes, "CUDA Toolkit and Corresponding Driver Versions").
TORCH_BUILDS = {"2.13.0": {"cuda": "13.0", "min_driver": 580, "glibc": (2, 28)}}
# Ray's images (rayproject/ray, Dockerfiles in ray/docker/): Ubuntu 22.04, glibc 2.35.
RAY_IMAGE_GLIBC = (2, 35)
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-(?P<kind>cpu|gpu|cu\d+)$")


def _torch_pin(commands) -> str:
    pins = {m for c in commands for m in re.findall(r"torch==([\d.]+)", c)}
    assert len(pins) == 1, f"one torch version on every node, found {pins}"
    return pins.pop()


def test_aws_nodes_run_rays_image_of_the_projects_ray_version():
    config = _aws_config()
    docker = config["docker"]
    images = {"head": docker["head_image"], "worker": docker["worker_image"]}
    low, high = _ray_range()
    versions = set()
    for role, image in images.items():
        m = RAY_IMAGE.match(image)
        assert m, f"{role} image {image!r} is not one of Ray's own images"
        version = tuple(int(x) for x in m["ray"].split("."))
        assert low <= version < high, f"{role} image has Ray {m['ray']}, outside the supported {low}..{high}"
        versions.add(m["ray"])
        py = (int(m["py"][0]), int(m["py"][1:]))
        assert py >= (3, 10), f"{role} image's Python {py} is below requires-python >= 3.10"
    # one Ray on every node; the setup commands must not install another over the image's
    assert len(versions) == 1, versions
    assert not any("ray[" in c or "ray==" in c for c in config["setup_commands"]), config["setup_commands"]
    assert RAY_IMAGE.match(images["worker"])["kind"] != "cpu", "GPU workers need the -gpu image"


def test_torch_build_fits_the_image_and_the_driver_check():
    config = _aws_config()
    torch_version = _torch_pin(config["setup_commands"])
    # The CI and the README install the same torch as the nodes.
    assert f"torch=={torch_version}" in (ROOT / ".ci" / "run").read_text()
    assert torch_version in TORCH_BUILDS, f"add torch {torch_version}'s CUDA build to TORCH_BUILDS"
    build = TORCH_BUILDS[torch_version]
    assert RAY_IMAGE_GLIBC >= build["glibc"]
    gpu_types = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    for node_type in gpu_types:
        checks = [c for c in node_type.get("initialization_commands", []) if "nvidia-smi" in c]
        assert len(checks) == 1, "each GPU node checks its driver before Ray starts"
        assert re.search(rf"\$1 < {build['min_driver']}\b", checks[0]), checks[0]
        assert f"torch {torch_version}" in checks[0] and f"CUDA {build['cuda']}" in checks[0]


def test_driver_check_passes_a_new_driver_and_fails_an_old_one():
    # The check's shell pipeline, run on canned nvidia-smi output.
    import subprocess

    node_type = next(t for t in _aws_config()["available_node_types"].values() if t["resources"].get("GPU"))
    check = node_type["initialization_commands"][0]
    pipeline = check.split("|", 1)[1]  # what follows nvidia-smi
    for driver, ok in (("580.95.05", True), ("590.1", True), ("570.172.08", False), ("470.256.02", False)):
        out = subprocess.run(["bash", "-c", f"echo {driver} | {pipeline}"], capture_output=True, text=True)
        assert (out.returncode == 0) == ok, (driver, out.stdout)
        if not ok:
            assert "older than" in out.stdout


def test_no_node_uses_rays_default_ami():
    # Ray 2.60's latest_dlami is Ubuntu 18.04 (glibc 2.27, CUDA 11.2): torch 2.13 cannot install.
    for name, node_type in _aws_config()["available_node_types"].items():
        image = node_type["node_config"].get("ImageId", "")
        assert image and image != "latest_dlami", name


def test_head_has_its_own_least_privilege_role():
    config = _aws_config()
    head = config["available_node_types"][config["head_node_type"]]
    arn = head["node_config"]["IamInstanceProfile"]["Arn"]
    assert arn.endswith(":instance-profile/flops-fit-head"), arn
    policy_commands = _doc_block("Head role", "bash").replace("\\\n", " ")
    document = re.search(r"--policy-name flops-fit-autoscaler --policy-document\s+'(.*?)'", policy_commands, re.S)
    assert document, "the head's policy is documented"
    import json

    statements = json.loads(document.group(1))["Statement"]
    actions = [a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert not [a for a in actions if a.endswith("*")], actions
    for s in statements:
        acts = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
        if "iam:PassRole" in acts:
            assert all("flops-fit-worker" in r for r in s["Resource"]), s
        if "ec2:TerminateInstances" in acts:
            assert s["Condition"]["StringEquals"]["aws:ResourceTag/ray-cluster-name"] == config["cluster_name"]
        if any(a.startswith("s3:") for a in acts):
            assert all("YOUR-BUCKET" in r for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]))
