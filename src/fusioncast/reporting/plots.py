"""Matplotlib figures of forecasts and of the TFT's interpretation, saved as PNG.

Pure drawing: every function takes numpy arrays and returns a Figure, so tests can read the plotted
data back (`fig.axes[0].get_lines()`). `report.py` computes what to draw from a model and data.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display (servers, CI, sweep workers)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fusioncast.quantiles import median_index

DPI = 100
MEDIAN_LABEL = "median (P50)"
ACTUAL_LABEL = "actual"


def quantile_label(q: float) -> str:
    return f"P{round(q * 100):g}"


def forecast_chart(time: np.ndarray, actual: np.ndarray, observed: np.ndarray, pred: np.ndarray,
                   quantiles: list[float], encoder_length: int, title: str = "") -> Figure:
    """Quantile fan chart of one window against its actuals.

    time (L+H,) timestamps of the window; actual/observed (L+H,) target and observed flags (history
    and horizon); pred (H, Q) quantiles in target units; the horizon is the last H steps. Bands join
    symmetric quantile pairs (P10-P90, ...); the median line is the point forecast.
    """
    L = encoder_length
    y = np.where(observed, actual, np.nan).astype(np.float64)
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=DPI)
    ax.plot(time, y, color="black", lw=1.2, label=ACTUAL_LABEL)
    horizon = time[L:]
    q = np.asarray(quantiles)
    order = np.argsort(q)
    for i in range(len(order) // 2):
        lo, hi = order[i], order[-1 - i]
        ax.fill_between(horizon, pred[:, lo], pred[:, hi], color="tab:blue", alpha=0.15 + 0.15 * i, lw=0,
                        label=f"{quantile_label(q[lo])}-{quantile_label(q[hi])}")
    mid = median_index(q)
    ax.plot(horizon, pred[:, mid], color="tab:blue", lw=1.8, label=MEDIAN_LABEL)
    ax.axvline(time[L], color="grey", ls="--", lw=0.8)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8, ncol=4, frameon=False)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def importance_chart(names: list[str], weights: np.ndarray, title: str) -> Figure:
    """Horizontal bars of mean variable-selection weights (in %), largest on top."""
    weights = np.asarray(weights, np.float64)
    order = np.argsort(weights)
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.32 * max(len(names), 1)), dpi=DPI)
    ax.barh([names[i] for i in order], 100 * weights[order], color="tab:blue")
    ax.set_xlabel("importance (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def attention_chart(attention: np.ndarray, encoder_length: int, title: str = "attention") -> Figure:
    """Mean attention over the window: a line over time relative to the forecast start (averaged over
    horizon steps) above the full horizon-step x time-step map. attention (H, L+H)."""
    H, T = attention.shape
    rel = np.arange(T) - encoder_length
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.2), dpi=DPI, height_ratios=[1, 1.3], sharex=True)
    top.plot(rel, attention.mean(0), color="tab:blue")
    top.axvline(0, color="grey", ls="--", lw=0.8)
    top.set_ylabel("mean attention")
    top.set_title(title, fontsize=10)
    top.grid(alpha=0.3)
    image = bottom.imshow(attention, aspect="auto", cmap="viridis", origin="lower",
                          extent=(rel[0] - 0.5, rel[-1] + 0.5, 0.5, H + 0.5))
    bottom.set_xlabel("time step relative to the forecast start")
    bottom.set_ylabel("horizon step")
    fig.colorbar(image, ax=[top, bottom], shrink=0.6, label="attention")
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write a PNG and free the figure (sweeps draw many)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path
