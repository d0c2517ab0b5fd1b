"""Conformal calibration of quantile forecasts, in numpy (serving applies it with the same code).

A quantile model's P10/P90 are often too narrow (or too wide) out of sample. Split-conformal
quantile calibration (Romano et al. 2019, CQR, here per quantile) fits, on the validation windows,
an additive offset per quantile level q (and per horizon step h) in units of each series' target
scale: the empirical q-quantile of the residuals (y - ŷ_q) / scale. Applying it moves ŷ_q to
ŷ_q + offset · scale, so that on data like the validation split a fraction q of the actuals falls
below it, and P10–P90 covers about 80 %. The median is left alone unless `adjust_median`.

Offsets fitted once carry over only while the forecast period looks like validation; after a shift
(a calmer winter, a holiday season) coverage drifts away from nominal. `method: adaptive` starts from
the same offsets and then tracks them online over the evaluated windows, in time order, as each
actual becomes known: quantile tracking (Angelopoulos, Candès & Tibshirani 2023, "Conformal PID
control for time series prediction"; the step-size form of Gibbs & Candès 2021, ACI), offset ←
offset + η (q − 1[residual ≤ offset]), with η at horizon step h (0-based) a fraction
`step` / sqrt(h + 1) of the spread of the median's validation residuals there. The actual of step h
is known only h + 1 steps after the window starts, so a window's offsets use only actuals observed
before it (Calibration.track has the details). Hand-written: MAPIE's time-series ACI refits a
regressor per update and knows neither quantile models nor delayed multi-step feedback. The server
tracks them the same way from the actuals posted to it (serve/online_calibration.py).

The per-step offsets of far horizon steps learn slowly: their actuals arrive up to H steps late and
their step is small. With `width_step` > 0 the tracker also learns one width factor per quantile,
shared by all horizon steps, from every actual as it arrives: each quantile's distance from the
median is scaled by exp(λ_q), λ_q ← λ_q + width_step · mean(sign(q − 0.5) (q − 1[y ≤ ŷ_q])) over the
residuals newly known. A calmer (or wilder) period shows first in the short steps' residuals, and
the shared factor carries it to the long ones before their own actuals arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusioncast.quantiles import median_index

METHODS = ("none", "conformal", "adaptive")
# method adaptive's steps, as configs/calibration/adaptive.yaml has them (chosen there on validation)
DEFAULT_STEP, DEFAULT_WIDTH_STEP = 0.01, 0.002
# metrics.json's / bundle.json's `calibration` when calibration is off, so that both always say which one applies
# where method adaptive's offsets are tracked after training: the server, from the actuals posted to it, and
# batch scoring over a table's recent past
TRACKED_BY = ["POST /v1/actuals", "fusioncast-predict replay=N"]
NONE = {"method": "none", "served": {"applies": "nothing", "tracks": False, "tracked_by": None}}


@dataclass
class TrackState:
    """What method adaptive has learned of one series so far: offsets (H, Q) added to the fitted ones,
    in units of the target scale, and the log width factors (Q,)."""

    offsets: np.ndarray
    log_width: np.ndarray


@dataclass
class Calibration:
    """Additive offsets (H, Q) in units of the target scale, one per horizon step and quantile; for
    method adaptive also the tracking step (H,) in the same units and the width factor's step
    `width_step` (in log units; 0 tracks the offsets alone)."""

    quantiles: list[float]
    offsets: np.ndarray
    method: str = "conformal"
    fitted_on: dict = field(default_factory=dict)
    step: np.ndarray | None = None
    width_step: float = 0.0

    @classmethod
    def fit(cls, pred: np.ndarray, target: np.ndarray, mask: np.ndarray, scale: np.ndarray, quantiles: list[float],
            per_horizon: bool = True, adjust_median: bool = False, method: str = "conformal",
            step: float = DEFAULT_STEP, width_step: float = DEFAULT_WIDTH_STEP) -> "Calibration":
        """Fit on forecasts pred (N, H, Q) of actuals target/mask (N, H), with the target scale (N,) of each
        window's series. A horizon step with no observed actual gets the offsets pooled over all steps.
        Method adaptive adds the tracking step: `step` / sqrt(h + 1) times the P10–P90 spread of the median's
        residuals at step h, and the shared width factor's step `width_step`."""
        if method not in ("conformal", "adaptive"):
            raise ValueError(f"calibration method must be one of {METHODS[1:]}, got {method!r}")
        try:
            ok = float(width_step) >= 0 and np.isfinite(float(width_step))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"calibration.width_step must be a number >= 0, got {width_step!r}")
        N, H, Q = pred.shape
        m = mask.astype(bool)
        resid = (target[..., None].astype(np.float64) - pred) / _scale(scale)[:, None, None]  # (N, H, Q)
        offsets = _per_step(resid, m, lambda r: _offsets(r, quantiles), per_horizon)  # (H, Q)
        if not adjust_median:
            offsets[:, _is_median(quantiles)] = 0.0
        fitted_on = {"windows": int(N), "points": int(m.sum()), "per_horizon": bool(per_horizon),
                     "adjust_median": bool(adjust_median)}
        steps = None
        if method == "adaptive":
            median = resid[..., median_index(quantiles)]  # (N, H)
            steps = _per_step(median, m, _spread)  # (H,)
            # step h's actual arrives h + 1 steps late: online gradient descent with delay d wants a
            # step ~ 1/sqrt(d) (Joulani et al. 2013); a constant one winds up on long horizons
            steps *= float(step) / np.sqrt(np.arange(1, H + 1))
            fitted_on["step"] = float(step)
        return cls([float(q) for q in quantiles], offsets, method, fitted_on, steps,
                   float(width_step) if method == "adaptive" else 0.0)

    def apply(self, pred: np.ndarray, target_scale: np.ndarray) -> np.ndarray:
        """Calibrated quantiles (N, H, Q) from pred (N, H, Q) in target units and the windows' target scale,
        (N,) or (N, 2) as (center, scale). Quantiles stay ordered (offsets could cross them: `_ordered`)."""
        if pred.shape[-1] != len(self.quantiles) or pred.shape[-2] != self.offsets.shape[0]:
            raise ValueError(f"calibration fitted for (H, Q) = {self.offsets.shape}, forecasts are {pred.shape[1:]}")
        scale = window_scale(target_scale)
        out = pred + (self.offsets[None] * scale[:, None, None]).astype(pred.dtype)
        return _ordered(out, self.quantiles, keep_median=not self.fitted_on.get("adjust_median"))

    def track(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray, target_scale: np.ndarray,
              series: np.ndarray, decoder_start: np.ndarray) -> np.ndarray:
        """Method adaptive: the windows' calibrated forecasts pred (N, H, Q) (from `apply`, or cross-fitted)
        with offsets tracked online from there, per series in time order (decoder_start, in steps).

        The actual of step h of the window starting at t is known from t + h + 1 on; then the offset of
        (h, q) takes one step of stochastic gradient descent on that residual's pinball loss, at its
        current value: offset += η (q − 1[y ≤ ŷ]). Judging the late residual by the forecast of now, not
        of its own window, keeps h-step-late feedback from piling up steps that later windows have
        already made (the wind-up that makes the plain ACI loop overshoot on long horizons). With
        width_step > 0 the same residuals also move the shared width factors (module docstring):
        ŷ = median + (pred − median) · exp(λ) + offset · scale. Quantiles do not cross the median (it
        is not tracked) and stay ordered."""
        H = pred.shape[1]
        self.start_tracking(H)  # refuses a calibration that does not track
        scale = window_scale(target_scale)
        center, dist = self.split(pred)
        y = target.astype(np.float64)
        out = pred.astype(np.float64, copy=True)
        steps = np.arange(H)
        for s in np.unique(series):
            rows = np.flatnonzero(series == s)
            rows = rows[np.argsort(decoder_start[rows], kind="stable")]
            t = decoder_start[rows] - decoder_start[rows].min()
            row_at = np.full(int(t.max()) + 1, -1)
            row_at[t] = rows
            state, known = self.start_tracking(H), 0  # actuals known up to step `known`
            for j, tj in zip(rows, t):
                for a in range(known, tj + 1):  # actuals at step a - 1: step h of the window at a - 1 - h
                    start = a - 1 - steps
                    i = np.where(start >= 0, row_at[start.clip(0)], -1)
                    h, i = steps[i >= 0], i[i >= 0]
                    seen = mask[i, h]
                    h, i = h[seen], i[seen]
                    if len(i) > 0:
                        self.observe(state, center[i, h], dist[i, h], scale[i], y[i, h], h)
                known = max(known, tj + 1)
                out[j] = self.tracked(state, center[j], dist[j], scale[j])
        return self.finish(out).astype(pred.dtype)

    # ---- the online tracker, one actual at a time (track above; the server, serve/online_calibration.py) ------
    def start_tracking(self, horizon: int) -> TrackState:
        """The tracker's state before any actual: no offset beyond the fitted ones, width factors 1."""
        if self.step is None:
            raise ValueError(f"calibration method {self.method!r} does not track; fit it with method='adaptive'")
        return TrackState(np.zeros((horizon, len(self.quantiles))), np.zeros(len(self.quantiles)))

    def split(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(center (..., 1), distance from it (..., Q)) of forecasts pred (..., Q), in float64: the width
        factors act on the distance from the median (the quantiles' mean when there is none)."""
        median = _is_median(self.quantiles)
        center = pred[..., median][..., :1] if median.any() else pred.mean(axis=-1, keepdims=True)
        center = center.astype(np.float64)
        return center, pred - center

    def observe(self, state: TrackState, center: np.ndarray, dist: np.ndarray, scale: np.ndarray, y: np.ndarray,
                h: np.ndarray) -> None:
        """The actuals y (n,) newly known at one time step, each step h[k] (distinct) of a window with
        `split` forecast (center (n, 1), dist (n, Q)) and target scale (n,): one step of stochastic
        gradient descent on each residual's pinball loss at the forecast of now (track's docstring)."""
        q = np.asarray(self.quantiles, np.float64)
        frozen = np.zeros(len(q), bool) if self.fitted_on.get("adjust_median") else _is_median(self.quantiles)
        eta = self.step[h][:, None] * np.where(frozen, 0.0, 1.0)[None]  # (n, Q)
        now = center + dist * np.exp(state.log_width) + state.offsets[h] * scale[:, None]
        grad = q[None] - (y[:, None] <= now)  # (n, Q): pinball slope at the forecast of now
        state.offsets[h] += eta * grad
        state.log_width += self.width_step * np.sign(q - 0.5) * grad.mean(axis=0)  # 0 for the median

    def tracked(self, state: TrackState, center: np.ndarray, dist: np.ndarray, scale) -> np.ndarray:
        """A window's forecast (H, Q) (`split`, float64) under the tracked state; `finish` orders it."""
        return center + dist * np.exp(state.log_width) + state.offsets * np.asarray(scale)[..., None, None]

    def finish(self, out: np.ndarray) -> np.ndarray:
        """Tracked forecasts (..., Q): quantiles do not cross the median (it is not tracked), in order."""
        return _ordered(out, self.quantiles, keep_median=not self.fitted_on.get("adjust_median"))

    def to_dict(self) -> dict:
        """metrics.json's / bundle.json's `calibration`; `served` says what the server and fusioncast-predict
        apply: the fitted offsets, tracked online (method adaptive) from the actuals they are given."""
        d = {"method": self.method, "quantiles": self.quantiles, "offsets": self.offsets.tolist(),
             "fitted_on": self.fitted_on,
             "served": {"applies": "offsets", "tracks": self.step is not None,
                        "tracked_by": TRACKED_BY if self.step is not None else None}}
        if self.step is not None:
            d["step"] = self.step.tolist()
            d["width_step"] = self.width_step
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration | None":
        """The calibration stored in metrics.json / bundle.json (None when there is none)."""
        if not d or d.get("method", "none") == "none":
            return None
        step = np.asarray(d["step"], np.float64) if d.get("step") is not None else None
        return cls(list(d["quantiles"]), np.asarray(d["offsets"], np.float64), d["method"], dict(d.get("fitted_on", {})),
                   step, float(d.get("width_step", 0.0)))


def cross_fit(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, scale: np.ndarray, quantiles: list[float],
              folds: int = 5, **kwargs) -> np.ndarray:
    """Out-of-sample calibrated forecasts of the fitting set itself: the windows are cut into `folds`
    contiguous blocks (by series, then time) and each block is calibrated with offsets fitted on the
    others. Metrics of the result are honest, unlike those of windows calibrated on themselves."""
    n = len(pred)
    bounds = np.linspace(0, n, min(folds, n) + 1).round().astype(int)
    out = np.empty_like(pred)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rest = np.r_[0:lo, hi:n]
        if len(rest) == 0 or not mask[rest].any():
            out[lo:hi] = pred[lo:hi]
            continue
        cal = Calibration.fit(pred[rest], target[rest], mask[rest], scale[rest], quantiles, **kwargs)
        out[lo:hi] = cal.apply(pred[lo:hi], scale[lo:hi])
    return out


def _offsets(resid: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Per quantile level q, the q-quantile of its residuals (n, Q); slightly conservative (n+1 rule)."""
    n = len(resid)
    out = np.zeros(len(quantiles))
    if n == 0:
        return out
    for i, q in enumerate(quantiles):
        level = min(1.0, q * (n + 1) / n) if q > 0.5 else max(0.0, (q * (n + 1) - 1) / n) if q < 0.5 else 0.5
        out[i] = np.quantile(resid[:, i], level)
    return out


def _per_step(values: np.ndarray, mask: np.ndarray, stat, per_horizon: bool = True) -> np.ndarray:
    """`stat` of the observed values (N, H, ...) per horizon step, (H, ...): pooled over all steps, and
    per step (with per_horizon) where it has 10 points or more (fewer give a noisy quantile)."""
    H = mask.shape[1]
    out = np.repeat(np.asarray(stat(values[mask]), np.float64)[None], H, axis=0)
    if per_horizon:
        for h in range(H):
            if mask[:, h].sum() >= 10:
                out[h] = stat(values[:, h][mask[:, h]])
    return out


def _ordered(out: np.ndarray, quantiles: list[float], keep_median: bool) -> np.ndarray:
    """Quantiles (..., Q) in order: sorted over the last axis; with `keep_median` (the median is not
    calibrated) the others first stop at the median, so that the point forecast stays as it was."""
    median = _is_median(quantiles)
    if keep_median and median.any():
        m = out[..., median][..., :1]
        below = np.asarray(quantiles, np.float64) < 0.5
        out = np.where(below, np.minimum(out, m), np.maximum(out, m))
    return np.sort(out, axis=-1)


def _is_median(quantiles: list[float]) -> np.ndarray:
    return np.abs(np.asarray(quantiles, np.float64) - 0.5) < 1e-9


def window_scale(target_scale: np.ndarray) -> np.ndarray:
    """Each window's target scale from (N,) scales or (N, 2) (center, scale) pairs, floored."""
    scale = np.asarray(target_scale)
    return _scale(scale[:, 1] if scale.ndim == 2 else scale)


def _spread(resid: np.ndarray) -> float:
    """P10–P90 width of residuals (the tracking step's unit); 1 where there are none or all agree."""
    if len(resid) == 0:
        return 1.0
    width = float(np.quantile(resid, 0.9) - np.quantile(resid, 0.1))
    return width if width > 0 else 1.0


def _scale(scale: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(scale, np.float64), 1e-6)  # the model's MIN_TARGET_SCALE floor
