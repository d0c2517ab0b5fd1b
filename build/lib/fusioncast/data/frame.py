"""Raw table → validated, regular-grid frame with calendar features; time splits per series."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusioncast.data.grid import add_calendar, infer_freq, regularize
from fusioncast.data.schema import Schema, SchemaError, drop_short_series, validate


def prepare_frame(df: pd.DataFrame, schema: Schema, drop_short: bool = True) -> tuple[pd.DataFrame, str]:
    """Validate, regularise to the (given or inferred) frequency, derive calendar features.

    Series shorter than encoder + horizon are dropped with one warning when `drop_short`.
    Returns the frame (with bool column `_observed`) and the frequency alias.
    """
    df = validate(df, schema)
    freq = infer_freq(df, schema)
    frame = regularize(df, schema, freq)
    if drop_short and schema.group_ids:
        lengths = frame.groupby(schema.group_ids, sort=False).size()
        short = drop_short_series(lengths, schema.max_encoder_length + schema.max_prediction_length)
        if short:
            keep = ~frame.set_index(schema.group_ids).index.isin(short)
            frame = frame[keep].reset_index(drop=True)
    elif drop_short:
        drop_short_series(pd.Series([len(frame)]), schema.max_encoder_length + schema.max_prediction_length)
    return add_calendar(frame, schema.time_col, schema.calendar), freq


def cutoff_index(start: np.ndarray, length: np.ndarray, freq: str, at) -> np.ndarray:
    """Per series, the first grid step at or after `at`: a timestamp, or a fraction of each series' span."""
    if isinstance(at, (int, float)) and not isinstance(at, bool) and 0 < float(at) < 1:
        return np.floor(length * float(at)).astype(np.int64)
    try:
        ts = pd.Timestamp(at)
    except (ValueError, TypeError) as e:
        raise SchemaError(f"split point {at!r} is neither a fraction in (0, 1) nor a timestamp") from e
    offset = pd.tseries.frequencies.to_offset(freq)
    out = np.empty(len(start), np.int64)
    for i, (s, n) in enumerate(zip(start, length)):
        # count grid steps before `ts`; date_range handles calendar offsets (months) exactly
        steps = pd.date_range(pd.Timestamp(s), periods=int(n), freq=offset)
        out[i] = int(np.searchsorted(steps.as_unit("ns").asi8, ts.as_unit("ns").value, side="left"))
    return out


def split_points(start: np.ndarray, length: np.ndarray, freq: str, val_start, test_start) -> tuple[np.ndarray, np.ndarray]:
    """(val_idx, test_idx) per series: the first validation and first test step on its grid.

    `test_start=None` means no test split: validation runs to the end of each series.
    """
    val_idx = cutoff_index(start, length, freq, val_start)
    test_idx = np.asarray(length, np.int64).copy() if test_start is None else cutoff_index(start, length, freq, test_start)
    if (test_idx < val_idx).any():
        raise SchemaError(f"val_start ({val_start}) must come before test_start ({test_start})")
    return val_idx, test_idx


def truncate(frame: pd.DataFrame, schema: Schema, freq: str, end) -> pd.DataFrame:
    """Drop every step at or after `end` (a timestamp, or a fraction of each series' span): the data
    a benchmark protocol stops at (e.g. ETTh1's 20 months of 12/4/4)."""
    if end is None:
        return frame
    keys = frame.groupby(schema.group_ids, sort=False).ngroup().to_numpy() if schema.group_ids else np.zeros(len(frame), np.int64)
    times = frame.groupby(keys, sort=False)[schema.time_col]
    stop = cutoff_index(times.first().to_numpy(), times.size().to_numpy(), freq, end)
    keep = frame.groupby(keys, sort=False).cumcount().to_numpy() < stop[keys]
    if not keep.any():
        raise SchemaError(f"test_end={end!r} leaves no data")
    return frame[keep].reset_index(drop=True)


def seasonal_period(freq: str) -> int:
    """The usual seasonal period of a frequency: a day for sub-daily data, a week of days, a year of months."""
    offset = pd.tseries.frequencies.to_offset(freq)
    if isinstance(offset, pd.offsets.Tick):  # fixed-length steps: hours, minutes, days
        delta = pd.Timedelta(offset)
        if delta >= pd.Timedelta("1D"):
            return max(1, int(round(7 / (delta / pd.Timedelta("1D")))))
        return max(1, int(round(pd.Timedelta("1D") / delta)))
    name = offset.name.upper()
    if name == "D":  # a calendar day is no Tick in recent pandas
        return 7
    if name.startswith("W"):
        return 52
    if name.startswith(("Q", "BQ")):
        return 4
    if name.startswith(("Y", "A", "BY", "BA")):
        return 1
    if name.startswith(("M", "BM", "SM", "CBM")):
        return 12
    return 7 if name.startswith(("B", "C")) else 1  # business days: a week
