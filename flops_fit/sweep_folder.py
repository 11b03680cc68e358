"""A sweep's folder (a local folder or an object-store URI): every path in it, and who owns it.

`SweepFolder` is the one owner of a sweep's paths: its plan and task records, the task's
fingerprint, each finished point's record, results.csv, a search's and an LR search's
state, the report and live-fit folders, and where Tune and Train keep their runs. Files
are read and written through flops_fit/storage.py, the same way on disk and in a bucket.

Who owns a sweep folder while a driver runs it (a file lock, or a lease in object storage)
is flops_fit/lease.py's. Never imports ray.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from . import storage
from .contract import ENDED_STATUSES
from .lease import SweepClaim, claim
from .plan import SweepPlan

PLAN_FILE = "plan.json"
TASK_FILE = "task.json"
TASK_FINGERPRINT_FILE = "task-fingerprint.json"
RESULTS_CSV = "results.csv"
FINISHED_DIR = "finished"  # one JSON file of final metrics per finished point
# A bracket-seeking search's record: the points it proposed, the planned points it skipped,
# its decision log. In a subfolder, beside finished/ and away from Tune's experiment files.
SEARCH_FILE = "search/state.json"
# A learning-rate searched sweep's multipliers (run_sweep(lr_search=...)), written by its
# first run: a rerun resumes with the same ones, and loading knows each point's siblings.
LR_SEARCH_FILE = "lr_search.json"
REPORT_DIR = "report"  # the finished sweep's report (plots, summary, table, prediction)
LIVE_DIR = "live"  # the live fit's table, summary and plots, rewritten as points finish
DEFAULT_STORAGE = "~/flops_fit_runs"  # where sweeps go when no storage_path is given
TRAIN_DIR = "train"  # Ray Train's runs and checkpoints, one folder per point
# Tune's experiment folder is the sweep folder itself: its trial folders, named after the
# points, hold these files.
TRIAL_FILES = ("params.json", "result.json", "error.txt")
JSON_INDENT = 1  # plan / task records: one key a line, readable in a diff, small on disk
# task_fingerprint: hex digits of a function's bytecode hash, enough to tell two versions apart.
CODE_HASH_CHARS = 12


def ended(metrics: dict) -> bool:
    """A point's final report, with a loss: status ok or diverged (train.py)."""
    return bool(metrics.get("final")) and metrics.get("status") in ENDED_STATUSES


@dataclass(frozen=True)
class TrialFiles:
    """What Tune left in one trial folder: each of TRIAL_FILES' text, None where absent."""

    name: str  # the folder's name: the point id (a resumed trial's may carry a suffix)
    params: str | None
    result: str | None
    error: str | None


class SweepFolder:
    """The folder of one sweep, `path` (a local path or a URI, as given): every file in it.

    The folder's filesystem is opened on first use and kept (one object-store client per
    SweepFolder). Records are replaced atomically (storage.Folder.write_text).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._files: storage.Folder | None = None

    def __repr__(self) -> str:
        return f"SweepFolder({self.path!r})"

    @property
    def files(self) -> storage.Folder:
        if self._files is None:
            self._files = storage.Folder(self.path)
        return self._files

    def uri(self, *parts: str) -> str:
        """A path in the sweep folder, spelled as the folder was given."""
        return storage.join(self.path, *parts)

    @property
    def results_csv(self) -> str:
        return self.uri(RESULTS_CSV)

    @property
    def report_dir(self) -> str:
        return self.uri(REPORT_DIR)

    @property
    def live_dir(self) -> str:
        return self.uri(LIVE_DIR)

    @property
    def train_dir(self) -> str:
        """Where Ray Train keeps each point's run and checkpoints (RunConfig.storage_path)."""
        return self.uri(TRAIN_DIR)

    def exists(self) -> bool:
        return self.files.kind() is not None

    # --- the plan and the task ----------------------------------------------------------------
    def plan(self) -> SweepPlan | None:
        """The plan recorded when the sweep started (PLAN_FILE), or None."""
        text = self.files.read_text(PLAN_FILE)
        return None if text is None else _parse_plan(text, self.files.at(PLAN_FILE))

    def claim(self, plan: SweepPlan, task) -> SweepClaim:
        """Create and hold the sweep folder, and record its plan and task there.

        Refuses (before any compute) a different plan or a different task under one name,
        naming what differs, and a second driver while one runs the sweep (a local folder's
        flock, an object store's lease). Call `.release()` on the returned claim when the
        sweep ends.
        """
        try:
            self.files.make()
        except OSError as e:
            raise PermissionError(
                f"Cannot create the sweep folder {self.path} ({e}); pass a writable storage_path."
            ) from e
        held = claim(self.path)
        try:
            self._check_or_record(plan, task)
        except BaseException:
            held.release()
            raise
        return held

    def _check_or_record(self, plan: SweepPlan, task) -> None:
        existing = self.files.read_text(PLAN_FILE)
        fingerprint = task_fingerprint(task)
        if existing is not None:
            try:
                same = _parse_plan(existing, self.files.at(PLAN_FILE)) == plan
            except ValueError:  # a damaged plan.json is not this plan: refuse, as for any other
                same = False
            if not same:
                raise ValueError(
                    f"A sweep with a different plan already exists at {self.path}. To resume it, run "
                    "again with the plan it was started with (see its plan.json); to start a new sweep, "
                    "pass another name, or delete that folder."
                )
            stored = self.files.read_text(TASK_FINGERPRINT_FILE)
            if stored is not None:
                self._check_same_task(json.loads(stored), fingerprint)
                return
        else:
            probe = ".write-test"
            try:
                self.files.put(probe, b"ok")
                self.files.delete(probe)
            except OSError as e:
                raise PermissionError(f"storage_path {self.path} is not writable ({e}); pass a writable storage_path.") from e
            self.files.write_text(PLAN_FILE, plan.to_json())
            self.files.write_text(TASK_FILE, json.dumps(describe_task(task), indent=JSON_INDENT, default=repr))
        # A sweep folder from before fingerprints were recorded takes this task's on resume.
        self.files.write_text(TASK_FINGERPRINT_FILE, json.dumps(fingerprint, indent=JSON_INDENT, sort_keys=True))

    def _check_same_task(self, old: dict, fingerprint: dict) -> None:
        differs = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if differs:
            detail = "; ".join(f"{k}: {old.get(k)!r} then, {fingerprint.get(k)!r} now" for k in differs)
            raise ValueError(
                f"The sweep at {self.path} was started with a different task ({detail}). Its "
                "results would mix two experiments. To resume it, run the task it was started "
                "with (see its task.json); to start a new sweep, pass another name."
            )

    # --- finished points ----------------------------------------------------------------------
    def write_finished(self, point_id: str, metrics: dict) -> bool:
        """Record a point's final metrics the moment it finishes, once: a point already
        recorded keeps its record (returns False). A rerun of the sweep trains only the points
        without one, so a driver killed right after a point's end never trains it again."""
        name = f"{FINISHED_DIR}/{point_id}.json"
        if self.files.kind(name) is not None:
            return False
        keep = {k: v for k, v in metrics.items() if k != "config"}
        self.files.write_text(name, json.dumps(keep, default=str))
        return True

    def read_finished(self, point_id: str) -> dict | None:
        """The final metrics recorded by write_finished, or None."""
        text = self.files.read_text(f"{FINISHED_DIR}/{point_id}.json")
        return json.loads(text) if text else None

    def finished_records(self) -> dict:
        """Point id -> final metrics of every point recorded as finished (ok or diverged)."""
        out = {}
        for name, kind in self.files.children(FINISHED_DIR):
            if kind != "file" or not name.endswith(".json") or name.startswith("."):
                continue
            path = f"{FINISHED_DIR}/{name}"
            try:
                metrics = json.loads(self.files.read_text(path))
            except json.JSONDecodeError as e:
                raise ValueError(f"Corrupt finished-point record {self.files.at(path)}: {e}. Delete it to "
                                 "rerun the point.") from e
            if ended(metrics):
                out[name[: -len(".json")]] = metrics
        return out

    def finished_ids(self) -> set:
        """Ids of the points recorded as finished (ok or diverged)."""
        return set(self.finished_records())

    # --- Tune's trial folders -------------------------------------------------------------------
    def trials(self) -> list:
        """TrialFiles of every folder Tune made in the sweep folder (other folders, such as
        finished/ and train/, hold none of TRIAL_FILES and come back empty)."""
        out = []
        for name, kind in self.files.children():
            if kind == "dir":
                out.append(TrialFiles(name, *(self.files.read_text(f"{name}/{f}") for f in TRIAL_FILES)))
        return out

    def trial_file(self, trial: str, name: str) -> str:
        """Where a trial's file is (in messages): its path on the sweep's filesystem."""
        return self.files.at(f"{trial}/{name}")

    def trial_error(self, point_id: str) -> str | None:
        """The error.txt of the trial folder named `point_id`, or None."""
        return self.files.read_text(f"{point_id}/error.txt")

    # --- searches and the results table -------------------------------------------------------
    def read_lr_search(self) -> tuple | None:
        """The LR-search multipliers recorded in the sweep folder (LR_SEARCH_FILE), or None."""
        text = self.files.read_text(LR_SEARCH_FILE)
        if not text:
            return None
        try:
            return tuple(float(m) for m in json.loads(text)["multipliers"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Corrupt LR-search record {self.files.at(LR_SEARCH_FILE)}: {e}. It is written "
                             "once, when the sweep starts: restore it or start the sweep under another name.") from e

    def write_lr_search(self, multipliers) -> None:
        self.files.write_text(LR_SEARCH_FILE, json.dumps({"multipliers": [float(m) for m in multipliers]},
                                                         indent=JSON_INDENT))

    def read_search(self) -> dict | None:
        """The record a bracket-seeking search keeps in the sweep folder (SEARCH_FILE), or None."""
        text = self.files.read_text(SEARCH_FILE)
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Corrupt search record {self.files.at(SEARCH_FILE)}: {e}. It is rewritten whole "
                             "at every decision, so a broken one means another program changed it.") from e

    def write_search(self, state: dict) -> None:
        self.files.write_text(SEARCH_FILE, json.dumps(state, indent=JSON_INDENT))

    def write_results_csv(self, text: str) -> str:
        """Replace results.csv with `text`, atomically; its path."""
        self.files.write_text(RESULTS_CSV, text)
        return self.results_csv


def _parse_plan(text: str, path: str) -> SweepPlan:
    """The plan in `text`, read from `path`; parsed as text, so an empty file is never
    mistaken for a path (that of the working directory)."""
    return SweepPlan.from_text(text, source=path)


def describe_task(task) -> dict:
    """JSON-safe record of the task's hyperparameters (factories by their repr)."""
    out = {}
    for name in task.__dataclass_fields__:
        value = getattr(task, name)
        out[name] = value if isinstance(value, (int, float, str, bool, list, tuple, dict, type(None))) else repr(value)
    return out


def task_fingerprint(task) -> dict:
    """Per field of the task, a description that is the same in every process for the same
    task: numbers as they are, functions by module and qualified name (and, for lambdas
    and nested functions, a hash of their code), partials by function and arguments,
    other objects (data sources) by their repr without memory addresses."""
    return {name: _describe(getattr(task, name)) for name in task.__dataclass_fields__}


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _describe(value):
    import functools
    import hashlib
    import types

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, functools.partial):
        return {"partial": _describe(value.func), "args": _describe(list(value.args)),
                "keywords": _describe(dict(value.keywords))}
    if isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, type)):
        func = getattr(value, "__func__", value)
        owner = getattr(value, "__self__", None)
        text = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
        if isinstance(owner, type):
            text = f"{owner.__module__}.{owner.__qualname__}.{func.__name__}"
        code = getattr(func, "__code__", None)
        if code is not None and "<" in func.__qualname__:  # a lambda or a nested function
            text += " #" + hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:CODE_HASH_CHARS]
        return text
    return _ADDRESS.sub("", repr(value))
