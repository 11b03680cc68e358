"""A sweep is visible in the Ray dashboard: its job, its trials' actors and its Train runs,
named after their points, read through the dashboard's HTTP API on loopback."""

import json
import urllib.request

import pytest

import flops_fit as ff
from toy import tiny_task

pytestmark = pytest.mark.slow


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_sweep_job_actors_and_runs_are_listed_by_the_dashboard(ray_session, tmp_path):
    task = tiny_task(tmp_path)
    plan = ff.plan_sweep(task, [1e10], sizes=[1, 2, 3])
    res = ff.run_sweep(plan, task, name="watched", storage_path=tmp_path / "runs", dry_run=True,
                       live_fit=False, verbose=False)
    assert (res.table.status == "ok").all()
    assert (res.table.train_loss == res.table.loss).all()  # dry run: drawn, not trained

    webui = ray_session._private.worker.global_worker.node.address_info["webui_url"]
    assert webui.startswith("127.0.0.1:"), f"dashboard not on loopback: {webui}"
    base = f"http://{webui}"

    job_id = ray_session.get_runtime_context().get_job_id()
    jobs = get(f"{base}/api/jobs/")
    assert any(j.get("job_id") == job_id for j in jobs), jobs

    actors = get(f"{base}/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
    # The trial driver is listed as ImplicitFunc or wrap_function.<locals>.ImplicitFunc.
    classes = {a["class_name"].split(".")[-1] for a in actors if a.get("job_id") == job_id}
    # One Tune trial driver, the point's Train controller and its training workers per point.
    assert {"ImplicitFunc", "TrainController", "RayTrainWorker"} <= classes, classes
    controllers = {a["actor_id"] for a in actors if a["class_name"].endswith("TrainController")}

    runs = get(f"{base}/api/train/v2/runs/v1")["train_runs"]
    by_name = {r["name"]: r for r in runs}
    # Each Train run is named after its point (budget and size), e.g. C1e+10-s2.
    assert {p.point_id for p in plan} <= set(by_name), sorted(by_name)
    actor_ids = {a["actor_id"] for a in actors}
    for p in plan:
        workers = [w for attempt in by_name[p.point_id]["attempts"] for w in attempt["workers"]]
        assert workers and all(w["actor_id"] in actor_ids for w in workers)
        assert by_name[p.point_id]["controller_actor_id"] in controllers
