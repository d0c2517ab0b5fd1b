"""Timestamps of evaluation windows on a data module's regular grid (step t of a series is its start + t
periods), for backtests, refits and plots."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusioncast.data.datamodule import TimeSeriesDataModule


def decoder_start_times(dm: TimeSeriesDataModule, series: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The timestamp of each window's first decoder step (datetime64[ns])."""
    out = np.empty(len(series), "datetime64[ns]")
    for s in np.unique(series):
        grid = pd.date_range(dm.enc.start[s], periods=int(dm.enc.length[s]), freq=dm.pp.freq).to_numpy()
        sel = series == s
        out[sel] = grid[starts[sel]]
    return out


def window_times(dm: TimeSeriesDataModule, series: int, decoder_start: int) -> np.ndarray:
    """Timestamps (L+H,) of a window: step t of a series is its start + t periods of the grid (a short
    encoder reaches before the series' start: those steps are padding, dated all the same)."""
    L, H = dm.schema.max_encoder_length, dm.schema.max_prediction_length
    start, freq = dm.enc.start[series], dm.pp.freq
    grid = pd.date_range(start, periods=decoder_start + H, freq=freq)
    before = max(0, L - decoder_start)
    if before:
        grid = pd.date_range(end=start, periods=before + 1, freq=freq)[:-1].append(grid)
    return grid[len(grid) - L - H :].to_numpy()
