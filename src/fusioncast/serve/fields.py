"""What a forecast request is made of and how its mistakes are told: the field names, the JSON types
the parser takes, the timestamps numpy reads, RequestError, and `shown` (a client's value quoted in a
message, cut to a bounded length: a 1 MB category name must not come back whole).

Shared by the per-series parser (serve/requests.py) and the column-at-once path (serve/columns.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

SERIES_FIELDS = frozenset(("id", "static", "history", "future"))
REQUEST_FIELDS = frozenset(("series", "interpretation"))
NUMBER = frozenset((int, float))
NUMBER_OR_NULL = frozenset((int, float, type(None)))
SCALAR = frozenset((str, int, float))

SHOWN_CHARS = 60          # of one client value quoted in a message
MESSAGE_CHARS = 1000      # of a whole message (it quotes several values)
# what datetime64[ns] (the model's time axis, pandas' default) can hold
FIRST_TIME, LAST_TIME = pd.Timestamp.min.ceil("s"), pd.Timestamp.max.floor("s")
_FIRST_US, _LAST_US = FIRST_TIME.value // 1000, LAST_TIME.value // 1000
_NAT = np.iinfo(np.int64).min


def shown(value) -> str:
    """repr(value), cut to SHOWN_CHARS with the length it had."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def shown_text(text: str) -> str:
    """A client's text (a field name) as is, cut like `shown`."""
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def shown_keys(keys) -> str:
    """A few of a client's keys, sorted, each cut: `['a', 'b', ... (12 in all)]`."""
    keys = sorted(keys)
    parts = [shown(k) for k in keys[:5]] + ([f"... ({len(keys)} in all)"] if len(keys) > 5 else [])
    return "[" + ", ".join(parts) + "]"


def kind(v) -> str:
    """The JSON type name of a parsed value."""
    return "null" if v is None else type(v).__name__.replace("NoneType", "null").replace("dict", "object").replace(
        "list", "array").replace("str", "string")


class RequestError(ValueError):
    """A client mistake: answered with `status` and a message naming the series and field. What it echoes
    of the client's request (the message, the series id, the field name) is bounded."""

    def __init__(self, message: str, status: int = 422, series=None, field: str | None = None):
        if len(message) > MESSAGE_CHARS:
            message = message[:MESSAGE_CHARS] + "..."
        super().__init__(message)
        if series is not None and type(series) is not int and len(repr(series)) > SHOWN_CHARS:
            series = shown(series)
        self.status, self.series = status, series
        self.field = None if field is None else shown_text(field)

    def body(self) -> dict:
        return {"detail": str(self), "series": self.series, "field": self.field}


class TimeOutOfRange(ValueError):
    """A timestamp outside what datetime64[ns] holds (it would wrap around silently)."""

    def __init__(self, index: int):
        super().__init__(f"outside {FIRST_TIME} .. {LAST_TIME}")
        self.index = index


class HorizonOutOfRange(ValueError):
    """A forecast that would reach past the last time datetime64[ns] holds."""


def out_of_range_message(value) -> str:
    return (f"= {shown(value)} is outside the times the model can represent "
            f"({FIRST_TIME.isoformat()} .. {LAST_TIME.isoformat()})")


def numpy_times(values: list) -> np.ndarray:
    """int64 ns since the epoch of ISO 8601 strings, read to the microsecond. Raises ValueError for what
    numpy does not parse (time zones: pandas reads those) and TimeOutOfRange for a time datetime64[ns]
    cannot hold, which numpy would wrap around (2263 read as 1678)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy only warns about time zones
        try:
            us = np.array(values, dtype="datetime64[us]").view(np.int64)
        except (UserWarning, DeprecationWarning, OverflowError) as e:
            raise ValueError(str(e)) from None
    u = us.tolist()  # Python's min/max: a third of numpy's cost on a window's few values
    if min(u) < _FIRST_US or max(u) > _LAST_US:
        if _NAT in u:
            raise ValueError("NaT is not a time")
        check_time_range(us, _FIRST_US, _LAST_US)
    return us * 1000


def numpy_times_fast(values: list) -> np.ndarray:
    """numpy_times without the range check, for the column-at-once path, which checks the first time of
    each series (`in_range`): a later time that wrapped around lands off the grid those first times set
    (2^64 ns is no whole number of microseconds), so the per-series path, exact, names it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return np.array(values, dtype="datetime64[ns]").view(np.int64)
        except (UserWarning, DeprecationWarning, OverflowError) as e:
            raise ValueError(str(e)) from None


def in_range(values: list) -> bool:
    """Whether every one of a few ISO 8601 strings lies within what datetime64[ns] holds."""
    try:
        u = np.array(values, dtype="datetime64[us]").view(np.int64).tolist()
    except (ValueError, OverflowError):
        return False
    return min(u) >= _FIRST_US and max(u) <= _LAST_US


def check_time_range(t: np.ndarray, first: int, last: int) -> None:
    """Raise TimeOutOfRange for the first value of int64 times `t` outside [first, last]."""
    bad = (t < first) | (t > last)
    if bad.any():
        raise TimeOutOfRange(int(np.argmax(bad)))
