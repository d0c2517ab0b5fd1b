"""Forecast metrics over windows (numpy), and the seasonal-naive baseline on the same windows.

All metrics skip unobserved targets (gaps). q-risk is the TFT paper's normalised quantile loss
2 Σ QL_q(y, ŷ_q) / Σ |y| (so qrisk_p50 is the WAPE Σ|e| / Σ|y|); MASE scales each point by its
series' in-sample seasonal-naive MAE. `mape_step{H}` is Σ|e| / Σ|y| at the last horizon step H alone (the
score of forecasts made H steps ahead, e.g. NYC taxi's `mape_step5`). `mae_scaled`/`mse_scaled` are MAE/MSE in units of the fitted
target scale (with target_normalizer=global: the z-normalised units the ETT/Informer tables use).
"""

from __future__ import annotations

import numpy as np

from fusioncast.quantiles import median_index, nearest_index

METRIC_NAMES = ("loss", "mae", "rmse", "smape", "mase", "qrisk_p10", "qrisk_p50", "qrisk_p90", "coverage_p10_p90",
                "mse", "mae_scaled", "mse_scaled")


def forecast_metrics(y: np.ndarray, mask: np.ndarray, pred: np.ndarray, quantiles: list[float],
                     mase_scale: np.ndarray, target_scale: np.ndarray) -> dict[str, float]:
    """Metrics of quantile forecasts.

    y, mask: (N, H) actuals and observed flags; pred: (N, H, Q) in target units (the median quantile is
    the point forecast); mase_scale, target_scale: (N,) per window's series. `loss` is the training
    objective: the pinball loss summed over quantiles in units of the series' target scale.
    """
    m = mask.astype(bool)
    last_step = f"mape_step{y.shape[1]}"
    if not m.any():
        return {k: float("nan") for k in (*METRIC_NAMES, last_step)}
    y64, p = y.astype(np.float64), pred.astype(np.float64)
    point = p[..., median_index(quantiles)]
    err = (y64 - point)[m]
    denom = np.abs(y64[m]) + np.abs(point[m])
    q = np.asarray(quantiles, np.float64)
    e = (y64[..., None] - p) / target_scale[:, None, None]
    out = {
        "loss": float(np.maximum(q * e, (q - 1) * e).sum(-1)[m].mean()),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "smape": float(np.mean(np.where(denom > 0, 2 * np.abs(err) / np.where(denom > 0, denom, 1), 0.0))),
        "mase": float((np.abs(y64 - point) / mase_scale[:, None])[m].mean()),
        "mse": float((err**2).mean()),
    }
    scaled = ((y64 - point) / target_scale[:, None])[m]
    out["mae_scaled"], out["mse_scaled"] = float(np.abs(scaled).mean()), float((scaled**2).mean())
    last = m[:, -1]
    out[last_step] = float(np.abs(y64 - point)[:, -1][last].sum() / max(np.abs(y64[:, -1][last]).sum(), 1e-12))
    abs_sum = max(np.abs(y64[m]).sum(), 1e-12)
    for q in (0.1, 0.5, 0.9):
        e = (y64 - p[..., nearest_index(quantiles, q)])[m]
        out[f"qrisk_p{int(q * 100)}"] = float(2 * np.maximum(q * e, (q - 1) * e).sum() / abs_sum)
    lo, hi = p[..., nearest_index(quantiles, 0.1)][m], p[..., nearest_index(quantiles, 0.9)][m]
    out["coverage_p10_p90"] = float(((y64[m] >= lo) & (y64[m] <= hi)).mean())
    return out


def seasonal_naive(encoder_y: np.ndarray, encoder_mask: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """Repeat the last observed season of the encoder: ŷ[h] = y[L - m + (h mod m)] (N, H).

    With a season longer than the encoder (m > L) it degrades to the last value (m = 1). Unobserved
    encoder values are filled with the last observed value before them.
    """
    n, L = encoder_y.shape
    m = period if period <= L else 1
    # forward-fill unobserved encoder values (gaps) so the baseline never repeats a filler zero
    idx = np.where(encoder_mask, np.arange(L)[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    filled = encoder_y[np.arange(n)[:, None], idx]
    cols = L - m + (np.arange(horizon) % m)
    return filled[:, cols]
