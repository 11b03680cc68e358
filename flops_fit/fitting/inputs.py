"""Reading a results table: any supported input becomes a fresh DataFrame.

DataFrame, records, CSV/JSON/JSONL file (local or a pyarrow URI such as s3://) or a
stored sweep folder; nothing is validated here (that is `prepare`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from flops_fit import storage

if TYPE_CHECKING:
    import pandas as pd


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
    if hasattr(data, "isoflop") and hasattr(data, "parametric"):
        # fitted laws hold predictions, not measurements: fitting them would fit the fit
        raise FitError("data: these are fitted ScalingLaws, not measured runs; pass the sweep's "
                       "results (load_results(folder), its folder or its results.csv)")
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
    if storage.is_uri(path):
        try:
            found = storage.Folder(path)
            kind = found.kind()
        except (OSError, ValueError) as err:
            raise FitError(f"data: cannot open {path} ({err}); check the URI and credentials") from None
        if kind is None:
            raise FitError(f"data: no such file or folder: {path}")
        return None if kind == "dir" else found.read_bytes()
    local = Path(path).expanduser()
    if not local.exists():
        raise FitError(f"data: no such file or directory: {path}")
    return None if local.is_dir() else local.read_bytes()


def _read_path(path: str):
    import io

    import pandas as pd
    suffix = storage.suffix(path).lower()
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
