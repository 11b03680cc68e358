"""What run_sweep checks before Ray starts: its arguments, the search it asks for, every
point's worker group (workers and Ray resources per worker), the Task's pickle and its
learning rates at every planned point. Each refusal is one line naming the argument and
the fix; nothing here starts Ray (ray.cloudpickle only pickles).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings

import ray.cloudpickle

from . import checks
from .plan import SweepPlan, SweepPoint
from .search import BracketSearchOptions
from .task import Task

RETRY_FOREVER = -1  # max_failures=-1: restart a point's worker group without limit (FailureConfig)
DEFAULT_RESOURCES_PER_WORKER = {"CPU": 1}  # one CPU core per Ray Train worker
GPUS_PER_WORKER = 1  # with use_gpu: one whole GPU per worker (data parallel, no GPU sharing)
# run_sweep's keywords of a bracket search before BracketSearchOptions, each with its field there
DEPRECATED_SEARCH_KEYWORDS = {"max_points": "max_points", "search_sizes": "sizes"}


def dry_run_law(dry_run) -> dict | None:
    """run_sweep's `dry_run` as the law to draw losses from: None to train, else a dict
    over the default law ({} and True both mean the default law as it is)."""
    if dry_run is None or dry_run is False:
        return None
    if dry_run is True:
        return {}
    if isinstance(dry_run, dict):
        return dict(dry_run)
    raise TypeError(f"run_sweep(dry_run={dry_run!r}) must be True, False or a dict of law parameters "
                    "(E, A, B, alpha, beta, noise), e.g. dry_run={'alpha': 0.3}.")


def check_sweep_arguments(plan, task, name, num_workers, max_failures, max_concurrent):
    if not isinstance(plan, SweepPlan):
        raise TypeError(f"run_sweep(plan=...) needs a SweepPlan from flops_fit.plan_sweep, got {type(plan).__name__}.")
    if not isinstance(task, Task):
        raise TypeError(f"run_sweep(task=...) needs a flops_fit.Task, got {type(task).__name__}.")
    if task.batch_rule != (plan.batch_tokens == 0) or (not task.batch_rule and plan.batch_tokens != task.batch_tokens):
        raise ValueError(
            "The plan's global batch is not the task's (batch_size x tokens_per_sample, or a batch "
            "rule per point); plan with the same Task."
        )
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"run_sweep(name={name!r}): give a plain folder name such as 'gpt-cpu-sweep'.")
    if not callable(num_workers):  # a function of the point: checked point by point (worker_groups)
        num_workers = checks.integer(num_workers, "run_sweep", "num_workers",
                                     "workers per point, or a function of the SweepPoint returning them")
    max_failures = checks.integer(max_failures, "run_sweep", "max_failures", "or -1 to retry without limit",
                             minimum=RETRY_FOREVER)
    if max_concurrent is not None:
        max_concurrent = checks.integer(max_concurrent, "run_sweep", "max_concurrent", "or None for as many as fit")
    return num_workers, max_failures, max_concurrent


def task_then_plan(task, plan) -> tuple:
    """run_sweep's (task, plan), in plan_sweep's order; the older order (plan, task) is
    taken with a DeprecationWarning."""
    if isinstance(task, SweepPlan) and isinstance(plan, Task):
        # stacklevel 3: the caller of run_sweep
        warnings.warn("run_sweep(plan, task, ...) is deprecated: pass run_sweep(task, plan, ...), the order "
                      "of plan_sweep(task, budgets)", DeprecationWarning, stacklevel=3)
        return plan, task
    return task, plan


def search_options(search, deprecated: dict) -> BracketSearchOptions | None:
    """run_sweep's `search` as BracketSearchOptions, or None for the plan as it is. The
    older form, search="bracket" with max_points=... and search_sizes=... keywords, still
    works and warns (DeprecationWarning)."""
    unknown = sorted(set(deprecated) - set(DEPRECATED_SEARCH_KEYWORDS))
    if unknown:
        raise TypeError(f"run_sweep() got an unexpected keyword argument {unknown[0]!r}")
    if deprecated or (isinstance(search, str) and search == "bracket"):
        # stacklevel 4: the caller of run_sweep (through run_sweep's _checked_sweep)
        warnings.warn("run_sweep(search='bracket', max_points=..., search_sizes=...) is deprecated: pass "
                      "search=flops_fit.BracketSearchOptions(max_points=..., sizes=...).",
                      DeprecationWarning, stacklevel=4)
    given = {DEPRECATED_SEARCH_KEYWORDS[k]: v for k, v in deprecated.items() if v is not None}
    if isinstance(search, BracketSearchOptions):
        if given:
            raise ValueError("run_sweep(max_points=..., search_sizes=...) beside search=BracketSearchOptions(...): "
                             "give them as BracketSearchOptions(max_points=..., sizes=...).")
        return search
    if search is None:
        if given:
            raise ValueError("run_sweep(max_points=..., search_sizes=...) bound a search: pass "
                             "search=flops_fit.BracketSearchOptions(max_points=..., sizes=...), or leave them "
                             "out to train the plan as it is.")
        return None
    if search != "bracket":
        raise ValueError(f"run_sweep(search={search!r}): use None (the plan as it is) or "
                         "flops_fit.BracketSearchOptions(...) (add sizes where a budget's optimum is not bracketed).")
    return BracketSearchOptions(**given)


def _check_resources(resources: dict, arg: str = "resources_per_worker") -> dict:
    """The resources as plain Python numbers (Ray's placement groups take no numpy scalars)."""
    for key, value in resources.items():
        if not isinstance(key, str):
            raise TypeError(f"run_sweep({arg}=...) has a key of type {type(key).__name__}: "
                            "name Ray resources by strings, e.g. {'CPU': 2, 'GPU': 1}.")
        checks.positive_number(value, "run_sweep", f"{arg}[{key!r}]",
                          "leave a resource out rather than ask for 0 of it")
    return {key: int(value) if checks.is_int(value) else float(value) for key, value in resources.items()}


def _worker_resources(resources, use_gpu: bool, arg: str = "resources_per_worker") -> dict:
    """Resources per worker from a dict or None (the default), GPU added with use_gpu, checked."""
    if resources is not None and not isinstance(resources, dict):
        raise TypeError(f"run_sweep({arg}=...) is a {type(resources).__name__}: give a dict of Ray resources "
                        "per worker, e.g. {'CPU': 2}, or None for the default.")
    resources = dict(resources or DEFAULT_RESOURCES_PER_WORKER)
    if use_gpu:
        resources.setdefault("GPU", GPUS_PER_WORKER)
    return _check_resources(resources, arg)


def check_group_functions(num_workers, resources_per_worker, use_gpu: bool):
    """resources_per_worker as run_point takes it: a checked dict, or the user's function;
    a function of either argument must pickle (it travels to every trial driver)."""
    for arg, value in (("num_workers", num_workers), ("resources_per_worker", resources_per_worker)):
        if callable(value) and not _pickles(value):
            raise TypeError(f"run_sweep({arg}=<function>) cannot be pickled for Ray's trial drivers: use a "
                            "module-level function (or functools.partial of one).")
    return resources_per_worker if callable(resources_per_worker) else _worker_resources(resources_per_worker, use_gpu)


def worker_group(point: SweepPoint, num_workers, resources_per_worker, use_gpu: bool) -> tuple:
    """One point's worker group: (workers, Ray resources per worker). `num_workers` is an
    int or a function of the SweepPoint returning one; `resources_per_worker` a checked dict
    or a function of the SweepPoint returning a dict (or None: the default)."""
    if callable(num_workers):
        n = _of_point(num_workers, point, "num_workers")
        if not (checks.is_int(n) and n >= 1):
            what = "an int < 1" if checks.is_int(n) else f"a {type(n).__name__}"
            raise TypeError(f"run_sweep(num_workers=<function>) returned {what} for point {point.point_id}: "
                            "return the point's Ray Train workers as an int >= 1.")
        num_workers = int(n)
    if callable(resources_per_worker):
        resources = _of_point(resources_per_worker, point, "resources_per_worker")
        resources_per_worker = _worker_resources(resources, use_gpu,
                                                 f"resources_per_worker(<point {point.point_id}>)")
    return num_workers, resources_per_worker


def worker_groups(points, task: Task, num_workers, resources_per_worker, use_gpu: bool) -> dict:
    """Point id -> worker_group() of each of `points`, each checked against its global batch
    (equal micro-batches on every worker, Task.accumulation_steps)."""
    groups = {}
    for p in points:
        n, resources = worker_group(p, num_workers, resources_per_worker, use_gpu)
        try:
            task.accumulation_steps(n, p.batch_size if task.batch_rule else None)
        except ValueError as e:
            if not callable(num_workers):
                raise
            raise ValueError(f"Point {p.point_id}, run_sweep(num_workers=<function>): {e}") from e
        groups[p.point_id] = (n, resources)
    return groups


def _of_point(function, point: SweepPoint, arg: str):
    try:
        return function(point)
    except Exception as e:
        raise ValueError(f"run_sweep({arg}=<function>) raised {type(e).__name__} for point {point.point_id}: "
                         "it must return a value for every point of the plan.") from e


def distinct_groups(groups: dict) -> list:
    """The different (workers, resources per worker) of `groups` (point id -> group), each
    with the first point that has it."""
    seen = {}
    for pid, (n, resources) in groups.items():
        seen.setdefault((n, tuple(sorted(resources.items()))), (n, resources, pid))
    return list(seen.values())


def least_resources(groups: dict) -> dict:
    """Each resource's smallest amount per worker over `groups` (point id -> group), among
    the resources every group asks for: a node that holds no such worker holds none at all."""
    dicts = [resources for _, resources in groups.values()]
    common = set.intersection(*(set(d) for d in dicts)) if dicts else set()
    return {k: min(d[k] for d in dicts) for k in sorted(common)}


def pickled_task(task: Task) -> bytes:
    """The Task as Ray will ship it; a part that cannot be pickled is named now."""
    try:
        return ray.cloudpickle.dumps(task)
    except Exception as e:  # which field: pickled one by one to name it
        bad = [f.name for f in dataclasses.fields(task) if not _pickles(getattr(task, f.name))]
        raise TypeError(
            f"The Task cannot be pickled for Ray's workers ({type(e).__name__}: {e}); the part that "
            f"fails: {', '.join(bad) or 'unknown'}. Use module-level functions (or functools.partial "
            "of them) and data factories without open files, locks or live connections."
        ) from e


def _pickles(value) -> bool:
    try:
        ray.cloudpickle.dumps(value)
        return True
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):
        return False


def check_learning_rates(task: Task, plan: SweepPlan, multipliers=None) -> None:
    """Every planned point's settings (Task.lr, Task.warmup_fraction, numbers or rules) are
    usable: lr finite and > 0, times every lr_search multiplier too; warmup in [0, 1]."""
    for p in plan:
        try:
            hp = task.hyperparameters(p.params, p.tokens, p.flops)
        except (ValueError, ArithmeticError, TypeError) as e:
            raise ValueError(
                f"Task(lr=..., warmup_fraction=...) at point {p.point_id} (N={p.params:,}): "
                f"{type(e).__name__}: {e}; lr must suit every planned N."
            ) from e
        for m in multipliers or ():
            if not math.isfinite(hp["lr"] * m):
                raise ValueError(f"run_sweep(lr_search=...): a multiplier takes the learning rate of point "
                                 f"{p.point_id} out of the floats; use multipliers near 1.")
