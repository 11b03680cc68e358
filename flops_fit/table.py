"""Reading, mapping, filtering, validating and grouping results tables.

Any supported input (DataFrame, records, CSV/JSON/JSONL file, stored sweep folder) becomes
the points a fit uses (params, tokens, flops, loss, budget, row), with every row left out
recorded with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from flops_fit.expressions import ExpressionError, evaluate
from flops_fit.law import FLOPS_PER_PARAM_TOKEN, training_flops

if TYPE_CHECKING:
    import pandas as pd

# When the table has no `budget` column, points whose FLOPs agree within this relative
# tolerance form one IsoFLOP group. Planned sweeps hit their budget to well under 1%;
# 5% still separates budgets that are a factor 1.5 or more apart.
BUDGET_RTOL = 0.05

# A measured flops/(N*D) ratio further than this from 6 is reported as a different
# FLOP convention (e.g. counted attention FLOPs, forward-only FLOPs).
FLOPS_CONVENTION_RTOL = 0.01

# flops / (N D) outside [6 / F, 6 F] is a unit slip, not a convention: conventions range
# from 2 (forward only) to ~8 (attention counted); GFLOPs or millions of parameters give
# factors of 1e6 or more.
FLOPS_UNIT_SLIP_FACTOR = 4.0
# Tokens per parameter of real runs lie far inside this range (Chinchilla ~20, heavy
# over-training ~1e4); outside it N or D is in other units (millions, billions).
MIN_TOKENS_PER_PARAM = 1e-2
MAX_TOKENS_PER_PARAM = 1e6
# A budget column more than this factor away from the rows' FLOPs is in other units.
BUDGET_FLOPS_MAX_RATIO = 1.5
# Values of a budget column within this relative distance are one budget (float noise).
BUDGET_COLUMN_RTOL = 1e-6
# A FLOP group (no budget column) whose FLOPs span more than this is not one budget.
GROUP_SPAN_WARN = 0.05

REQUIRED_COLUMNS = ("params", "tokens", "loss")
OPTIONAL_COLUMNS = ("flops", "budget", "status", "error", "run")
OK_STATUS = "ok"
# A sweep's results say why each point exists (column origin): planned, or added by a
# bracket-seeking search (flops_fit/search.py). A row without one was planned.
ORIGIN_PLANNED = "planned"


class FitError(ValueError):
    """The data cannot support the requested fit (bad input or not enough data yet).

    Raised before any optimisation; the message names the column or argument and how
    to fix it. A live-fit callback during a sweep catches it to mean "not enough data".
    """



# Largest table read: far above any sweep (a few hundred runs x their checkpoints), far
# below what the fit's memory bound is sized for.
MAX_ROWS = 1_000_000
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".jsonl", ".ndjson")


def read_table(data) -> pd.DataFrame:
    """Any supported input -> a fresh DataFrame (no validation yet).

    data: DataFrame; list of dicts; an object with a `.table` DataFrame (SweepResults);
    a path or pyarrow URI (s3://, gs://) of a CSV, a JSON list of records, JSON lines, or a
    stored sweep folder. Unreadable input raises FitError naming the file (and line).
    """
    import pandas as pd
    if isinstance(data, pd.DataFrame):
        return data.copy()
    if isinstance(getattr(data, "table", None), pd.DataFrame):
        return data.table.copy()
    if isinstance(data, (str, Path)):
        frame = _read_path(str(data))
        if len(frame) > MAX_ROWS:
            raise FitError(f"data: {data}: {len(frame)} rows, more than the {MAX_ROWS} this fit "
                           "reads; filter or subsample the table first")
        return frame
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if not all(isinstance(r, Mapping) for r in data):
            raise FitError("data: a list must hold one dict per run (keys params, tokens, loss, ...)")
        return pd.DataFrame(list(data))
    raise FitError(f"data: unsupported type {type(data).__name__}; pass a DataFrame, a list of "
                   "dicts, a path to CSV/JSON/JSONL, a sweep directory or a SweepResults")


def _read_bytes(path: str) -> bytes | None:
    """File bytes from a local path or pyarrow URI; None for a folder; FitError if missing."""
    if "://" in path:
        from pyarrow import fs as pafs

        try:
            fs, root = pafs.FileSystem.from_uri(path)
            info = fs.get_file_info(root)
        except (OSError, ValueError) as err:
            raise FitError(f"data: cannot open {path} ({err}); check the URI and credentials") from None
        if info.type.name == "NotFound":
            raise FitError(f"data: no such file or folder: {path}")
        if info.type.name == "Directory":
            return None
        with fs.open_input_stream(root) as fh:
            return fh.read()
    local = Path(path).expanduser()
    if not local.exists():
        raise FitError(f"data: no such file or directory: {path}")
    return None if local.is_dir() else local.read_bytes()


def _read_path(path: str):
    import io

    import pandas as pd
    suffix = Path(path.split("://")[-1]).suffix.lower()
    if suffix and suffix not in TABLE_SUFFIXES and not path.endswith("/"):
        raise FitError(f"data: cannot read {path}; use a .csv, .json or .jsonl file or a stored sweep folder")
    raw = _read_bytes(path)
    if raw is None:
        # Lazy: results.py is only needed for stored sweeps.
        from flops_fit.results import load_results

        try:
            return load_results(path).table.copy()
        except (FileNotFoundError, ValueError) as err:
            raise FitError(f"data: {err}".replace("\n", " ")) from None
    if not suffix:
        raise FitError(f"data: cannot read {path}; use a .csv, .json or .jsonl file or a stored sweep folder")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise FitError(f"data: {path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); "
                       "save the file as UTF-8") from None
    if not text.strip():
        raise FitError(f"data: {path} is empty; give a table with a header row and one row per run")
    if suffix in (".csv", ".tsv", ".txt"):
        try:
            frame = pd.read_csv(io.StringIO(text), sep="\t" if suffix == ".tsv" else ",")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise FitError(f"data: {path}: not a readable CSV ({str(err).strip()}); fix that line") from None
    else:
        frame = _read_json(text, path, suffix)
    for col in frame.columns:
        nested = frame[col].map(lambda v: isinstance(v, (dict, list))).to_numpy()
        if nested.any():
            row = int(np.flatnonzero(nested)[0])
            raise FitError(f"data: {path}: column {col!r} holds nested objects (record {row + 1}); "
                           "flatten the records to one level of keys (e.g. pandas.json_normalize)")
    return frame


def _read_json(text, path, suffix):
    import pandas as pd

    def loads(chunk, line_offset=0):
        try:
            return json.loads(chunk)
        except json.JSONDecodeError as err:
            raise FitError(f"data: {path}, line {err.lineno + line_offset}: invalid JSON "
                           f"({err.msg}); fix that line") from None

    stripped = text.lstrip()
    if stripped.startswith("["):
        obj = loads(text)
        if not all(isinstance(r, dict) for r in obj):
            raise FitError(f"data: {path}: a JSON list must hold one object per run")
        return pd.DataFrame(obj)
    if stripped.startswith("{") and suffix == ".json" and "\n{" not in stripped:
        obj = loads(text)
        if not all(isinstance(v, list) for v in obj.values()):
            raise FitError(f"data: {path}: expected a list of records or {{column: [values]}}; "
                           "nested objects are not a table")
        return pd.DataFrame(obj)  # {"column": [values...]} layout
    records = []
    for n, line in enumerate(text.splitlines()):
        if line.strip():
            rec = loads(line, n)
            if not isinstance(rec, dict):
                raise FitError(f"data: {path}, line {n + 1}: expected one JSON object per line")
            records.append(rec)
    return pd.DataFrame(records)


def _evaluate(frame, expression, what):
    """A column name, or a safe expression over the columns (flops_fit.expressions)."""
    if isinstance(expression, str) and expression in frame.columns:
        return frame[expression]
    try:
        return evaluate(expression, frame)
    except ExpressionError as err:
        raise FitError(f"{what}: {expression!r}: {err}") from None


@dataclass
class _Prepared:
    points: pd.DataFrame  # usable rows: params, tokens, flops, loss, budget, row
    excluded: list  # dict records
    notes: list
    flops_per_param_token: float
    budget_given: bool
    warnings: list = field(default_factory=list)
    holdout: pd.DataFrame | None = None  # held-out rows (same columns as points)
    raw_rows: int = 0


def _row_record(frame, i, reason):
    rec = {"kind": "row", "row": i, "reason": reason}
    for col in ("budget", "params", "tokens", "flops", "loss"):
        if col in frame.columns:
            v = frame.at[i, col]
            rec[col] = float(v) if isinstance(v, (int, float, np.number)) else v
    return rec


def prepare(data, *, columns=None, where=None, drop_highest_loss=0, budget_rtol=BUDGET_RTOL,
            holdout=None):
    """Read, map, filter and validate a results table; raise FitError on bad input.

    holdout: expression; rows where it is true are kept apart (not fitted) for a backtest.
    """
    import pandas as pd
    raw = read_table(data)
    raw = raw.reset_index(drop=True)
    notes = []
    frame = raw.copy()
    for ours, theirs in (columns or {}).items():
        if ours not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            raise FitError(f"columns: unknown target {ours!r}; map to one of "
                           f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
        frame[ours] = _evaluate(raw, theirs, f"columns[{ours!r}]")
        notes.append(f"{ours} <- {theirs}")

    present = set(frame.columns)
    for col in ("params", "tokens", "flops", "budget", "loss"):
        if col in present and not pd.api.types.is_numeric_dtype(frame[col]):
            # e.g. FLOP counts above 2^63 that pandas keeps as text
            converted = pd.to_numeric(frame[col], errors="coerce")
            bad = converted.isna() & frame[col].notna()
            if bad.any():
                rows = list(np.flatnonzero(bad.to_numpy())[:10])
                raise FitError(f"column {col!r}: non-numeric values in rows {rows}; "
                               "fix the file or map the column to a numeric one")
            frame[col] = converted
    flops_given = "flops" in present
    if "loss" not in present or sum(c in present for c in ("params", "tokens", "flops")) < 2:
        missing = [c for c in ("params", "tokens", "loss") if c not in present]
        raise FitError(
            f"missing column(s) {missing}: need loss and two of params/tokens/flops. "
            f"Columns present: {list(raw.columns)}. Rename them or map them, e.g. "
            "columns={'params': 'Model Size'} (CLI: --map params=\"Model Size\")."
        )
    k_assumed = FLOPS_PER_PARAM_TOKEN
    if "params" not in present:
        frame["params"] = frame["flops"] / (k_assumed * frame["tokens"])
        notes.append("params derived as N = C/(6 D) (no params column)")
    if "tokens" not in present:
        frame["tokens"] = frame["flops"] / (k_assumed * frame["params"])
        notes.append("tokens derived as D = C/(6 N) (no tokens column)")
    if "flops" not in present:
        frame["flops"] = training_flops(frame["params"], frame["tokens"])

    excluded = []
    usable = np.ones(len(frame), bool)
    if "status" in present:
        status = frame["status"].astype(str).str.strip().str.lower()
        for i in np.flatnonzero((status != OK_STATUS).to_numpy()):
            reason = f"status={frame.at[i, 'status']}"
            if "error" in frame.columns and pd.notna(frame.at[i, "error"]) and str(frame.at[i, "error"]).strip():
                reason += f": {frame.at[i, 'error']}"
            excluded.append(_row_record(frame, i, reason))
            usable[i] = False

    wheres = [where] if isinstance(where, str) else list(where or [])
    for expr in wheres:
        mask = _evaluate(frame, expr, "where")
        mask = np.asarray(mask, dtype=object)
        if mask.shape != (len(frame),) or not all(isinstance(m, (bool, np.bool_)) for m in mask):
            raise FitError(f"where: {expr!r} must give one True/False per row")
        for i in np.flatnonzero(usable & ~mask.astype(bool)):
            excluded.append(_row_record(frame, i, f"where: not ({expr})"))
            usable[i] = False

    held = np.zeros(len(frame), bool)
    if holdout is not None:
        mask = np.asarray(_evaluate(frame, holdout, "holdout"), dtype=object)
        if mask.shape != (len(frame),) or not all(isinstance(m, (bool, np.bool_)) for m in mask):
            raise FitError(f"holdout: {holdout!r} must give one True/False per row")
        held = mask.astype(bool) & usable
        if not held.any():
            raise FitError(f"holdout: {holdout!r} selects no usable row; nothing to backtest")

    loss = frame["loss"].to_numpy(float)
    for i in np.flatnonzero(usable & np.isinf(loss)):
        excluded.append(_row_record(frame, i, "non-finite loss (inf): diverged run"))
        usable[i] = False

    check = ["params", "tokens", "loss", "flops"] + (["budget"] if "budget" in present else [])
    for col in check:
        v = frame[col].to_numpy(float)
        bad = usable & ~(np.isfinite(v) & (v > 0))
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(str(r) for r in rows[:10]) + (" ..." if rows.size > 10 else "")
            raise FitError(
                f"column {col!r}: {rows.size} usable row(s) have non-positive or NaN values "
                f"(rows {shown}); mark them status='failed', drop them with where=..., or fix the data"
            )

    if drop_highest_loss:
        idx = np.flatnonzero(usable)
        if drop_highest_loss >= idx.size:
            raise FitError(f"drop_highest_loss={drop_highest_loss} would drop all {idx.size} usable rows")
        worst = idx[np.argsort(-loss[idx], kind="stable")[: int(drop_highest_loss)]]
        for i in worst:
            excluded.append(_row_record(frame, i, f"drop_highest_loss={drop_highest_loss}"))
            usable[i] = False

    cols = ["params", "tokens", "flops", "loss"]
    extra = [c for c in ("budget", "run") if c in present]
    warnings = []
    # Exact duplicate rows (every mapped column equal) are one run recorded twice: counting
    # it twice would shrink every bootstrap interval (10 copies: ~3x narrower).
    keyed = frame.loc[usable, cols + extra]
    dup = keyed.duplicated(keep="first").to_numpy()
    if dup.any():
        first_rows = np.flatnonzero(usable)
        for i in first_rows[dup]:
            excluded.append(_row_record(frame, i, "exact duplicate of an earlier row (collapsed)"))
            usable[i] = False
        notes.append(f"{int(dup.sum())} exact duplicate row(s) collapsed into one each")

    fitted = usable & ~held
    pts = frame.loc[fitted, cols].astype(float).copy()
    pts["row"] = np.flatnonzero(fitted)
    if "run" in present:
        pts["run"] = frame.loc[fitted, "run"].astype(str).to_numpy()
    if "origin" in frame.columns:  # why each point exists (a sweep's results): the plots mark added ones
        pts["origin"] = frame.loc[fitted, "origin"].fillna(ORIGIN_PLANNED).astype(str).to_numpy()
    if pts.empty:
        raise FitError("data: no usable rows (every row was excluded); see the exclusion reasons")

    # FLOP convention. With a measured flops column, the data say how many FLOPs one
    # parameter-token costs; D_opt = C/(k N_opt) must use the same k or the tokens are off.
    k = FLOPS_PER_PARAM_TOKEN
    if flops_given and "params" in present and "tokens" in present:
        k = float(np.median(pts["flops"] / (pts["params"] * pts["tokens"])))
        if not 1 / FLOPS_UNIT_SLIP_FACTOR <= k / FLOPS_PER_PARAM_TOKEN <= FLOPS_UNIT_SLIP_FACTOR:
            warnings.append(
                f"flops / (params x tokens) = {k:.3g}, far from {FLOPS_PER_PARAM_TOKEN:g} FLOPs per "
                "parameter per token: a unit slip (GFLOPs, millions of parameters, ...)? "
                "Fix the mapping, e.g. --map 'flops=gflops * 1e9'")
        if abs(k / FLOPS_PER_PARAM_TOKEN - 1) > FLOPS_CONVENTION_RTOL:
            notes.append(f"flops column is not 6ND: using k = median flops/(N D) = {k:.4g} "
                         "FLOPs per parameter per token for D = C/(k N)")
        else:
            k = FLOPS_PER_PARAM_TOKEN

    ratio_dn = (pts["tokens"] / pts["params"]).to_numpy()
    if ratio_dn.min() < MIN_TOKENS_PER_PARAM or ratio_dn.max() > MAX_TOKENS_PER_PARAM:
        warnings.append(
            f"tokens per parameter range from {ratio_dn.min():.3g} to {ratio_dn.max():.3g}, outside "
            f"[{MIN_TOKENS_PER_PARAM:g}, {MAX_TOKENS_PER_PARAM:g}]: a unit slip (parameters in "
            "millions, tokens in billions)? Map both as plain counts, e.g. --map 'params=n_M * 1e6'")

    budget_given = "budget" in present
    if budget_given:
        given = frame.loc[fitted, "budget"].astype(float).to_numpy()
        # Float noise (1 ulp) in a budget column must not split a budget in two.
        pts["budget"] = group_by_flops(given, BUDGET_COLUMN_RTOL, representative="first")
        ratio = given / pts["flops"].to_numpy()
        off = (ratio > BUDGET_FLOPS_MAX_RATIO) | (ratio < 1 / BUDGET_FLOPS_MAX_RATIO)
        if off.any():
            warnings.append(
                f"budget column disagrees with the FLOPs in {int(off.sum())} of {off.size} rows "
                f"(budget / flops from {ratio.min():.3g} to {ratio.max():.3g}): a unit slip "
                "(PF-days, GFLOPs) or a different FLOP convention? Map budget in FLOPs")
    else:
        pts["budget"] = group_by_flops(pts["flops"].to_numpy(), budget_rtol)
        notes.append(f"no budget column: grouped points whose FLOPs agree within "
                     f"{budget_rtol:.0%} (budget_rtol); budget C = mean FLOPs of the group")
        span = pts.groupby("budget")["flops"].agg(lambda f: f.max() / f.min() - 1)
        wide = span[span > GROUP_SPAN_WARN]
        if len(wide) and (pts.groupby("budget")["params"].nunique()[wide.index] >= 3).any():
            warnings.append(
                f"{len(wide)} FLOP group(s) formed with budget_rtol={budget_rtol:g} span up to "
                f"{wide.max():.0%} of their FLOPs: their points were not trained at one budget, "
                "so the IsoFLOP minima are approximate; give a budget column or a smaller --budget-rtol")
    held_pts = None
    if held.any():
        held_pts = frame.loc[held & usable, cols].astype(float).copy()
        held_pts["row"] = np.flatnonzero(held & usable)
    return _Prepared(pts.reset_index(drop=True), excluded, notes, k, budget_given, warnings,
                     held_pts, len(raw))


def group_by_flops(flops, rtol=BUDGET_RTOL, representative="mean"):
    """IsoFLOP groups: sort by FLOPs, start a new group when a point exceeds the group's
    smallest FLOPs by more than rtol. Returns each point's group value: the mean FLOPs of
    the group, or (representative="first") its most common value."""
    flops = np.asarray(flops, float)
    order = np.argsort(flops, kind="stable")
    label = np.empty(flops.size, int)
    group, first = -1, None
    for i in order:
        if first is None or flops[i] > first * (1 + rtol):
            group += 1
            first = flops[i]
        label[i] = group
    if representative == "first":
        reps = []
        for g in range(group + 1):
            vals, counts = np.unique(flops[label == g], return_counts=True)
            reps.append(vals[np.argmax(counts)])
        return np.array(reps)[label]
    means = np.array([flops[label == g].mean() for g in range(group + 1)])
    return means[label]

