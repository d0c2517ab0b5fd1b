"""The rows a forecast uses, read in record batches: memory is set by a batch and by what is kept.

Per series a forecast uses the last `max_encoder_length` grid steps up to its last observed target (and
`replay` more for replayed origins), the `max_prediction_length` future rows after it, and, when the
first of those steps is a gap, the last row before it (training's grid carries its covariates forward
into the gap). Two passes find them: the first reads the group ids, the time and the target and keeps
each series' last (and first) observed time; the second keeps the rows in each series' bounds and the
latest row before them. A parquet file is read column-pruned, in row batches; a CSV in chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
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


def table_batches(source, schema: Schema, rows: int = BATCH_ROWS) -> Callable[[], Iterator[pd.DataFrame]]:
    """A function giving the used columns of the table in batches of rows (indexed by row number), as often
    as it is called: `source` is a DataFrame, or a .parquet or .csv file."""
    if isinstance(source, pd.DataFrame):
        if source.empty:
            raise SchemaError(f"the table has no rows (columns: {list(source.columns)})")
        frame = source[used_columns(schema, source.columns)]
        return lambda: iter([frame])
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        if pq.ParquetFile(path).metadata.num_rows == 0:
            raise SchemaError(f"data file {path} has no rows (columns: {names})")
        cols = used_columns(schema, names)
        arrow = pq.ParquetFile(path).schema_arrow
        # text categoricals as dictionaries: pandas categoricals, no Python string per row
        text = [c for c in _categorical_columns(schema) if pa.types.is_string(arrow.field(c).type)
                or pa.types.is_large_string(arrow.field(c).type)]

        def parquet() -> Iterator[pd.DataFrame]:
            offset = 0
            for batch in pq.ParquetFile(path, read_dictionary=text).iter_batches(batch_size=rows, columns=cols):
                df = batch.to_pandas()
                df.index = pd.RangeIndex(offset, offset + len(df))
                offset += len(df)
                yield df

        return parquet
    if path.suffix in (".csv", ".gz", ".txt"):
        try:
            head = pd.read_csv(path, nrows=1)
        except pd.errors.EmptyDataError:
            raise SchemaError(f"data file {path} is empty: no header, no rows") from None
        if head.empty:
            raise SchemaError(f"data file {path} has no rows (columns: {list(head.columns)})")
        cols = used_columns(schema, head.columns)
        return lambda: (chunk[cols] for chunk in pd.read_csv(path, usecols=cols, chunksize=rows))
    raise SchemaError(f"cannot read '{path}': use a .csv or .parquet file")


class SeriesIds:
    """Consecutive ids of the series met in batches, keyed by their group-id values as text (as validate
    compares them)."""

    def __init__(self, schema: Schema):
        self.cols, self.index, self.keys = schema.group_ids, {}, []

    def __call__(self, df: pd.DataFrame) -> np.ndarray:
        if not self.cols:
            if not self.keys:
                self.index[()] = 0
                self.keys.append(())
            return np.zeros(len(df), np.int64)
        codes, uniques = [], []
        for col in self.cols:
            code, values = pd.factorize(df[col])
            if (code < 0).any():
                raise SchemaError(f"column '{col}' (group_ids) has an empty value at row {df.index[np.argmax(code < 0)]}")
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


@dataclasses.dataclass
class Bounds:
    """Per series (in SeriesIds order): the first and last time a forecast reads."""

    lo: np.ndarray
    hi: np.ndarray
    observed_before: np.ndarray  # an observed target before lo


def _grow(a: np.ndarray, n: int, fill: int) -> np.ndarray:
    return a if len(a) >= n else np.r_[a, np.full(n - len(a), fill, np.int64)]


def bounds(batches: Callable[[], Iterator[pd.DataFrame]], schema: Schema, freq: str, ids: SeriesIds,
           replay: int = 0) -> Bounds:
    """The first pass: each series' last observed target, hence the steps its forecast reads."""
    last, first = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for df in batches():
        sid, t = ids(df), ns(parse_times(df, schema))
        y = df[schema.target]
        observed = (y if pd.api.types.is_numeric_dtype(y) else pd.to_numeric(y, errors="coerce")).notna().to_numpy()
        last, first = _grow(last, len(ids.keys), _NONE), _grow(first, len(ids.keys), np.iinfo(np.int64).max)
        np.maximum.at(last, sid[observed], t[observed])
        np.minimum.at(first, sid[observed], t[observed])
    none = np.flatnonzero(last == _NONE)
    if len(none):
        raise SchemaError(f"series {series_name(schema, ids.keys[none[0]])}: no observed '{schema.target}' value to "
                          "forecast from")
    lo = shift(last, -(schema.max_encoder_length - 1 + replay), freq)
    return Bounds(lo, shift(last, schema.max_prediction_length, freq), first < lo)


def select(source, schema: Schema, freq: str, replay: int = 0, rows: int = BATCH_ROWS) -> pd.DataFrame:
    """The rows of `source` (DataFrame or file) that the forecasts of its series read, with the column
    OBSERVED_BEFORE; in no particular order (validate sorts them)."""
    batches = table_batches(source, schema, rows)
    ids = SeriesIds(schema)
    b = bounds(batches, schema, freq, ids, replay)
    kept, before, before_sid, before_t = [], None, np.zeros(0, np.int64), np.zeros(0, np.int64)
    for df in batches():
        sid, t = ids(df), ns(parse_times(df, schema))
        lo = b.lo[sid]
        inside = (t >= lo) & (t <= b.hi[sid])
        kept.append(df[inside].assign(**{OBSERVED_BEFORE: b.observed_before[sid[inside]]}))
        earlier = np.flatnonzero(t < lo)
        if len(earlier):  # the latest earlier row of each series, against the best of the batches before
            rows_ = df.iloc[earlier].assign(**{OBSERVED_BEFORE: b.observed_before[sid[earlier]]})
            cand_sid, cand_t = sid[earlier], t[earlier]
            if before is not None:
                rows_ = pd.concat([before, rows_])
                cand_sid, cand_t = np.r_[before_sid, cand_sid], np.r_[before_t, cand_t]
            order = np.lexsort((cand_t, cand_sid))
            latest = order[np.r_[cand_sid[order][1:] != cand_sid[order][:-1], True]]
            before, before_sid, before_t = rows_.iloc[latest], cand_sid[latest], cand_t[latest]
    if before is not None:
        kept.append(before)
    return pd.concat(kept)
