"""Layers 2 and 3 of the Ray stack: the trial driver and the sweep (the only module that
runs a `tune.Tuner`).

The pattern of Ray's own `doc_code/train_tune_interop.py`, public API only:
- Trial driver (`run_point`): the Tune function trainable for one sweep point. It builds a
  `ray.train.torch.TorchTrainer` (for every point, a group of one included) running
  `train.train_point` on every worker; `TuneReportCallback` forwards rank 0's metrics to
  Tune. The Train run's name is the point id, so a rerun of an unfinished point resumes
  from that point's own last checkpoint. Ray's own placement-group cleaner frees the
  worker group of a trial driver that dies.
- Sweep (`run_sweep`): one `tune.Tuner` over the points not yet finished, one trial per
  point, no early-stopping scheduler (every point of an IsoFLOP curve matters),
  concurrency derived from the cluster, one storage folder per sweep. A rerun of the same
  sweep reads `finished/<id>.json` from the sweep folder and starts a fresh Tuner over
  the other points, so this run's callbacks are the ones that run (a restored Tuner keeps
  the pickled callbacks of the first run, and Ray has no public way to replace them,
  ray#41364).
- Searched sweep (`search=BracketSearchOptions(...)`): the same trials, proposed by a Tune `Searcher`
  (`searcher.BracketSearcher`, decisions in `search.py`) instead of a grid; its record
  lives in the sweep folder, so a rerun resumes the search the same way.
"""

from __future__ import annotations

import base64
import dataclasses

from . import ray_setup  # sets RAY_TRAIN_V2_ENABLED before ray.train is imported

import ray
import ray.cloudpickle
import ray.train
from ray import tune

from .results import SweepResults, load_results, write_results_csv
from .lr_search import check_lr_search, sibling_id
from .callbacks import LiveFit, ProgressPrinter, ResultsWriter, SweepMetrics, check_callbacks, trial_point_id
from .plan import SweepPlan, SweepPoint
from .storage import join, read_text, resolved, write_text
from .sweep_folder import DEFAULT_STORAGE, LR_SEARCH_FILE, SEARCH_FILE, SweepFolder
from .search import BracketSearch, BracketSearchOptions
from .sweep_checks import (DEFAULT_RESOURCES_PER_WORKER, check_group_functions, check_learning_rates,
                           check_sweep_arguments, distinct_groups, dry_run_law, least_resources, pickled_task,
                           search_options, task_then_plan, worker_group, worker_groups)
from .task import Task, check_task
from .train import train_point

CHECKPOINTS_KEPT = 2  # per point; the older one survives a crash while the newer is written
# Tune's own console output: off, the sweep prints one line per point (callbacks.ProgressPrinter)
TUNE_VERBOSITY = 0
# Tune-level retries of a trial whose driver process died (killed for memory, its node lost):
# the retry builds the same-named TorchTrainer, which resumes from the point's last checkpoint.
# A point whose training failed for good is not retried by Tune (run_point: its error is
# recorded and raised again at once), so this bounds driver deaths, not training attempts.
TRIAL_RETRIES = 2
# A trial driver's record of its point's failure: beside the point's Train run, one per Tune
# trial (a rerun of the sweep has new trials, so it trains its failed points again).
FAILURE_RECORD = "{point_id}.trial-{trial_id}.error"


@dataclasses.dataclass(frozen=True)
class PointSettings:
    """How every trial driver of one sweep runs its point (pickled to each trial)."""

    num_workers: object  # Ray Train workers per point (data parallel): an int, or a function of the SweepPoint
    use_gpu: bool  # one GPU per worker
    resources_per_worker: object  # Ray resources per worker, e.g. {"CPU": 1}, or a function of the SweepPoint
    max_failures: int  # worker-group restarts per point; -1 = no limit
    train_storage: str  # where Train keeps each point's run and checkpoints: <sweep>/train
    dry_run: dict | None  # None: train; a law dict ({} = the default law): draw the loss


@dataclasses.dataclass(frozen=True)
class _Sweep:
    """One run_sweep call, its arguments checked: what its Tuner needs."""

    plan: SweepPlan
    task: Task
    name: str  # the sweep's folder under `storage`
    storage: str  # a local folder or a pyarrow URI (s3://, gs://)
    sweep_dir: str  # <storage>/<name>
    task_pickle: bytes  # the Task as ray.cloudpickle bytes, unpickled on the workers only
    settings: PointSettings  # how every trial driver runs its point
    node_resources: dict  # the least any point's worker reserves, for checks of nodes
    max_concurrent: int | None  # points at once; None: as many as the cluster holds
    callbacks: list  # the user's Tune callbacks, checked
    address: str | None  # Ray cluster address; None: RAY_ADDRESS, else a local Ray
    live_fit: bool
    verbose: bool
    search: BracketSearch | None  # None: the plan as it is
    multipliers: tuple | None  # lr_search's, checked; None: no learning-rate search


def run_sweep(task: Task, plan: SweepPlan, *, name: str, storage_path: str | None = None, num_workers: int = 1,
              use_gpu: bool = False, resources_per_worker: dict | None = None, max_concurrent: int | None = None,
              max_failures: int = 2, callbacks=(), dry_run: bool | dict = False, address: str | None = None,
              live_fit: bool = True, verbose: bool = True, search: BracketSearchOptions | None = None,
              lr_search=None, **deprecated) -> SweepResults:
    """Run every point of `plan` (plan_sweep(task, ...)'s) as a Ray Tune trial, one Ray Train
    worker group each, training `task`. The older order run_sweep(plan, task) warns.

    Returns the sweep's results.

    Args:
        name: the sweep's name and folder under `storage_path`; running the same name
            again resumes: finished points are kept, unfinished and failed ones rerun
            (each from its last checkpoint). The folder belongs to one plan and one task.
        storage_path: local folder or pyarrow URI (s3://, gs://); default ~/flops_fit_runs.
        num_workers: Ray Train workers per point (data parallel): an int, or a function of
            the point (a SweepPoint) returning one, e.g. more workers for the largest sizes.
            Functions are called here for every planned point before Ray starts (a group
            that never fits the cluster is refused then) and in each trial driver for its
            point; they must be pure and picklable (module-level, or functools.partial).
        use_gpu: one GPU per worker; precision from the device unless Task.precision says
            otherwise (bf16 from compute capability 8.0, else fp16); a worker whose torch
            sees no CUDA device fails its point rather than train on the CPU.
        resources_per_worker: Ray resources per worker, default {"CPU": 1} (+ {"GPU": 1});
            or a function of the point returning such a dict (None: the default).
        max_concurrent: points trained at once; default: as many as the cluster holds, each
            a worker group (the largest of the points') and its trial driver (a trial slot,
            else a hundredth of a CPU on a CPU-only node that is not spot:
            ray_setup.driver_resources); a driver that dies is retried (TRIAL_RETRIES) and
            its point resumes from its last checkpoint.
        max_failures: worker-group restarts per point (resuming from its last checkpoint);
            -1 retries without limit (for spot / preemptible nodes), as Ray's FailureConfig.
        callbacks: extra `ray.tune.Callback`s, e.g. experiment trackers (MLflow, W&B
            logger callbacks); they run on this driver and see every point as a trial.
        dry_run: True, or a law dict (E, A, B, alpha, beta, noise): same Ray path, but the
            loss is drawn from the law instead of training.
        address: Ray cluster address; default RAY_ADDRESS, else a local Ray is started
            (with settings for a small machine; a cluster keeps its own).
        live_fit: refit and redraw the table and plots in the sweep folder as points finish.
        search: None trains the plan as it is; a flops_fit.BracketSearchOptions adds sizes
            where a budget's valley is not bracketed (flops_fit/search.py). A sweep resumes
            the way it started.
        lr_search: multipliers of each point's learning rate (Task.lr's value there), e.g.
            [0.25, 0.5, 1, 2, 4]: every point is trained once per multiplier, as sibling
            trials `<point id>-lr<multiplier>`, and its loss is its best sibling's
            (flops_fit/lr_search.py); a point whose best multiplier is the smallest or
            largest is marked "lr-not-bracketed" and left out of the fit. No scheduler
            stops siblings early: losses part-way through a cosine decay are not comparable
            between LRs. A sweep resumes the way it started.
    """
    task, plan = task_then_plan(task, plan)
    sweep = _checked_sweep(plan, task, name=name, storage_path=storage_path, num_workers=num_workers,
                           use_gpu=use_gpu, resources_per_worker=resources_per_worker,
                           max_concurrent=max_concurrent, max_failures=max_failures, callbacks=callbacks,
                           dry_run=dry_run, address=address, live_fit=live_fit, verbose=verbose,
                           search=search, lr_search=lr_search, deprecated=deprecated)
    sweep_dir, multipliers = sweep.sweep_dir, sweep.multipliers
    # Refuses another plan or task under this name, and a second live driver of this sweep.
    claim = SweepFolder(sweep_dir).claim(plan, task)
    try:
        _check_same_lr_search(sweep_dir, multipliers)
        # The task's data opens on every node type, or no point starts; a dry run reads no
        # data, and a planned sweep whose points all finished starts no Ray.
        dry_run = sweep.settings.dry_run
        if dry_run is None and (sweep.search is not None or not _all_finished(plan, task, sweep_dir, multipliers)):
            from .preflight import check_before_sweep

            check_before_sweep(task, sweep.node_resources, address=address, verbose=verbose)
        return _run(sweep)
    finally:
        claim.release()


def _checked_sweep(plan, task, *, name, storage_path, num_workers, use_gpu, resources_per_worker,
                   max_concurrent, max_failures, callbacks, dry_run, address, live_fit, verbose, search,
                   lr_search, deprecated) -> _Sweep:
    """run_sweep's arguments checked before Ray starts (each refusal names the argument)."""
    num_workers, max_failures, max_concurrent = check_sweep_arguments(
        plan, task, name, num_workers, max_failures, max_concurrent)
    callbacks = check_callbacks(callbacks)
    worker_resources = check_group_functions(num_workers, resources_per_worker, use_gpu)
    # Every planned point's worker group, checked before Ray starts; `resources`: the least
    # any point's worker reserves (each resource's smallest amount), for checks of nodes.
    resources = least_resources(worker_groups(plan.points, task, num_workers, worker_resources, use_gpu))
    task_pickle = pickled_task(task)
    multipliers = check_lr_search(lr_search)
    check_learning_rates(task, plan, multipliers)
    options = search_options(search, deprecated)
    bracket_search = None if options is None else BracketSearch.from_options(plan, task, options)
    dry_run = dry_run_law(dry_run)
    if dry_run is None:
        check_task(task, plan)
    storage = _storage_uri(storage_path)
    sweep_dir = join(storage, name)
    settings = PointSettings(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=worker_resources,
                             max_failures=max_failures, train_storage=SweepFolder(sweep_dir).train_dir, dry_run=dry_run)
    return _Sweep(plan=plan, task=task, name=name, storage=storage, sweep_dir=sweep_dir, task_pickle=task_pickle,
                  settings=settings, node_resources=resources, max_concurrent=max_concurrent,
                  callbacks=callbacks, address=address, live_fit=live_fit, verbose=verbose,
                  search=bracket_search, multipliers=multipliers)


def _run(sweep: _Sweep) -> SweepResults:
    """The Tuner over the sweep's trials not yet finished; the table when none is left."""
    plan, task, sweep_dir, multipliers = sweep.plan, sweep.task, sweep.sweep_dir, sweep.multipliers
    finished = SweepFolder(sweep_dir).finished_ids()
    _check_same_search(sweep_dir, sweep.search is not None, finished)
    searcher = None
    if sweep.search is not None:
        from .searcher import BracketSearcher

        # Takes in the folder's record: a rerun continues the search where it stopped.
        searcher = BracketSearcher(sweep.search, sweep_dir, verbose=sweep.verbose,
                                   trial_points=lambda p: trial_points(p, task, multipliers))
        if searcher.finished:  # the search ended earlier: the table, without starting Ray
            return _finish(sweep_dir, sweep.verbose)
        todo = []
        total = sweep.search.max_points * (len(multipliers) if multipliers else 1)
    else:
        every = [t for p in plan for t in trial_points(dataclasses.asdict(p), task, multipliers)]
        todo, total = [t for t in every if t["point_id"] not in finished], len(every)
        if not todo:  # every point finished earlier: the table, without starting Ray
            return _finish(sweep_dir, sweep.verbose)
    # The groups of the points to train (a search's added points: checked by their drivers).
    points = [SweepPoint.from_dict(t) for t in todo] if todo else list(plan.points)
    settings = sweep.settings
    groups = distinct_groups(worker_groups(points, task, settings.num_workers, settings.resources_per_worker,
                                           settings.use_gpu))
    ray_setup.ensure_ray(sweep.address, verbose=sweep.verbose)
    for n, res, pid in groups:
        ray_setup.check_cluster_fits(res, n, settings.use_gpu, point_id=pid if len(groups) > 1 else None)
    driver = ray_setup.driver_resources()
    concurrency = sweep.max_concurrent or ray_setup.concurrency([(res, n) for n, res, _ in groups],
                                                                len(todo) or total - len(finished),
                                                                driver=ray_setup.driver_demand(driver))
    if sweep.verbose:
        _print_start(sweep, groups, concurrency, finished, todo, total)
    _tuner(sweep, searcher, todo, total, len(finished), concurrency, driver).fit()
    return _finish(sweep_dir, sweep.verbose)


def _print_start(sweep: _Sweep, groups: list, concurrency: int, finished: set, todo: list, total: int) -> None:
    """The sweep's opening lines: its plan, folder, worker groups, search and what it resumes."""
    multipliers = sweep.multipliers
    print(sweep.plan.summary())
    if len(groups) == 1:
        each = f"{groups[0][0]} worker(s) each, {groups[0][1]} per worker"
    else:
        each = "worker groups by point: " + ", ".join(f"{n} x {res} (e.g. {pid})" for n, res, pid in groups)
    print(f"Sweep folder: {sweep.sweep_dir}  ({concurrency} point(s) at a time, {each})", flush=True)
    if sweep.search is not None:
        print(f"Bracket-seeking search: at most {sweep.search.max_points} points in all"
              + (f"; resuming, {len(finished)} finished point(s) kept." if finished else "."), flush=True)
    if multipliers:
        print(f"Learning-rate search: each point at {len(multipliers)} multiples of its rule's LR "
              f"({', '.join(f'{m:g}' for m in multipliers)}), {total} trials", flush=True)
    if sweep.search is None and finished:
        print(f"Resuming sweep {sweep.name!r}: {total - len(todo)} finished trial(s) kept, "
              f"{len(todo)} to run.", flush=True)


def _tuner(sweep: _Sweep, searcher, todo: list, total: int, already_done: int, concurrency: int,
           driver: dict) -> tune.Tuner:
    """One Tuner over the trials: a grid of `todo`, or the searcher's proposals."""
    name, sweep_dir, plan = sweep.name, sweep.sweep_dir, sweep.plan
    trainable = tune.with_resources(
        # The task travels pickled and is unpickled on the workers only: unpickling
        # imports its model code, which the trial driver does not need.
        tune.with_parameters(run_point, task_pickle=sweep.task_pickle, settings=sweep.settings),
        driver,
    )
    metrics = SweepMetrics(name, total)  # the dashboard's and Prometheus' view of the sweep
    return tune.Tuner(
        trainable,
        # A search proposes its own points (its own search space); a plan is a grid.
        param_space=None if searcher else {"point": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1 if searcher else 1,  # -1: until the searcher says it is finished
            max_concurrent_trials=concurrency,
            trial_name_creator=trial_point_id,
            trial_dirname_creator=trial_point_id,
            # A finished point's driver process runs the next point: every point is spared
            # a process start and the import of Ray Train and Tune in it (the driver's CPU
            # per point 4.5 -> 1.5 of about 27 CPU-s of Ray processes on 2 cores;
            # benchmarks/RESULTS.md, "Trial drivers reused from point to point"). Safe
            # because a point ends when its function returns (the worker reports final=True,
            # not done=True), so Tune's reset finds the driver idle.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=sweep.storage,
            callbacks=[
                ResultsWriter(sweep_dir, plan),
                *([ProgressPrinter(total, already_done=already_done, bound=searcher is not None,
                                   sweep_dir=sweep_dir)] if sweep.verbose else []),
                *([LiveFit(sweep_dir, plan, verbose=sweep.verbose, on_fit=metrics.record_fit)]
                  if sweep.live_fit else []),
                metrics,
                *sweep.callbacks,
            ],
            verbose=TUNE_VERBOSITY,
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
        ),
    )


def _finish(sweep_dir: str, verbose: bool) -> SweepResults:
    results = load_results(sweep_dir)
    write_results_csv(results)
    if verbose:
        print(results.status_line(), flush=True)
    return results


def run_point(config: dict, task_pickle: bytes, settings: PointSettings) -> None:
    """Trial driver: train one sweep point on a Ray Train worker group.

    `task_pickle` is the Task as `ray.cloudpickle` bytes, unpickled on the workers only.

    Tune retries a trial after any error (FailureConfig(max_failures=TRIAL_RETRIES)), but
    only a driver that died should be retried: then the same-named TorchTrainer resumes the
    point from its last checkpoint. An error raised here (Train gave up after its own
    FailureConfig restarts, or the point's group never fits) is final for this trial: it is
    recorded (FAILURE_RECORD, in the sweep's Train storage, which every node reaches) before
    it is raised, and a retry of the same trial raises it again before training, so a failing
    point costs what it cost without Tune retries and keeps its error (Tune's error.txt,
    read by results.load_results and the progress line).
    """
    point = SweepPoint.from_dict(config["point"])
    record = join(settings.train_storage, FAILURE_RECORD.format(
        point_id=point.point_id, trial_id=tune.get_context().get_trial_id()))
    earlier = _read_failure(record)
    if earlier is not None:
        raise earlier
    try:
        _train_point(point, config, task_pickle, settings)
    except Exception as e:
        _record_failure(record, e)
        raise


def _train_point(point: SweepPoint, config: dict, task_pickle: bytes, settings: PointSettings) -> None:
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    num_workers, resources = worker_group(point, settings.num_workers, settings.resources_per_worker,
                                          settings.use_gpu)
    if callable(settings.num_workers) or callable(settings.resources_per_worker):
        # A point a search added was not checked before the sweep: a group that never fits
        # fails the point now instead of waiting forever.
        ray_setup.check_cluster_fits(resources, num_workers, settings.use_gpu, point_id=point.point_id)
    trainer = TorchTrainer(
        train_point,
        # A group of one never uses its process group (the worker trains as the single
        # process it is, train._make_accelerator), so it needs no NCCL: with gloo a GPU
        # worker on a node whose CUDA is broken reaches the worker's own check, which names
        # the node and CUDA_VISIBLE_DEVICES, instead of failing in NCCL set-up.
        torch_config=TorchConfig(backend="gloo") if num_workers == 1 else None,
        train_loop_config={
            "point": config["point"],
            "task_pickle": task_pickle,
            "dry_run": settings.dry_run,
            # torch threads per worker on CPU: the CPUs it reserved; 0 on GPU
            "threads": 0 if settings.use_gpu else int(resources.get("CPU", DEFAULT_RESOURCES_PER_WORKER["CPU"])),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=settings.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            # A stable name: a rerun of this point finds and resumes its own checkpoints.
            name=point.point_id,
            storage_path=settings.train_storage,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _record_failure(path: str, error: Exception) -> None:
    """Keep a trial's final error where a retry of the trial finds it (run_point)."""
    try:
        blob = ray.cloudpickle.dumps(error)
    except Exception:  # an exception that does not pickle: its type and text
        blob = ray.cloudpickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
    try:
        write_text(path, base64.b64encode(blob).decode("ascii"))
    except OSError:
        # Storage out of reach: the error is raised all the same; a Tune retry of this trial
        # would then train the point again, as any rerun of a failed point does.
        pass


def _read_failure(path: str) -> Exception | None:
    """The error recorded by _record_failure for this trial, or None."""
    text = read_text(path)
    if text is None:
        return None
    return ray.cloudpickle.loads(base64.b64decode(text))


def _all_finished(plan, task, sweep_dir: str, multipliers) -> bool:
    finished = SweepFolder(sweep_dir).finished_ids()
    return all(t["point_id"] in finished
               for p in plan for t in trial_points(dataclasses.asdict(p), task, multipliers))


def trial_points(point: dict, task: Task, multipliers) -> list:
    """The trials of one sweep point (a SweepPoint dict, perhaps with its origin): the
    point with its own settings resolved from the task's rules (`lr`, `warmup`,
    `batch_size`), once; with an LR search, one sibling per multiplier, `lr` scaled by it,
    under the id lr_search.sibling_id(point id, multiplier)."""
    hp = task.hyperparameters(point["params"], point["tokens"], point["flops"])
    if point.get("batch_size"):  # a batch rule's value was fixed by the plan (it set the steps)
        hp["batch_size"] = point["batch_size"]
    if not multipliers:
        return [{**point, **hp}]
    return [{**point, **hp, "point_id": sibling_id(point["point_id"], m), "lr": hp["lr"] * m,
             "lr_multiplier": m} for m in multipliers]


def _check_same_lr_search(sweep_dir: str, multipliers) -> None:
    """A sweep resumes with the learning-rate multipliers it started with; the first run
    records them in the folder (sweep_folder.LR_SEARCH_FILE)."""
    recorded = SweepFolder(sweep_dir).read_lr_search()
    if recorded is None:
        if multipliers and SweepFolder(sweep_dir).finished_ids():
            raise ValueError(f"The sweep at {sweep_dir} was started without lr_search; resume it without "
                             "lr_search (--lr-search), or pass another name for a searched sweep.")
        if multipliers:
            SweepFolder(sweep_dir).write_lr_search(multipliers)
        return
    if tuple(recorded) != tuple(multipliers or ()):
        raise ValueError(f"The sweep at {sweep_dir} was started with other lr_search multipliers (see its "
                         f"{LR_SEARCH_FILE}); resume it with those, or pass another name.")


def _check_same_search(sweep_dir: str, search: bool, finished: set) -> None:
    """A sweep resumes the way it started: searched (it has a search record) or as planned
    (`finished`: the ids of its finished points)."""
    searched = SweepFolder(sweep_dir).read_search() is not None
    if searched and not search:
        raise ValueError(f"The sweep at {sweep_dir} was started with a bracket search (see its {SEARCH_FILE}); "
                         "resume it with search=BracketSearchOptions(...) (--adaptive), or pass another name.")
    if search and not searched and finished:
        raise ValueError(f"The sweep at {sweep_dir} was started without a search; resume it with "
                         "search=None (without --adaptive), or pass another name for a searched sweep.")


def _storage_uri(storage_path) -> str:
    return resolved(str(storage_path or DEFAULT_STORAGE))
