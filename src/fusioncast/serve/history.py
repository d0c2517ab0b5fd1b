"""A forecast request's history built from the actuals the server holds ("forecast zone 132 now"): the
last max_encoder_length steps of the model's grid up to the series' latest actual, null targets where
no actual was posted (as a client sends them), the other history columns from the actuals' inputs."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from fusioncast.serve.fields import RequestError, shown
from fusioncast.serve.store import Actual


def steps_back(parser, t: int, n: int) -> int:
    """The time n steps of the model's grid before t (ns)."""
    if parser.step is not None:
        return t - parser.step * n
    return int((pd.Timestamp(t, unit="ns") - n * parser.offset).as_unit("ns").value)


def forecast_times(parser, t0: int) -> np.ndarray:
    """The H forecast times (ns) of a window whose first forecast time is t0."""
    return parser.grid(t0, 0)[0]


def history_from(parser, name, rows: list[Actual]) -> dict:
    """The `history` object of series `name` from its stored actuals (sorted by time, not empty)."""
    s = parser.schema
    last, first = rows[-1][1], rows[0][1]
    if parser.step is not None:
        times = last - parser.step * np.arange(parser.L - 1, -1, -1, dtype=np.int64)
    else:
        times = pd.date_range(end=pd.Timestamp(last, unit="ns"), periods=parser.L, freq=parser.offset)
        times = times.as_unit("ns").asi8
    times = times[times >= first]  # not before the oldest actual: a short history is padded (with a warning)
    at = {t: (v, i) for _, t, v, i in rows}
    columns = sorted(parser.history_cols - {s.time_col, s.target})
    history = {s.time_col: np.datetime_as_string(times.astype("datetime64[ns]"), unit="s").tolist(),
               s.target: [at[t][0] if t in at else None for t in times.tolist()]}
    inputs = {t: orjson.loads(i) if i else {} for t, (_, i) in at.items()}
    for col in columns:
        values = []
        for j, t in enumerate(times.tolist()):
            v = inputs.get(t, {}).get(col)
            if v is None:
                raise RequestError(
                    f"series {shown(name)}: no history was sent and the server's actuals give no {col} at "
                    f"{history[s.time_col][j]}: post actuals with inputs.{col} for every step, or send the history",
                    series=name, field=f"history.{col}")
            values.append(v)
        history[col] = values
    return history
