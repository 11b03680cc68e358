"""One dry-run sweep through Ray, observed from outside: its losses follow the law it was
given, its worker groups give their CPUs back, the sweep-level metrics reach Ray's Prometheus
endpoint, the dashboard lists its job, its trials' actors and its Train runs (named after
their points), and the Tune callbacks a user passes for experiment trackers see it."""

import json
import math
import re
import time
import urllib.request

import pytest

import flops_fit as ff
from ray.tune.logger import LoggerCallback
from flops_fit.dry_run import CHINCHILLA_LAW
from driver_side import wait_for, worker_groups_holding_cpus
from worker_side import tiny_task

# A dry run of 3 budgets x 3 sizes of the toy GPT: every budget's minimum is bracketed under
# the dry run's law (Chinchilla's, noise off), so the live fit yields an exponent a.
BUDGETS = [1e10, 3e10, 1e11]
SIZES = [1, 2, 3]
LAW = {**CHINCHILLA_LAW, "noise": 0.0}
SWEEP = "observed"
METRICS_DEADLINE_S = 90  # Ray exports metrics periodically (seconds apart), so poll


class TrackerLog(LoggerCallback):
    """A stand-in for a tracker's logger callback (MLflow, W&B: the same LoggerCallback
    interface) that needs no server: one JSON line per event in a file."""

    def __init__(self, path):
        self.path = str(path)

    def _write(self, **entry):
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def log_trial_start(self, trial):
        self._write(event="start", point=trial.config["point"]["point_id"])

    def log_trial_result(self, iteration, trial, result):
        # pid: Tune's own key, the process of the trial's driver (the function trainable)
        self._write(event="result", point=trial.config["point"]["point_id"],
                    status=result.get("status"), loss=result.get("loss"), pid=result.get("pid"))

    def log_trial_end(self, trial, failed=False):
        self._write(event="end", point=trial.config["point"]["point_id"], failed=failed)


def test_callbacks_that_are_not_tune_callbacks_are_refused_before_ray_starts(tmp_path, monkeypatch):
    from flops_fit import ray_setup

    def no_ray(*a, **k):
        raise AssertionError("Ray was started before the callbacks were checked")

    monkeypatch.setattr(ray_setup, "ensure_ray", no_ray)
    task = tiny_task(tmp_path)
    plan = ff.plan_sweep(task, [1e10], sizes=[1, 2, 3])
    cases = [
        # len, not print: a started Ray (other tests' session) replaces builtins.print.
        ([len], "item 0 is <built-in function len>, not a ray.tune.Callback"),
        ([TrackerLog], "an instance, not the class"),
        (TrackerLog(tmp_path / "x"), "must be a list of ray.tune.Callback"),
    ]
    for callbacks, message in cases:
        with pytest.raises(TypeError, match=re.escape(message)):
            ff.run_sweep(task, plan, name="bad-callbacks", storage_path=tmp_path / "runs",
                         dry_run=True, callbacks=callbacks)
    assert not (tmp_path / "runs" / "bad-callbacks").exists()


@pytest.fixture(scope="module")
def observed_sweep(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("observed")
    task = tiny_task(tmp)
    plan = ff.plan_sweep(task, BUDGETS, sizes=SIZES)
    tracker_file = tmp / "tracker.jsonl"
    groups_before = worker_groups_holding_cpus()
    # A quarter CPU per worker: several points in flight at once on 2 cores.
    results = ff.run_sweep(task, plan, name=SWEEP, storage_path=tmp / "runs", dry_run=LAW,
                           resources_per_worker={"CPU": 0.25}, callbacks=[TrackerLog(tracker_file)],
                           verbose=False)
    return plan, results, tracker_file, groups_before


@pytest.mark.slow
def test_dry_run_takes_the_ray_path_and_follows_the_law(observed_sweep):
    _, results, _, groups_before = observed_sweep
    t = results.table
    assert (t.status == "ok").all(), t[["point_id", "status", "error"]]
    # Every point's worker group gave its CPUs back (a leaked one would hold them to the end
    # of the sweep, and enough of them stall it).
    assert wait_for(lambda: worker_groups_holding_cpus() <= groups_before), \
        worker_groups_holding_cpus()
    expected = LAW["E"] + LAW["A"] / t.params ** LAW["alpha"] + LAW["B"] / t.tokens ** LAW["beta"]
    assert (t.loss - expected).abs().max() < 1e-9


@pytest.mark.slow
def test_a_tracker_callback_sees_every_point_and_its_loss(observed_sweep):
    plan, results, tracker_file, _ = observed_sweep
    entries = [json.loads(line) for line in tracker_file.read_text().splitlines()]
    ids = sorted(p.point_id for p in plan)
    for event in ("start", "end"):
        assert sorted(e["point"] for e in entries if e["event"] == event) == ids, event
    assert not any(e["failed"] for e in entries if e["event"] == "end")
    # The tracker's last logged loss of each point is the loss in the sweep's results table,
    # which is rebuilt from Tune's files on disk, not from the callback.
    last = {e["point"]: e["loss"] for e in entries if e["event"] == "result"}
    table = results.table.set_index("point_id")
    assert set(last) == set(ids)
    for pid, loss in last.items():
        assert table.loc[pid, "status"] == "ok"
        assert loss == pytest.approx(table.loc[pid, "loss"], rel=1e-12), pid


@pytest.mark.slow
def test_trial_drivers_are_reused_from_point_to_point(observed_sweep):
    # Tune reuses a finished point's driver process for the next point (reuse_actors), which
    # spares every point a process start and the import of Ray Train and Tune in it.
    plan, results, tracker_file, _ = observed_sweep
    entries = [json.loads(line) for line in tracker_file.read_text().splitlines()]
    drivers = {e["point"]: e["pid"] for e in entries if e["event"] == "result"}
    assert set(drivers) == {p.point_id for p in plan} and all(drivers.values()), drivers
    assert (results.table.status == "ok").all()
    assert len(set(drivers.values())) < len(plan), drivers


def scrape(url):
    """Prometheus text -> {(name, frozenset of labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        if m and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def sweep_metric(samples, name, **labels):
    """Values of `name` whose labels include `labels` and sweep=SWEEP."""
    want = set(labels.items()) | {("sweep", SWEEP)}
    return [v for (n, lab), v in samples.items() if n == name and want <= lab]


@pytest.mark.slow
def test_sweep_metrics_reach_rays_prometheus_endpoint(ray_session, observed_sweep):
    plan, results, _, _ = observed_sweep
    laws = ff.fit(results, bootstrap=0)  # the point estimate of a does not depend on resampling
    node = next(n for n in ray_session.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    expected = {("finished",): len(plan), ("failed",): 0, ("running",): 0, ("pending",): 0}

    deadline = time.monotonic() + METRICS_DEADLINE_S
    while True:
        samples = scrape(url)
        points = {(s,): sweep_metric(samples, "ray_flops_fit_points", state=s) for (s,) in expected}
        a = sweep_metric(samples, "ray_flops_fit_exponent_a", bound="value")
        rate = sweep_metric(samples, "ray_flops_fit_tokens_per_second")
        if all(v == [n] for v, n in zip(points.values(), expected.values())) and a and rate:
            break
        assert time.monotonic() < deadline, (
            f"sweep metrics not (yet) on {url}: points {points}, a {a}, rate {rate}")
        time.sleep(2)
    # The live fit's exponent, as fitted from the results table.
    assert a[0] == pytest.approx(laws.isoflop.a.value, rel=1e-9)
    assert 0 < a[0] < 1
    assert rate == [0.0]  # nothing runs any more
    for bound in ("low", "high"):  # an interval where the bootstrap gave one
        for v in sweep_metric(samples, "ray_flops_fit_exponent_a", bound=bound):
            assert math.isfinite(v)


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_sweep_job_actors_and_runs_are_listed_by_the_dashboard(ray_session, ray_dashboard_url, observed_sweep):
    plan, results, _, _ = observed_sweep
    assert (results.table.train_loss == results.table.loss).all()  # dry run: drawn, not trained
    assert ray_dashboard_url.startswith("127.0.0.1:"), f"dashboard not on loopback: {ray_dashboard_url}"
    base = f"http://{ray_dashboard_url}"

    job_id = ray_session.get_runtime_context().get_job_id()
    jobs = get_json(f"{base}/api/jobs/")
    assert any(j.get("job_id") == job_id for j in jobs), jobs

    actors = get_json(f"{base}/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
    # The trial driver is listed as ImplicitFunc or wrap_function.<locals>.ImplicitFunc.
    classes = {a["class_name"].split(".")[-1] for a in actors if a.get("job_id") == job_id}
    # One Tune trial driver, the point's Train controller and its training workers per point.
    assert {"ImplicitFunc", "TrainController", "RayTrainWorker"} <= classes, classes
    controllers = {a["actor_id"] for a in actors if a["class_name"].endswith("TrainController")}

    runs = get_json(f"{base}/api/train/v2/runs/v1")["train_runs"]
    by_name = {r["name"]: r for r in runs}
    # Each Train run is named after its point (budget and size), e.g. C1e+10-s2.
    assert {p.point_id for p in plan} <= set(by_name), sorted(by_name)
    actor_ids = {a["actor_id"] for a in actors}
    for p in plan:
        workers = [w for attempt in by_name[p.point_id]["attempts"] for w in attempt["workers"]]
        assert workers and all(w["actor_id"] in actor_ids for w in workers)
        assert by_name[p.point_id]["controller_actor_id"] in controllers
