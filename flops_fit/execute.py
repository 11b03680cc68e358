"""Layers 2 and 3 of the Ray stack: the trial driver and the sweep (the only module that
imports ray.tune).

- Trial driver (`run_point`): the Tune function trainable for one sweep point. It builds a
  Ray Train trainer (`TorchTrainer` for several workers) running `train.train_point` on
  every worker and forwards rank 0's metrics to Tune, the pattern of Ray's own
  `doc_code/train_tune_interop.py` (passing a trainer to `tune.Tuner` is deprecated since
  Ray 2.43 and fails under Train V2). Unlike the stock trainer, Train's controller runs in
  the trial driver's own process, and one `PlacementGroupGuard` per sweep replaces Train's
  per-run cleaner: four fewer processes per point (see "The Train stack of one point"
  below).
- Sweep (`run_sweep`): one `tune.Tuner` over all points, one trial per point, no
  early-stopping scheduler (every point of an IsoFLOP curve matters), concurrency derived
  from the cluster, one storage folder per sweep, and resume of an interrupted sweep
  without rerunning finished points.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import ray
import ray.train
from ray import tune
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.tune.experiment import Trial
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import results as R
from .callbacks import SweepMetrics, check_callbacks
from .plan import SweepPlan, SweepPoint
from .task import Task, check_task
from .train import train_point

# Tune reserves resources for each trial's driver process. On a CPU machine a driver
# holding 1 CPU starves its own worker group (RAY-NOTES: "the deadlock to avoid"), so
# drivers take one unit of a logical resource instead; local Ray gets plenty of them.
TRIAL_RESOURCE = "trial_slot"
LOCAL_TRIAL_SLOTS = 1000
# Where a cluster lacks TRIAL_RESOURCE, drivers take this sliver of a CPU.
FALLBACK_DRIVER_CPU = 0.01

# Measured on a 2-core machine with Ray 2.60 (benchmarks/RESULTS.md, RAY-NOTES): the
# Train controller's health-check poll (default 2 s) gates every report and the teardown.
RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",  # never phone home
    # Train runs (named after their points) and their worker actors in the dashboard.
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
}

DEFAULT_STORAGE = "~/flops_fit_runs"
# Set on clusters whose nodes come and go (cluster.yaml exports it): resources missing now
# may appear later, so they are not an error and concurrency is not capped by them.
AUTOSCALING_ENV = "FLOPS_FIT_AUTOSCALING"
DASHBOARD_HOST = "127.0.0.1"  # loopback only; reach it from elsewhere through an SSH tunnel


def run_sweep(
    plan: SweepPlan,
    task: Task,
    *,
    name: str,
    storage_path: str | None = None,
    num_workers: int = 1,
    use_gpu: bool = False,
    resources_per_worker: dict | None = None,
    max_concurrent: int | None = None,
    max_failures: int = 2,
    callbacks=(),
    dry_run: bool | dict = False,
    address: str | None = None,
    live_fit: bool = True,
    verbose: bool = True,
) -> "R.SweepResults":
    """Run every point of `plan` as a Ray Tune trial (one Ray Train worker group each).

    Returns the sweep's results.

    Args:
        name: the sweep's name and folder under `storage_path`; running the same name
            again resumes: finished points are kept, unfinished and errored ones rerun.
        storage_path: local folder or pyarrow URI (s3://, gs://); default ~/flops_fit_runs.
        num_workers: Ray Train workers per point (data parallel).
        use_gpu: one GPU per worker; bf16 autocast unless Task.precision says otherwise.
        resources_per_worker: Ray resources per worker, default {"CPU": 1} (+ {"GPU": 1}).
        max_concurrent: points trained at once; default: as many as the cluster fits.
        max_failures: worker-group restarts per point (resuming from its last checkpoint).
        callbacks: extra `ray.tune.Callback`s, e.g. experiment trackers (MLflow, W&B
            logger callbacks); they run on this driver and see every point as a trial.
        dry_run: True, or a law dict (E, A, B, alpha, beta, noise): same Ray path, but the
            loss is drawn from the law instead of training.
        address: Ray cluster address; default RAY_ADDRESS, else a local Ray is started.
        live_fit: refit and redraw the table and plots in the sweep folder as points finish.
    """
    _check_arguments(plan, task, name, num_workers, max_failures, max_concurrent)
    callbacks = check_callbacks(callbacks)
    if not dry_run:
        check_task(task, plan)
    resources = dict(resources_per_worker or {"CPU": 1})
    if use_gpu:
        resources.setdefault("GPU", 1)
    storage = _storage_uri(storage_path)
    sweep_dir = R.join(storage, name)
    R.claim_sweep_dir(sweep_dir, plan, task)  # refuses a different plan under the same name

    ensure_ray(address, verbose=verbose)
    _check_cluster_fits(resources, num_workers, use_gpu)
    # On an autoscaling cluster the nodes are not there yet: queue every point and let the
    # pending demand scale the cluster up (trial slots on the head bound it).
    autoscaling = bool(os.environ.get(AUTOSCALING_ENV))
    concurrency = max_concurrent or (len(plan) if autoscaling else _derived_concurrency(resources, num_workers))
    driver_resources = (
        {TRIAL_RESOURCE: 1}
        if ray.cluster_resources().get(TRIAL_RESOURCE)
        else {"CPU": FALLBACK_DRIVER_CPU}
    )
    guard_name = f"flops_fit-placement-group-guard-{os.getpid()}-{time.time_ns()}"
    guard = PlacementGroupGuard.options(
        name=guard_name,
        # On the sweep driver's node, which it lives and dies with (there the job's end
        # removes every placement group anyway). Hard: a soft affinity for a node without
        # CPUs (a cluster's head) is passed over, and a guard on a worker node dies with it.
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
    ).remote()
    settings = {
        "guard": guard_name,
        "num_workers": num_workers,
        "use_gpu": use_gpu,
        "resources_per_worker": resources,
        "max_failures": max_failures,
        "train_storage": R.join(sweep_dir, "train"),
        "sweep_dir": sweep_dir,
        "dry_run": (dry_run if isinstance(dry_run, dict) else {}) if dry_run else None,
        "threads": int(resources.get("CPU", 1)) if not use_gpu else 0,
    }
    trainable = tune.with_resources(
        # The task travels pickled: unpickling it imports its model code and so torch, which
        # the trial driver does not need (1.5 CPU-s per point; benchmarks/RESULTS.md).
        tune.with_parameters(run_point, task_pickle=ray.cloudpickle.dumps(task), settings=settings),
        driver_resources,
    )
    metrics = SweepMetrics(name, plan)  # the dashboard's and Prometheus' view of the sweep
    all_callbacks = [
        ResultsWriter(sweep_dir, plan),
        *([ProgressPrinter(plan)] if verbose else []),
        *([LiveFit(sweep_dir, plan, verbose=verbose, on_fit=metrics.record_fit)] if live_fit else []),
        metrics,
        *callbacks,
    ]
    if verbose:
        print(plan.summary())
        print(f"Sweep folder: {sweep_dir}  ({concurrency} point(s) at a time, "
              f"{num_workers} worker(s) each, {resources} per worker)", flush=True)
    if tune.Tuner.can_restore(sweep_dir):
        tuner = tune.Tuner.restore(
            sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        # Callbacks are a property of this run, not of the stored experiment (Ray keeps the
        # pickled ones otherwise); Ray has no public setter for them (ray#41364).
        tuner._local_tuner.get_run_config().callbacks = all_callbacks
        if verbose:
            print(f"Resuming sweep {name!r}: finished points are kept.", flush=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search([dataclasses.asdict(p) for p in plan])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrency,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
                # Not reused: Tune 2.60 fails a reused function trainable ("reuse requires
                # reset_config()"), and the trial driver is the lightest of its processes.
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=all_callbacks,
                verbose=0,
                # Retries happen inside the trial (Train's FailureConfig resumes from the
                # last checkpoint); an errored point is rerun by running the sweep again.
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    try:
        tuner.fit()
    finally:
        try:  # a driver that died near the end left its group for this last round
            ray.get(guard.check.remote(), timeout=30)
        except Exception as e:
            print(f"flops_fit: placement-group guard: {e!r}", file=sys.stderr, flush=True)
        ray.kill(guard)
    results = R.load_results(sweep_dir)
    R.write_results_csv(results)
    if verbose:
        print(results.status_line(), flush=True)
    return results


def run_point(config: dict, task_pickle: bytes, settings: dict) -> None:
    """Trial driver: train one sweep point on a Ray Train worker group.

    `task_pickle` is the Task as `ray.cloudpickle` bytes, unpickled on the workers only.
    """
    point = SweepPoint.from_dict(config["point"])
    finished = R.read_finished(settings["sweep_dir"], point.point_id)
    if finished is not None:  # finished before the sweep was interrupted: not trained again
        tune.report(finished)
        return
    trainer = _trainer_class(settings["num_workers"])(
        train_point,
        train_loop_config={
            "point": config["point"],
            "task_pickle": task_pickle,
            "dry_run": settings["dry_run"],
            "threads": settings["threads"],
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings["num_workers"],
            use_gpu=settings["use_gpu"],
            resources_per_worker=settings["resources_per_worker"],
        ),
        run_config=ray.train.RunConfig(
            # A stable name: a rerun of this point finds and resumes its own checkpoints.
            name=point.point_id,
            storage_path=settings["train_storage"],
            failure_config=ray.train.FailureConfig(max_failures=settings["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_ReportToTune(), _GuardPlacementGroup(settings["guard"])],
        ),
    )
    trainer.fit()


# The Train stack of one point. Each Python process a point starts costs 1-3 CPU-s of
# start-up and imports, taken from training on a small machine (benchmarks/RESULTS.md,
# "Where the time goes"). Ray Train 2.60's stock `TorchTrainer.fit()` starts four per point
# besides the workers: its controller, the report queue behind `TuneReportCallback`, a Ray
# Data `DatasetManager` (even without datasets) and a detached placement-group cleaner.
# Here the controller runs in the trial driver's own thread (the driver only waits for it),
# so its reports go to Tune with a plain `tune.report`; no DatasetManager without datasets;
# one `PlacementGroupGuard` per sweep does the cleaner's job. A group of one needs no torch
# backend, and without it (and with the task left pickled) the trial driver never imports
# torch: 1.4 CPU-s and 1.6 s of start-up less per point. These overrides use private
# Ray Train API: Ray is pinned (pyproject.toml) and tests/test_sweep.py checks that the
# sweep starts none of those processes.
PINNED_RAY = "2.60.0"


def _trainer_class(num_workers: int):
    """Ray Train trainer whose controller runs in the calling process (the trial driver):
    `TorchTrainer` for a group of several workers (its backend sets up their process group),
    the plain `DataParallelTrainer` for a group of one, which has no process group to set up
    and so keeps torch out of the trial driver (`ray.train.torch` imports it)."""
    import asyncio

    try:
        if num_workers > 1:
            from ray.train.torch import TorchTrainer as Trainer
        else:
            from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as Trainer
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import (
            PlacementGroupCleanerCallback,
        )
        from ray.train.v2._internal.execution.controller import TrainController
    except ImportError as e:
        raise ImportError(
            f"flops_fit runs Ray Train's controller inside each trial driver, which needs the "
            f"internals of Ray {PINNED_RAY} ({e}); install ray[default,train,tune]=={PINNED_RAY} "
            f"as pyproject.toml pins it (this is Ray {ray.__version__})."
        ) from e

    class DriverTrainer(Trainer):
        def _create_default_callbacks(self):
            # The cleaner's job is done by the sweep's PlacementGroupGuard; the datasets
            # callback only starts a DatasetManager actor when there are no datasets.
            drop = (PlacementGroupCleanerCallback,) + (() if self.datasets else (DatasetsCallback,))
            return [c for c in super()._create_default_callbacks() if not isinstance(c, drop)]

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            controller = TrainController(**controller_init_kwargs)
            asyncio.run(controller.run())
            return controller.get_result()

    return DriverTrainer


class _ReportToTune(ray.train.UserCallback):
    """Forwards rank 0's metrics to Tune. Runs in the controller, i.e. in the trial driver's
    training thread, where `tune.report` belongs (`TuneReportCallback` needs a queue actor
    because the stock controller lives in another process)."""

    def after_report(self, run_context, metrics, checkpoint):
        result = dict(metrics[0])
        if checkpoint:  # where the point's latest checkpoint is, as TuneReportCallback adds it
            result["checkpoint_path"] = checkpoint.path
        tune.report(result)


class _GuardPlacementGroup(WorkerGroupCallback):
    """Hands each new worker group's placement group to the sweep's PlacementGroupGuard."""

    def __init__(self, guard_name: str):
        self.guard_name = guard_name

    def after_worker_group_start(self, worker_group):
        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        try:
            guard = ray.get_actor(self.guard_name)
            ray.get(guard.watch.remote(ray.get_runtime_context().get_actor_id(), pg), timeout=30)
        except Exception as e:
            # Never fail the start over the guard: Ray Train 2.60 keeps the placement group of
            # a start whose after-start callback raised (worker_group.py builds the group's
            # state first), and the retry then waits forever for those CPUs.
            print(f"flops_fit: placement-group guard unreachable ({e!r}); this worker group's "
                  "CPUs are freed by its trial driver only", file=sys.stderr, flush=True)


@ray.remote(num_cpus=0)
class PlacementGroupGuard:
    """One per sweep: removes the placement group of a worker group whose trial driver died
    without removing it (killed, out of memory). Such a group keeps its CPUs/GPUs reserved
    until the sweep ends: a placement group outlives the actor that created it."""

    def __init__(self, check_interval_s: float = 3.0):
        self._watched: dict = {}  # trial driver's actor id -> its worker group's placement group
        self._lock = threading.Lock()
        self._checking = threading.Lock()  # the loop's round and a caller's never overlap
        self._interval_s = check_interval_s
        threading.Thread(target=self._loop, daemon=True, name="placement-group-guard").start()

    def watch(self, driver_actor_id: str, placement_group) -> None:
        with self._lock:  # a restarted worker group replaces the earlier (removed) one
            self._watched[driver_actor_id] = placement_group

    def check(self) -> int:
        """Remove the placement groups of dead trial drivers now; returns how many."""
        with self._checking:
            return self._check()

    def _check(self) -> int:
        from ray.util.placement_group import placement_group_table, remove_placement_group
        from ray.util.state import list_actors

        with self._lock:
            watched = dict(self._watched)
        if not watched:
            return 0
        # One query for all drivers: alive actors are few, dead ones pile up over a sweep.
        alive = {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)}
        removed = 0
        for driver_id, pg in watched.items():
            if driver_id in alive:
                continue
            if placement_group_table(pg).get("state") not in (None, "REMOVED"):
                print(f"flops_fit: trial driver {driver_id} died; removing its worker group's "
                      f"placement group {pg.id.hex()}", file=sys.stderr, flush=True)
                remove_placement_group(pg)
                removed += 1
            with self._lock:
                if self._watched.get(driver_id) is pg:
                    del self._watched[driver_id]
        return removed

    def _loop(self):
        while True:
            time.sleep(self._interval_s)
            try:
                self.check()
            except Exception as e:  # e.g. the state API briefly unavailable: next round
                print(f"flops_fit: placement-group guard: {e!r}", file=sys.stderr, flush=True)


def trial_name(trial: Trial) -> str:
    """Trial (and folder) name = the point id, e.g. 'C1e+12-s4': says which point it is."""
    return trial.config["point"]["point_id"]


def ensure_ray(address: str | None = None, *, verbose: bool = True) -> None:
    """Connect to `address` / RAY_ADDRESS, or start a local Ray with its dashboard on loopback."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {k: os.environ[k] for k in RAY_ENV}}
    if address:  # "auto" attaches to a Ray started with `ray start --head` on this machine
        # On a cluster the driver's output is all a person sees (`ray job logs`, the Jobs
        # view): trial drivers' and workers' output (errors, retries) is forwarded to it.
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    pin_local_address()
    runtime_env["env_vars"]["RAY_ADDRESS"] = os.environ["RAY_ADDRESS"]
    ctx = ray.init(
        address="local",  # a fresh Ray, never one left running by another program
        resources={TRIAL_RESOURCE: LOCAL_TRIAL_SLOTS},
        include_dashboard=True,
        dashboard_host=DASHBOARD_HOST,
        runtime_env=runtime_env,
        log_to_driver=False,
    )
    if verbose and ctx.dashboard_url:
        print(
            f"Ray dashboard: http://{ctx.dashboard_url}  (loopback only; Ray's token is in "
            f"{Path('~/.ray/auth_token').expanduser()}: paste it when the page asks)",
            flush=True,
        )


def pin_local_address() -> str:
    """Choose the GCS port of a Ray about to start here and export it as RAY_ADDRESS.

    Parts of Ray Train (its placement-group cleaner, its state actor) find "their" cluster
    by RAY_ADDRESS, else by scanning this machine; with two Ray instances on one machine
    (a test cluster beside another, a stale one) the scan picks the wrong one and worker
    groups never start. Processes the new Ray starts inherit this environment.
    """
    import socket

    from ray._private.services import get_node_ip_address

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
    return os.environ["RAY_ADDRESS"]


class ProgressPrinter(tune.Callback):
    """One line per finished point: id, status, loss, time, and how many remain."""

    def __init__(self, plan: SweepPlan):
        self.total = len(plan)
        self.done = 0
        self.t0 = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, trial.last_result, error=True)

    def _line(self, trial, result, error=False):
        self.done += 1
        status = "failed" if error else result.get("status", "?")
        loss = result.get("loss")
        loss_text = f"loss {loss:.4f}" if isinstance(loss, float) else "no loss"
        print(
            f"[{self.done}/{self.total}] {trial_name(trial):<18} {status:<8} {loss_text}  "
            f"({time.time() - self.t0:.0f} s)",
            flush=True,
        )


def trials_table(trials, plan: SweepPlan):
    """The results table from Tune's in-memory trials (the same rows load_results builds)."""
    rows = {}
    for t in trials:
        point = t.config["point"]
        error = None
        if t.status == Trial.ERROR:
            error = Path(t.error_file).read_text() if t.error_file and Path(t.error_file).exists() else "trial errored"
        rows[point["point_id"]] = R.result_row(point, t.last_result, error)
    return R.make_table(rows, plan)


class ResultsWriter(tune.Callback):
    """Rewrite `<sweep>/results.csv` atomically each time a point finishes or fails."""

    def __init__(self, sweep_dir: str, plan: SweepPlan):
        self.sweep_dir, self.plan = sweep_dir, plan

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get("final") and last.get("status") in ("ok", "diverged"):
            from ray.tune.result import AUTO_RESULT_KEYS

            # Tune's own keys (trial id, timings, its pid) are filled in again on replay.
            mine = {k: v for k, v in last.items() if k not in AUTO_RESULT_KEYS + ("trial_id", "experiment_tag")}
            R.write_finished(self.sweep_dir, trial.config["point"]["point_id"], mine)
        self._write(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write(trials)

    def _write(self, trials):
        R.write_results_csv(R.SweepResults(trials_table(trials, self.plan), self.sweep_dir, self.plan))


class LiveFit(tune.Callback):
    """Refit and rewrite the table and plots in `<sweep>/live/` as points finish.

    The fit runs in a background thread so that Tune keeps scheduling; a point finishing
    while a fit runs triggers one more fit afterwards.
    """

    def __init__(self, sweep_dir: str, plan: SweepPlan, verbose: bool = True, bootstrap: int = 200,
                 on_fit=None):
        self.sweep_dir, self.plan, self.verbose, self.bootstrap = sweep_dir, plan, verbose, bootstrap
        self.on_fit = on_fit  # called with each new fit (SweepMetrics.record_fit)
        self._thread = None
        self._again = False
        self._table = None
        self._lock = threading.Lock()

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment; threads and locks stay behind.
        return {k: v for k, v in self.__dict__.items() if k not in ("_thread", "_lock", "_table")}

    def __setstate__(self, state):
        self.__dict__.update(state, _thread=None, _lock=threading.Lock(), _table=None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        with self._lock:
            self._table = trials_table(trials, self.plan)
        self._kick()

    def on_experiment_end(self, trials, **info):
        if self._thread is not None:
            self._thread.join()

    def _kick(self):
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._thread = threading.Thread(target=self._loop, name="flops_fit-live-fit", daemon=True)
            self._thread.start()

    def _loop(self):
        while True:
            self._fit_once()
            with self._lock:
                if not self._again:
                    return
                self._again = False

    def _fit_once(self):
        from .fit import FitError, fit

        with self._lock:
            table = self._table
        try:
            laws = fit(table, bootstrap=self.bootstrap)
        except FitError:  # not enough finished points yet: nothing to draw
            return
        if self.on_fit is not None:
            self.on_fit(laws)
        live = R.join(self.sweep_dir, "live")
        if "://" in live:
            return  # plots are drawn on local disk; fit a remote sweep with `flops-fit fit URI`
        laws.plot(live)
        R.write_text_atomic(R.join(live, "table.md"), laws.table() + "\n")
        R.write_text_atomic(R.join(live, "summary.txt"), laws.summary() + "\n")
        if self.verbose:
            print(f"  live fit ({(table.status == 'ok').sum()} points) -> {live}", flush=True)


def _check_arguments(plan, task, name, num_workers, max_failures, max_concurrent):
    if not isinstance(plan, SweepPlan):
        raise TypeError(f"run_sweep(plan=...) needs a SweepPlan from flops_fit.plan_sweep, got {type(plan).__name__}.")
    if not isinstance(task, Task):
        raise TypeError(f"run_sweep(task=...) needs a flops_fit.Task, got {type(task).__name__}.")
    if plan.batch_tokens != task.batch_tokens:
        raise ValueError(
            f"The plan rounds D to steps of {plan.batch_tokens} tokens but the task's global batch is "
            f"{task.batch_tokens} tokens (batch_size x tokens_per_sample); plan with the same Task."
        )
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"run_sweep(name={name!r}): give a plain folder name such as 'gpt-cpu-sweep'.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"run_sweep(num_workers={num_workers!r}) must be an int >= 1.")
    if task.batch_size % num_workers:
        raise ValueError(
            f"Task.batch_size={task.batch_size} is not divisible by num_workers={num_workers}; "
            "each worker takes an equal share of the global batch."
        )
    if not isinstance(max_failures, int) or max_failures < 0:
        raise ValueError(f"run_sweep(max_failures={max_failures!r}) must be an int >= 0.")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise ValueError(f"run_sweep(max_concurrent={max_concurrent!r}) must be None or an int >= 1.")


def _storage_uri(storage_path) -> str:
    storage = str(storage_path or DEFAULT_STORAGE)
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def _derived_concurrency(resources: dict, num_workers: int) -> int:
    """How many worker groups the cluster holds at once (at least 1)."""
    total = ray.cluster_resources()
    fits = [int(total.get(k, 0) // (v * num_workers)) for k, v in resources.items() if v > 0]
    return max(1, min(fits) if fits else 1)


def _check_cluster_fits(resources: dict, num_workers: int, use_gpu: bool) -> None:
    """Fail now, not as a forever-pending trial, when no node can ever hold a worker."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if use_gpu and not any(n["Resources"].get("GPU", 0) > 0 for n in nodes):
        if not os.environ.get(AUTOSCALING_ENV):
            raise RuntimeError(
                "use_gpu=True but no node of this Ray cluster has a GPU. Run without --gpu, "
                "connect to a GPU cluster (address=... / RAY_ADDRESS), or set "
                "FLOPS_FIT_AUTOSCALING=1 if GPU nodes will be added by the autoscaler."
            )
        return
    if os.environ.get(AUTOSCALING_ENV):
        return
    fits_one = [n for n in nodes if all(n["Resources"].get(k, 0) >= v for k, v in resources.items())]
    if not fits_one:
        have = [{k: n["Resources"].get(k, 0) for k in resources} for n in nodes]
        raise RuntimeError(
            f"No node can hold one worker with resources_per_worker={resources}; nodes have {have}. "
            "Lower resources_per_worker or add bigger nodes."
        )
    capacity = sum(min(int(n["Resources"].get(k, 0) // v) for k, v in resources.items() if v > 0) for n in fits_one)
    if capacity < num_workers:
        raise RuntimeError(
            f"num_workers={num_workers} workers of {resources} never fit this cluster at once "
            f"(room for {capacity}). Lower num_workers or resources_per_worker."
        )
