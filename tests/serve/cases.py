"""Client mistakes of every kind, as mutations of a valid request, with the answer each must get.

Shared by the parser tests and the HTTP tests; written against any schema (stallion's, synthetic's).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

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
