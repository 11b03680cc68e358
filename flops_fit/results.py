"""A sweep's storage folder -> one tidy results table (docs/architecture.md, "The results contract").

Rebuilt from the files Tune writes for each trial (`params.json`, `result.json`,
`error.txt`), so a sweep can be re-analysed anywhere, without Ray running and without
loading a pickle. Local folders and pyarrow filesystem URIs (s3://, gs://) both work.
Never imports ray or torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import checks
from .contract import LR_NOT_BRACKETED
from .lr_search import SIBLING_SEPARATOR, collapse, point_of, sibling_id
from .plan import SweepPlan
from .contract import ORIGIN_PLANNED
from .sweep_folder import LOCK_FILE, SweepClaim, filesystem  # callers read R.LOCK_FILE, R.SweepClaim
from .sweep_folder import claim as hold_sweep_dir

PLAN_FILE = "plan.json"
TASK_FILE = "task.json"
RESULTS_CSV = "results.csv"
# "skipped": a planned point a bracket-seeking search chose not to train (the error column
# says why; search/state.json holds the search's decisions)
# LR_NOT_BRACKETED: a learning-rate searched point whose best multiplier is the smallest or
# largest tried (flops_fit/lr_search.py): left out of the fit unless asked.
STATUSES = ("ok", "diverged", "failed", "incomplete", "skipped", LR_NOT_BRACKETED)
ENDED_STATUSES = ("ok", "diverged")  # a point that ended with a loss
# A bracket-seeking search's record: the points it proposed, the planned points it skipped,
# its decision log. In a subfolder, beside finished/ and away from Tune's experiment files.
SEARCH_FILE = "search/state.json"
# A learning-rate searched sweep's multipliers (run_sweep(lr_search=...)), written by its
# first run: a rerun resumes with the same ones, and loading knows each point's siblings.
LR_SEARCH_FILE = "lr_search.json"

# The fixed schema: one row per planned point. Units: budget and flops in FLOPs, params in
# parameters (plan's convention), tokens trained, loss = held-out nats per token at the end.
COLUMNS = [
    "point_id", "budget", "size", "params", "tokens", "flops", "loss", "status", "error",
    "steps", "train_loss", "tokens_per_s", "attempts", "started_at", "first_step_at", "last_step_at",
    "finished_at",
    "num_processes", "shards_disjoint", "node", "node_id", "planned_tokens",
    # Why the point exists: planned, or added by a bracket-seeking search (extended: beyond
    # the edge of a budget whose valley was not bracketed; re-centred: on the fitted N_opt).
    "origin",
    # Hardware use over the point's last progress window: model FLOP/s (counted FLOPs per token
    # x tokens/s, all workers) and MFU = that / the devices' dense peak (flops_fit/hardware.py;
    # empty on CPUs and GPUs without a known peak); precision as trained; fp16 steps skipped.
    "model_flops_per_s", "mfu", "precision", "device", "micro_batch_size", "skipped_steps",
    # The point's own settings, from Task's numbers or rules (flops_fit/hyperparameters.py):
    # peak AdamW learning rate trained, global batch in samples, warmup as a fraction of the
    # point's steps. With an LR search (flops_fit/lr_search.py) each sibling trial is a row:
    # lr_multiplier (its lr / the rule's), best_of_point (True on the sibling whose loss is
    # the point's), lr_opt (the point's optimal peak LR: parabola in ln lr through the best
    # three) and lr_bracketed (a worse sibling on each side of the best one).
    "lr", "batch_size", "warmup", "lr_multiplier", "best_of_point", "lr_opt", "lr_bracketed",
]
# Columns a trial's point dict carries into its row (execute.trial_points).
POINT_SETTINGS = ("lr", "batch_size", "warmup", "lr_multiplier")
# hardware_use: FLOP/s are shown in GFLOP/s.
GIGA = 1e9
# describe_task: hex digits of a function's bytecode hash, enough to tell two versions apart.
CODE_HASH_CHARS = 12
# short_error: a failed point's error in the table is the exception lines of Tune's
# error.txt (the last few, not the traceback nor Tune's "Failure # n (occurred at ...)"
# header), cut to a size a CSV cell and a terminal hold.
ERROR_TAIL_LINES = 3
ERROR_MAX_CHARS = 1000
JSON_INDENT = 1  # plan / task records: one key a line, readable in a diff, small on disk
# A new results file gets the mode a plain open() gives (0o666 less the umask), not
# NamedTemporaryFile's 0o600, so teammates on shared storage can read the table.
PLAIN_FILE_MODE = 0o666
# SweepResults.to_markdown: the columns shown by default, and significant digits of numbers.
SUMMARY_COLUMNS = ("point_id", "budget", "size", "params", "tokens", "loss", "status")
MARKDOWN_DIGITS = 4


@dataclass
class SweepResults:
    """The results table of a sweep plus where it lives."""

    table: pd.DataFrame  # one row per point (an LR-searched point: its best sibling)
    path: str  # the sweep folder (storage_path/name)
    plan: SweepPlan | None = None
    # An LR-searched sweep: one row per sibling trial (what results.csv holds); else None.
    siblings: pd.DataFrame | None = None

    @property
    def results_csv(self) -> str:
        return join(self.path, RESULTS_CSV)

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "ok"]

    def status_line(self) -> str:
        counts = self.table["status"].value_counts()
        parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES if counts.get(s, 0))
        trials = f" ({len(self.siblings)} LR-search trials)" if self.siblings is not None else ""
        return f"Sweep {self.path}: {len(self.table)} points{trials}: {parts}. Table: {self.results_csv}"

    def __repr__(self) -> str:
        return f"SweepResults({self.status_line()})"

    def to_markdown(self, columns=SUMMARY_COLUMNS) -> str:
        """The results table as markdown text, one row per point, `columns` only."""
        columns = list(columns)
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in self.table[columns].itertuples(index=False):
            lines.append("| " + " | ".join(_markdown_cell(v) for v in row) + " |")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Jupyter shows the table."""
        return self.table.to_html()


def _markdown_cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{MARKDOWN_DIGITS}g}"
    return " ".join(str(value).split()).replace("|", "\\|")  # one line; a | would split the cell


def hardware_use(metrics: dict) -> str:
    """'12.3 GFLOP/s, MFU 41.0 %  ' from a point's reported metrics ('' when it has none)."""
    flops = metrics.get("model_flops_per_s")
    if not checks.is_positive_finite(flops):
        return ""
    mfu = metrics.get("mfu")
    mfu_text = f", MFU {100 * mfu:.1f} %" if checks.is_positive_finite(mfu) else ""
    return f"{flops / GIGA:,.1f} GFLOP/s{mfu_text}  "


def join(base: str, *parts: str) -> str:
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def load_results(path, keep_lr_unbracketed: bool = False) -> SweepResults:
    """Rebuild the results table from a sweep folder (local path or URI), no Ray needed.

    An LR-searched sweep's siblings collapse into one row per point, its best sibling
    (`.table`; `.siblings` keeps every trial); a point whose best learning rate is at the
    edge of the multipliers has status "lr-not-bracketed" (left out of a fit) unless
    `keep_lr_unbracketed`.
    """
    path = str(path)
    fs, root = _filesystem(path)
    if _info(fs, root).type.name == "NotFound":
        raise FileNotFoundError(f"No sweep at {path}: give the folder storage_path/name of a sweep.")
    plan = None
    plan_text = _read_text(fs, _j(root, PLAN_FILE))
    if plan_text is not None:
        plan = _parse_plan(plan_text, _j(root, PLAN_FILE))
    multipliers = read_lr_search(path)
    rows, orphans, trial_points = {}, {}, {}
    planned = {p.point_id: p for p in plan.points} if plan is not None else {}
    from pyarrow.fs import FileSelector

    for info in fs.get_file_info(FileSelector(root)):
        if info.type.name != "Directory":
            continue
        params_text = _read_text(fs, _j(info.path, "params.json"))
        if params_text is None:
            # A trial that failed before Tune wrote its config still has its folder (named
            # after the point) and error.txt: a failure to report, not a point to drop.
            # Tune may also leave an empty folder behind when a killed sweep is resumed
            # (it reruns the point in "<id>_<suffix>"), so such a folder only fills a gap.
            name = info.path.rstrip("/").rsplit("/", 1)[-1]
            error = _read_text(fs, _j(info.path, "error.txt"))
            if name in planned and error is not None:
                orphans[name] = result_row(_point_dict(planned[name]), None, error)
            continue
        try:
            point = json.loads(params_text)["point"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"Corrupt trial file {_j(info.path, 'params.json')}: {e}. Delete that trial folder to rerun the point.") from e
        last = _last_result(fs, _j(info.path, "result.json"))
        trial_points[point["point_id"]] = point
        rows[point["point_id"]] = result_row(point, last, _read_text(fs, _j(info.path, "error.txt")))
    for name, row in orphans.items():
        rows.setdefault(name, row)
    # A finished point's record is the authority: its trial folder may hold the rows of a
    # later, interrupted attempt or the error of an earlier one.
    for pid, metrics in _read_all_finished(fs, root).items():
        if pid in trial_points:  # the point as its trial ran it (settings, LR multiplier)
            point = trial_points[pid]
        elif pid in planned:
            point = _point_dict(planned[pid])
        elif multipliers and point_of(pid) in planned:  # a sibling whose trial folder is gone
            point = _point_dict(planned[point_of(pid)]) | {
                "point_id": pid, "lr_multiplier": float(pid.rsplit(SIBLING_SEPARATOR, 1)[1])}
        elif pid in rows:  # no plan.json: the point as its trial folder recorded it
            r = rows[pid]
            point = dict(point_id=pid, budget=r["budget"], size=r["size"], params=r["params"],
                         tokens=r["planned_tokens"], origin=r["origin"])
        else:
            continue
        rows[pid] = result_row(point, metrics, None)
    if not rows and plan is None:
        raise ValueError(f"{path} holds no sweep trials (no */params.json) and no {PLAN_FILE}.")
    search = read_search(path)
    skipped = search.get("skipped", {}) if search else {}
    table = make_table(rows, plan, skipped, multipliers)
    if not multipliers:
        return SweepResults(table=table, path=path, plan=plan)
    siblings, points = collapse(table, keep_unbracketed=keep_lr_unbracketed)
    return SweepResults(table=points, path=path, plan=plan, siblings=siblings)


def read_lr_search(sweep_dir: str) -> tuple | None:
    """The LR-search multipliers recorded in the sweep folder (LR_SEARCH_FILE), or None."""
    fs, root = _filesystem(sweep_dir)
    text = _read_text(fs, _j(root, LR_SEARCH_FILE))
    if not text:
        return None
    try:
        return tuple(float(m) for m in json.loads(text)["multipliers"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"Corrupt LR-search record {_j(root, LR_SEARCH_FILE)}: {e}. It is written once, "
                         "when the sweep starts: restore it or start the sweep under another name.") from e


def write_lr_search(sweep_dir: str, multipliers) -> None:
    write_text_atomic(join(sweep_dir, LR_SEARCH_FILE),
                      json.dumps({"multipliers": [float(m) for m in multipliers]}, indent=JSON_INDENT))


def read_search(sweep_dir: str) -> dict | None:
    """The record a bracket-seeking search keeps in the sweep folder (SEARCH_FILE), or None."""
    fs, root = _filesystem(sweep_dir)
    text = _read_text(fs, _j(root, SEARCH_FILE))
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"Corrupt search record {_j(root, SEARCH_FILE)}: {e}. It is rewritten whole at "
                         "every decision, so a broken one means another program changed it.") from e


FINISHED_DIR = "finished"  # one JSON file of final metrics per finished point


def write_finished(sweep_dir: str, point_id: str, metrics: dict) -> bool:
    """Record a point's final metrics the moment it finishes, once: a point already
    recorded keeps its record (returns False). A rerun of the sweep trains only the points
    without one, so a driver killed right after a point's end never trains it again."""
    path = join(sweep_dir, FINISHED_DIR, f"{point_id}.json")
    fs, p = _filesystem(path)
    if _info(fs, p).type.name != "NotFound":
        return False
    keep = {k: v for k, v in metrics.items() if k != "config"}
    write_text_atomic(path, json.dumps(keep, default=str))
    return True


def read_finished(sweep_dir: str, point_id: str) -> dict | None:
    """The final metrics recorded by write_finished, or None."""
    fs, root = _filesystem(sweep_dir)
    text = _read_text(fs, _j(_j(root, FINISHED_DIR), f"{point_id}.json"))
    return json.loads(text) if text else None


def ended(metrics: dict) -> bool:
    """A point's final report, with a loss: status ok or diverged (train.py)."""
    return bool(metrics.get("final")) and metrics.get("status") in ENDED_STATUSES


def finished_records(sweep_dir: str) -> dict:
    """Point id -> final metrics of every point recorded as finished in the sweep folder."""
    fs, root = _filesystem(sweep_dir)
    return _read_all_finished(fs, root)


def finished_ids(sweep_dir: str) -> set:
    """Ids of the points recorded as finished (ok or diverged) in the sweep folder."""
    return set(finished_records(sweep_dir))


def _read_all_finished(fs, root) -> dict:
    from pyarrow.fs import FileSelector

    folder = _j(root, FINISHED_DIR)
    if _info(fs, folder).type.name == "NotFound":
        return {}
    out = {}
    for info in fs.get_file_info(FileSelector(folder)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type.name != "File" or not name.endswith(".json") or name.startswith("."):
            continue
        text = _read_text(fs, info.path)
        try:
            metrics = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Corrupt finished-point record {info.path}: {e}. Delete it to rerun the point.") from e
        if ended(metrics):
            out[name[: -len(".json")]] = metrics
    return out


def write_results_csv(results: SweepResults) -> str:
    """Write results.csv beside the sweep, atomically (temporary file + rename); an
    LR-searched sweep's has one row per sibling trial (best_of_point marks the point's)."""
    table = results.siblings if results.siblings is not None else results.table
    write_text_atomic(results.results_csv, table.to_csv(index=False))
    return results.results_csv


TASK_FINGERPRINT_FILE = "task-fingerprint.json"


def claim_sweep_dir(sweep_dir: str, plan: SweepPlan, task) -> SweepClaim:
    """Create and hold the sweep folder, and record its plan and task there.

    Refuses (before any compute) a different plan or a different task under one name,
    naming what differs, and a second driver while one runs the sweep (a local folder's
    flock, an object store's lease: flops_fit/sweep_folder.py). Call `.release()` on the
    returned claim when the sweep ends.
    """
    fs, root = _filesystem(sweep_dir)
    try:
        fs.create_dir(root, recursive=True)
    except OSError as e:
        raise PermissionError(
            f"Cannot create the sweep folder {sweep_dir} ({e}); pass a writable storage_path."
        ) from e
    claim = hold_sweep_dir(sweep_dir)
    try:
        _check_or_record(fs, root, sweep_dir, plan, task)
    except BaseException:
        claim.release()
        raise
    return claim


def _check_or_record(fs, root, sweep_dir, plan, task) -> None:
    existing = _read_text(fs, _j(root, PLAN_FILE))
    fingerprint = task_fingerprint(task)
    if existing is not None:
        try:
            same = _parse_plan(existing, _j(root, PLAN_FILE)) == plan
        except ValueError:  # a damaged plan.json is not this plan: refuse, as for any other
            same = False
        if not same:
            raise ValueError(
                f"A sweep with a different plan already exists at {sweep_dir}. To resume it, run "
                "again with the plan it was started with (see its plan.json); to start a new sweep, "
                "pass another name, or delete that folder."
            )
        stored = _read_text(fs, _j(root, TASK_FINGERPRINT_FILE))
        if stored is not None:
            old = json.loads(stored)
            differs = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            if differs:
                detail = "; ".join(f"{k}: {old.get(k)!r} then, {fingerprint.get(k)!r} now" for k in differs)
                raise ValueError(
                    f"The sweep at {sweep_dir} was started with a different task ({detail}). Its "
                    "results would mix two experiments. To resume it, run the task it was started "
                    "with (see its task.json); to start a new sweep, pass another name."
                )
            return
    else:
        probe = _j(root, ".write-test")
        try:
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            fs.delete_file(probe)
        except OSError as e:
            raise PermissionError(f"storage_path {sweep_dir} is not writable ({e}); pass a writable storage_path.") from e
        write_text_atomic(join(sweep_dir, PLAN_FILE), plan.to_json())
        write_text_atomic(join(sweep_dir, TASK_FILE), json.dumps(describe_task(task), indent=JSON_INDENT, default=repr))
    # A sweep folder from before fingerprints were recorded takes this task's on resume.
    write_text_atomic(join(sweep_dir, TASK_FINGERPRINT_FILE), json.dumps(fingerprint, indent=JSON_INDENT, sort_keys=True))


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


def result_row(point: dict, last: dict | None, error_text: str | None, started: bool = True) -> dict:
    """One table row from a point, its last reported metrics and its error text, if any."""
    row = {c: None for c in COLUMNS}
    row.update(
        point_id=point["point_id"], budget=point["budget"], size=point["size"], params=point["params"],
        planned_tokens=point["tokens"], loss=math.nan, status="incomplete", error="",
        origin=point.get("origin", ORIGIN_PLANNED),
        **{k: point.get(k) for k in POINT_SETTINGS},
    )
    if last:
        for key in ("tokens", "flops", "steps", "train_loss", "tokens_per_s", "attempts", "started_at",
                    "first_step_at", "last_step_at", "finished_at", "num_processes", "shards_disjoint", "node", "node_id",
                    "model_flops_per_s", "mfu", "precision", "device", "micro_batch_size", "skipped_steps"):
            row[key] = last.get(key)
        if row["lr"] is None:  # the worker's own record of the peak LR it trained with
            row["lr"] = last.get("peak_lr")
        if ended(last):
            row["status"] = last["status"]
            row["loss"] = last.get("loss", math.nan)
            row["error"] = last.get("error", "") or ""
            return row
    if error_text:
        row["status"] = "failed"
        row["error"] = short_error(error_text)
    else:
        row["error"] = "not finished (interrupted or still running)" if started else "not started"
    return row


def make_table(rows: dict, plan: SweepPlan | None, skipped: dict | None = None,
               multipliers=None) -> pd.DataFrame:
    """Rows keyed by point id -> the table in plan order, unstarted planned points included.

    Without a plan, rows come sorted by (budget, size), the plan's own order, rather than
    in whatever order the storage lists trial folders. Points a search added follow the
    plan's, by (budget, size). `skipped`: planned point id -> why a search chose not to
    train it (status "skipped"). `multipliers`: an LR-searched sweep's; each planned point
    not skipped stands for its siblings, one per multiplier.
    """
    skipped = skipped or {}
    if plan is not None:
        order = []
        for p in plan.points:
            trials = ([(sibling_id(p.point_id, m), m) for m in multipliers]
                      if multipliers and p.point_id not in skipped else [(p.point_id, None)])
            for pid, m in trials:
                if pid not in rows:
                    point = _point_dict(p) | {"point_id": pid, "lr_multiplier": m}
                    rows[pid] = result_row(point, None, None, started=False)
                    if pid in skipped:
                        rows[pid].update(status="skipped", error=skipped[pid])
            order += [pid for pid, _ in trials]
        planned = set(order)
        added = sorted((k for k in rows if k not in planned),
                       key=lambda k: (rows[k]["budget"], rows[k]["size"], k))
        rows = {k: rows[k] for k in order + added}
    else:
        rows = dict(sorted(rows.items(), key=lambda kv: (kv[1]["budget"], kv[1]["size"], kv[0])))
    return pd.DataFrame(list(rows.values()), columns=COLUMNS)


def _last_result(fs, path) -> dict | None:
    text = _read_text(fs, path)
    if not text:
        return None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    last = None
    for i, (n, line) in enumerate(lines):
        try:
            last = json.loads(line)
        except json.JSONDecodeError:
            # A crash can cut the final line short; anything earlier is corruption. Blank
            # lines do not count: a cut-short line followed by one is still the last.
            if i == len(lines) - 1:
                break
            raise ValueError(f"Corrupt results file {path}, line {n}: not JSON. Delete that trial folder to rerun the point.")
    return last


def _parse_plan(text: str, path: str) -> SweepPlan:
    """The plan in `text`, read from `path`; parsed as text, so an empty file is never
    mistaken for a path (that of the working directory)."""
    return SweepPlan._from_text(text, source=path)


def point_error(sweep_dir: str, point_id: str) -> str:
    """The error a failed trial left in its folder (Tune's error.txt), as the table's error
    column shows it; "" when there is none (yet)."""
    fs, root = _filesystem(sweep_dir)
    try:
        text = _read_text(fs, _j(_j(root, point_id), "error.txt"))
    except OSError:  # an object store not reachable right now: the table will have it
        return ""
    return short_error(text) if text else ""


def short_error(text: str) -> str:
    """The exception lines of a Tune error.txt (the last non-traceback lines)."""
    lines = [l for l in text.strip().splitlines() if l.strip()]
    tail = [l for l in lines if not l.startswith((" ", "Traceback", "\t", "Failure # "))][-ERROR_TAIL_LINES:]
    return " | ".join(tail)[-ERROR_MAX_CHARS:]


def _point_dict(p) -> dict:
    from dataclasses import asdict

    return asdict(p)


def _filesystem(path: str):
    return filesystem(path)


def _j(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def _info(fs, path):
    return fs.get_file_info(path)


def _read_text(fs, path) -> str | None:
    if _info(fs, path).type.name == "NotFound":
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8", errors="replace")


def write_text_atomic(path: str, text: str) -> None:
    if "://" in path:
        fs, p = _filesystem(path)
        # Object stores have no folders, but file:// and mounted filesystems need them.
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as f:  # object stores replace whole objects atomically
            f.write(text.encode())
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        tmp = f.name
        try:
            f.write(text)
            f.flush()
            # On disk before it replaces the old file: a crash (power, kernel) right after
            # the rename must not leave an empty or partial results file in its place.
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            os.unlink(tmp)  # a failed write leaves no temporary file behind
            raise
    try:
        # NamedTemporaryFile creates the file 0600 and os.replace keeps that mode
        os.chmod(tmp, PLAIN_FILE_MODE & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX: the directory entry is data of the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL where the filesystem does not sync folders: nothing to do
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    # Linux reports the umask without changing it; elsewhere os.umask can only be read by
    # setting it, which is set straight back.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
