"""Fitting fixtures: published data location and synthetic IsoFLOP sweeps."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Published data sets, copied into the repository with their provenance (data/README.md).
DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# Generating law for synthetic sweeps (nats/token; N parameters, D tokens), chosen so the
# compute-optimal exponents a = beta/(alpha+beta), b = alpha/(alpha+beta) differ from 1/2.
TRUE_LAW = dict(E=1.7, A=400.0, B=1500.0, alpha=0.34, beta=0.28)
SYNTH_BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21)  # FLOPs
SYNTH_SIZES_PER_BUDGET = 9
SYNTH_HALF_SPAN_DECADES = 0.8  # sizes span the optimum +- this many decades
SYNTH_NOISE = 0.004  # relative loss noise (std of ln L)


@pytest.fixture
def data_dir():
    return DATA_DIR


def synthetic_sweep(seed=0, law=TRUE_LAW, noise=SYNTH_NOISE):
    """IsoFLOP grid: budgets x sizes around the true optimum, D = C/(6N), noisy loss."""
    rng = np.random.default_rng(seed)
    E, A, B, alpha, beta = (law[k] for k in ("E", "A", "B", "alpha", "beta"))
    a = beta / (alpha + beta)
    g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    rows = []
    for c in SYNTH_BUDGETS:
        n_opt = g * (c / 6) ** a
        shift = rng.uniform(-0.15, 0.15)  # sweep grid not centred exactly on the optimum
        for x in np.linspace(-SYNTH_HALF_SPAN_DECADES, SYNTH_HALF_SPAN_DECADES, SYNTH_SIZES_PER_BUDGET):
            n = n_opt * 10 ** (x + shift)
            d = c / (6 * n)
            loss = (E + A / n**alpha + B / d**beta) * np.exp(rng.normal(0, noise))
            rows.append(dict(budget=c, params=n, tokens=d, loss=loss, status="ok"))
    return pd.DataFrame(rows)


@pytest.fixture
def corpus(tmp_path):
    """A byte-level corpus of a dozen small text files under tmp_path, in windows of
    flops_fit.models.gpt()'s context length (128). With the default val_every=10 one file is
    validation, and every file is longer than one window of 128 + 1 bytes."""
    from flops_fit.data import TextCorpus

    root = tmp_path / "text"
    root.mkdir()
    for i in range(12):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}\n" + "the quick brown fox jumps " * 20)
    return TextCorpus([root], seq_len=128, cache_dir=tmp_path / "cache")


@pytest.fixture
def sweep():
    return synthetic_sweep()


@pytest.fixture
def true_law():
    return dict(TRUE_LAW)


# --- Ray ---------------------------------------------------------------------------------
TESTS_DIR = Path(__file__).resolve().parent


def _point_at_local_s3() -> None:
    """Object-storage tests use a local S3 server (fixture s3_server); its address goes into
    the environment now, before any Ray starts, so every Ray process inherits it."""
    import os

    from object_store import s3_env

    for key, value in s3_env().items():
        os.environ.setdefault(key, value)


_point_at_local_s3()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server at AWS_ENDPOINT_URL for the whole session (tests/object_store.py)."""
    from object_store import S3Server

    server = S3Server()
    yield server
    server.stop()


def pytest_collection_modifyitems(items):
    """Every test on the session's Ray is marked `ray`; tests that start a Ray of their own
    carry the mark themselves.

    Fast tests run first, so that a broken change fails in seconds: pure tests, then the
    tests that start Ray, then the slow ones (worker groups, training), each in file order.
    """
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)

    def tier(item):
        return 2 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("ray") else 0

    items.sort(key=tier)  # stable: file order within a tier


RAY_SESSION = {}  # what ray.init told the session fixture (ray_dashboard_url reads it)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs, dashboard on loopback).

    Token authentication is turned off for tests only (docs/architecture.md: Ray 2.60 turns it on
    for a local ray.init); workers get this folder on their path so that the helpers in
    tests/worker_side.py can be used as model and loss functions.
    """
    import os

    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    from flops_fit.ray_setup import TRIAL_RESOURCE, pin_local_address, set_ray_env

    env = set_ray_env(local=True)  # the settings of a Ray that flops_fit starts itself
    env["RAY_ADDRESS"] = pin_local_address()
    env["RAY_AUTH_MODE"] = "disabled"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)
    context = ray.init(
        address="local",  # never attach to a Ray left running on this machine
        num_cpus=2,
        resources={TRIAL_RESOURCE: 1000},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    RAY_SESSION["dashboard_url"] = context.dashboard_url
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_dashboard_url(ray_session):
    """The session Ray's dashboard address (host:port), as ray.init returned it."""
    return RAY_SESSION["dashboard_url"]
