"""Bad input fails before any compute, with a message that names the argument and the fix."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import flops_fit as ff
from flops_fit.models import gpt, lm_loss
from flops_fit.task import check_task
from driver_side import JOBS, job_result
from worker_side import tiny_task


@pytest.fixture
def task(tmp_path):
    return tiny_task(tmp_path)


@pytest.fixture
def plan(task):
    return ff.plan_sweep(task, [5e9, 1e10], sizes=[1, 2])


def vector_loss(model, batch):
    return torch.nn.functional.cross_entropy(
        model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten(), reduction="none"
    )


def nan_loss(model, batch):
    return lm_loss(model, batch) * math.nan


def short_context_gpt(size):
    from flops_fit.models import GPT

    return GPT.from_size(size, seq_len=16)


def test_a_loss_that_is_not_a_scalar_is_refused(tmp_path, plan):
    bad = dataclasses.replace(tiny_task(tmp_path), loss_fn=vector_loss)
    with pytest.raises(ValueError, match=r"loss_fn.*0-dim tensor"):
        check_task(bad, plan)


def test_a_loss_that_is_not_finite_is_refused(tmp_path, plan):
    bad = dataclasses.replace(tiny_task(tmp_path), loss_fn=nan_loss)
    with pytest.raises(ValueError, match=r"loss_fn.*nan"):
        check_task(bad, plan)


@pytest.mark.parametrize("dry_run, law", [(True, {}), ({}, {}), ({"alpha": 0.3}, {"alpha": 0.3}),
                                          (False, None), (None, None)])
def test_dry_run_law(dry_run, law):
    from flops_fit.execute import dry_run_law

    assert dry_run_law(dry_run) == law


def test_dry_run_law_refuses_what_is_neither_a_flag_nor_a_law():
    from flops_fit.execute import dry_run_law

    with pytest.raises(TypeError, match=r"dry_run='yes'\) must be True, False or a dict"):
        dry_run_law("yes")


def test_an_empty_dry_run_law_is_a_dry_run(tmp_path, plan, monkeypatch):
    # {} means "the default law": no training, so no probe step of the (here broken) task
    from flops_fit import ray_setup

    class RayStarting(Exception):
        pass

    def ray_starting(*a, **k):
        raise RayStarting

    monkeypatch.setattr(ray_setup, "ensure_ray", ray_starting)
    bad = dataclasses.replace(tiny_task(tmp_path), loss_fn=nan_loss)
    with pytest.raises(RayStarting):
        ff.run_sweep(bad, plan, name="dry-default", storage_path=tmp_path / "runs", dry_run={})


def test_samples_longer_than_the_model_context_are_refused(tmp_path):
    task = tiny_task(tmp_path, model_fn=short_context_gpt)  # 32-token samples, 16-token context
    plan = ff.plan_sweep(task, [5e9], sizes=[1, 2])
    with pytest.raises(ValueError, match=r"size 1.*context of seq_len=16"):
        check_task(task, plan)


def test_the_probe_leaves_the_callers_torch_rng_alone(task, plan):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    check_task(task, plan)  # seeds torch with task.seed for its probe model
    assert torch.equal(torch.rand(4), expected)


def test_a_corpus_too_small_for_the_largest_point_warns_with_the_epochs(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    for i in range(20):
        (text / f"f{i:02d}.txt").write_text("a small corpus of repeated words " * 40)
    from flops_fit.data import TextCorpus

    task = ff.Task(model_fn=gpt, data=TextCorpus([text], seq_len=32, cache_dir=str(tmp_path / "c")),
                   loss_fn=lm_loss, tokens_per_sample=32, batch_size=8)
    plan = ff.plan_sweep(task, [1e10], sizes=[1])
    with pytest.warns(UserWarning, match=r"repeat the data \d+\.\d times"):
        notes = check_task(task, plan)
    assert len(notes) >= 1


def test_a_data_factory_must_return_two_splits(tmp_path, plan):
    broken = dataclasses.replace(tiny_task(tmp_path), data=_one_split)
    with pytest.raises(TypeError, match=r"data=.*\(train, validation\)"):
        check_task(broken, plan)


def _one_split():
    """A data factory that forgot the validation split."""
    import numpy as np

    from flops_fit.data import TokenDataset

    return TokenDataset(np.arange(1000, dtype=np.uint16) % 256, 32)


BAD_RUN_ARGUMENTS = [
    ("dict(num_workers=0)", "num_workers=0"),
    ("dict(num_workers=3)", "not divisible by num_workers=3"),
    ("dict(name='a/b')", "name='a/b'"),
    ("dict(max_failures=-2)", "max_failures=-2"),
    ("dict(resources_per_worker={'CPU': 0})", "resources_per_worker['CPU']=0) must be a finite number > 0"),
    ("dict(resources_per_worker={'CPU': 1, 'GPU': -1})", "resources_per_worker['GPU']=-1) must be a finite number > 0"),
    ("dict(task=dataclasses.replace(task, lr=lambda n: 1.0 / (n - n)))", "ZeroDivisionError"),
    ("dict(task=dataclasses.replace(task, lr=lambda n: 1e-3 if n < 5000 else float('nan')))",
     "lr must suit every planned N"),
    ("dict(task=dataclasses.replace(task, extra={'lock': threading.Lock()}))",
     "cannot be pickled for Ray's workers"),
    ("dict(storage_path=str(tmp / 'file.txt' / 'runs'))", "writable storage_path"),
]


def run_before_ray(tmp_path, cases) -> list[dict]:
    """run_sweep with each case's overrides, in one fresh process (none of the test
    session's Ray there): each case's error and whether Ray had been started by then."""
    out = subprocess.run([sys.executable, str(JOBS / "run_sweep_before_ray.py"), str(tmp_path),
                          json.dumps(list(cases))], capture_output=True, text=True, timeout=300)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULTS ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(lines[0][len("RESULTS "):])


@pytest.fixture(scope="module")
def bad_run_outcomes(tmp_path_factory):
    """Every case of BAD_RUN_ARGUMENTS, run in one process: starting Python, Ray and torch
    once instead of once per case."""
    tmp = tmp_path_factory.mktemp("bad-run")
    (tmp / "file.txt").write_text("a file, not a folder")
    return {r["overrides"]: r for r in run_before_ray(tmp, [o for o, _ in BAD_RUN_ARGUMENTS])}


@pytest.mark.parametrize("overrides, message", BAD_RUN_ARGUMENTS)
def test_bad_run_arguments_fail_before_ray_starts(bad_run_outcomes, overrides, message):
    outcome = bad_run_outcomes[overrides]
    assert outcome["error"] is not None, f"run_sweep({overrides}) was accepted"
    assert message in outcome["error"], outcome["error"]
    assert outcome["ray_started"] is False, f"Ray was started before run_sweep({overrides}) failed"


def test_a_name_reused_with_another_plan_is_refused_before_ray_starts(tmp_path):
    from flops_fit.sweep_folder import SweepFolder

    task = tiny_task(tmp_path)
    other = ff.plan_sweep(task, [1e10], sizes=[1, 2, 3])
    SweepFolder(str(tmp_path / "runs" / "x")).claim(other, task)
    [outcome] = run_before_ray(tmp_path, ["{}"])
    assert "different plan already exists" in outcome["error"] and "To resume it" in outcome["error"]
    assert outcome["ray_started"] is False


@pytest.mark.slow
@pytest.mark.oldest_ray
def test_gpu_on_a_cluster_without_gpus_is_refused_at_once(ray_session, tmp_path, task, plan):
    with pytest.raises(RuntimeError, match=r"use_gpu=True but no node .* has a GPU"):
        ff.run_sweep(task, plan, name="gpu", storage_path=tmp_path / "runs", use_gpu=True)


@pytest.mark.slow
@pytest.mark.oldest_ray
def test_resources_no_node_can_hold_are_refused_at_once(ray_session, tmp_path, task, plan):
    with pytest.raises(RuntimeError, match=r"No node can hold one worker"):
        ff.run_sweep(task, plan, name="big", storage_path=tmp_path / "runs", resources_per_worker={"CPU": 64})


def test_results_are_read_without_unpickling_anything(tmp_path):
    # Tune also writes pickles (params.pkl, tuner.pkl); results must never depend on them.
    from flops_fit.plan import SweepPoint
    from flops_fit.results import load_results

    point = SweepPoint("C1e+10-s1", 1e10, 1, 7216, 43296.0, 225, 57600, 2.49e9)
    trial = tmp_path / point.point_id
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"point": dataclasses.asdict(point)}))
    (trial / "result.json").write_text(json.dumps({"final": True, "status": "ok", "loss": 2.5, "tokens": 57600}) + "\n")
    for name in ("params.pkl", "error.pkl"):
        (trial / name).write_bytes(b"\x80\x04 not a pickle, and never read")
    (tmp_path / "tuner.pkl").write_bytes(b"never read")
    table = load_results(tmp_path).table
    assert list(table.status) == ["ok"] and table.loss.iloc[0] == 2.5


def test_what_flops_fit_hands_ray_keeps_token_auth_and_usage_stats_off():
    # A fresh process as a user's: no auth or usage setting of its own.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    out = json.loads(subprocess.run([sys.executable, str(JOBS / "local_ray_env.py")], capture_output=True, text=True,
                                    check=True, env=env).stdout)
    assert out["auth"] is None and "RAY_AUTH_MODE" not in out["handed"]  # token auth stays Ray's default
    assert out["handed"]["RAY_USAGE_STATS_ENABLED"] == "0"  # nothing phones home


@pytest.mark.slow
@pytest.mark.oldest_ray
def test_laptop_settings_are_not_forced_on_a_cluster_that_is_joined(ray_session, tmp_path):
    from flops_fit.ray_setup import LOCAL_RAY_ENV, RAY_ENV

    env = {k: v for k, v in os.environ.items() if k not in LOCAL_RAY_ENV and k != "RAY_ADDRESS"}
    address = ray_session.get_runtime_context().gcs_address
    r = job_result("join_cluster.py", address, timeout=120, env=env)
    assert r["started"] is False
    # The user's own value is kept; the other laptop settings are set neither in the driver
    # nor in what the job hands to Ray's processes.
    assert r["driver"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "5"
    assert all(r["driver"][k] is None for k in LOCAL_RAY_ENV if k != "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    assert not set(LOCAL_RAY_ENV) & set(r["job_env"]), r["job_env"]
    assert r["job_env"]["RAY_TRAIN_V2_ENABLED"] == RAY_ENV["RAY_TRAIN_V2_ENABLED"]


def test_a_local_ray_gets_the_laptop_settings_unless_the_user_set_them():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_TRAIN")}
    env["RAY_TRAIN_METRICS_ENABLED"] = "1"  # the user's own choice
    out = subprocess.run([sys.executable, str(JOBS / "local_ray_env.py")], capture_output=True, text=True,
                         timeout=120, env=env)
    got = json.loads(out.stdout.strip().splitlines()[-1])["handed"]
    assert got["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.2"
    assert got["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert got["RAY_TRAIN_METRICS_ENABLED"] == "1"


def test_a_finished_sweep_run_again_returns_its_table_without_starting_ray(tmp_path):
    out = subprocess.run([sys.executable, str(JOBS / "finished_sweep_rerun.py"), str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert "STATUS ['ok', 'ok'] [4.0, 5.0]" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "RAY_STARTED False" in out.stdout
