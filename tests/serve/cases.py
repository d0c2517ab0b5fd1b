"""Client mistakes of every kind, as mutations of a valid request, with the answer each must get.

Shared by the parser tests and the HTTP tests; written against any schema (stallion's, synthetic's).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator

import numpy as np
import orjson
import pandas as pd

from fusioncast.data.schema import Schema


def _real(s: Schema) -> str:
    return (s.time_varying_known_reals + s.time_varying_unknown_reals)[0]


def _set(where: str, col: Callable[[Schema], str], index: int, value):
    def mutate(req: dict, s: Schema) -> dict:
        req["series"][0][where][col(s)][index] = value
        return req
    return mutate


def _drop_step(req: dict, s: Schema) -> dict:
    history = req["series"][0]["history"]
    for values in history.values():
        del values[5]
    return req


def _shift_time(where: str, by: str):
    def mutate(req: dict, s: Schema) -> dict:
        times = req["series"][0][where][s.time_col]
        times[0] = (pd.Timestamp(times[0]) + pd.Timedelta(by)).isoformat()
        return req
    return mutate


def _times_from(first, n: int, freq: str) -> list[str]:
    """n timestamps on a `freq` grid ('h', '30min', 'MS', ...) from numpy datetime `first`, as text: numpy
    datetime64[s] spans any year (pandas' nanoseconds stop in 2262)."""
    if freq == "MS":
        months = np.datetime64(first, "M") + np.arange(n)
        return [str(t) for t in months.astype("datetime64[s]")]
    return [str(t) for t in np.datetime64(first, "s") + _step_s(freq) * np.arange(n)]


def _step_s(freq: str) -> int:
    return int(pd.Timedelta(pd.tseries.frequencies.to_offset(freq)).total_seconds())


def _history_from(first):
    """The history moved to start at `first` (its future times dropped: they are optional)."""
    def mutate(req: dict, s: Schema) -> dict:
        series = req["series"][0]
        series["history"][s.time_col] = _times_from(first, len(series["history"][s.time_col]), s.freq)
        series.get("future", {}).pop(s.time_col, None)
        return req
    return mutate


def _history_ending_at_the_last_time(req: dict, s: Schema) -> dict:
    """A history whose last step is the last of its grid that datetime64[ns] holds: the forecast would pass it."""
    series = req["series"][0]
    n = len(series["history"][s.time_col])
    if s.freq == "MS":
        last = np.datetime64("2262-04", "M")
    else:
        step, last_s = _step_s(s.freq), pd.Timestamp.max.value // 10**9
        last = np.datetime64(last_s - last_s % step, "s")
    first = last - (n - 1) if s.freq == "MS" else last - (n - 1) * _step_s(s.freq)
    series["history"][s.time_col] = _times_from(first, n, s.freq)
    series.get("future", {}).pop(s.time_col, None)
    return req


def _edit(f: Callable[[dict, Schema], None]):
    def mutate(req: dict, s: Schema) -> dict:
        f(req, s)
        return req
    return mutate


# (name, mutation of the request dict or a raw body, status, field the answer must name)
CASES: list[tuple[str, Callable | bytes, int, str | None]] = [
    ("invalid JSON", b'{"series": [', 400, None),
    ("NaN literal", b'{"series": [{"history": {"y": [1.0, NaN]}}]}', 400, None),
    ("Infinity literal", b'{"series": [{"history": {"y": [1e400]}}]}', 400, None),
    ("body not an object", b"[1, 2]", 400, None),
    ("no series", _edit(lambda r, s: r.pop("series")), 422, "series"),
    ("empty series", _edit(lambda r, s: r.update(series=[])), 422, "series"),
    ("unknown top-level field", _edit(lambda r, s: r.update(horizon=3)), 422, "horizon"),
    ("interpretation not a bool", _edit(lambda r, s: r.update(interpretation="yes")), 422, "interpretation"),
    ("series not an object", _edit(lambda r, s: r["series"].__setitem__(0, [1])), 422, None),
    ("unknown series field", _edit(lambda r, s: r["series"][0].update(horizon=3)), 422, "horizon"),
    ("history not an object", _edit(lambda r, s: r["series"][0].update(history=[1, 2])), 422, "history"),
    ("future not an object", _edit(lambda r, s: r["series"][0].update(future=[1, 2])), 422, "future"),
    ("missing history column", _edit(lambda r, s: r["series"][0]["history"].pop(_real(s))), 422, "history.{real}"),
    ("extra history column", _edit(lambda r, s: r["series"][0]["history"].update(
        bogus=list(r["series"][0]["history"][s.time_col]))), 422, "history.bogus"),
    ("extra future column", _edit(lambda r, s: r["series"][0]["future"].update(bogus=[1] * 99)), 422, "future.bogus"),
    ("history column too short", _edit(lambda r, s: r["series"][0]["history"][_real(s)].pop()), 422, "history.{real}"),
    ("history column not an array", _edit(lambda r, s: r["series"][0]["history"].update({_real(s): 3.0})), 422,
     "history.{real}"),
    ("non-numeric value", _set("history", _real, 3, "abc"), 422, "history.{real}"),
    ("numeric string", _set("history", _real, 3, "1.5"), 422, "history.{real}"),
    ("null covariate", _set("history", _real, 3, None), 422, "history.{real}"),
    ("boolean value", _set("history", _real, 3, True), 422, "history.{real}"),
    ("value beyond float32", _set("history", _real, 3, 1e39), 422, "history.{real}"),
    ("target as text", _set("history", lambda s: s.target, 2, "12"), 422, "history.{target}"),
    ("target never observed", _edit(lambda r, s: r["series"][0]["history"].update(
        {s.target: [None] * len(r["series"][0]["history"][s.target])})), 422, "history.{target}"),
    ("unparseable timestamp", _set("history", lambda s: s.time_col, 2, "not a time"), 422, "history.{time}"),
    ("timestamp as a number", _set("history", lambda s: s.time_col, 2, 1_500_000_000), 422, "history.{time}"),
    ("timestamp off the grid", _shift_time("history", "1min"), 422, "history.{time}"),
    ("gap in the history", _drop_step, 422, "history.{time}"),
    ("future time not after history", _shift_time("future", "1min"), 422, "future.{time}"),
    # beyond datetime64[ns] (1677-09-21 .. 2262-04-11): numpy would wrap them around (2263 read as 1678)
    ("history in 2263", _history_from("2263-01-01"), 422, "history.{time}"),
    ("history in 9999", _history_from("9999-01-01"), 422, "history.{time}"),
    ("history in 0001", _history_from("0001-01-01"), 422, "history.{time}"),
    ("forecast past 2262-04-11", _history_ending_at_the_last_time, 422, "history.{time}"),
    ("category as an object", _edit(lambda r, s: r["series"][0]["history"][
        (s.time_varying_known_categoricals + s.time_varying_unknown_categoricals)[0]].__setitem__(0, {"a": 1})),
     422, "history.{cat}"),
]


def bodies(request: dict, schema: Schema):
    """(name, body bytes, status, field) for every case, fields filled in for this schema."""
    cats = schema.time_varying_known_categoricals + schema.time_varying_unknown_categoricals
    names = {"real": _real(schema), "target": schema.target, "time": schema.time_col, "cat": cats[0] if cats else ""}
    for name, mutate, status, field in CASES:
        if name == "category as an object" and not cats:
            continue
        if isinstance(mutate, bytes):
            yield name, mutate, status, field
            continue
        body = orjson.dumps(mutate(copy.deepcopy(request), schema))
        yield name, body, status, field.format(**names) if field else None


# values a random mutation puts anywhere in a request: wrong types, extremes, odd text, nesting
ODD_VALUES = [None, True, False, 0, -1, 1.5, -0.0, 1e308, -1e308, 2**70, -(2**70), 2**63, 1e-320, "", "x", "1.5",
              "NaN", "inf", "2024-13-45", "2024-01-12 07:00:00+05:00", "\u00e9\u4e2d", "a" * 5000, [], {}, [1], [[1]],
              {"a": 1}, [None]]


def random_bodies(request: dict, n: int, seed: int = 0) -> Iterator[bytes]:
    """n bodies made from a valid request by 1-3 random edits each (a value replaced by an odd one, a key
    deleted or added, an array lengthened or shortened), one in ten then cut short: a fuzz of everything
    the named cases above do not foresee."""
    rng = random.Random(seed)
    for _ in range(n):
        req = copy.deepcopy(request)
        for _ in range(rng.choice([1, 1, 2, 3])):
            where = list(_paths(req))[1:]
            if not where:
                break
            path = rng.choice(where)
            parent, key = _at(req, path[:-1]), path[-1]
            value, op = parent[key], rng.random()
            if op < 0.55:
                parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
            elif op < 0.7:
                del parent[key]
            elif op < 0.8 and type(parent) is dict:
                parent["zz_extra"] = rng.choice(ODD_VALUES)
            elif type(value) is list and value:
                if op < 0.9:
                    value.extend(copy.deepcopy(value[: rng.randint(1, 3)]))
                else:
                    del value[rng.randrange(len(value))]
        body = json.dumps(req).encode()  # not orjson: it refuses integers beyond 64 bits
        yield body[: rng.randrange(len(body))] if rng.random() < 0.1 else body


def _paths(obj, path: tuple = ()):
    yield path
    items = obj.items() if type(obj) is dict else enumerate(obj) if type(obj) is list else ()
    for k, v in items:
        yield from _paths(v, path + (k,))


def _at(obj, path: tuple):
    for k in path:
        obj = obj[k]
    return obj
