"""A sweep's storage folder -> one tidy results table (docs/architecture.md, "The results contract").

Rebuilt from the files Tune writes for each trial (`params.json`, `result.json`,
`error.txt`), so a sweep can be re-analysed anywhere, without Ray running and without
loading a pickle. Local folders and pyarrow filesystem URIs (s3://, gs://) both work.
Never imports ray or torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import pandas as pd

from . import checks
from .contract import (FAILED_STATUS, INCOMPLETE_STATUS, ORIGIN_PLANNED, SKIPPED_STATUS,
                       STATUSES)
from .lr_search import SIBLING_SEPARATOR, collapse, point_of, sibling_id
from .plan import SweepPlan
from .sweep_folder import PLAN_FILE, SweepFolder, ended

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
# short_error: a failed point's error in the table is the exception lines of Tune's
# error.txt (the last few, not the traceback nor Tune's "Failure # n (occurred at ...)"
# header), cut to a size a CSV cell and a terminal hold.
ERROR_TAIL_LINES = 3
ERROR_MAX_CHARS = 1000
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
        return SweepFolder(self.path).results_csv

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


def load_results(path, keep_lr_unbracketed: bool = False) -> SweepResults:
    """Rebuild the results table from a sweep folder (local path or URI), no Ray needed.

    An LR-searched sweep's siblings collapse into one row per point, its best sibling
    (`.table`; `.siblings` keeps every trial); a point whose best learning rate is at the
    edge of the multipliers has status "lr-not-bracketed" (left out of a fit) unless
    `keep_lr_unbracketed`.
    """
    path = str(path)
    folder = SweepFolder(path)
    if not folder.exists():
        raise FileNotFoundError(f"No sweep at {path}: give the folder storage_path/name of a sweep.")
    plan = folder.plan()
    multipliers = folder.read_lr_search()
    rows, trial_points = _trial_rows(folder, plan)
    planned = {p.point_id: p for p in plan.points} if plan is not None else {}
    # A finished point's record is the authority: its trial folder may hold the rows of a
    # later, interrupted attempt or the error of an earlier one.
    for pid, metrics in folder.finished_records().items():
        if pid in trial_points:  # the point as its trial ran it (settings, LR multiplier)
            point = trial_points[pid]
        elif pid in planned:
            point = asdict(planned[pid])
        elif multipliers and point_of(pid) in planned:  # a sibling whose trial folder is gone
            point = asdict(planned[point_of(pid)]) | {
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
    search = folder.read_search()
    skipped = search.get("skipped", {}) if search else {}
    table = make_table(rows, plan, skipped, multipliers)
    if not multipliers:
        return SweepResults(table=table, path=path, plan=plan)
    siblings, points = collapse(table, keep_unbracketed=keep_lr_unbracketed)
    return SweepResults(table=points, path=path, plan=plan, siblings=siblings)


def _trial_rows(folder: SweepFolder, plan: SweepPlan | None) -> tuple:
    """({point id: row}, {point id: point as its trial ran it}) from Tune's trial folders."""
    planned = {p.point_id: p for p in plan.points} if plan is not None else {}
    rows, orphans, trial_points = {}, {}, {}
    for trial in folder.trials():
        if trial.params is None:
            # A trial that failed before Tune wrote its config still has its folder (named
            # after the point) and error.txt: a failure to report, not a point to drop.
            # Tune may also leave an empty folder behind when a killed sweep is resumed
            # (it reruns the point in "<id>_<suffix>"), so such a folder only fills a gap.
            if trial.name in planned and trial.error is not None:
                orphans[trial.name] = result_row(asdict(planned[trial.name]), None, trial.error)
            continue
        try:
            point = json.loads(trial.params)["point"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"Corrupt trial file {folder.trial_file(trial.name, 'params.json')}: {e}. "
                             "Delete that trial folder to rerun the point.") from e
        last = _last_result(trial.result, folder.trial_file(trial.name, "result.json"))
        trial_points[point["point_id"]] = point
        rows[point["point_id"]] = result_row(point, last, trial.error)
    for name, row in orphans.items():
        rows.setdefault(name, row)
    return rows, trial_points


def write_results_csv(results: SweepResults) -> str:
    """Write results.csv beside the sweep, atomically (temporary file + rename); an
    LR-searched sweep's has one row per sibling trial (best_of_point marks the point's)."""
    table = results.siblings if results.siblings is not None else results.table
    return SweepFolder(results.path).write_results_csv(table.to_csv(index=False))


def result_row(point: dict, last: dict | None, error_text: str | None, started: bool = True) -> dict:
    """One table row from a point, its last reported metrics and its error text, if any."""
    row = {c: None for c in COLUMNS}
    row.update(
        point_id=point["point_id"], budget=point["budget"], size=point["size"], params=point["params"],
        planned_tokens=point["tokens"], loss=math.nan, status=INCOMPLETE_STATUS, error="",
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
        row["status"] = FAILED_STATUS
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
                    point = asdict(p) | {"point_id": pid, "lr_multiplier": m}
                    rows[pid] = result_row(point, None, None, started=False)
                    if pid in skipped:
                        rows[pid].update(status=SKIPPED_STATUS, error=skipped[pid])
            order += [pid for pid, _ in trials]
        planned = set(order)
        added = sorted((k for k in rows if k not in planned),
                       key=lambda k: (rows[k]["budget"], rows[k]["size"], k))
        rows = {k: rows[k] for k in order + added}
    else:
        rows = dict(sorted(rows.items(), key=lambda kv: (kv[1]["budget"], kv[1]["size"], kv[0])))
    return pd.DataFrame(list(rows.values()), columns=COLUMNS)


def _last_result(text: str | None, path: str) -> dict | None:
    """The last report in a trial's result.json text (read from `path`), or None."""
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


def point_error(sweep_dir: str, point_id: str) -> str:
    """The error a failed trial left in its folder (Tune's error.txt), as the table's error
    column shows it; "" when there is none (yet)."""
    try:
        text = SweepFolder(sweep_dir).trial_error(point_id)
    except OSError:  # an object store not reachable right now: the table will have it
        return ""
    return short_error(text) if text else ""


def short_error(text: str) -> str:
    """The exception lines of a Tune error.txt (the last non-traceback lines)."""
    lines = [l for l in text.strip().splitlines() if l.strip()]
    tail = [l for l in lines if not l.startswith((" ", "Traceback", "\t", "Failure # "))][-ERROR_TAIL_LINES:]
    return " | ".join(tail)[-ERROR_MAX_CHARS:]
