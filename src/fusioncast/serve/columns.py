"""The fast path of RequestParser: the series of a request encoded column by column, all at once.

Per series only cheap checks of shape run in Python; each column's values over all series are then
checked and converted by one call each (np.array, np.isfinite, one vocabulary pass), instead of
~60 small calls per series. A series outside the common case (a history shorter than the encoder, a
category unseen in training, anything odd in its shape) goes to the per-series path,
RequestParser.series, which also writes its warnings. When a check over a column fails, `encode`
gives up: the per-series path then finds and names the first mistake, as it always has, so answers
and error messages do not depend on which path ran.

`p` below is the RequestParser (serve/requests.py) of the server: its fitted tables and its per-series
path; this module does not import it (the parser imports this one).
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from fusioncast.data.preprocess import UNKNOWN
from fusioncast.serve.fields import (
    NUMBER,
    NUMBER_OR_NULL,
    SERIES_FIELDS,
    HorizonOutOfRange,
    RequestError,
    in_range,
    numpy_times_fast,
)

_UNSEEN = chr(UNKNOWN)


class _Row(NamedTuple):
    """A series in the common case, its fields checked for shape."""
    i: int                  # its place in the request
    id: object
    key: str                # as in the bundle's target scales
    history: dict
    future: dict
    static_codes: list[int]
    static_reals: list


def encode(p, series: list) -> tuple | None:
    """(ids, model inputs, forecast times, warnings) of a request's series, or None: use the per-series path."""
    rows, slow = [], []
    for i, s in enumerate(series):
        row = _row(p, i, s)
        if row is None:
            slow.append(i)
        else:
            rows.append(row)
    fast = _encode_rows(p, rows) if rows else ({}, [], np.zeros(0, bool))
    if fast is None:
        return None
    inputs, times, unknown = fast
    if unknown.any():  # their warnings name the first unseen category of each column: the per-series path
        slow = sorted(slow + [r.i for r, u in zip(rows, unknown) if u])
        rows = [r for r, u in zip(rows, unknown) if not u]
        times = [t for t, u in zip(times, unknown) if not u]
        inputs = {name: a[~unknown] for name, a in inputs.items()}
    ids = [r.id for r in rows]
    warns = [[p.unseen_warning(r.id if r.id is not None else r.i)] if r.key not in p.pp.target_scales else []
             for r in rows]
    if not slow:
        return ids, inputs, times, warns
    # every fast series passed every check, so the first mistake (if any) is in the first slow series that has one
    s_ids, s_inputs, s_times, s_warns = p.each(slow, series)
    if not rows:
        return s_ids, s_inputs, s_times, s_warns
    order = np.argsort([r.i for r in rows] + slow)
    inputs = {name: np.concatenate([inputs[name], s_inputs[name]])[order] for name in inputs}
    return _in_order(ids + s_ids, order), inputs, _in_order(times + s_times, order), _in_order(warns + s_warns, order)


def _in_order(items: list, order: np.ndarray) -> list:
    return [items[j] for j in order]


def _row(p, i: int, s) -> _Row | None:
    """The i-th series of a request if it is in the common case, else None (the per-series path takes it)."""
    if type(s) is not dict or not s.keys() <= SERIES_FIELDS:
        return None
    sid = s.get("id")
    try:
        key, group = p.key(i, sid)
    except RequestError:
        return None
    static, history, future = s.get("static") or {}, s.get("history"), s.get("future")
    future = {} if future is None else future
    if type(static) is not dict or type(history) is not dict or type(future) is not dict:
        return None
    if (not static.keys() <= p.static_cols or history.keys() != p.history_cols
            or future.keys() not in (p.future_cols, p.timed_future_cols)):
        return None
    if not set(map(type, history.values())) <= {list} or not set(map(type, future.values())) <= {list}:
        return None
    n_all = len(history[p.schema.time_col])
    if n_all < p.L or set(map(len, history.values())) != {n_all} or not set(map(len, future.values())) <= {p.H}:
        return None
    codes = []
    for col in p.schema.static_categoricals:
        value = static[col] if col in static else group.get(col)
        code = p.vocab[col].get(value) if type(value) is str and value == group.get(col, value) else None
        if code is None:
            return None
        codes.append(code)
    if not all(col in static for col in p.schema.static_reals):
        return None
    return _Row(i, sid, key, history, future, codes, [static[c] for c in p.schema.static_reals])


def _timestamps(values: list) -> np.ndarray | None:
    """ns since the epoch of ISO 8601 strings numpy parses (time zones and the like: None)."""
    if not set(map(type, values)) <= {str}:
        return None
    try:
        return numpy_times_fast(values)
    except ValueError:
        return None


def _encode_rows(p, rows: list[_Row]) -> tuple[dict, list, np.ndarray] | None:
    """(the model inputs of `rows`, their forecast times, which rows hold a category unseen in training),
    or None if a check fails."""
    sc, L, H, k = p.schema, p.L, p.H, len(rows)
    hist, fut = [r.history for r in rows], [r.future for r in rows]

    # timestamps: on the model's grid, the future's (where sent) right after the history
    t = _timestamps(_gather(hist, [sc.time_col], L))
    if t is None:
        return None
    t = t.reshape(k, L)
    if not in_range([h[sc.time_col][-L] for h in hist]):  # a grid from a wrapped first time would look sound
        return None
    try:
        grids = [p.grid(t0, L) for t0 in t[:, 0].tolist()]
    except HorizonOutOfRange:
        return None
    if not np.array_equal(t, [g[0][:L] for g in grids]):
        return None
    timed = [j for j, f in enumerate(fut) if sc.time_col in f]
    if timed:
        ft = _timestamps(_gather([fut[j] for j in timed], [sc.time_col]))
        if ft is None or not np.array_equal(ft.reshape(len(timed), H), [grids[j][0][L:] for j in timed]):
            return None

    # target: numbers or null, some observed in each series
    y = _gather(hist, [sc.target], L)
    types = set(map(type, y))
    if not types <= NUMBER_OR_NULL:
        return None
    if type(None) in types:
        observed = np.array([v is not None for v in y], bool)
        y = [0.0 if v is None else v for v in y]  # as the per-series path and assemble_window zero them
    else:
        observed = np.ones(k * L, bool)
    # the other reals in one array: the static ones, the covariates (history), the known ones (future)
    covariates, known_reals = p.pp.time_varying_reals[1:], sc.time_varying_known_reals
    n_sr, n_cov, n_kr = len(sc.static_reals), len(covariates), len(known_reals)
    reals = list(chain.from_iterable(r.static_reals for r in rows))
    reals += _gather(hist, covariates, L)
    reals += _gather(fut, known_reals)
    if not set(map(type, reals)) <= NUMBER:
        return None
    try:
        with np.errstate(over="ignore"):
            target, x = np.array(y, np.float32), np.array(reals, np.float32)
    except OverflowError:  # an integer beyond float
        return None
    observed = observed.reshape(k, L)
    if not (np.isfinite(target) | ~observed.ravel()).all() or not np.isfinite(x).all() or not observed.any(1).all():
        return None
    target = target.reshape(k, L)
    static_real = x[:k * n_sr].reshape(k, n_sr)
    covariates = x[k * n_sr:k * (n_sr + n_cov * L)].reshape(n_cov, k, L).transpose(1, 2, 0)
    decoder_real = x[k * (n_sr + n_cov * L):].reshape(n_kr, k, H).transpose(1, 2, 0)

    # categoricals: one vocabulary pass per column over all series, one character per code
    known = [_chars(p, c, _gather_joined(hist, fut, c, L)) for c in p.known_cats]
    observed_cats = [_chars(p, c, _gather(hist, [c], L)) for c in p.unknown_cats]
    if None in known or None in observed_cats:
        return None
    known = _codes("".join(known)).reshape(len(known), k, L + H).transpose(1, 2, 0)
    observed_cats = _codes("".join(observed_cats)).reshape(len(observed_cats), k, L).transpose(1, 2, 0)
    unknown = (known == UNKNOWN).any((1, 2)) | (observed_cats == UNKNOWN).any((1, 2))
    cal = np.stack([g[1] for g in grids])
    return {
        "static_cat": np.array([r.static_codes for r in rows], np.int64).reshape(k, len(sc.static_categoricals)),
        "static_real": static_real,
        "encoder_cat": _side_by_side([known[:, :L], cal[:, :L], observed_cats]),
        "encoder_real": _side_by_side([target[:, :, None], covariates]),
        "decoder_cat": _side_by_side([known[:, L:], cal[:, L:]]),
        "decoder_real": np.ascontiguousarray(decoder_real),
        "encoder_mask": observed,
        "target_scale": np.array([p.pp.target_scale(r.key, target[j][observed[j]].astype(np.float64))
                                  for j, r in enumerate(rows)], np.float32),
    }, [g[2] for g in grids], unknown


def _side_by_side(parts: list[np.ndarray]) -> np.ndarray:
    """The parts joined on their last axis, in C order (np.concatenate alone would follow the transposed parts')."""
    shape = (*parts[0].shape[:-1], sum(part.shape[-1] for part in parts))
    return np.concatenate(parts, axis=-1, out=np.empty(shape, parts[0].dtype))


def _gather(parts: list[dict], cols: list[str], last: int | None = None) -> list:
    """The values of `cols` over all series, column after column (of each series the `last` ones)."""
    out: list = []
    for c in cols:
        for part in parts:
            out += part[c] if last is None else part[c][-last:]
    return out


def _gather_joined(hist: list[dict], fut: list[dict], col: str, last: int) -> list:
    """A known column over all series, each series' last `last` history values and then its future ones."""
    out: list = []
    for h, f in zip(hist, fut):
        out += h[col][-last:]
        out += f[col]
    return out


def char_tables(vocab: dict[str, dict]) -> dict[str, dict]:
    """The vocabularies with each code as the character chr(code): a column's codes then join into
    one string, which numpy reads as one buffer (~5x faster than converting a tuple of ints). A column
    with more categories than there are characters (1.1 million) is left out: the per-series path takes it."""
    return {c: {v: chr(code) for v, code in m.items()} for c, m in vocab.items() if len(m) < 0x110000}


def _chars(p, col: str, values: list) -> str | None:
    """A column's codes (as RequestParser._codes: compared as text, chr(UNKNOWN) for unseen values) as
    characters; None for values neither all text nor all integers."""
    if col not in p.chars:
        return None
    try:  # all text and seen in training, the common case: one C-level pass (no other type matches a text key)
        return "".join(itemgetter(*values)(p.chars[col]))
    except (KeyError, TypeError):
        pass
    types = set(map(type, values))
    table = p.chars[col] if types == {str} else p.int_chars[col] if types == {int} else None
    if table is None:
        return None
    try:  # integers are common (flags): a table keyed by int, same text semantics
        return "".join(itemgetter(*values)(table))
    except KeyError:
        return "".join([table.get(v, _UNSEEN) for v in values])


def _codes(chars: str) -> np.ndarray:
    """int64 codes of characters made by `char_tables`."""
    return np.frombuffer(chars.encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.int64)
