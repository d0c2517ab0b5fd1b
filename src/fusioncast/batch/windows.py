"""The forecast window of every series of a chunk, in numpy arrays over all its series at once.

The same model inputs as training's pandas path (grid.regularize → add_calendar → Preprocessor.transform →
inference.assemble_window, kept as batch/score.py table_windows and compared in tests/test_batch.py), without a
pandas operation per series: each series' rows are placed on a dense (series, step) grid that starts
at its encoder's first step, covariates are carried forward into gaps by index (from the last row before
the grid when its first step is a gap, as on the whole history), calendar features come from the grid's
times, and the windows are gathered by index.
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import numpy as np
import pandas as pd

from fusioncast.batch.select import OBSERVED_BEFORE, ns, shift
from fusioncast.data.grid import series_name
from fusioncast.data.preprocess import Preprocessor, series_key
from fusioncast.data.schema import Schema, SchemaError
from fusioncast.serve.calendar import calendar_values

_MAX = pd.Timestamp.max.value


@dataclasses.dataclass
class Replay:
    """Past windows of a table's series, whose actuals it holds (for tracking an adaptive calibration)."""

    inputs: dict[str, np.ndarray]      # model inputs, batch = replayed windows
    series: np.ndarray                 # (R,) index of each window's series in Windows.keys
    decoder_start: np.ndarray          # (R,) first forecast step, in grid steps of its series
    target: np.ndarray                 # (R, H) actuals (raw units), 0 where unobserved
    mask: np.ndarray                   # (R, H) observed actuals


@dataclasses.dataclass
class Windows:
    """The forecast window of every series of a table."""

    keys: list[str]
    groups: pd.DataFrame               # the group-id values of each series (one row per series)
    inputs: dict[str, np.ndarray]      # model inputs, batch = series
    times: np.ndarray                  # (S, H) datetime64[ns] forecast times
    decoder_start: np.ndarray | None = None  # (S,) each forecast's first step, in grid steps of its series
    replay: Replay | None = None


def check_finite(raw: pd.DataFrame, schema: Schema) -> None:
    """Every real input of a validated table finite, as the server requires of a request (training fills
    gaps; a value sent as NaN or infinite is a mistake to name, not one to fill): only the target may be
    empty, and never infinite."""
    times = raw[schema.time_col]
    for col in schema.static_reals + schema.time_varying_known_reals + schema.time_varying_unknown_reals + [
            schema.target]:
        values = raw[col].to_numpy(np.float64)
        bad = np.isinf(values) if col == schema.target else ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            group = tuple(raw[c].iloc[row] for c in schema.group_ids)
            what = "the target may be empty, never infinite" if col == schema.target else (
                "a covariate must be a finite number in every row, as in a request to the server; only the target "
                "may be empty")
            raise SchemaError(f"series {series_name(schema, group)}: column '{col}' is {raw[col].iloc[row]} at "
                              f"{times.iloc[row]}: {what}")


def series_chunks(raw: pd.DataFrame, schema: Schema, size: int):
    """Slices of a validated table (sorted by series) holding `size` whole series each."""
    if not schema.group_ids:
        yield raw
        return
    sid = raw.groupby(schema.group_ids, sort=False, observed=True).ngroup().to_numpy()
    starts = np.r_[0, np.flatnonzero(np.diff(sid)) + 1]
    cuts = np.r_[starts[::size], len(raw)]
    for a, b in pairwise(cuts):
        yield raw.iloc[a:b]


class _Grid:
    """The rows of a chunk placed on each series' grid of steps 0 .. length - 1 (step 0: the encoder's first)."""

    def __init__(self, raw: pd.DataFrame, schema: Schema, replay: int):
        L, H = schema.max_encoder_length, schema.max_prediction_length
        n = len(raw)
        sid = (raw.groupby(schema.group_ids, sort=False, observed=True).ngroup().to_numpy() if schema.group_ids
               else np.zeros(n, np.int64))
        first_row = np.r_[0, np.flatnonzero(np.diff(sid)) + 1]
        S = len(first_row)
        self.labels = list(raw.iloc[first_row][schema.group_ids].itertuples(index=False, name=None))
        self.groups = pd.DataFrame(self.labels, columns=schema.group_ids)
        t = ns(raw[schema.time_col])
        y = raw[schema.target].to_numpy(np.float64)
        observed = ~np.isnan(y)
        last = np.full(S, np.iinfo(np.int64).min)
        np.maximum.at(last, sid[observed], t[observed])
        for s in np.flatnonzero(last == np.iinfo(np.int64).min)[:1]:
            raise SchemaError(f"series {series_name(schema, self.labels[s])}: no observed '{schema.target}' value "
                              "to forecast from")
        lo = shift(last, -(L - 1 + replay), schema.freq)
        first_observed = np.full(S, np.iinfo(np.int64).max)
        np.minimum.at(first_observed, sid[observed], t[observed])
        before = first_observed < lo
        if OBSERVED_BEFORE in raw:
            before |= raw[OBSERVED_BEFORE].to_numpy(bool)[first_row]
        g0 = np.maximum(lo, t[first_row])
        offset = pd.tseries.frequencies.to_offset(schema.freq)
        if isinstance(offset, pd.offsets.Tick):
            step = pd.Timedelta(offset).value
            rel = t - g0[sid]
            off = np.flatnonzero(rel % step != 0)
            pos = rel // step
            d = (last - g0) // step + 1
            T = int(d.max()) + H
            beyond = np.flatnonzero(g0 > _MAX - (d + H - 1) * step)
            times = g0[:, None] + np.minimum(np.arange(T)[None], (_MAX - g0[:, None]) // step) * step
        else:  # calendar steps (months, business days): each series' own date range, as regularize makes it
            pos, d, off, beyond, grids = np.empty(n, np.int64), np.empty(S, np.int64), [], [], []
            for s, (a, b) in enumerate(zip(first_row, np.r_[first_row[1:], n])):
                d[s] = len(pd.date_range(pd.Timestamp(g0[s]), pd.Timestamp(last[s]), freq=offset))
                try:
                    grid = pd.date_range(pd.Timestamp(g0[s]), periods=d[s] + H, freq=offset).as_unit("ns").asi8
                except (OverflowError, pd.errors.OutOfBoundsDatetime):
                    beyond.append(s)
                    continue
                ts = t[a:b]
                i = np.searchsorted(grid, ts).clip(max=len(grid) - 1)
                inside = (ts >= grid[0]) & (ts <= grid[-1])
                off += (a + np.flatnonzero(inside & (grid[i] != ts))).tolist()
                pos[a:b] = np.where(ts < grid[0], -1, np.where(inside, i, len(grid)))
                grids.append(grid)
            T = int(d.max()) + H
            times = np.full((S, T), _MAX)
            for s, grid in enumerate(grids if not beyond else []):
                times[s, :len(grid)] = grid
        for r in off[:1]:
            s = sid[r]
            raise SchemaError(f"series {series_name(schema, self.labels[s])}: timestamp {pd.Timestamp(int(t[r]))} in "
                              f"'{schema.time_col}' is not on the '{schema.freq}' grid of its last observed "
                              f"'{schema.target}' ({pd.Timestamp(int(last[s]))})")
        for s in beyond[:1]:
            raise SchemaError(f"series {series_name(schema, self.labels[s])}: its forecast would reach past "
                              f"{pd.Timestamp.max.floor('s')}, the last time the model can represent")
        length = d + H
        rows = np.arange(n)
        on_grid = (pos >= 0) & (pos < length[sid])
        index = np.full((S, T), -1)
        index[sid[on_grid], pos[on_grid]] = rows[on_grid]
        prior = np.full(S, -1)  # the latest row before the grid: its covariates fill a gap at step 0
        np.maximum.at(prior, sid[pos < 0], rows[pos < 0])
        self.raw, self.sid, self.first_row, self.index, self.prior = raw, sid, first_row, index, prior
        self.present, self.times, self.d, self.before = index >= 0, times, d, before
        self.S, self.T = S, T

    def source(self, col: str | None = None) -> np.ndarray:
        """(S, T) the row whose value of `col` each step takes: its own row, else the last before it with a
        value (regularize's forward fill), else the first after it (its backward fill)."""
        valid = np.ones(len(self.raw), bool) if col is None else self.raw[col].notna().to_numpy()
        ok = self.present & valid[self.index.clip(0)]
        src = np.maximum.accumulate(np.where(ok, self.index, -1), axis=1)
        later = np.where(ok, self.index, np.iinfo(np.int64).max).min(axis=1)  # first valid row on the grid
        prior_ok = (self.prior >= 0) & valid[self.prior.clip(0)]
        fallback = np.where(prior_ok, self.prior, np.where(later < np.iinfo(np.int64).max, later, self.first_row))
        return np.where(src < 0, fallback[:, None], src)


def chunk_windows(raw: pd.DataFrame, pp: Preprocessor, replay: int = 0) -> Windows:
    """One forecast window per series of a validated table of whole series (sorted by series and time, as
    validate leaves it), and with `replay` the windows of up to that many origins before it per series."""
    schema = dataclasses.replace(pp.schema, freq=pp.freq)  # the model's grid, never a re-inferred one
    L, H = schema.max_encoder_length, schema.max_prediction_length
    known = schema.time_varying_known_categoricals + schema.time_varying_known_reals
    check_finite(raw, schema)
    g = _Grid(raw, schema, replay)
    S, T = g.S, g.T
    keys = [series_key(label) for label in g.labels]
    nulls = {c for c in raw.columns if raw[c].hasnans} if len(raw) else set()
    sources: dict[str | None, np.ndarray] = {}

    def src(col: str) -> np.ndarray:
        k = col if col in nulls else None
        if k not in sources:
            sources[k] = g.source(k)
        return sources[k]

    # categoricals: codes per row, placed by source row; calendar features from the grid's times
    cat = np.zeros((S, T, len(pp.time_varying_categoricals)), np.int64)
    for j, col in enumerate(pp.time_varying_categoricals):
        if col in schema.calendar:
            values, inverse = np.unique(calendar_values(col, g.times.ravel()), return_inverse=True)
            cat[:, :, j] = pp.codes(col, [str(v) for v in values.tolist()])[inverse].reshape(S, T)
        else:
            cat[:, :, j] = pp.codes(col, raw[col].to_numpy())[src(col)]
    real = np.zeros((S, T, len(pp.time_varying_reals)), np.float32)
    y = raw[schema.target].to_numpy(np.float64)[g.index.clip(0)]
    observed = g.present & ~np.isnan(y)
    real[:, :, 0] = np.where(observed, y, 0.0)
    for j, col in enumerate(pp.time_varying_reals[1:], start=1):
        real[:, :, j] = pp._fill(col, raw[col].to_numpy(np.float64))[src(col)]
    static_cat = np.zeros((S, len(schema.static_categoricals)), np.int64)
    for j, col in enumerate(schema.static_categoricals):
        static_cat[:, j] = pp.codes(col, raw[col].to_numpy())[src(col)[:, 0]]
    static_real = np.zeros((S, len(schema.static_reals)), np.float32)
    for j, col in enumerate(schema.static_reals):
        static_real[:, j] = pp._fill(col, raw[col].to_numpy(np.float64))[src(col)[:, 0]]

    d = g.d
    horizon = d[:, None] + np.arange(H)
    rows = np.arange(S)[:, None]
    if known:
        have = g.present[rows, horizon].sum(1)
        for s in np.flatnonzero(have < H)[:1]:
            last = pd.Timestamp(int(g.times[s, d[s] - 1]))
            raise SchemaError(f"series {series_name(schema, g.labels[s])}: the {H} steps after its last observed "
                              f"'{schema.target}' ({last}) need rows with the known inputs {known}; the table has "
                              f"{int(have[s])}")
    nk_cat, nk_real = len(schema.known_categoricals), len(schema.time_varying_known_reals)

    def gather(series: np.ndarray, start: np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs of the windows whose first forecast step is `start` in `series` (as assemble_window)."""
        enc = start[:, None] - L + np.arange(L)
        pad = enc < 0  # a shorter history: its first step repeated, the target masked
        enc = enc.clip(0)
        s, dec = series[:, None], start[:, None] + np.arange(H)
        mask = observed[s, enc] & ~pad
        encoder_real = real[s, enc]
        encoder_real[:, :, 0] = np.where(mask, encoder_real[:, :, 0], 0.0)
        target_scale = np.array([pp.target_scale(keys[i], encoder_real[k, mask[k], 0].astype(np.float64))
                                 for k, i in enumerate(series.tolist())], np.float32).reshape(len(series), 2)
        return {"static_cat": static_cat[series], "static_real": static_real[series], "encoder_cat": cat[s, enc],
                "encoder_real": encoder_real, "decoder_cat": cat[s, dec, :nk_cat],
                "decoder_real": real[s, dec, 1:1 + nk_real], "encoder_mask": mask, "target_scale": target_scale}

    w = Windows(keys, g.groups, gather(np.arange(S), d), g.times[rows, horizon].astype("datetime64[ns]"), d.copy())
    if replay:
        first_seen = np.where(g.before, -1, np.argmax(observed, axis=1))  # replayed windows follow an observed target
        lo = np.maximum(first_seen + 1, d - replay)
        series = np.repeat(np.arange(S), np.maximum(d - lo, 0))
        start = np.concatenate([np.arange(a, b) for a, b in zip(lo, d)]) if S else np.zeros(0, np.int64)
        steps = start[:, None] + np.arange(H)
        w.replay = Replay(gather(series, start.astype(np.int64)), series, start.astype(np.int64),
                          real[series[:, None], steps, 0].astype(np.float32), observed[series[:, None], steps])
    return w
