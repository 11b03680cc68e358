"""Preparing a table for the fit: map, filter, validate, then group into budgets (grouping.py).

The rows a fit uses (params, tokens, flops, loss, budget, row), with every row left out
recorded with its reason, the notes on how the table was read and the warnings on units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from flops_fit.contract import OK_STATUS, OPTIONAL_COLUMNS, ORIGIN_PLANNED, REQUIRED_COLUMNS
from flops_fit.expressions import ExpressionError, evaluate
from flops_fit.fitting.grouping import BUDGET_RTOL, budgets
from flops_fit.fitting.inputs import FitError, read_table
from flops_fit.law import FLOPS_PER_PARAM_TOKEN, training_flops

if TYPE_CHECKING:
    import pandas as pd

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



def _evaluate(frame, expression, what):
    """A column name, or a safe expression over the columns (flops_fit.expressions)."""
    if isinstance(expression, str) and expression in frame.columns:
        return frame[expression]
    try:
        return evaluate(expression, frame)
    except ExpressionError as err:
        raise FitError(f"{what}: {expression!r}: {err}") from None


@dataclass
class Prepared:
    """What `prepare` hands the fit."""

    points: pd.DataFrame  # usable rows: params, tokens, flops, loss, budget, row (+ run, origin)
    excluded: list  # dict records, one per row left out, with its reason
    notes: list  # how the table was read (mappings, derived columns, FLOP convention)
    flops_per_param_token: float
    budget_given: bool
    warnings: list = field(default_factory=list)
    holdout: pd.DataFrame | None = None  # held-out rows (same columns as points)
    raw_rows: int = 0


@dataclass
class _Rows:
    """The table while it is prepared: which rows are still usable, and why others are not."""

    raw: pd.DataFrame
    frame: pd.DataFrame
    usable: np.ndarray
    present: set
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    excluded: list = field(default_factory=list)

    def exclude(self, i, reason):
        rec = {"kind": "row", "row": int(i), "reason": reason}
        for col in ("budget", "params", "tokens", "flops", "loss", "status"):
            if col in self.frame.columns:
                v = self.frame.at[i, col]
                rec[col] = float(v) if isinstance(v, (int, float, np.number)) else v
        self.excluded.append(rec)
        self.usable[i] = False


def prepare(data, *, columns=None, where=None, drop_highest_loss=0, budget_rtol=BUDGET_RTOL,
            holdout=None) -> Prepared:
    """Read, map, filter and validate a results table; raise FitError on bad input.

    holdout: expression; rows where it is true are kept apart (not fitted) for a backtest.
    """
    raw = read_table(data).reset_index(drop=True)
    rows = _Rows(raw, raw.copy(), np.ones(len(raw), bool), set())
    _map_columns(rows, columns)
    _derive_missing_columns(rows)
    _exclude_by_status(rows)
    for expr in [where] if isinstance(where, str) else list(where or []):
        rows_kept = _boolean_rows(rows.frame, expr, "where")
        for i in np.flatnonzero(rows.usable & ~rows_kept):
            rows.exclude(i, f"where: not ({expr})")
    held = np.zeros(len(raw), bool)
    if holdout is not None:
        held = _boolean_rows(rows.frame, holdout, "holdout") & rows.usable
        if not held.any():
            raise FitError(f"holdout: {holdout!r} selects no usable row; nothing to backtest")
    _exclude_diverged_and_check_values(rows)
    _drop_highest_loss(rows, drop_highest_loss)
    _collapse_duplicates(rows)
    points = _fitted_points(rows, rows.usable & ~held)
    k = _flops_convention(rows, points)
    _check_tokens_per_param(rows, points)
    points["budget"] = budgets(rows, points, rows.usable & ~held, budget_rtol)
    held_pts = None
    if held.any():
        held_pts = rows.frame.loc[held & rows.usable, list(FITTED)].astype(float).copy()
        held_pts["row"] = np.flatnonzero(held & rows.usable)
    return Prepared(points.reset_index(drop=True), rows.excluded, rows.notes, k, "budget" in rows.present,
                    rows.warnings, held_pts, len(raw))


FITTED = ("params", "tokens", "flops", "loss")  # the numeric columns every fitted row carries
# What a row says of its run's data: planned tokens, epochs over the unique tokens.
RUN_HISTORY_COLUMNS = {"max_tokens", "epochs", "unique_tokens"}


def _map_columns(rows, columns):
    """Apply the user's mapping {our column: their column or safe expression}; numbers only."""
    import pandas as pd
    for ours, theirs in (columns or {}).items():
        if ours not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            raise FitError(f"columns: unknown target {ours!r}; map to one of "
                           f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
        rows.frame[ours] = _evaluate(rows.raw, theirs, f"columns[{ours!r}]")
        rows.notes.append(f"{ours} <- {theirs}")
    rows.present = set(rows.frame.columns)
    for col in ("params", "tokens", "flops", "budget", "loss"):
        if col in rows.present and not pd.api.types.is_numeric_dtype(rows.frame[col]):
            # e.g. FLOP counts above 2^63 that pandas keeps as text
            converted = pd.to_numeric(rows.frame[col], errors="coerce")
            bad = converted.isna() & rows.frame[col].notna()
            if bad.any():
                shown = list(np.flatnonzero(bad.to_numpy())[:10])
                raise FitError(f"column {col!r}: non-numeric values in rows {shown}; "
                               "fix the file or map the column to a numeric one")
            rows.frame[col] = converted


def _derive_missing_columns(rows):
    """Two of params/tokens/flops give the third under C = 6ND."""
    present, frame = rows.present, rows.frame
    if "loss" not in present or sum(c in present for c in ("params", "tokens", "flops")) < 2:
        missing = [c for c in ("params", "tokens", "loss") if c not in present]
        raise FitError(
            f"missing column(s) {missing}: need loss and two of params/tokens/flops. "
            f"Columns present: {list(rows.raw.columns)}. Rename them or map them, e.g. "
            "columns={'params': 'Model Size'} (CLI: --map params=\"Model Size\")."
        )
    if "params" not in present:
        frame["params"] = frame["flops"] / (FLOPS_PER_PARAM_TOKEN * frame["tokens"])
        rows.notes.append("params derived as N = C/(6 D) (no params column)")
    if "tokens" not in present:
        frame["tokens"] = frame["flops"] / (FLOPS_PER_PARAM_TOKEN * frame["params"])
        rows.notes.append("tokens derived as D = C/(6 N) (no tokens column)")
    if "flops" not in present:
        frame["flops"] = training_flops(frame["params"], frame["tokens"])


def _exclude_by_status(rows):
    """Rows whose status is not ok (failed, diverged, ...) are data, not points: excluded."""
    import pandas as pd
    if "status" not in rows.present:
        return
    frame = rows.frame
    status = frame["status"].astype(str).str.strip().str.lower()
    for i in np.flatnonzero((status != OK_STATUS).to_numpy()):
        reason = f"status={frame.at[i, 'status']}"
        if "error" in frame.columns and pd.notna(frame.at[i, "error"]) and str(frame.at[i, "error"]).strip():
            reason += f": {frame.at[i, 'error']}"
        rows.exclude(i, reason)


def _boolean_rows(frame, expression, what):
    """One True/False per row from a safe expression, or FitError naming `what`."""
    mask = np.asarray(_evaluate(frame, expression, what), dtype=object)
    if mask.shape != (len(frame),) or not all(isinstance(m, (bool, np.bool_)) for m in mask):
        raise FitError(f"{what}: {expression!r} must give one True/False per row")
    return mask.astype(bool)


def _exclude_diverged_and_check_values(rows):
    """An infinite loss is a diverged run (excluded); any other non-positive or NaN value
    in a usable row is bad data (refused)."""
    frame = rows.frame
    loss = frame["loss"].to_numpy(float)
    for i in np.flatnonzero(rows.usable & np.isinf(loss)):
        rows.exclude(i, "non-finite loss (inf): diverged run")
    for col in list(FITTED) + (["budget"] if "budget" in rows.present else []):
        v = frame[col].to_numpy(float)
        with np.errstate(invalid="ignore"):
            bad = rows.usable & ~(np.isfinite(v) & (v > 0))
        if bad.any():
            where = np.flatnonzero(bad)
            shown = ", ".join(str(r) for r in where[:10]) + (" ..." if where.size > 10 else "")
            raise FitError(
                f"column {col!r}: {where.size} usable row(s) have non-positive or NaN values "
                f"(rows {shown}); mark them status='failed', drop them with where=..., or fix the data"
            )


def _drop_highest_loss(rows, count):
    """Besiroglu et al. 2024 drop the highest-loss points of the digitised Chinchilla data."""
    if not count:
        return
    loss = rows.frame["loss"].to_numpy(float)
    idx = np.flatnonzero(rows.usable)
    if count >= idx.size:
        raise FitError(f"drop_highest_loss={count} would drop all {idx.size} usable rows")
    for i in idx[np.argsort(-loss[idx], kind="stable")[: int(count)]]:
        rows.exclude(i, f"drop_highest_loss={count}")


def _collapse_duplicates(rows):
    """Exact duplicate rows (every mapped column equal) are one run recorded twice: counting
    it twice would shrink every interval (10 copies: ~3x narrower)."""
    keyed = rows.frame.loc[rows.usable, list(FITTED) + [c for c in ("budget", "run") if c in rows.present]]
    dup = keyed.duplicated(keep="first").to_numpy()
    if dup.any():
        for i in np.flatnonzero(rows.usable)[dup]:
            rows.exclude(i, "exact duplicate of an earlier row (collapsed)")
        rows.notes.append(f"{int(dup.sum())} exact duplicate row(s) collapsed into one each")


def _fitted_points(rows, fitted):
    import pandas as pd
    frame = rows.frame
    pts = frame.loc[fitted, list(FITTED)].astype(float).copy()
    pts["row"] = np.flatnonzero(fitted)
    if "run" in rows.present:
        pts["run"] = frame.loc[fitted, "run"].astype(str).to_numpy()
    for col in sorted(RUN_HISTORY_COLUMNS & rows.present):  # read by limits.py's warnings
        pts[col] = pd.to_numeric(frame.loc[fitted, col], errors="coerce").to_numpy(float)
    if "origin" in frame.columns:  # why each point exists (a sweep's results): the plots mark added ones
        pts["origin"] = frame.loc[fitted, "origin"].fillna(ORIGIN_PLANNED).astype(str).to_numpy()
    if pts.empty:
        raise FitError("data: no usable rows (every row was excluded); see the exclusion reasons")
    return pts


def _flops_convention(rows, pts):
    """FLOPs per parameter-token. With a measured flops column, the data say how many FLOPs
    one parameter-token costs; D_opt = C/(k N_opt) must use the same k or the tokens are off."""
    k = FLOPS_PER_PARAM_TOKEN
    if not {"flops", "params", "tokens"} <= rows.present:
        return k
    k = float(np.median(pts["flops"] / (pts["params"] * pts["tokens"])))
    if not 1 / FLOPS_UNIT_SLIP_FACTOR <= k / FLOPS_PER_PARAM_TOKEN <= FLOPS_UNIT_SLIP_FACTOR:
        rows.warnings.append(
            f"flops / (params x tokens) = {k:.3g}, far from {FLOPS_PER_PARAM_TOKEN:g} FLOPs per "
            "parameter per token: a unit slip (GFLOPs, millions of parameters, ...)? "
            "Fix the mapping, e.g. --map 'flops=gflops * 1e9'")
    if abs(k / FLOPS_PER_PARAM_TOKEN - 1) > FLOPS_CONVENTION_RTOL:
        rows.notes.append(f"flops column is not 6ND: using k = median flops/(N D) = {k:.4g} "
                          "FLOPs per parameter per token for D = C/(k N)")
        return k
    return FLOPS_PER_PARAM_TOKEN


def _check_tokens_per_param(rows, pts):
    ratio_dn = (pts["tokens"] / pts["params"]).to_numpy()
    if ratio_dn.min() < MIN_TOKENS_PER_PARAM or ratio_dn.max() > MAX_TOKENS_PER_PARAM:
        rows.warnings.append(
            f"tokens per parameter range from {ratio_dn.min():.3g} to {ratio_dn.max():.3g}, outside "
            f"[{MIN_TOKENS_PER_PARAM:g}, {MAX_TOKENS_PER_PARAM:g}]: a unit slip (parameters in "
            "millions, tokens in billions)? Map both as plain counts, e.g. --map 'params=n_M * 1e6'")
