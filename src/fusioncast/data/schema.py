"""Column roles (pytorch-forecasting's names) and validation of a raw table against them.

Every error names the column (and the series where one is involved) so a user can fix the table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

ROLE_LISTS = (
    "group_ids",
    "static_categoricals",
    "static_reals",
    "time_varying_known_categoricals",
    "time_varying_known_reals",
    "time_varying_unknown_categoricals",
    "time_varying_unknown_reals",
)

TARGET_NORMALIZERS = ("series", "global", "encoder", "window")
# target_normalizer=window: an encoder std below this fraction of its level (at least 1) counts as flat
WINDOW_SCALE_FLOOR = 1e-6


class SchemaError(ValueError):
    """A table does not fit its declared column roles."""


@dataclass
class Schema:
    """What each column of a table is, and the window lengths a model sees."""

    time_col: str
    target: str
    group_ids: list[str] = field(default_factory=list)
    static_categoricals: list[str] = field(default_factory=list)
    static_reals: list[str] = field(default_factory=list)
    time_varying_known_categoricals: list[str] = field(default_factory=list)
    time_varying_known_reals: list[str] = field(default_factory=list)
    time_varying_unknown_categoricals: list[str] = field(default_factory=list)
    time_varying_unknown_reals: list[str] = field(default_factory=list)
    calendar: list[str] = field(default_factory=list)
    freq: str | None = None
    max_encoder_length: int = 24
    max_prediction_length: int = 6
    # how the target is scaled (fitted on training rows): "series" (each series' own mean/std),
    # "global" (one mean/std over every series, as the ETT/Informer benchmarks z-normalise) or
    # "encoder" (each window centred on its encoder's mean, scaled by its series' std, like
    # pytorch-forecasting's EncoderNormalizer: robust to level shifts between training and test) or
    # "window" (centred on the encoder's mean and scaled by the encoder's std: every window on its own)
    target_normalizer: str = "series"

    def __post_init__(self) -> None:
        for name in ROLE_LISTS + ("calendar",):
            value = getattr(self, name)
            setattr(self, name, [] if value is None else [str(v) for v in value])
        if self.target in self.time_varying_unknown_reals:
            # the target is always an encoder input; listing it twice would duplicate a variable
            self.time_varying_unknown_reals.remove(self.target)
        if self.max_encoder_length < 1 or self.max_prediction_length < 1:
            raise SchemaError(
                f"max_encoder_length ({self.max_encoder_length}) and max_prediction_length "
                f"({self.max_prediction_length}) must both be >= 1"
            )
        if self.target_normalizer not in TARGET_NORMALIZERS:
            raise SchemaError(f"target_normalizer must be one of {TARGET_NORMALIZERS}, got {self.target_normalizer!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "Schema":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def known_categoricals(self) -> list[str]:
        """Known categoricals as the model sees them: the user's, then derived calendar features."""
        return self.time_varying_known_categoricals + self.calendar

    @property
    def roles(self) -> dict[str, list[str]]:
        """Every raw column that must be in the table, by role."""
        out = {name: getattr(self, name) for name in ROLE_LISTS}
        out["time_col"] = [self.time_col]
        out["target"] = [self.target]
        return out


def _numeric(df: pd.DataFrame, col: str, role: str) -> None:
    if pd.api.types.is_bool_dtype(df[col]):
        df[col] = df[col].astype(np.float32)
        return
    if pd.api.types.is_numeric_dtype(df[col]):
        return
    converted = pd.to_numeric(df[col], errors="coerce")
    bad = converted.isna() & df[col].notna()
    if bad.any():
        row = bad.idxmax()
        raise SchemaError(
            f"column '{col}' ({role}) must be numeric, got dtype {df[col].dtype} "
            f"with non-numeric value {df[col][row]!r} at row {row}"
        )
    df[col] = converted


def used_columns(schema: Schema, available) -> list[str]:
    """The columns the roles name, in role order; a SchemaError naming the first one the table lacks."""
    available = list(available)
    for role, cols in schema.roles.items():
        for col in cols:
            if col not in available:
                raise SchemaError(f"column '{col}' ({role}) not found in the table; columns are {available}")
    return list(dict.fromkeys(c for cols in schema.roles.values() for c in cols))


def parse_times(df: pd.DataFrame, schema: Schema) -> pd.Series:
    """The time column parsed to naive timestamps, with errors naming the row (and series) of a time that
    cannot be parsed, is empty, or lies outside what datetime64[ns] holds."""
    try:
        times = pd.to_datetime(df[schema.time_col])
    except (ValueError, TypeError) as e:
        raise SchemaError(f"column '{schema.time_col}' (time_col) cannot be parsed as timestamps: {e}") from e
    if times.isna().any():
        row = times.isna().idxmax()
        raise SchemaError(f"column '{schema.time_col}' (time_col) has an empty timestamp at row {row}")
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_localize(None)
    # the model's time axis is datetime64[ns]; pandas parses wider (microseconds), numpy would wrap around
    outside = (times < pd.Timestamp.min) | (times > pd.Timestamp.max)
    if outside.any():
        row = outside.idxmax()
        series = "".join(f", {c}={df[c][row]}" for c in schema.group_ids if c in df)
        raise SchemaError(f"column '{schema.time_col}' (time_col) has {times[row]} at row {row}{series}, "
                          f"outside the times the model can represent ({pd.Timestamp.min.ceil('s')} .. "
                          f"{pd.Timestamp.max.floor('s')})")
    return times


def validate(df: pd.DataFrame, schema: Schema, keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """Check a raw table against its roles and return a cleaned copy (the role columns, and of `keep` those
    the table has, untouched).

    Cleaning: time parsed to datetime, categoricals as strings, reals as float.
    Raises SchemaError naming the column/series for: missing columns, non-numeric reals or target,
    unparseable times, duplicate (series, time) rows, statics that vary within a series.
    """
    if not isinstance(df, pd.DataFrame):
        raise SchemaError(f"expected a pandas DataFrame, got {type(df).__name__}")
    df = df[used_columns(schema, df.columns) + [c for c in keep if c in df.columns]].copy()
    df[schema.time_col] = parse_times(df, schema)

    _numeric(df, schema.target, "target")
    for role in ("static_reals", "time_varying_known_reals", "time_varying_unknown_reals"):
        for col in getattr(schema, role):
            _numeric(df, col, role)
    for role in ("group_ids", "static_categoricals", "time_varying_known_categoricals",
                 "time_varying_unknown_categoricals"):
        for col in getattr(schema, role):
            # categoricals are compared as strings everywhere (training, bundle, HTTP requests)
            df[col] = df[col].astype(str).where(df[col].notna(), None)
    for col in schema.group_ids:
        if df[col].isna().any():
            raise SchemaError(f"column '{col}' (group_ids) has an empty value at row {df[col].isna().idxmax()}")

    keys = schema.group_ids + [schema.time_col]
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        first = df.loc[dup, keys].iloc[0].to_dict()
        raise SchemaError(
            f"{int(dup.sum())} rows share a (series, {schema.time_col}) pair; first: {first}. "
            "Aggregate or drop duplicates first."
        )
    if schema.group_ids:
        for col in schema.static_categoricals + schema.static_reals:
            n = df.groupby(schema.group_ids, sort=False)[col].nunique(dropna=False)
            if (n > 1).any():
                series = n.index[(n > 1).argmax()]
                raise SchemaError(f"static column '{col}' varies within series {series}: it must be constant per series")
    return df.sort_values(keys).reset_index(drop=True)


def drop_short_series(lengths: pd.Series, min_length: int) -> list:
    """Keys of series with fewer than `min_length` steps, with one warning saying how many."""
    short = lengths.index[lengths < min_length].tolist()
    if short and len(short) == len(lengths):
        raise SchemaError(
            f"every series is shorter than max_encoder_length + max_prediction_length = {min_length} steps "
            f"(longest has {int(lengths.max())}); lower the lengths or give more history"
        )
    if short:
        warnings.warn(
            f"skipped {len(short)} of {len(lengths)} series shorter than max_encoder_length + "
            f"max_prediction_length = {min_length} steps (e.g. {short[:3]})",
            stacklevel=2,
        )
    return short
