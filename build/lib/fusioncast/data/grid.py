"""Regular time grid per series and calendar features derived from the time column.

Gaps in a series' time index become rows whose target is NaN (masked out of the loss and out of
attention, never silently zero); covariates in a gap are carried forward from the last real row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusioncast.data.schema import Schema, SchemaError


def us_holiday(t: pd.DatetimeIndex) -> np.ndarray:
    """1 on US federal holidays (as observed: a Saturday's on the Friday before), else 0: the days
    when demand for taxis, power or retail departs from its weekly pattern."""
    from pandas.tseries.holiday import USFederalHolidayCalendar

    if len(t) == 0:
        return np.zeros(0, int)
    days = t.normalize()
    return days.isin(USFederalHolidayCalendar().holidays(days.min(), days.max())).astype(int)


# name -> function of a DatetimeIndex giving small non-negative integers (used as known categoricals)
CALENDAR_FEATURES = {
    "minute": lambda t: t.minute,
    "hour": lambda t: t.hour,
    "day_of_week": lambda t: t.dayofweek,
    "is_weekend": lambda t: (t.dayofweek >= 5).astype(int),
    "day_of_month": lambda t: t.day,
    "day_of_year": lambda t: t.dayofyear,
    "week_of_year": lambda t: t.isocalendar().week.to_numpy().astype(int),
    "month": lambda t: t.month,
    "quarter": lambda t: t.quarter,
    "us_holiday": us_holiday,
}


def add_calendar(df: pd.DataFrame, time_col: str, names: list[str]) -> pd.DataFrame:
    """Add the named calendar features as string-valued columns (they are known categoricals)."""
    unknown = [n for n in names if n not in CALENDAR_FEATURES]
    if unknown:
        raise SchemaError(f"unknown calendar feature(s) {unknown}; choose from {sorted(CALENDAR_FEATURES)}")
    t = pd.DatetimeIndex(df[time_col])
    for name in names:
        df[name] = np.asarray(CALENDAR_FEATURES[name](t)).astype(str)
    return df


def infer_freq(df: pd.DataFrame, schema: Schema) -> str:
    """The table's frequency: schema.freq if given, else the most common step between rows."""
    if schema.freq:
        try:
            pd.tseries.frequencies.to_offset(schema.freq)
        except ValueError as e:
            raise SchemaError(f"freq '{schema.freq}' is not a pandas frequency alias: {e}") from e
        return schema.freq
    t = df[schema.time_col]
    if schema.group_ids:
        first = df.groupby(schema.group_ids, sort=False).ngroup() == 0
        t = t[first]
    t = pd.DatetimeIndex(t.sort_values().unique()).as_unit("ns")
    if len(t) >= 3:
        freq = pd.infer_freq(t[: min(len(t), 1000)])
        if freq:
            return freq
    if len(t) < 2:
        raise SchemaError(f"cannot infer the frequency of '{schema.time_col}' from fewer than 2 rows; set data.freq")
    step = pd.Series(np.diff(t.asi8)).mode().iloc[0]
    return pd.tseries.frequencies.to_offset(pd.Timedelta(int(step))).freqstr


def regularize(df: pd.DataFrame, schema: Schema, freq: str) -> pd.DataFrame:
    """Reindex every series to a complete grid at `freq`; adds the bool column `_observed`.

    Raises SchemaError naming the series when a timestamp is not on its series' grid.
    """
    parts = []
    groups = df.groupby(schema.group_ids, sort=False) if schema.group_ids else [((), df)]
    carry = [c for c in df.columns if c not in schema.group_ids + [schema.time_col, schema.target]]
    for key, g in groups:
        t = pd.DatetimeIndex(g[schema.time_col])
        grid = pd.date_range(t[0], t[-1], freq=freq)
        off = ~t.isin(grid)
        if off.any():
            raise SchemaError(
                f"series {series_name(schema, key)}: timestamp {t[off][0]} in '{schema.time_col}' is not on the "
                f"'{freq}' grid that starts at {t[0]}"
            )
        g = g.set_index(schema.time_col).reindex(grid)
        g.index.name = schema.time_col
        g["_observed"] = g[schema.target].notna().to_numpy()
        # covariates are carried forward into gaps (then back for a gap-free start); the target is not
        g[carry] = g[carry].ffill().bfill()
        for col, v in zip(schema.group_ids, key if isinstance(key, tuple) else (key,)):
            g[col] = v
        parts.append(g.reset_index())
    return pd.concat(parts, ignore_index=True)


def series_name(schema: Schema, key) -> str:
    """A readable name of a series, e.g. 'agency=Agency_01, sku=SKU_01', for error messages."""
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c}={v}" for c, v in zip(schema.group_ids, key)) or "(single series)"
