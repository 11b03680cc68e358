"""IsoFLOP sweeps on a real local Ray: Tune trials running TorchTrainer worker groups."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import flops_fit as ff
from driver_side import KillWorkerOnce, job_result
from worker_side import DIVERGING_SIZE, gpt_nan, tiny_task

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def actor_classes() -> dict:
    from ray.util.state import list_actors

    # Tune's trial driver is listed as ImplicitFunc or wrap_function.<locals>.ImplicitFunc.
    return {a.actor_id: a.class_name.split(".")[-1] for a in list_actors(limit=10_000)}


def test_two_worker_sweep_trains_exactly_the_plan(ray_session, tmp_path):
    task = tiny_task(tmp_path)
    # Two points: a 2-worker group holds both CPUs, so points run one after another.
    plan = ff.plan_sweep(task, [1e10], sizes=[1, 2])
    assert len(plan) == 2
    before = actor_classes()
    res = ff.run_sweep(task, plan, name="two-workers", storage_path=tmp_path / "runs", num_workers=2,
                       live_fit=False)
    t = res.table
    assert list(t.status) == ["ok"] * 2, t[["point_id", "status", "error"]]
    started = [c for a, c in actor_classes().items() if a not in before]
    # One trial driver ran both points, one after the other (Tune reuses it); each point
    # had its own worker group.
    assert started.count("ImplicitFunc") == 1 and started.count("RayTrainWorker") == 4, started
    # Ray Train's stock trainer: one controller per point's Train run.
    assert started.count("TrainController") == 2, started
    assert t.loss.map(math.isfinite).all()
    # Accelerate inside each Ray worker sees the whole group.
    assert (t.num_processes == 2).all()
    last = json.loads((Path(res.path) / t.point_id[0] / "result.json").read_text().splitlines()[-1])
    assert last["distributed_type"] == "DistributedType.MULTI_CPU", last
    # Every rank's shard of the batch was gathered and found disjoint from the others.
    assert t.shards_disjoint.astype(bool).all()
    # The loop enforces the budget: tokens trained are exactly the plan's D.
    planned = {p.point_id: p for p in plan}
    for row in t.itertuples():
        assert row.tokens == planned[row.point_id].tokens
        assert row.flops == pytest.approx(planned[row.point_id].flops, rel=1e-12)
    # results.csv beside the sweep holds the same table, and fit() accepts the folder.
    on_disk = pd.read_csv(res.results_csv)
    assert list(on_disk.point_id) == list(t.point_id)
    reloaded = ff.load_results(res.path)
    pd.testing.assert_series_equal(reloaded.table.loss, t.loss)


@pytest.mark.oldest_ray
def test_diverged_point_is_data_and_the_sweep_goes_on(ray_session, tmp_path):
    task = tiny_task(tmp_path, model_fn=gpt_nan)
    plan = ff.plan_sweep(task, [5e9], sizes=[1, DIVERGING_SIZE])
    res = ff.run_sweep(task, plan, name="nan", storage_path=tmp_path / "runs", live_fit=False)
    by_size = res.table.set_index("size")
    assert by_size.loc[DIVERGING_SIZE, "status"] == "diverged"
    assert "nan" in by_size.loc[DIVERGING_SIZE, "error"].lower()
    assert by_size.loc[1, "status"] == "ok" and math.isfinite(by_size.loc[1, "loss"])
    # fit() leaves the diverged row out and says so (the other budgets are synthetic).
    from conftest import synthetic_sweep

    others = synthetic_sweep().assign(flops=lambda d: 6 * d.params * d.tokens)
    table = pd.concat([res.table, others], ignore_index=True)
    laws = ff.fit(table, bootstrap=0)
    reasons = " ".join(map(str, laws.excluded["reason"]))
    assert "diverged" in reasons and "only 1 usable model size(s)" in reasons
    assert "diverged" in laws.summary()


@pytest.mark.oldest_ray
def test_killed_worker_resumes_from_checkpoint_with_the_same_loss(ray_session, tmp_path):
    from ray import tune

    class KillOnce(KillWorkerOnce, tune.Callback):
        pass

    task = tiny_task(tmp_path, checkpoint_every=40, report_every=20)
    plan = ff.plan_sweep(task, [1e10], sizes=[2])
    clean = ff.run_sweep(task, plan, name="clean", storage_path=tmp_path / "runs", live_fit=False)
    killer = KillOnce()
    killed = ff.run_sweep(task, plan, name="killed", storage_path=tmp_path / "runs", live_fit=False,
                          callbacks=[killer])
    assert killer.killed is not None, "the worker was never killed"
    row_clean, row_killed = clean.table.iloc[0], killed.table.iloc[0]
    assert row_killed.status == "ok" and row_killed.attempts == 2
    assert row_killed.tokens == row_clean.tokens == plan.points[0].tokens
    assert row_killed.loss == pytest.approx(row_clean.loss, rel=1e-6)
    # A group of one is not wrapped in DistributedDataParallel (it only costs time there).
    last = json.loads((Path(clean.path) / row_clean.point_id / "result.json").read_text().splitlines()[-1])
    assert last["num_processes"] == 1 and last["distributed_type"] == "DistributedType.NO", last


@pytest.mark.slow
@pytest.mark.oldest_ray
def test_a_node_removed_mid_trial_resumes_on_another_node(tmp_path):
    r = job_result("node_loss.py", tmp_path, timeout=200)
    assert r["removed"] is not None, "no node was removed"
    assert r["status"] == "ok" and r["attempts"] >= 2
    assert r["node"] != r["removed"], "the point finished on the node that was removed"
    assert r["tokens"] == r["planned"]
