"""POST /v1/actuals: observed values read and checked, every mistake a RequestError naming the item and
the field (`actuals[3].value`).

    {"actuals": [{"series": "132", "time": "2026-01-08T13:00:00", "value": 41,
                  "inputs": {"temperature": 3.5, "weather": "rain", ...}}, ...]}

`series` is a series id as in a forecast request (an object of the group-id columns, or their values
joined by '|'); `time` an ISO 8601 timestamp (a time zone is dropped to wall time, as in training);
`value` the target's finite value. `inputs` (optional) are the series' other history columns at that
time: with them the server can build a forecast request's history by itself.
"""

from __future__ import annotations

import math
import re

import orjson
import pandas as pd

from fusioncast.data.preprocess import series_key
from fusioncast.serve.fields import FIRST_TIME, LAST_TIME, NUMBER, SCALAR, RequestError, kind, shown, shown_keys
from fusioncast.serve.openapi import TIMESTAMP
from fusioncast.serve.store import Actual

ITEM_FIELDS = frozenset(("series", "time", "value", "inputs"))
_TIMESTAMP = re.compile(TIMESTAMP)  # the document's pattern: what it calls a timestamp, and nothing else


class ActualsParser:
    def __init__(self, schema, max_actuals: int):
        s = schema
        self.group_ids, self.max_actuals = list(s.group_ids), max_actuals
        self.categoricals = frozenset([*s.time_varying_known_categoricals, *s.time_varying_unknown_categoricals])
        self.reals = frozenset([*s.time_varying_known_reals, *s.time_varying_unknown_reals])
        self.inputs = self.categoricals | self.reals

    def parse(self, body: bytes) -> list[Actual]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise RequestError(f"the body is not valid JSON ({e})", status=400) from None
        if type(obj) is not dict or set(obj) != {"actuals"}:
            got = f"an object with {shown_keys(obj)}" if type(obj) is dict else kind(obj)
            raise RequestError(f"the body must be an object {{'actuals': [...]}}, got {got}", status=400,
                               field="actuals")
        items = obj["actuals"]
        if type(items) is not list or not items:
            raise RequestError("'actuals' must be a non-empty array of {series, time, value} objects", field="actuals")
        if len(items) > self.max_actuals:
            raise RequestError(f"{len(items)} actuals in one request; this server takes at most {self.max_actuals}",
                               status=413, field="actuals")
        return [self.item(i, item) for i, item in enumerate(items)]

    def item(self, i: int, item) -> Actual:
        at = f"actuals[{i}]"
        if type(item) is not dict:
            raise RequestError(f"{at} must be an object, got {kind(item)}", field=at)
        extra = item.keys() - ITEM_FIELDS
        if extra:
            raise RequestError(f"{at}: unknown field(s) {shown_keys(extra)}; an actual has series, time, value, inputs",
                               field=f"{at}.{min(extra)}")
        for name in ("series", "time", "value"):
            if name not in item:
                raise RequestError(f"{at}.{name} is missing", field=f"{at}.{name}")
        key = self.key(item["series"], f"{at}.series")
        t = _time(item["time"], f"{at}.time")
        value = item["value"]
        if type(value) not in NUMBER or not math.isfinite(value):
            got = shown(value) if type(value) in NUMBER else kind(value)
            raise RequestError(f"{at}.value must be a finite number, got {got}", field=f"{at}.value")
        inputs = self.check_inputs(item["inputs"], f"{at}.inputs") if "inputs" in item else None
        return key, t, float(value), None if inputs is None else orjson.dumps(inputs)

    def key(self, sid, field: str) -> str:
        """The series key of an id, as the bundle's target scales and the store name it."""
        ids = self.group_ids
        if type(sid) is dict:
            if set(sid) != set(ids):
                raise RequestError(f"{field} must have exactly the keys {ids}, got {shown_keys(sid)}", field=field)
            values = []
            for c in ids:
                if type(sid[c]) not in SCALAR:
                    raise RequestError(f"{field}.{c} must be a string or number, got {kind(sid[c])}",
                                       field=f"{field}.{c}")
                values.append(str(sid[c]))
            return series_key(tuple(values))
        if type(sid) not in SCALAR:
            raise RequestError(f"{field} must be a series id (a string or number, or an object of {ids}), got "
                               f"{kind(sid)}", field=field)
        text = str(sid)
        if len(ids) > 1 and len(text.split("|")) != len(ids):
            raise RequestError(f"{field} {shown(sid)} must name {ids} as an object or as '{'|'.join(ids)}'",
                               field=field)
        return text

    def check_inputs(self, inputs, field: str) -> dict:
        if type(inputs) is not dict:
            raise RequestError(f"{field} must be an object of the series' history columns, got {kind(inputs)}",
                               field=field)
        extra = inputs.keys() - self.inputs
        if extra:
            raise RequestError(f"{field}.{min(extra)} is not a time-varying input of the model; inputs take "
                               f"{sorted(self.inputs)}", field=f"{field}.{min(extra)}")
        for col, v in inputs.items():
            ok = type(v) in SCALAR if col in self.categoricals else (type(v) in NUMBER and math.isfinite(v))
            if not ok:
                want = "a string or number" if col in self.categoricals else "a finite number"
                raise RequestError(f"{field}.{col} must be {want}, got {shown(v) if type(v) in NUMBER else kind(v)}",
                                   field=f"{field}.{col}")
        return inputs


def _time(value, field: str) -> int:
    if type(value) is not str:
        raise RequestError(f"{field} must be an ISO 8601 timestamp string, got {kind(value)}", field=field)
    if not _TIMESTAMP.match(value):
        raise RequestError(f"{field} = {shown(value)} is not an ISO 8601 timestamp (2024-01-20T14:00:00)", field=field)
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as e:
        raise RequestError(f"{field} = {shown(value)} is not a timestamp ({e})", field=field) from None
    if t is pd.NaT:
        raise RequestError(f"{field} = {shown(value)} is not a timestamp", field=field)
    if t.tzinfo is not None:
        t = t.tz_localize(None)  # wall time, as training's schema.validate and forecast requests read it
    if not FIRST_TIME <= t <= LAST_TIME:
        raise RequestError(f"{field} = {shown(value)} is out of range", field=field)
    return int(t.as_unit("ns").value)
