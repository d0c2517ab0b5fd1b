"""Validation of forecast requests and their fast encoding into model inputs (numpy, no pandas per request).

A request (the HTTP API, documented in docs/reference/http-api.md):

    {"series": [{"id": ..., "static": {col: value},
                 "history": {time_col: [...], target: [...], observed and known columns: [...]},
                 "future": {time_col: [...] (optional), known columns: [max_prediction_length values]}}],
     "interpretation": false}

Every mistake raises RequestError naming the series and the field. The encoding reuses the fitted
Preprocessor's vocabularies and target scales, and ends in data.inference.assemble_window,
like `fusioncast-predict`'s pandas path; tests check that both give identical inputs.

Rules: the last `max_encoder_length` history steps are used (fewer are left-padded as training pads
short windows, with a warning); history timestamps must lie on the model's grid without gaps (send
null targets for missing observations: the target is the only field that may be null); categories
outside the training vocabulary go to the unknown bucket with a warning; a series unseen in
training is scaled by its own history, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter

import numpy as np
import orjson
import pandas as pd

from fusioncast.data.inference import assemble_window, stack_windows
from fusioncast.data.preprocess import UNKNOWN, Preprocessor, series_key
from fusioncast.data.schema import Schema
from fusioncast.serve import columns
from fusioncast.serve.calendar import calendar_values
from fusioncast.serve.fields import (
    FIRST_TIME,
    LAST_TIME,
    NUMBER,
    NUMBER_OR_NULL,
    REQUEST_FIELDS,
    SCALAR,
    SERIES_FIELDS,
    HorizonOutOfRange,
    RequestError,
    TimeOutOfRange,
    check_time_range,
    kind,
    numpy_times,
    out_of_range_message,
    shown,
    shown_keys,
    shown_text,
)

__all__ = ["ParsedRequest", "RequestError", "RequestParser", "series_payload"]


@dataclass
class ParsedRequest:
    ids: list                          # the ids as the client sent them, echoed in the answer
    inputs: dict[str, np.ndarray]      # the model's named inputs, batch = len(ids)
    times: list[list[str]]             # each series' forecast timestamps (ISO 8601)
    warnings: list[list[str]]          # per series
    interpretation: bool


class RequestParser:
    """Validates and encodes requests for one fitted Preprocessor. Built once per server."""

    def __init__(self, pp: Preprocessor, max_series: int = 1000):
        s = pp.schema
        self.pp, self.schema, self.max_series = pp, s, max_series
        self.L, self.H = s.max_encoder_length, s.max_prediction_length
        self.known_cats = s.time_varying_known_categoricals  # the user's; calendar ones are derived
        self.unknown_cats = s.time_varying_unknown_categoricals
        self.history_cols = frozenset([s.time_col, s.target, *self.known_cats, *s.time_varying_known_reals,
                                       *self.unknown_cats, *s.time_varying_unknown_reals])
        self.future_cols = frozenset([*self.known_cats, *s.time_varying_known_reals])
        self.timed_future_cols = self.future_cols | {s.time_col}
        self.static_cols = frozenset(s.static_categoricals + s.static_reals)
        self.vocab = {c: {v: i + 1 for i, v in enumerate(vs)} for c, vs in pp.vocab.items()}
        self.int_vocab = {c: {int(v): code for v, code in m.items() if v.lstrip("-").isdigit() and str(int(v)) == v}
                          for c, m in self.vocab.items()}
        self.chars, self.int_chars = columns.char_tables(self.vocab), columns.char_tables(self.int_vocab)
        self.offset = pd.tseries.frequencies.to_offset(pp.freq)
        try:  # fixed steps (h, 30min): arithmetic; calendar steps (MS, W, B): pandas, cached per start
            self.step = pd.Timedelta(self.offset).value
        except (TypeError, ValueError):
            self.step = None
        self.grid = lru_cache(maxsize=4096)(self._make_grid)
        for name in s.calendar:  # build any lazy table (us_holiday's) now, not in the first request
            calendar_values(name, np.zeros(1, np.int64))

    # ---- the time grid of a window ----------------------------------------------------------------
    def _make_grid(self, t0: int, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(n + H steps from t0 in ns, their calendar codes (n + H, n_calendar), the H forecast times as text).
        Raises HorizonOutOfRange when the last step lies past what datetime64[ns] holds (it would wrap)."""
        if self.step is not None:
            if t0 + self.step * (n + self.H - 1) > LAST_TIME.value:  # Python ints: no overflow here
                raise HorizonOutOfRange
            grid = t0 + self.step * np.arange(n + self.H, dtype=np.int64)
        else:
            try:
                grid = pd.date_range(pd.Timestamp(t0, unit="ns"), periods=n + self.H, freq=self.offset)
                grid = grid.as_unit("ns").asi8
            except (pd.errors.OutOfBoundsDatetime, OverflowError):
                raise HorizonOutOfRange from None
            if grid[-1] > LAST_TIME.value:
                raise HorizonOutOfRange
        cal = np.zeros((n + self.H, len(self.schema.calendar)), np.int64)
        for j, name in enumerate(self.schema.calendar):
            vocab = self.vocab[name]
            cal[:, j] = [vocab.get(str(v), UNKNOWN) for v in calendar_values(name, grid).tolist()]
        unit = "s" if self.step is None or self.step % 10**9 == 0 else "ms"
        times = np.datetime_as_string(grid[n:].astype("datetime64[ns]"), unit=unit).tolist()
        return grid, cal, times

    # ---- whole requests ---------------------------------------------------------------------------
    def parse(self, body: bytes) -> ParsedRequest:
        return self.parse_obj(self.load(body))

    @staticmethod
    def load(body: bytes):
        """The body's JSON value (400 when it is not JSON)."""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise RequestError(f"the body is not valid JSON ({e}); NaN and Infinity are not JSON: send null for a "
                               "missing target value", status=400) from None

    def parse_obj(self, obj) -> ParsedRequest:
        if type(obj) is not dict:
            raise RequestError(f"the body must be a JSON object with a 'series' array, got {kind(obj)}", status=400)
        extra = obj.keys() - REQUEST_FIELDS
        if extra:
            raise RequestError(f"unknown top-level field(s) {shown_keys(extra)}; expected 'series' (and "
                               "'interpretation')", field=sorted(extra)[0])
        series = obj.get("series")
        if type(series) is not list or not series:
            raise RequestError("'series' must be a non-empty array of series objects", field="series")
        if len(series) > self.max_series:
            raise RequestError(f"{len(series)} series in one request; this server takes at most {self.max_series}: "
                               "split the request", status=413, field="series")
        interpretation = obj.get("interpretation", False)
        if type(interpretation) is not bool:
            raise RequestError("'interpretation' must be true or false", field="interpretation")
        encoded = columns.encode(self, series)  # every column over all series at once: the common case
        if encoded is None:  # a check over a column failed: series by series, the first mistake is named
            encoded = self.each(range(len(series)), series)
        return ParsedRequest(*encoded, interpretation)

    def each(self, indices, series: list) -> tuple[list, dict[str, np.ndarray], list, list]:
        """(ids, model inputs, forecast times, warnings) of the series at `indices`, one by one."""
        ids, windows, times, warns = [], [], [], []
        for i in indices:
            sid, window, t, w = self.series(i, series[i])
            ids.append(sid)
            windows.append(window)
            times.append(t)
            warns.append(w)
        return ids, stack_windows(self.pp, windows), times, warns

    # ---- one series -------------------------------------------------------------------------------
    def series(self, i: int, s) -> tuple:
        """(id, the eight model inputs, forecast times, warnings) of the i-th series of a request."""
        if type(s) is not dict:
            raise RequestError(f"series[{i}] must be an object, got {kind(s)}", series=i)
        extra = s.keys() - SERIES_FIELDS
        if extra:
            raise RequestError(f"series[{i}]: unknown field(s) {shown_keys(extra)}; a series has id, static, history, "
                               "future", series=i, field=sorted(extra)[0])
        sid = s.get("id")
        key, group = self.key(i, sid)
        name = sid if sid is not None else i
        warns: list[str] = []
        sc = self.schema

        # static inputs (group-id columns among them come from the id)
        static = s.get("static") or {}
        if type(static) is not dict:
            raise RequestError(f"series {shown(name)}: static must be an object", series=name, field="static")
        extra = static.keys() - self.static_cols
        if extra:
            raise RequestError(f"series {shown(name)}: unknown static column(s) {shown_keys(extra)}; the model's static "
                               f"columns are {sorted(self.static_cols)}", series=name, field=f"static.{sorted(extra)[0]}")
        static_cat = np.empty(len(sc.static_categoricals), np.int64)
        for j, col in enumerate(sc.static_categoricals):
            if col in static:
                value = static[col]
                if col in group and self._text(value, name, f"static.{col}") != group[col]:
                    raise RequestError(f"series {shown(name)}: static.{col} = {shown(value)} contradicts the id "
                                       f"({shown(group[col])})",
                                       series=name, field=f"static.{col}")
            elif col in group:
                value = group[col]
            else:
                raise RequestError(f"series {shown(name)}: static.{col} is missing", series=name, field=f"static.{col}")
            static_cat[j] = self._codes(col, [value], name, f"static.{col}", warns)[0]
        for col in sc.static_reals:
            if col not in static:
                raise RequestError(f"series {shown(name)}: static.{col} is missing", series=name, field=f"static.{col}")
        static_real = self._reals([(f"static.{col}", [static[col]]) for col in sc.static_reals], 1, name)[0]

        # history: the encoder
        history = s.get("history")
        if type(history) is not dict:
            raise RequestError(f"series {shown(name)}: history must be an object of columns", series=name, field="history")
        self._columns(history, self.history_cols, name, "history")
        times = history[sc.time_col]
        if type(times) is not list or not times:
            raise RequestError(f"series {shown(name)}: history.{sc.time_col} must be a non-empty array of timestamps",
                               series=name, field=f"history.{sc.time_col}")
        n_all = len(times)
        for col, values in history.items():
            if type(values) is not list or len(values) != n_all:
                got = f"{len(values)} values" if type(values) is list else kind(values)
                raise RequestError(f"series {shown(name)}: history.{col} has {got}, history.{sc.time_col} has {n_all}",
                                   series=name, field=f"history.{col}")
        first = max(0, n_all - self.L)  # only the last L steps are used
        n = n_all - first
        t = self._times(times[first:], name, f"history.{sc.time_col}", first)
        try:
            grid, cal, out_times = self.grid(int(t[0]), n)
        except HorizonOutOfRange:
            raise RequestError(
                f"series {shown(name)}: the {self.H} steps after history.{sc.time_col}'s last value "
                f"({shown(times[-1])}) reach past {LAST_TIME.isoformat()}, the last time the model can represent",
                series=name, field=f"history.{sc.time_col}") from None
        if not np.array_equal(t, grid[:n]):
            j = int(np.argmax(t != grid[:n]))
            raise RequestError(
                f"series {shown(name)}: history.{sc.time_col}[{first + j}] = {shown(times[first + j])} is not on the model's "
                f"'{self.pp.freq}' grid: expected {pd.Timestamp(int(grid[j]), unit='ns')} (no gaps: send null targets "
                "for missing observations)", series=name, field=f"history.{sc.time_col}")
        if n < self.L:
            warns.append(f"series {shown(name)}: history has {n} steps, the model reads {self.L}: padded")
        y = history[sc.target][first:]
        target, observed = self._target(y, name, f"history.{sc.target}", first)
        if not observed.any():
            raise RequestError(f"series {shown(name)}: history.{sc.target} has no observed (non-null) value in its last "
                               f"{self.L} steps", series=name, field=f"history.{sc.target}")
        if key not in self.pp.target_scales:
            warns.append(self.unseen_warning(name))
        unknown = [self._codes(c, history[c][first:], name, f"history.{c}", warns, first) for c in self.unknown_cats]
        covariates = self._reals([(f"history.{c}", history[c][first:]) for c in self.pp.time_varying_reals[1:]], n,
                                 name, first)
        enc_real = np.concatenate([target[:, None], covariates], axis=1)

        # future: the decoder's known inputs
        future = s.get("future")
        if future is None:
            future = {}
        if type(future) is not dict:
            raise RequestError(f"series {shown(name)}: future must be an object of columns", series=name, field="future")
        self._columns(future, self.future_cols, name, "future", optional={sc.time_col})
        for col, values in future.items():
            if type(values) is not list or len(values) != self.H:
                got = f"{len(values)} values" if type(values) is list else kind(values)
                raise RequestError(f"series {shown(name)}: future.{col} has {got}; the model forecasts {self.H} steps",
                                   series=name, field=f"future.{col}")
        if sc.time_col in future:
            ft = self._times(future[sc.time_col], name, f"future.{sc.time_col}")
            if not np.array_equal(ft, grid[n:]):
                j = int(np.argmax(ft != grid[n:]))
                raise RequestError(
                    f"series {shown(name)}: future.{sc.time_col}[{j}] = {shown(future[sc.time_col][j])}, expected "
                    f"{out_times[j]} (the steps after the history's last, freq '{self.pp.freq}')",
                    series=name, field=f"future.{sc.time_col}")
        # known categoricals: history and future encoded together (half the calls on the hot path)
        known = _columns_of([self._codes(c, history[c][first:] + future[c], name, f"history.{c}", warns, first,
                                         (n, f"future.{c}")) for c in self.known_cats], n + self.H, np.int64)
        enc_cat = np.concatenate([known[:n], cal[:n], _columns_of(unknown, n, np.int64)], axis=1)
        dec_cat = np.concatenate([known[n:], cal[n:]], axis=1)
        dec_real = self._reals([(f"future.{c}", future[c]) for c in sc.time_varying_known_reals], self.H, name)

        window = assemble_window(self.pp, key, static_cat, static_real, enc_cat, enc_real, observed, dec_cat,
                                 dec_real)
        return sid, window, out_times, warns

    def unseen_warning(self, name) -> str:
        return f"series {shown(name)} was not seen in training" + (
            "" if getattr(self.schema, "target_normalizer", "series") == "global" else ": scaled by its own history")

    # ---- fields -----------------------------------------------------------------------------------
    def key(self, i: int, sid) -> tuple[str, dict[str, str]]:
        """The series key (as in the bundle's target scales) and its group-id values."""
        ids = self.schema.group_ids
        if not ids:
            return series_key(()), {}
        if type(sid) is dict:
            if set(sid) != set(ids):
                raise RequestError(f"series[{i}]: id must have exactly the keys {ids}, got {shown_keys(sid)}", series=i,
                                   field="id")
            values = tuple(self._text(sid[c], i, f"id.{c}") for c in ids)
        elif type(sid) in SCALAR:
            text = self._text(sid, i, "id")
            values = tuple(text.split("|")) if len(ids) > 1 else (text,)
            if len(values) != len(ids):
                joined = "|".join(ids)
                raise RequestError(f"series[{i}]: id {shown(sid)} must name {ids} as an object or as '{joined}'",
                                   series=i, field="id")
        else:
            raise RequestError(f"series[{i}]: id is required ({ids}: an object or '" + "|".join(ids) + "')",
                               series=i, field="id")
        return series_key(values), dict(zip(ids, values))

    @staticmethod
    def _text(v, name, field: str, index: int | None = None) -> str:
        t = type(v)
        if t is str:
            return v
        if t in NUMBER or t is bool:
            return str(v)  # as pandas' astype(str) writes it in training
        at = field if index is None else f"{field}[{index}]"
        raise RequestError(f"series {shown(name)}: {at} must be a string or number, got {kind(v)}", series=name,
                           field=field)

    def _columns(self, given: dict, expected: frozenset, name, where: str, optional=frozenset()) -> None:
        missing = sorted(expected - given.keys())
        if missing:
            more = f" (also missing: {missing[1:]})" if len(missing) > 1 else ""
            raise RequestError(f"series {shown(name)}: {where}.{missing[0]} is missing{more}; {where} takes "
                               f"{sorted(expected | optional)}", series=name, field=f"{where}.{missing[0]}")
        extra = sorted(given.keys() - expected - optional)
        if extra:
            more = f" (nor {shown_keys(extra[1:])})" if len(extra) > 1 else ""
            raise RequestError(f"series {shown(name)}: {where}.{shown_text(extra[0])} is not an input of the model"
                               f"{more}; {where} takes {sorted(expected | optional)}", series=name,
                               field=f"{where}.{extra[0]}")

    def _times(self, values: list, name, field: str, first: int = 0) -> np.ndarray:
        for j, v in enumerate(values):
            if type(v) is not str:
                raise RequestError(f"series {shown(name)}: {field}[{first + j}] must be an ISO 8601 timestamp string, "
                                   f"got {kind(v)}", series=name, field=field)
        try:
            return numpy_times(values)
        except TimeOutOfRange as e:
            raise self._out_of_range(values, e.index, name, field, first) from None
        except ValueError:
            pass
        try:  # what training's schema.validate accepts: pandas parsing, time zones dropped to wall time
            t = pd.to_datetime(pd.Series(values))
            if getattr(t.dt, "tz", None) is not None:
                t = t.dt.tz_localize(None)
            if t.isna().any():
                j = int(np.argmax(t.isna().to_numpy()))
                raise ValueError(f"{field}[{first + j}] = {shown(values[j])}")
            us = t.dt.as_unit("us").to_numpy().view(np.int64)
        except (ValueError, TypeError, OverflowError) as e:
            raise RequestError(f"series {shown(name)}: {field} has a value that is not a timestamp ({e})", series=name,
                               field=field) from None
        try:
            check_time_range(us, FIRST_TIME.value // 1000, LAST_TIME.value // 1000)
        except TimeOutOfRange as e:
            raise self._out_of_range(values, e.index, name, field, first) from None
        return us * 1000

    @staticmethod
    def _out_of_range(values: list, j: int, name, field: str, first: int) -> RequestError:
        return RequestError(f"series {shown(name)}: {field}[{first + j}] {out_of_range_message(values[j])}",
                            series=name, field=field)

    @staticmethod
    def _bad_number(values: list, allowed: frozenset, name, field: str, first: int) -> RequestError:
        j = next(j for j, v in enumerate(values) if type(v) not in allowed)
        hint = " (only the target may be null)" if values[j] is None else ""
        return RequestError(f"series {shown(name)}: {field}[{first + j}] must be a number, got {kind(values[j])}{hint}",
                            series=name, field=field)

    def _reals(self, columns: list[tuple[str, list]], n: int, name, first: int = 0) -> np.ndarray:
        """(n, len(columns)) float32 of (field, values) columns that must hold finite numbers."""
        for field, values in columns:
            if not set(map(type, values)) <= NUMBER:
                raise self._bad_number(values, NUMBER, name, field, first)
        with np.errstate(over="ignore"):
            x = np.array([values for _, values in columns], np.float32).reshape(len(columns), n).T
        finite = np.isfinite(x)
        if not finite.all():
            j, c = np.argwhere(~finite)[0]
            field, values = columns[c]
            raise RequestError(f"series {shown(name)}: {field}[{first + j}] = {shown(values[j])} is not a finite float32",
                               series=name, field=field)
        return x

    def _target(self, values: list, name, field: str, first: int) -> tuple[np.ndarray, np.ndarray]:
        types = set(map(type, values))
        if not types <= NUMBER_OR_NULL:
            raise self._bad_number(values, NUMBER_OR_NULL, name, field, first)
        if type(None) in types:
            missing = np.array([v is None for v in values], bool)
            values = [0.0 if v is None else v for v in values]
        else:
            missing = np.zeros(len(values), bool)
        with np.errstate(over="ignore"):
            x = np.array(values, np.float32)
        bad = ~missing & ~np.isfinite(x)
        if bad.any():
            j = int(np.argmax(bad))
            raise RequestError(f"series {shown(name)}: {field}[{first + j}] = {shown(values[j])} is not a finite float32",
                               series=name, field=field)
        return x, ~missing

    def _codes(self, col: str, values: list, name, field: str, warns: list[str], first: int = 0,
               then: tuple[int, str] | None = None) -> list[int]:
        """Codes of a categorical column's values (compared as text, as in training); 0 for unseen ones.

        `then` = (n, field2): values from position n on are `field2`'s (a future joined to its history)."""
        types = set(map(type, values))
        if types == {str}:
            vocab = self.vocab[col]
        elif types == {int}:  # integers are common (flags): a table keyed by int, same text semantics
            vocab = self.int_vocab[col]
        else:
            values = [self._text(v, name, *self._where(j, field, first, then)) for j, v in enumerate(values)]
            vocab = self.vocab[col]
        try:  # all seen in training, the common case: one C-level pass (half the time of a Python loop)
            return list(itemgetter(*values)(vocab)) if len(values) > 1 else [vocab[v] for v in values]
        except KeyError:
            codes = [vocab.get(v, UNKNOWN) for v in values]
        j = codes.index(UNKNOWN)
        where, _ = self._where(j, field, first, then)
        warns.append(f"series {shown(name)}: {where} has {shown(values[j])}, not seen in training (unknown category)")
        return codes

    @staticmethod
    def _where(j: int, field: str, first: int, then: tuple[int, str] | None) -> tuple[str, int]:
        """(field, index in it) of position j of a column, possibly a history joined with its future."""
        if then is not None and j >= then[0]:
            return then[1], j - then[0]
        return field, first + j


def _columns_of(lists: list[list], n: int, dtype) -> np.ndarray:
    """(n, len(lists)) array with one column per list (also for no lists)."""
    return np.array(lists, dtype).reshape(len(lists), n).T


def series_payload(rows: pd.DataFrame, schema: Schema, horizon: int) -> dict:
    """One series of a request from table rows: history rows, then `horizon` future rows (their target unused)."""
    history, future = rows.iloc[:-horizon], rows.iloc[-horizon:]
    text = lambda col, df: (pd.to_datetime(df[col]).dt.strftime("%Y-%m-%dT%H:%M:%S").tolist())  # noqa: E731
    out: dict = {}
    if schema.group_ids:
        values = [rows[c].iloc[0] for c in schema.group_ids]
        values = [v.item() if hasattr(v, "item") else v for v in values]
        out["id"] = values[0] if len(values) == 1 else dict(zip(schema.group_ids, values))
    static = {c: _native(rows[c].iloc[0]) for c in schema.static_categoricals + schema.static_reals
              if c not in schema.group_ids}
    if static:
        out["static"] = static
    hist = {schema.time_col: text(schema.time_col, history)}
    hist[schema.target] = [None if v != v else v for v in history[schema.target].astype(float).tolist()]
    for c in (schema.time_varying_known_categoricals + schema.time_varying_known_reals
              + schema.time_varying_unknown_categoricals + schema.time_varying_unknown_reals):
        hist[c] = [_native(v) for v in history[c].tolist()]
    out["history"] = hist
    fut = {schema.time_col: text(schema.time_col, future)}
    for c in schema.time_varying_known_categoricals + schema.time_varying_known_reals:
        fut[c] = [_native(v) for v in future[c].tolist()]
    out["future"] = fut
    return out


def _native(v):
    """A JSON-ready Python value: numpy scalars unwrapped, NaN as null."""
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and v != v else v
