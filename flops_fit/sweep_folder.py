"""A sweep's folder (a local folder or an object-store URI): every path in it, and who owns it.

`SweepFolder` is the one owner of a sweep's paths: its plan and task records, the task's
fingerprint, each finished point's record, results.csv, a search's and an LR search's
state, the report and live-fit folders, and where Tune and Train keep their runs. Files
are read and written through flops_fit/storage.py, the same way on disk and in a bucket.

One driver per sweep folder: two drivers on one sweep would train the same points into
the same checkpoint folders. A local folder (or shared POSIX storage) is held by an
exclusive `flock` on `<sweep>/.lock`, which the operating system drops when the driver
exits, crashes or is killed. An object store (s3://, gs://, any pyarrow filesystem URI)
has no locks, so there the sweep is held by a *lease*, `<sweep>/lease.json`: the owner's
id, host, pid and start time, rewritten every HEARTBEAT_S by a daemon thread. A driver
that dies stops beating; a lease that does not change for STALE_HEARTBEATS beats is taken
over by the next driver. Never imports ray.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import storage
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
TRAIN_DIR = "train"  # Ray Train's runs and checkpoints, one folder per point
# Tune's experiment folder is the sweep folder itself: its trial folders, named after the
# points, hold these files.
TRIAL_FILES = ("params.json", "result.json", "error.txt")
ENDED_STATUSES = ("ok", "diverged")  # a point that ended with a loss
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
    return SweepPlan._from_text(text, source=path)


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


# --- who owns the sweep: a flock or a lease ------------------------------------------------

LOCK_FILE = ".lock"
LEASE_FILE = "lease.json"
# The owner rewrites its lease this often (seconds). Each beat is one small PUT (about
# 8,600 a day, a few cents on S3); a driver killed on a URI sweep blocks a resume for
# STALE_HEARTBEATS x this. A test may set it lower in the driver's process: the lease
# records it, and a later driver judges the lease by the interval its owner promised.
HEARTBEAT_S = 10.0
# A lease unchanged for this many of its owner's beats is stale: its owner is dead (or cut
# off from the store for as long). Three beats leave room for a slow PUT or a GC pause.
STALE_HEARTBEATS = 3
# Taking a lease: write it, wait this long (seconds), read it back; the driver whose id is
# read back owns the sweep. Strong read-after-write consistency (S3 since 2020, GCS) makes
# every racer read the same last write, provided each racer's read -> write took less than
# this (pyarrow has no conditional PUT, If-None-Match, to do it in one request).
SETTLE_S = 2.0
# A racer whose last read of the lease and its own write were further apart than this
# share of SETTLE_S starts over: the read-back above is only decisive below SETTLE_S.
READ_TO_WRITE_SHARE = 0.5
# A store that slow this many times in a row is an error to report.
TAKE_ATTEMPTS = 5
# While a foreign lease is watched: re-read it this many times per beat of its owner.
POLLS_PER_BEAT = 2


class SweepClaim:
    """A sweep folder held by this process: a `flock` (local) or a lease (URI).

    `owner` is the lease's owner id (None for a local folder). `lost` is None while the
    claim holds; otherwise one line saying why it no longer does (another driver took the
    lease after this one's beats stopped reaching the store). Call `release()` when the
    sweep ends.
    """

    def __init__(self, handle=None, lease: _Lease | None = None):
        self._handle = handle
        self._lease = lease
        self.owner = lease.record["owner"] if lease is not None else None
        self._lost = None

    @property
    def lost(self) -> str | None:
        return self._lease.lost if self._lease is not None else self._lost

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops its flock
            self._handle = None
        if self._lease is not None:
            self._lease.release()
            self._lost = self._lease.lost
            self._lease = None


def claim(sweep_dir: str) -> SweepClaim:
    """Hold the sweep folder `sweep_dir` (which exists) for this process, or refuse with a
    RuntimeError naming the driver that holds it. A URI sweep may wait up to
    STALE_HEARTBEATS beats of a lease's owner to tell a dead owner from a live one."""
    if storage.is_uri(sweep_dir):
        lease = _Lease(sweep_dir)
        lease.take()
        return SweepClaim(lease=lease)
    return _flock(sweep_dir)


def _busy(sweep_dir: str, holder: str) -> RuntimeError:
    return RuntimeError(
        f"The sweep at {sweep_dir} is being run by another driver ({holder}). Wait for it to end "
        "(or stop it) before resuming this sweep, or pass another name to start a new one."
    )


def _flock(sweep_dir: str) -> SweepClaim:
    import fcntl

    path = Path(sweep_dir) / LOCK_FILE
    try:
        handle = open(path, "a+")
    except OSError as e:
        raise PermissionError(f"storage_path {sweep_dir} is not writable ({e}); pass a writable storage_path.") from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise _busy(sweep_dir, holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return SweepClaim(handle)


def holder_text(lease: dict | None) -> str:
    """'pid 12 on host-a, started 2026-01-02 03:04:05 UTC' from a lease's record."""
    if not isinstance(lease, dict):
        return f"an unreadable {LEASE_FILE}"
    return f"pid {lease.get('pid', '?')} on {lease.get('host', '?')}, started {lease.get('started', '?')}"


def _owner_beat_s(lease: dict | None) -> float:
    """The heartbeat interval a lease's owner promised (seconds); ours if it names none."""
    beat = lease.get("heartbeat_s") if isinstance(lease, dict) else None
    if isinstance(beat, (int, float)) and not isinstance(beat, bool) and math.isfinite(beat) and beat > 0:
        return float(beat)
    return HEARTBEAT_S


class _Lease:
    """`<sweep>/lease.json`, taken, kept fresh by a daemon thread, and deleted on release.

    Liveness is judged by watching the lease object change on this host's monotonic clock,
    never by comparing a time written on another host with this one's: clock skew between
    hosts cannot make a live owner look dead.
    """

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir
        self.folder = storage.Folder(sweep_dir)
        self.record = dict(owner=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                           started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                           heartbeat_s=HEARTBEAT_S, beat=0)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading and writing the object -----------------------------------------------------
    def _read(self) -> bytes | None:
        return self.folder.read_bytes(LEASE_FILE)  # None: released (perhaps while read)

    def _write(self) -> None:
        self.folder.put(LEASE_FILE, json.dumps(self.record).encode())  # a whole object replaced at once

    def _ours(self, raw: bytes | None) -> bool:
        return _parse(raw).get("owner") == self.record["owner"] if raw is not None else False

    # --- taking -------------------------------------------------------------------------------
    def take(self) -> None:
        for _ in range(TAKE_ATTEMPTS):
            read_at = self._wait_until_free()
            self._write()
            if time.monotonic() - read_at > READ_TO_WRITE_SHARE * SETTLE_S:
                continue  # too slow to be sure no racer wrote in between: look again
            time.sleep(SETTLE_S)
            raw = self._read()
            if self._ours(raw):
                self._thread = threading.Thread(target=self._beat, name="flops_fit-lease", daemon=True)
                self._thread.start()
                return
            if raw is not None:
                raise _busy(self.sweep_dir, holder_text(_parse(raw) or None))
        raise RuntimeError(
            f"The object store of {self.sweep_dir} answered too slowly to take {LEASE_FILE} safely (a "
            f"read and a write took over {READ_TO_WRITE_SHARE * SETTLE_S:g} s, {TAKE_ATTEMPTS} times); "
            "retry when it answers faster, or raise flops_fit.sweep_folder.SETTLE_S."
        )

    def _wait_until_free(self) -> float:
        """Block until the lease is absent or stale; the monotonic time of the read that
        showed it so. Refuses a lease that changes while it is watched (a live owner)."""
        while True:
            read_at = time.monotonic()
            first = self._read()
            if first is None or self._ours(first):  # ours: a write of this take() judged too slow
                return read_at
            owner = _parse(first) or None
            window = STALE_HEARTBEATS * _owner_beat_s(owner)
            print(f"{self.sweep_dir}: {LEASE_FILE} held by {holder_text(owner)}; taking it over if it "
                  f"is not renewed within {window:g} s.", file=sys.stderr, flush=True)
            deadline = read_at + window
            while True:
                time.sleep(max(0.0, min(window / (STALE_HEARTBEATS * POLLS_PER_BEAT),
                                        deadline - time.monotonic())))
                read_at = time.monotonic()
                now = self._read()
                if now is None:
                    break  # released while watched: take it
                if now != first:
                    raise _busy(self.sweep_dir, holder_text(_parse(now) or None))
                if read_at >= deadline:
                    return read_at  # unchanged for STALE_HEARTBEATS beats: its owner is gone

    # --- keeping ------------------------------------------------------------------------------
    def _beat(self) -> None:
        failed = False
        every = self.record["heartbeat_s"]
        due = time.monotonic() + every
        # At a fixed rate, not a fixed pause after each write: a slow store must not stretch
        # the interval that other drivers judge this lease by.
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + every, time.monotonic())
            try:
                raw = self._read()
                if not self._ours(raw):
                    self.lost = (f"the sweep at {self.sweep_dir} was taken over by another driver "
                                 f"({holder_text(_parse(raw) or None)}) while this one was not heard from")
                    warnings.warn(self.lost, RuntimeWarning, stacklevel=1)
                    return
                self.record["beat"] += 1
                self._write()
                failed = False
            except OSError as e:
                # A store briefly out of reach: the next beat retries; another driver takes
                # over only after STALE_HEARTBEATS missed beats.
                if not failed:
                    warnings.warn(f"renewing {LEASE_FILE} of {self.sweep_dir} failed ({e}); retrying "
                                  f"every {self.record['heartbeat_s']:g} s", RuntimeWarning, stacklevel=1)
                failed = True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is not None:
            return  # another driver's lease now: not this one's to delete
        try:
            if self._ours(self._read()):
                self.folder.delete(LEASE_FILE)
        except OSError as e:
            # The sweep's outcome stands; the lease left behind goes stale and the next
            # driver takes it over after STALE_HEARTBEATS beats.
            warnings.warn(f"deleting {LEASE_FILE} of {self.sweep_dir} failed ({e}); the next driver "
                          f"takes it over in {STALE_HEARTBEATS * self.record['heartbeat_s']:g} s",
                          RuntimeWarning, stacklevel=2)


def _parse(raw: bytes | None) -> dict:
    try:
        value = json.loads(raw) if raw is not None else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
