"""Preprocessing fitted on the training period only, in numpy so serving runs the same code.

Category codes reserve 0 for an unknown bucket; continuous inputs get a (center, scale) that the
model applies inside its graph; the target gets a (center, scale) per series, or one shared by all
series (schema.target_normalizer = "global"). `transform` turns a
regular-grid frame into dense per-series arrays (padded at the end) that windows are cut from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fusioncast.data.schema import WINDOW_SCALE_FLOOR, Schema

UNKNOWN = 0  # code of the unknown-category bucket


def series_key(values) -> str:
    """One string per series, used in the bundle and the HTTP API: group-id values joined by '|'."""
    values = values if isinstance(values, tuple) else (values,)
    return "|".join(str(v) for v in values)


@dataclass
class Encoded:
    """Dense arrays for S series of at most T steps (padded at the end)."""

    keys: list[str]
    start: np.ndarray          # (S,) datetime64[ns] first step of each series
    length: np.ndarray         # (S,) int64 steps on the grid
    static_cat: np.ndarray     # (S, n_static_cat) int64
    static_real: np.ndarray    # (S, n_static_real) float32, raw units
    cat: np.ndarray            # (S, T, n_known_cat + n_unknown_cat) codes in code_dtype (int64 once gathered)
    real: np.ndarray           # (S, T, 1 + n_known_real + n_unknown_real) float32 raw; [..., 0] = target (0 where unobserved)
    observed: np.ndarray       # (S, T) bool: target observed (False in gaps and padding)
    target_scale: np.ndarray   # (S, 2) float32 (center, scale)


def code_dtype(cardinality: int) -> np.dtype:
    """The smallest integer dtype that holds codes 0 .. cardinality - 1: the dense (series, step) arrays of
    a large table take 1 or 2 bytes a code instead of 8; windows are cast to int64 when gathered."""
    for dt in (np.uint8, np.int16, np.int32):
        if cardinality - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _stats(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0, 1.0
    center, scale = float(x.mean()), float(x.std())
    if not scale > 1e-8 * max(1.0, abs(center)):
        scale = abs(center) if abs(center) > 0 else 1.0
    return center, scale


class Preprocessor:
    """Category vocabularies, real scalers and per-series target scales, fitted on training rows."""

    def __init__(self, schema: Schema, freq: str):
        self.schema = schema
        self.freq = freq
        self.vocab: dict[str, list[str]] = {}
        self.real_center: dict[str, float] = {}
        self.real_scale: dict[str, float] = {}
        self.target_scales: dict[str, tuple[float, float]] = {}

    # ---- column groups, in the order the model sees them -------------------------------------------
    @property
    def categoricals(self) -> list[str]:
        s = self.schema
        return s.static_categoricals + s.known_categoricals + s.time_varying_unknown_categoricals

    @property
    def time_varying_categoricals(self) -> list[str]:
        return self.schema.known_categoricals + self.schema.time_varying_unknown_categoricals

    @property
    def reals(self) -> list[str]:
        s = self.schema
        return s.static_reals + s.time_varying_known_reals + s.time_varying_unknown_reals

    @property
    def time_varying_reals(self) -> list[str]:
        """Encoder reals: the target first, then known, then unknown reals."""
        s = self.schema
        return [s.target] + s.time_varying_known_reals + s.time_varying_unknown_reals

    # ---- fitting -----------------------------------------------------------------------------------
    def fit(self, frame: pd.DataFrame, train_rows: np.ndarray) -> "Preprocessor":
        """Fit on the rows of a regular-grid frame where `train_rows` is True."""
        train = frame[train_rows]
        for col in self.categoricals:
            self.vocab[col] = sorted(train[col].dropna().astype(str).unique().tolist())
        for col in self.reals:
            self.real_center[col], self.real_scale[col] = _stats(train[col].to_numpy(np.float64))
        s = self.schema
        observed = train[train["_observed"]]
        if s.group_ids:
            for key, g in observed.groupby(s.group_ids, sort=False)[s.target]:
                self.target_scales[series_key(key)] = _stats(g.to_numpy(np.float64))
        else:
            self.target_scales[series_key(())] = _stats(observed[s.target].to_numpy(np.float64))
        if s.target_normalizer == "global":  # every series (and any unseen one) shares one mean/std
            stats = _stats(observed[s.target].to_numpy(np.float64))
            self.target_scales = {k: stats for k in self.target_scales}
        return self

    # ---- encoding ----------------------------------------------------------------------------------
    def codes(self, col: str, values) -> np.ndarray:
        """Integer codes of a categorical column; values outside the vocabulary get UNKNOWN (0)."""
        index = pd.Index(self.vocab[col])
        codes = index.get_indexer(pd.Series(values, dtype=object).astype(str)) + 1
        return codes.astype(np.int64)  # get_indexer gives -1 for unknown, so unknown -> 0

    def target_scale(self, key: str, history: np.ndarray) -> tuple[float, float]:
        """(center, scale) of a forecast window whose encoder holds the observed targets `history`.

        The fitted scale of a known series; a series unseen in training is scaled by its own history
        (by the shared training statistics with target_normalizer=global). With target_normalizer=encoder
        the center is the mean of `history` (SeriesTensors.gather computes the same in training); with
        target_normalizer=window the scale is its std too (unless `history` is flat or a single value).
        """
        history = np.asarray(history, dtype=np.float64)
        center, scale = self.series_scale(key, history)
        if self.schema.target_normalizer in ("encoder", "window") and history.size:
            center = float(history.mean())
        if self.schema.target_normalizer == "window" and history.size > 1:
            std = float(history.std())
            if std > WINDOW_SCALE_FLOOR * max(abs(center), 1.0):
                scale = std
        return center, scale

    def series_scale(self, key: str, history: np.ndarray) -> tuple[float, float]:
        """The fitted (center, scale) of a series, or for one unseen in training that of `history`."""
        if key not in self.target_scales and self.schema.target_normalizer == "global" and self.target_scales:
            return next(iter(self.target_scales.values()))
        return self.target_scales.get(key) or _stats(np.asarray(history, dtype=np.float64))

    def transform(self, frame: pd.DataFrame) -> Encoded:
        """Dense arrays for every series of a regular-grid frame (as made by grid.regularize)."""
        s = self.schema
        groups = list(frame.groupby(s.group_ids, sort=False)) if s.group_ids else [((), frame)]
        S, T = len(groups), max(len(g) for _, g in groups)
        tv_cat, tv_real = self.time_varying_categoricals, self.time_varying_reals
        out = Encoded(
            keys=[], start=np.empty(S, "datetime64[ns]"), length=np.zeros(S, np.int64),
            static_cat=np.zeros((S, len(s.static_categoricals)), np.int64),
            static_real=np.zeros((S, len(s.static_reals)), np.float32),
            cat=np.zeros((S, T, len(tv_cat)), code_dtype(max((len(self.vocab[c]) + 1 for c in tv_cat), default=1))),
            real=np.zeros((S, T, len(tv_real)), np.float32),
            observed=np.zeros((S, T), bool), target_scale=np.zeros((S, 2), np.float32),
        )
        for i, (key, g) in enumerate(groups):
            n = len(g)
            k = series_key(key)
            out.keys.append(k)
            out.start[i] = g[s.time_col].iloc[0]
            out.length[i] = n
            for j, col in enumerate(s.static_categoricals):
                out.static_cat[i, j] = self.codes(col, g[col].iloc[:1])[0]
            for j, col in enumerate(s.static_reals):
                out.static_real[i, j] = self._fill(col, g[col].to_numpy(np.float64)[:1])[0]
            for j, col in enumerate(tv_cat):
                out.cat[i, :n, j] = self.codes(col, g[col].to_numpy())
            observed = g["_observed"].to_numpy(bool)
            y = g[s.target].to_numpy(np.float64)
            out.real[i, :n, 0] = np.where(observed, y, 0.0)
            for j, col in enumerate(tv_real[1:], start=1):
                out.real[i, :n, j] = self._fill(col, g[col].to_numpy(np.float64))
            out.observed[i, :n] = observed
            out.target_scale[i] = self.series_scale(k, y[observed])
        return out

    def _fill(self, col: str, x: np.ndarray) -> np.ndarray:
        """Missing reals become the training mean, i.e. 0 after the model's scaling."""
        return np.where(np.isfinite(x), x, self.real_center[col])

    # ---- persistence (bundle.json, checkpoints) ----------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": self.schema.to_dict(), "freq": self.freq, "vocab": self.vocab,
            "real_center": self.real_center, "real_scale": self.real_scale,
            "target_scales": {k: list(v) for k, v in self.target_scales.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessor":
        pp = cls(Schema.from_dict(d["schema"]), d["freq"])
        pp.vocab = {k: list(v) for k, v in d["vocab"].items()}
        pp.real_center, pp.real_scale = dict(d["real_center"]), dict(d["real_scale"])
        pp.target_scales = {k: tuple(v) for k, v in d["target_scales"].items()}
        return pp

    def model_kwargs(self) -> dict:
        """The dataset-dependent constructor arguments of TemporalFusionTransformer."""
        s = self.schema
        card = lambda cols: [len(self.vocab[c]) + 1 for c in cols]  # noqa: E731  (+1: unknown bucket)
        return dict(
            static_categorical_cardinalities=card(s.static_categoricals),
            encoder_categorical_cardinalities=card(self.time_varying_categoricals),
            num_known_categoricals=len(s.known_categoricals),
            num_static_reals=len(s.static_reals),
            num_known_reals=len(s.time_varying_known_reals),
            num_unknown_reals=len(s.time_varying_unknown_reals),
            max_encoder_length=s.max_encoder_length,
            max_prediction_length=s.max_prediction_length,
            real_center=[self.real_center[c] for c in self.reals],
            real_scale=[self.real_scale[c] for c in self.reals],
        )
