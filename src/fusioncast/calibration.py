"""Conformal calibration of quantile forecasts, in numpy (serving applies it with the same code).

A quantile model's P10/P90 are often too narrow (or too wide) out of sample. Split-conformal
quantile calibration (Romano et al. 2019, CQR, here per quantile) fits, on the validation windows,
an additive offset per quantile level q (and per horizon step h) in units of each series' target
scale: the empirical q-quantile of the residuals (y - ŷ_q) / scale. Applying it moves ŷ_q to
ŷ_q + offset · scale, so that on data like the validation split a fraction q of the actuals falls
below it, and P10–P90 covers about 80 %. The median is left alone unless `adjust_median`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("none", "conformal")


@dataclass
class Calibration:
    """Additive offsets (H, Q) in units of the target scale, one per horizon step and quantile."""

    quantiles: list[float]
    offsets: np.ndarray
    method: str = "conformal"
    fitted_on: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, pred: np.ndarray, target: np.ndarray, mask: np.ndarray, scale: np.ndarray, quantiles: list[float],
            per_horizon: bool = True, adjust_median: bool = False) -> "Calibration":
        """Fit on forecasts pred (N, H, Q) of actuals target/mask (N, H), with the target scale (N,) of each
        window's series. A horizon step with no observed actual gets the offsets pooled over all steps."""
        N, H, Q = pred.shape
        m = mask.astype(bool)
        resid = (target[..., None].astype(np.float64) - pred) / _scale(scale)[:, None, None]  # (N, H, Q)
        pooled = _offsets(resid[m], quantiles)  # (Q,)
        offsets = np.tile(pooled, (H, 1))
        if per_horizon:
            for h in range(H):
                if m[:, h].sum() >= 10:  # too few points give a noisy quantile: keep the pooled one
                    offsets[h] = _offsets(resid[:, h][m[:, h]], quantiles)
        if not adjust_median:
            offsets[:, [i for i, q in enumerate(quantiles) if abs(q - 0.5) < 1e-9]] = 0.0
        return cls([float(q) for q in quantiles], offsets, "conformal",
                   {"windows": int(N), "points": int(m.sum()), "per_horizon": bool(per_horizon),
                    "adjust_median": bool(adjust_median)})

    def apply(self, pred: np.ndarray, target_scale: np.ndarray) -> np.ndarray:
        """Calibrated quantiles (N, H, Q) from pred (N, H, Q) in target units and the windows' target scale,
        (N,) or (N, 2) as (center, scale). Quantiles stay ordered (offsets could cross them)."""
        if pred.shape[-1] != len(self.quantiles) or pred.shape[-2] != self.offsets.shape[0]:
            raise ValueError(f"calibration fitted for (H, Q) = {self.offsets.shape}, forecasts are {pred.shape[1:]}")
        scale = np.asarray(target_scale)
        scale = _scale(scale[:, 1] if scale.ndim == 2 else scale)
        out = pred + (self.offsets[None] * scale[:, None, None]).astype(pred.dtype)
        return np.sort(out, axis=-1)

    def to_dict(self) -> dict:
        return {"method": self.method, "quantiles": self.quantiles, "offsets": self.offsets.tolist(),
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration | None":
        """The calibration stored in metrics.json / bundle.json (None when there is none)."""
        if not d or d.get("method", "none") == "none":
            return None
        return cls(list(d["quantiles"]), np.asarray(d["offsets"], np.float64), d["method"], dict(d.get("fitted_on", {})))


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


def _scale(scale: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(scale, np.float64), 1e-6)  # the model's MIN_TARGET_SCALE floor
