"""Readers for published files that are not a long table: the M4 competition's wide CSVs and Numenta's
CSVs with a 3-line header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fusioncast.data.schema import SchemaError

# M4's files carry no timestamps; every series gets hourly ones that end its training part just before
# this instant, so the test horizon starts here for all series (configs/data/m4_hourly.yaml cuts at it).
M4_ORIGIN = pd.Timestamp("2017-01-01 00:00")


def read_wide(path: Path) -> dict[str, np.ndarray]:
    """One row per series: the id in the first column, then its values left-aligned (trailing cells empty)."""
    df = pd.read_csv(path, index_col=0)
    values = df.to_numpy(np.float64)
    out = {}
    for key, row in zip(df.index.astype(str), values):
        n = int(np.isfinite(row).sum())
        if n == 0 or not np.isfinite(row[:n]).all():
            raise SchemaError(f"{path}: series {key} has missing values inside it (only trailing cells may be empty)")
        out[key] = row[:n]
    return out


def read_m4(train: str | Path, test: str | Path | None = None, freq: str = "h",
            origin: pd.Timestamp = M4_ORIGIN) -> pd.DataFrame:
    """M4's wide train (and test) files as a long table `series, timestamp, value`.

    Each series' training values end one step before `origin`; its test values, when `test` is given,
    follow from `origin` on. Series keep the file's order.
    """
    history = read_wide(Path(train))
    future = read_wide(Path(test)) if test is not None else {}
    missing = sorted(set(future) ^ set(history))
    if future and missing:
        raise SchemaError(f"{train} and {test} hold different series (e.g. {missing[:3]})")
    step = pd.tseries.frequencies.to_offset(freq)
    frames = []
    for key, y in history.items():
        y = np.concatenate([y, future.get(key, np.zeros(0))])
        start = origin - len(history[key]) * step
        frames.append(pd.DataFrame({"series": key, "timestamp": pd.date_range(start, periods=len(y), freq=step),
                                    "value": y}))
    return pd.concat(frames, ignore_index=True)


def read_numenta(path: str | Path) -> pd.DataFrame:
    """A Numenta (NuPIC / htmresearch) CSV: its 3 header lines are names, types and flags."""
    return pd.read_csv(path, skiprows=[1, 2], parse_dates=[0])
