"""Where trial drivers run and what each point's worker group is: driver retries, drivers
kept off GPU and spot nodes on clusters without trial slots, worker groups per point."""

import functools
import json
from pathlib import Path

import pytest

import flops_fit as ff
from flops_fit import execute, ray_setup
from driver_side import KillDriverOnce, job_result, wait_for, worker_groups_holding_cpus
from worker_side import FAILING_SIZE, gpt_failing, tiny_task, workers_by_size



# --- which nodes take drivers, how many points at once (no Ray) ---------------------------------
def node(node_id, labels=None, alive=True, **resources):
    return {"NodeID": node_id, "Alive": alive, "Resources": resources, "Labels": labels or {}}


def test_drivers_belong_on_cpu_only_nodes_that_are_not_spot():
    nodes = [
        node("gpu", CPU=8, GPU=1),
        node("cpu", CPU=4),
        node("spot", {ray_setup.MARKET_TYPE_LABEL: "spot"}, CPU=4),
        node("typed", {ray_setup.ACCELERATOR_LABEL: "A100"}, CPU=4),
        node("tpu", CPU=4, TPU=4),
        node("no-cpu", CPU=0),
        node("dead", alive=False, CPU=4),
        node("on-demand", {ray_setup.MARKET_TYPE_LABEL: "on-demand"}, CPU=2),
    ]
    assert ray_setup.driver_nodes(nodes) == ["cpu", "on-demand"]


def test_concurrency_counts_each_points_driver_and_its_largest_group(monkeypatch):
    import ray

    monkeypatch.delenv(ray_setup.AUTOSCALING_ENV, raising=False)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, ray_setup.TRIAL_RESOURCE: 3.0})
    slot = {ray_setup.TRIAL_RESOURCE: 1}
    # 4 CPUs hold 4 one-CPU groups, but only 3 drivers have a slot
    assert ray_setup.concurrency([({"CPU": 1}, 1)], points=10, driver=slot) == 3
    # a driver's sliver of a CPU beside each group: 4 CPUs hold 3 groups of 1 CPU + 0.01
    cpu_driver = {"CPU": ray_setup.FALLBACK_DRIVER_CPU}
    assert ray_setup.concurrency([({"CPU": 1}, 1)], points=10, driver=cpu_driver) == 3
    # the largest point's group decides: 2 workers of 1 CPU
    assert ray_setup.concurrency([({"CPU": 1}, 1), ({"CPU": 1}, 2)], points=10, driver=slot) == 2


# --- worker groups per point: arguments refused before Ray ---------------------------------------
def _returns(value):
    return lambda point: value


def _raises(point):
    raise KeyError("no such size")


BAD_GROUP_FUNCTIONS = [
    (dict(num_workers=_returns("2")), TypeError, r"num_workers=<function>\) returned a str for point"),
    (dict(num_workers=_returns(0)), TypeError, r"num_workers=<function>\) returned an int < 1 for point"),
    (dict(num_workers=_returns(3)), ValueError, r"Point \S+, run_sweep\(num_workers=<function>\): .*not divisible"),
    (dict(num_workers=_raises), ValueError, r"num_workers=<function>\) raised KeyError for point"),
    (dict(resources_per_worker=_returns([1])), TypeError, r"resources_per_worker\(<point \S+>\)=...\) is a list"),
    (dict(resources_per_worker=_returns({1: 1})), TypeError, r"resources_per_worker\(<point \S+>\)=...\) has a key"),
    (dict(resources_per_worker=_returns({"CPU": 0})), ValueError,
     r"resources_per_worker\(<point \S+>\)\['CPU'\]=0\) must be a finite number > 0"),
    (dict(resources_per_worker=[{"CPU": 1}]), TypeError, r"resources_per_worker=...\) is a list"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_GROUP_FUNCTIONS)
def test_bad_worker_group_functions_are_refused_before_ray(tmp_path, monkeypatch, overrides, error, message):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_setup, "ensure_ray", no_ray)
    task = tiny_task(tmp_path)
    plan = ff.plan_sweep(task, [1e10], sizes=[1, 2])
    with pytest.raises(error, match=message):
        ff.run_sweep(task, plan, name="bad", storage_path=tmp_path / "runs", **overrides)
    assert not (tmp_path / "runs" / "bad").exists(), "the sweep folder was claimed before the check"


def test_worker_groups_follow_the_point(tmp_path):
    task = tiny_task(tmp_path)
    plan = ff.plan_sweep(task, [1e10], sizes=[1, 2])
    groups = execute.worker_groups(plan.points, task, workers_by_size,
                                   lambda p: {"CPU": 0.5 * p.size}, use_gpu=False)
    assert {pid: n for pid, (n, _) in groups.items()} == {p.point_id: (1 if p.size == 1 else 2) for p in plan}
    assert sorted(r["CPU"] for _, r in groups.values()) == [0.5, 1.0]
    # a GPU per worker is added with use_gpu, as for a fixed resources_per_worker
    [(_, resources)] = execute.worker_groups(plan.points[:1], task, 1, lambda p: None, use_gpu=True).values()
    assert resources == {"CPU": 1, "GPU": 1}


# --- on the session's Ray --------------------------------------------------------------------
@pytest.mark.slow
def test_each_point_trains_with_its_own_worker_group(ray_session, tmp_path):
    task = tiny_task(tmp_path)
    plan = ff.plan_sweep(task, [1e10], sizes=[1, 2])
    res = ff.run_sweep(task, plan, name="groups", storage_path=tmp_path / "runs", num_workers=workers_by_size,
                       dry_run=True, live_fit=False, verbose=False)
    t = res.table.set_index("size")
    assert (t.status == "ok").all(), t[["status", "error"]]
    # Accelerate in the workers saw each point's own group
    assert t.loc[1, "num_processes"] == 1 and t.loc[2, "num_processes"] == 2, t.num_processes


CHECKPOINT_EVERY = 40  # steps: the killed point saves a few checkpoints before its last step


@pytest.mark.slow
@pytest.mark.oldest_ray
def test_a_killed_trial_driver_resumes_its_point_and_a_failed_point_is_not_retrained(ray_session, tmp_path):
    from ray import tune

    class KillDriver(KillDriverOnce, tune.Callback):
        pass

    calls = tmp_path / "model-calls.txt"
    task = tiny_task(tmp_path, model_fn=functools.partial(gpt_failing, calls=str(calls)),
                     checkpoint_every=CHECKPOINT_EVERY, report_every=20)
    plan = ff.plan_sweep(task, [1e10], sizes=[FAILING_SIZE, 2])
    survivor = next(p for p in plan if p.size != FAILING_SIZE)
    killer = KillDriver(survivor.point_id)
    before = worker_groups_holding_cpus()
    res = ff.run_sweep(task, plan, name="driver-retry", storage_path=tmp_path / "runs", max_failures=0,
                       live_fit=False, verbose=False, callbacks=[killer])
    assert killer.killed is not None, "the trial driver was never killed"
    t = res.table.set_index("size")
    ok = t.loc[survivor.size]
    assert ok.status == "ok", ok.error
    assert ok.tokens == survivor.tokens
    # Resumed from a checkpoint (a second attempt that started past step 0), not from scratch.
    # Not necessarily the one the driver was killed after: the orphaned worker group trains on
    # until Train's cleaner removes it, and may save a later one first.
    final = json.loads((Path(res.path) / "finished" / f"{survivor.point_id}.json").read_text())
    restored = final["restored_from_step"]
    assert final["attempts"] == 2 and 0 < restored < final["steps"] and restored % CHECKPOINT_EVERY == 0, final
    # The failing point: failed with its error, and trained once (max_failures=0), although
    # Tune may retry its trial TRIAL_RETRIES times.
    bad = t.loc[FAILING_SIZE]
    assert bad.status == "failed" and "model construction failed on purpose" in bad.error, bad.error
    assert calls.read_text().count("built") == 1, calls.read_text()
    # The killed driver's worker group outlived it (a placement group outlives its creator);
    # Ray Train's placement-group cleaner removes it, so its CPU is free for the next sweeps.
    assert wait_for(lambda: worker_groups_holding_cpus() <= before), worker_groups_holding_cpus()


# --- a cluster without trial slots (ray.cluster_utils.Cluster) -------------------------------
@pytest.mark.slow
def test_without_trial_slots_drivers_run_on_the_cpu_only_node(tmp_path):
    r = job_result("no_trial_slots.py", tmp_path, timeout=240)
    assert r["statuses"] == ["ok"] * 2, r
    assert r["drivers"] and set(r["drivers"]) == {r["cpu_node"]}, r
