"""Calendar features of nanosecond timestamps in plain numpy: the request path's twin of
data.grid.CALENDAR_FEATURES (which goes through a pandas DatetimeIndex, ~10x slower on a short
window). tests/serve/test_requests.py checks the two agree on every feature over years of steps.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_NS_MINUTE, _NS_HOUR, _NS_DAY = 60 * 10**9, 3600 * 10**9, 86400 * 10**9


def _days(ns: np.ndarray) -> np.ndarray:
    return ns // _NS_DAY  # floor division: correct before 1970 too


def _day_of_week(ns: np.ndarray) -> np.ndarray:
    return (_days(ns) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)


def _month(ns: np.ndarray) -> np.ndarray:
    return ns.astype("datetime64[ns]").astype("datetime64[M]").astype(np.int64) % 12 + 1


def _day_of_month(ns: np.ndarray) -> np.ndarray:
    d = ns.astype("datetime64[ns]").astype("datetime64[D]")
    return (d - d.astype("datetime64[M]")).astype(np.int64) + 1


def _day_of_year(ns: np.ndarray) -> np.ndarray:
    d = ns.astype("datetime64[ns]").astype("datetime64[D]")
    return (d - d.astype("datetime64[Y]")).astype(np.int64) + 1


def _iso_week(ns: np.ndarray) -> np.ndarray:
    """ISO 8601 week: the week of the year that holds this week's Thursday."""
    days = _days(ns)
    thursday = days - (days + 3) % 7 + 3
    t = thursday.astype("datetime64[D]")
    return (t - t.astype("datetime64[Y]")).astype(np.int64) // 7 + 1


@lru_cache(maxsize=1)
def _us_holiday_days() -> np.ndarray:
    """Sorted day numbers (days since 1970) of the US federal holidays from 1900 to 2199, from pandas'
    calendar once (data.grid.us_holiday asks pandas per table; this is a lookup per request)."""
    from pandas.tseries.holiday import USFederalHolidayCalendar

    days = USFederalHolidayCalendar().holidays("1900-01-01", "2199-12-31")
    return np.asarray(days.as_unit("ns").asi8 // _NS_DAY, np.int64)


def _us_holiday(ns: np.ndarray) -> np.ndarray:
    table, days = _us_holiday_days(), _days(ns)
    i = np.searchsorted(table, days).clip(max=len(table) - 1)
    return (table[i] == days).astype(np.int64)


CALENDAR_NUMPY = {
    "minute": lambda ns: ns // _NS_MINUTE % 60,
    "hour": lambda ns: ns // _NS_HOUR % 24,
    "day_of_week": _day_of_week,
    "is_weekend": lambda ns: (_day_of_week(ns) >= 5).astype(np.int64),
    "day_of_month": _day_of_month,
    "day_of_year": _day_of_year,
    "week_of_year": _iso_week,
    "month": _month,
    "quarter": lambda ns: (_month(ns) - 1) // 3 + 1,
    "us_holiday": _us_holiday,
}


def calendar_values(name: str, ns: np.ndarray) -> np.ndarray:
    """Integer values of calendar feature `name` for int64 nanosecond timestamps."""
    return np.asarray(CALENDAR_NUMPY[name](np.asarray(ns, np.int64)), np.int64)
