"""The rows a forecast uses, read in record batches: memory is set by a batch and by what is kept.

Per series a forecast uses the last `max_encoder_length` grid steps up to its last observed target (and
`replay` more for replayed origins), the `max_prediction_length` future rows after it, and, when the
first of those steps is a gap, the last row before it (training's grid carries its covariates forward
into the gap). One pass finds them (select). A parquet file is read column-pruned in row batches, kept in
Arrow until rows are taken; a CSV in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fusioncast.data.grid import series_name
from fusioncast.data.schema import Schema, SchemaError, parse_times, used_columns

BATCH_ROWS = 1 << 20
# a column of the selected rows: their series has an observed target before the first selected step
# (replayed origins then start at the first of them, as they do on the whole history)
OBSERVED_BEFORE = "_observed_before"
_MIN, _MAX = pd.Timestamp.min.value, pd.Timestamp.max.value
_NONE = np.iinfo(np.int64).min  # no observed target yet


def _categorical_columns(schema: Schema) -> list[str]:
    return list(dict.fromkeys(schema.group_ids + schema.static_categoricals + schema.time_varying_known_categoricals
                              + schema.time_varying_unknown_categoricals))


class Batch:
    """Rows of the table (numbered from `offset`): their series, times and observed targets as numpy, and
    any rows of them as a DataFrame. Parquet batches stay in Arrow until rows are taken; DataFrames and
    CSV chunks go through validate's own parsing."""

    def __init__(self, data, schema: Schema, offset: int = 0):
        self.data, self.schema, self.offset = data, schema, offset
        self.arrow = not isinstance(data, pd.DataFrame)

    def __len__(self) -> int:
        return self.data.num_rows if self.arrow else len(self.data)

    def _frame(self, cols: list[str]) -> pd.DataFrame:
        if not self.arrow:
            return self.data
        df = pd.DataFrame({c: self.data.column(c).to_pandas() for c in cols})
        df.index = pd.RangeIndex(self.offset, self.offset + len(df))
        return df

    def times(self) -> np.ndarray:
        """int64 ns, naive; a time that is empty, unparseable or beyond datetime64[ns]: validate's error."""
        s = self.schema
        if self.arrow:
            import pyarrow as pa

            col = self.data.column(s.time_col)
            if pa.types.is_timestamp(col.type) and col.type.tz is None and col.null_count == 0:
                try:
                    return col.cast(pa.timestamp("ns")).to_numpy().view(np.int64)
                except pa.ArrowInvalid:  # out of range: validate's error names the row and series
                    pass
        return ns(parse_times(self._frame([s.time_col, *s.group_ids]), s))

    def observed(self) -> np.ndarray:
        s = self.schema
        if self.arrow:
            import pyarrow as pa

            col = self.data.column(s.target)
            if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
                return ~np.isnan(col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False))  # nulls: NaN
        y = self.data.column(s.target).to_pandas() if self.arrow else self.data[s.target]
        if not pd.api.types.is_numeric_dtype(y):
            y = pd.to_numeric(y, errors="coerce")  # what is not a number fails validation if a forecast reads it
        return y.notna().to_numpy()

    def group(self, col: str):
        return self.data.column(col).to_pandas() if self.arrow else self.data[col]

    def take(self, rows: np.ndarray) -> pd.DataFrame:
        if not self.arrow:
            return self.data.iloc[rows]
        import pyarrow as pa

        df = self.data.take(pa.array(rows)).to_pandas()
        df.index = self.offset + rows
        return df


def table_batches(source, schema: Schema, rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """The used columns of the table in batches of rows: `source` is a DataFrame, or a .parquet or .csv file."""
    if isinstance(source, pd.DataFrame):
        if source.empty:
            raise SchemaError(f"the table has no rows (columns: {list(source.columns)})")
        yield Batch(source[used_columns(schema, source.columns)], schema)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        arrow = file.schema_arrow
        if file.metadata.num_rows == 0:
            raise SchemaError(f"data file {path} has no rows (columns: {arrow.names})")
        cols = used_columns(schema, arrow.names)
        # text categoricals as dictionaries: pandas categoricals, no Python string per row
        text = [c for c in _categorical_columns(schema) if pa.types.is_string(arrow.field(c).type)
                or pa.types.is_large_string(arrow.field(c).type)]
        offset = 0
        for batch in pq.ParquetFile(path, read_dictionary=text).iter_batches(batch_size=rows, columns=cols):
            yield Batch(batch, schema, offset)
            offset += batch.num_rows
        return
    if path.suffix in (".csv", ".gz", ".txt"):
        try:
            head = pd.read_csv(path, nrows=1)
        except pd.errors.EmptyDataError:
            raise SchemaError(f"data file {path} is empty: no header, no rows") from None
        if head.empty:
            raise SchemaError(f"data file {path} has no rows (columns: {list(head.columns)})")
        cols = used_columns(schema, head.columns)
        for chunk in pd.read_csv(path, usecols=cols, chunksize=rows):
            yield Batch(chunk[cols], schema)
        return
    raise SchemaError(f"cannot read '{path}': use a .csv or .parquet file")


class SeriesIds:
    """Consecutive ids of the series met in batches, keyed by their group-id values as text (as validate
    compares them)."""

    def __init__(self, schema: Schema):
        self.cols, self.index, self.keys = schema.group_ids, {}, []

    def __call__(self, batch: Batch) -> np.ndarray:
        if not self.cols:
            if not self.keys:
                self.index[()] = 0
                self.keys.append(())
            return np.zeros(len(batch), np.int64)
        codes, uniques = [], []
        for col in self.cols:
            code, values = pd.factorize(batch.group(col))
            if (code < 0).any():
                raise SchemaError(f"column '{col}' (group_ids) has an empty value at row "
                                  f"{batch.offset + int(np.argmax(code < 0))}")
            codes.append(code)
            uniques.append(pd.Index(values).astype(str).tolist())
        if len(codes) == 1:
            combos, inverse = np.arange(len(uniques[0]))[:, None], codes[0]
        else:
            combos, inverse = np.unique(np.stack(codes, 1), axis=0, return_inverse=True)
        local = np.empty(len(combos), np.int64)
        for j, combo in enumerate(combos.tolist()):
            key = tuple(u[k] for u, k in zip(uniques, combo))
            if key not in self.index:
                self.index[key] = len(self.keys)
                self.keys.append(key)
            local[j] = self.index[key]
        return local[np.asarray(inverse).ravel()]


def ns(times: pd.Series) -> np.ndarray:
    return times.to_numpy("datetime64[ns]").view(np.int64)


def shift(t: np.ndarray, steps: int, freq: str) -> np.ndarray:
    """t (int64 ns) moved by `steps` grid steps, held at the representable times' bounds."""
    offset = pd.tseries.frequencies.to_offset(freq)
    if isinstance(offset, pd.offsets.Tick):
        delta = steps * pd.Timedelta(offset).value
        with np.errstate(over="ignore"):
            moved = t + delta  # wraps where it leaves the range: replaced below
        out_of_range = t > _MAX - delta if delta > 0 else t < _MIN - delta
        return np.where(out_of_range, _MAX if delta > 0 else _MIN, moved)
    out = np.empty_like(t)
    for i, v in enumerate(t.tolist()):
        try:
            out[i] = (pd.Timestamp(v) + steps * offset).value
        except (OverflowError, pd.errors.OutOfBoundsDatetime):
            out[i] = _MAX if steps > 0 else _MIN
    return out


def _grow(a: np.ndarray, n: int, fill: int) -> np.ndarray:
    return a if len(a) >= n else np.r_[a, np.full(n - len(a), fill, np.int64)]


class _Rows:
    """Rows taken from the batches, with their series and times."""

    def __init__(self, frame: pd.DataFrame | None = None, sid=None, t=None):
        self.frame, self.sid, self.t = frame, sid, t

    def __add__(self, other: _Rows) -> _Rows:
        if self.frame is None:
            return other
        if other.frame is None:
            return self
        return _Rows(pd.concat([self.frame, other.frame]), np.r_[self.sid, other.sid], np.r_[self.t, other.t])

    def where(self, keep: np.ndarray) -> _Rows:
        return _Rows(self.frame[keep], self.sid[keep], self.t[keep]) if self.frame is not None else self

    def latest(self) -> _Rows:
        """The latest row of each series."""
        if self.frame is None:
            return self
        last = _latest(self.sid, self.t)
        return _Rows(self.frame.iloc[last], self.sid[last], self.t[last])


def _latest(sid: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Positions of each series' latest row."""
    order = np.lexsort((t, sid))
    return order[np.r_[sid[order][1:] != sid[order][:-1], True]]


def select(source, schema: Schema, freq: str, replay: int = 0, rows: int = BATCH_ROWS) -> pd.DataFrame:
    """The rows of `source` (DataFrame or file) that the forecasts of its series read, with the column
    OBSERVED_BEFORE; in no particular order (validate sorts them).

    One pass: a series' last observed target only moves later, so a row before the encoder window of the
    last one seen so far is never read (but the latest such row, for a gap at the window's start)."""
    L, H = schema.max_encoder_length, schema.max_prediction_length
    ids = SeriesIds(schema)
    last, first = np.zeros(0, np.int64), np.zeros(0, np.int64)
    kept, before = _Rows(), _Rows()
    for batch in table_batches(source, schema, rows):
        sid, t, observed = ids(batch), batch.times(), batch.observed()
        last, first = _grow(last, len(ids.keys), _NONE), _grow(first, len(ids.keys), np.iinfo(np.int64).max)
        np.maximum.at(last, sid[observed], t[observed])
        np.minimum.at(first, sid[observed], t[observed])
        lo = np.where(last == _NONE, _MIN, shift(last, -(L - 1 + replay), freq))
        inside = t >= lo[sid]
        new = _Rows(batch.take(np.flatnonzero(inside)), sid[inside], t[inside])
        earlier = np.flatnonzero(~inside)
        if len(earlier):  # only each series' latest earlier row is taken from the batch
            best = np.full(len(ids.keys), _NONE)
            np.maximum.at(best, sid[earlier], t[earlier])  # O(rows), where sorting would be O(rows log rows)
            cand = earlier[t[earlier] == best[sid[earlier]]]
            before = (before + _Rows(batch.take(cand), sid[cand], t[cand])).latest()
        kept = kept + new
        below = kept.t < lo[kept.sid] if kept.frame is not None else np.zeros(0, bool)
        if below.any():
            before = (before + kept.where(below)).latest()
            kept = kept.where(~below)
    none = np.flatnonzero(last == _NONE)
    if len(none):
        raise SchemaError(f"series {series_name(schema, ids.keys[none[0]])}: no observed '{schema.target}' value to "
                          "forecast from")
    lo = shift(last, -(L - 1 + replay), freq)
    kept = kept.where(kept.t <= shift(last, H, freq)[kept.sid])  # future rows past the horizon are not read
    out = kept + before
    return out.frame.assign(**{OBSERVED_BEFORE: (first < lo)[out.sid]})
