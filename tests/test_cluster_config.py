"""The deployment files, checked offline: cluster.yaml, the on-prem variant
(examples/cluster-onprem.yaml), the KubeRay RayJob (examples/kuberay-rayjob.yaml), the image
it runs (deploy/Dockerfile) and the pinned stack every node installs
(deploy/requirements-cluster.txt).

Both are validated with the installed Ray's own cluster-launcher code
(`prepare_config` merges the provider's defaults, `validate_config` applies
ray-schema.json, which rejects unknown keys). These are private functions: they
are checked against the installed Ray, which the test asserts is in pyproject.toml's
supported range. Neither function
bootstraps the cloud provider; network access is blocked to prove it.

The security properties are read from the configs themselves: they are the part
of the file that is easy to loosen by accident and costly when loosened.
"""

import argparse
import json
import re
import shlex
import socket
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement  # packaging: a dependency of Ray
from packaging.utils import canonicalize_name
from packaging.version import Version

ray = pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
ONPREM_YAML = ROOT / "examples" / "cluster-onprem.yaml"
RAYJOB_YAML = ROOT / "examples" / "kuberay-rayjob.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements-cluster.txt"

PROJECT_MOUNT = "~/flops_fit"
LOCK_IN_NODE = f"{PROJECT_MOUNT}/deploy/requirements-cluster.txt"  # LOCK where file_mounts put it
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
        assert "--num-cpus" not in start  # the head's own cores: see below
    else:
        head = raw["available_node_types"][raw["head_node_type"]]
        assert head["resources"]["trial_slot"] >= 1
        # The drivers are Ray worker processes on the head, and a raylet starts at most
        # max(1, min(cores, CPU)) of them at once: "CPU": 0 starts them one at a time.
        assert head["resources"]["CPU"] >= 1


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
# The CPython versions with a torch wheel on PyPI: 2.13.0 has cp310 to cp314
# manylinux_2_28_x86_64 wheels and none for 3.15 (PyPI's file list of torch 2.13.0; `pip install
# --dry-run --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.X
# torch==2.13.0` resolves for 3.10 and 3.14, not for 3.15).
TORCH_BUILDS = {"2.13.0": {"cuda": "13.0", "min_driver": 580, "glibc": (2, 28), "pythons": ((3, 10), (3, 14))}}
# Ray's images (rayproject/ray, Dockerfiles in ray/docker/): Ubuntu 22.04, glibc 2.35.
RAY_IMAGE_GLIBC = (2, 35)
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-(?P<kind>cpu|gpu|cu\d+)$")


def _torch_pin() -> str:
    return _lock()["torch"]


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
    # one Ray on every node; the setup commands install only the lock (whose Ray pin equals
    # the image's: test_one_ray_release_in_every_deployment_file), never a Ray of their own
    assert len(versions) == 1, versions
    assert not any("ray[" in c or "ray==" in c for c in config["setup_commands"]), config["setup_commands"]
    assert RAY_IMAGE.match(images["worker"])["kind"] != "cpu", "GPU workers need the -gpu image"


def test_torch_build_fits_the_image_and_the_driver_check():
    config = _aws_config()
    torch_version = _torch_pin()
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


# --- one pinned stack in every deployment file --------------------------------------------------
DEPLOY_FILES = (CLUSTER_YAML, ONPREM_YAML, RAYJOB_YAML, DOCKERFILE, LOCK)
# How a deployment file names a Ray release (prose included: a comment that names another
# release than the file's pins is wrong too).
RAY_VERSION_FORMS = (
    re.compile(r"rayproject/ray:(\d+\.\d+\.\d+)"),
    re.compile(r"\bray(?:\[[a-z,]+\])?==(\d+\.\d+\.\d+)"),
    re.compile(r"\brayVersion:\s*[\"']?(\d+\.\d+\.\d+)"),
    re.compile(r"\bRay \(?(\d+\.\d+\.\d+)"),
    re.compile(r"/flops-fit:(\d+\.\d+\.\d+)-py"),
)
# An image tag of Ray's form (deploy/Dockerfile's image repeats its base's tag).
IMAGE_TAG = re.compile(r":(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3)(?P<minor>\d+)-(?P<kind>cpu|gpu|cu\d+)$")


def _lock_requirements() -> list:
    lines = (line.split("#", 1)[0].strip() for line in LOCK.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _lock() -> dict:
    """The lock as {canonical name: pinned version}."""
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in _lock_requirements()}


def _lock_python() -> tuple:
    m = re.search(r"^# For CPython (\d+)\.(\d+) on Linux", LOCK.read_text(), re.MULTILINE)
    assert m, "deploy/requirements-cluster.txt states the Python it is pinned for"
    return int(m[1]), int(m[2])


def _version(text: str) -> tuple:
    return tuple(int(x) for x in text.split("."))


def test_lock_pins_every_package_to_one_released_version():
    names = []
    for req in _lock_requirements():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{req.name} is not pinned with =="
        assert "*" not in specs[0].version and Version(specs[0].version).local is None, req.name
        assert req.url is None and req.marker is None, req.name
        names.append(canonicalize_name(req.name))
    assert len(names) == len(set(names)), "a package is pinned twice"
    assert "flops-fit" not in names  # the project is installed from its checkout


def test_lock_satisfies_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = {canonicalize_name(r.name): r for r in _lock_requirements()}
    for dependency in pyproject["project"]["dependencies"]:
        wanted = Requirement(dependency)
        pinned = lock.get(canonicalize_name(wanted.name))
        assert pinned is not None, f"deploy/requirements-cluster.txt lacks {wanted.name}"
        version = next(iter(pinned.specifier)).version
        assert wanted.specifier.contains(version), f"{wanted.name}=={version} is outside pyproject's {wanted.specifier}"
        assert wanted.extras <= pinned.extras, f"{wanted.name}: the lock lacks extras {wanted.extras - pinned.extras}"
    major, minor = re.fullmatch(r">=(\d+)\.(\d+)", pyproject["project"]["requires-python"]).groups()
    assert _lock_python() >= (int(major), int(minor))


def test_one_ray_release_in_every_deployment_file():
    found = {}
    for path in DEPLOY_FILES:
        text = path.read_text()
        found[path.name] = {m for form in RAY_VERSION_FORMS for m in form.findall(text)}
        assert found[path.name], f"{path.name} names no Ray release"
    releases = set().union(*found.values())
    assert len(releases) == 1, f"the deployment files name different Ray releases: {found}"
    release = releases.pop()
    low, high = _ray_range()
    assert low <= _version(release) < high, f"Ray {release} is outside pyproject's range"
    assert _lock()["ray"] == release


def _dockerfile_instructions() -> list:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def _rayjob() -> dict:
    return yaml.safe_load(RAYJOB_YAML.read_text())


def _groups(cluster_spec: dict) -> list:
    return [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]


def _containers(group: dict) -> list:
    return group["template"]["spec"]["containers"]


def _images() -> dict:
    """Every image a deployment file runs: {where: image}."""
    docker = _aws_config()["docker"]
    images = {"cluster.yaml head": docker["head_image"], "cluster.yaml worker": docker["worker_image"]}
    froms = [args for op, args in _dockerfile_instructions() if op.upper() == "FROM"]
    assert len(froms) == 1, froms
    images["deploy/Dockerfile FROM"] = froms[0]
    for group in _groups(_rayjob()["spec"]["rayClusterSpec"]):
        for container in _containers(group):
            images[f"kuberay-rayjob.yaml {container['name']}"] = container["image"]
    return images


def test_every_image_runs_one_python_that_the_lock_and_torch_support():
    pythons = {}
    for where, image in _images().items():
        m = IMAGE_TAG.search(image)
        assert m, f"{where}: the tag of {image} does not say its Ray and Python"
        pythons[where] = (int(m["py"]), int(m["minor"]))
    assert len(set(pythons.values())) == 1, pythons
    python = next(iter(pythons.values()))
    assert python == _lock_python(), "the lock is pinned for another Python than the images run"
    low, high = TORCH_BUILDS[_torch_pin()]["pythons"]
    assert low <= python <= high, f"torch {_torch_pin()} has no wheel for Python {python}"
    # The on-prem hosts bring their own Python: the file asks for the lock's.
    m = re.search(r"CPython (\d+)\.(\d+)", ONPREM_YAML.read_text())
    assert m and (int(m[1]), int(m[2])) == python


def _pip_installs(config: dict) -> list:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    commands = [c for key in keys for c in config.get(key, [])]
    for node_type in config.get("available_node_types", {}).values():
        commands += [c for key in keys for c in node_type.get(key, [])]
    return [c for c in commands if "pip install" in c]


def test_every_pip_install_is_pinned(raw):
    # An unpinned install resolves again at each boot: a node added late in a sweep would
    # run other versions than the first ones.
    installs = _pip_installs(raw)
    assert installs
    for command in installs:
        argv = shlex.split(command)
        args = argv[argv.index("install") + 1:]
        while args:
            arg = args.pop(0)
            if arg == "-r":
                assert args.pop(0) == LOCK_IN_NODE, command
            elif arg == "-e":
                assert args.pop(0) == PROJECT_MOUNT, command
            elif arg != "--no-deps":
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[\d.]+", arg), f"unpinned: {arg} in {command}"
    setup = raw["setup_commands"]
    lock_installs = [i for i, c in enumerate(setup) if f"-r {LOCK_IN_NODE}" in c]
    project_installs = [i for i, c in enumerate(setup) if f"-e {PROJECT_MOUNT}" in c]
    assert lock_installs and project_installs and lock_installs[0] < project_installs[0]
    # The lock holds every dependency (test_lock_satisfies_pyproject); `-c` cannot carry the
    # lock's `ray[...]` extras (pip: "Constraints cannot have extras").
    assert all("--no-deps" in setup[i] for i in project_installs), "the project's own deps escape the lock"


def test_aws_gpu_containers_see_the_gpus():
    # `docker run --gpus all` on GPU node types only: on a host without an NVIDIA driver it fails.
    config = _aws_config()
    for name, node_type in config["available_node_types"].items():
        options = node_type.get("docker", {}).get("worker_run_options", [])
        if node_type["resources"].get("GPU"):
            assert "--gpus all" in options, name
        else:
            assert not any("--gpus" in o for o in options), name
    docker = config["docker"]
    assert not any("--gpus" in o for o in docker.get("run_options", []) + docker.get("head_run_options", []))


def test_dockerfile_bakes_the_lock_then_the_project():
    steps = _dockerfile_instructions()
    base = next(args for op, args in steps if op.upper() == "FROM")
    assert RAY_IMAGE.match(base), f"{base} is not one of Ray's images"
    runs = [(i, args) for i, (op, args) in enumerate(steps) if op.upper() == "RUN"]
    lock_install = [i for i, args in runs if re.search(r"pip install .*-r \S*deploy/requirements-cluster\.txt", args)]
    project_install = [i for i, args in runs if "--no-deps" in args and "flops_fit" in args]
    assert lock_install and project_install and lock_install[0] < project_install[0]
    assert not [args for _, args in runs if "pip install" in args and "-r" not in args and "--no-deps" not in args]
    ignored = set((ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split())
    assert {".git", ".venv"} <= ignored


# KubeRay's ray.io/v1 API (https://ray-project.github.io/kuberay/reference/api/): the fields of a
# RayJobSpec and a RayClusterSpec that exist; Kubernetes drops unknown ones without a word.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
    "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}
RAYCLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "workerGroupSpecs",
}


def test_rayjob_is_a_kuberay_rayjob_that_deletes_its_cluster():
    job = _rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    assert spec["shutdownAfterJobFinishes"] is True  # no GPU pod outlives the sweep
    assert cluster["authOptions"]["mode"] == "token"
    for group in _groups(cluster):
        # KubeRay's rayStartParams is a map of strings
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), group


def test_rayjob_runs_one_image_of_deploy_dockerfile():
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    images = {c["image"] for g in _groups(cluster) for c in _containers(g)}
    assert len(images) == 1, images
    image = images.pop()
    base = _images()["deploy/Dockerfile FROM"]
    assert IMAGE_TAG.search(image)[0] == IMAGE_TAG.search(base)[0], "the image's tag is not its base's"
    assert cluster["rayVersion"] == IMAGE_TAG.search(image)["ray"]


def test_rayjob_head_offers_trial_slots_and_workers_have_gpus():
    from flops_fit.ray_setup import TRIAL_RESOURCE

    cluster = _rayjob()["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    # `ray start --resources` takes JSON; KubeRay's field holds it as a quoted JSON string.
    resources = json.loads(json.loads(head["rayStartParams"]["resources"]))
    assert resources[TRIAL_RESOURCE] >= 1
    assert head["rayStartParams"].get("num-cpus", "1") != "0"  # see test_head_offers_trial_slots
    assert not any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(head))
    gpus = [int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for g in cluster["workerGroupSpecs"] for c in _containers(g)]
    assert gpus and all(n >= 1 for n in gpus)


def test_rayjob_environment_merges_with_flops_fits_own():
    from flops_fit.ray_setup import AUTOSCALING_ENV, RAY_ENV

    spec = _rayjob()["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    # Ray merges the job's runtime_env with the one flops_fit's ray.init passes and refuses a
    # variable named in both (ray/runtime_env/runtime_env.py, _merge_runtime_env).
    assert not set(env) & set(RAY_ENV), set(env) & set(RAY_ENV)
    cluster = spec["rayClusterSpec"]
    if cluster.get("enableInTreeAutoscaling") and any(g.get("minReplicas", 0) == 0 for g in cluster["workerGroupSpecs"]):
        assert env.get(AUTOSCALING_ENV) == "1", "GPU pods start on demand: a --gpu sweep would be refused"


def _sweep_parser() -> argparse.ArgumentParser:
    """The flags examples/sweep.py shares with every sweep script (without importing torch)."""
    from flops_fit.sweep_script import add_plan_arguments, add_run_arguments

    parser = argparse.ArgumentParser(allow_abbrev=False)  # a document spells a flag out
    add_plan_arguments(parser, [1e12], 4, 20.0, per="tokens")
    add_run_arguments(parser)
    return parser


def _sweep_args(argv: list) -> argparse.Namespace:
    args, unknown = _sweep_parser().parse_known_args(argv)
    assert not unknown, f"examples/sweep.py has no flag {unknown}"
    return args


def test_rayjob_entrypoint_runs_the_example_with_flags_it_has():
    argv = shlex.split(_rayjob()["spec"]["entrypoint"])
    workdir = next(args for op, args in _dockerfile_instructions() if op.upper() == "WORKDIR")
    assert argv[:2] == ["python", f"{workdir}/examples/sweep.py"], argv
    assert (ROOT / "examples" / "sweep.py").is_file()
    args = _sweep_args(argv[2:])
    assert args.gpu and args.address == "auto"
    # Pods share no disk: results and checkpoints go to object storage.
    assert args.storage_path.startswith(("s3://", "gs://")), args.storage_path


def test_documented_sweep_commands_use_flags_the_example_has():
    text = CLUSTER_DOC.read_text()
    blocks = re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if "examples/sweep.py" in line]
    assert commands, "docs/cluster.md shows no examples/sweep.py command"
    for line in commands:
        argv = shlex.split(line.split("examples/sweep.py", 1)[1], comments=True)
        _sweep_args(argv)
