"""Rolling-origin backtest of a trained model over a split, refitting nothing.

An origin is a point in time: at it, every series whose window fits the split is forecast for the
`max_prediction_length` steps that follow, from the history before it. `backtest` picks `origins`
evenly spaced origins over the split (test by default), scores each origin (all series together)
and all of them pooled, next to the seasonal-naive forecast of the same windows. `fusioncast-eval
ckpt_path=... backtest.origins=12` writes the result as `backtest.json` and `backtest.png`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.timeline import decoder_start_times
from fusioncast.data.windows import BatchLoader
from fusioncast.evaluation.forecasts import predict_windows, split_metrics
from fusioncast.models.module import TFTModule
from fusioncast.postfit.calibration import Calibration

BACKTEST_FILE = "backtest.json"
BACKTEST_PLOT = "backtest.png"


def select_origins(dm: TimeSeriesDataModule, n: int, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series, decoder_start, origin) of the windows at `n` evenly spaced origins of a split."""
    series, starts = dm.windows(split)
    keep, times = origin_mask(dm, n, split)
    return series[keep], starts[keep], times[keep]


def origin_mask(dm: TimeSeriesDataModule, n: int, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Which of the split's windows (dm.windows order) start at one of `n` evenly spaced origins, and
    every window's origin time.

    The candidate origins are the first decoder steps of the split's windows (stride 1); fewer than
    `n` origins come back when the split has fewer.
    """
    series, starts = dm.windows(split)
    if len(series) == 0:
        raise ValueError(f"the {split} split has no windows to backtest")
    times = decoder_start_times(dm, series, starts)
    candidates = np.unique(times)
    pick = candidates[np.unique(np.linspace(0, len(candidates) - 1, max(1, min(n, len(candidates)))).round().astype(int))]
    return np.isin(times, pick), times


def backtest_forecasts(module: TFTModule, dm: TimeSeriesDataModule, origins: int, split: str = "test",
                       calibration: Calibration | None = None) -> tuple[dict, np.ndarray, str]:
    """The backtest's forecasts (predict_windows' arrays, calibrated as served or tracked) of the windows
    at `origins` evenly spaced origins of `split`, their origin times, and the split used."""
    if split == "test" and dm.hparams.test_start is None:
        split = "val"  # no test split (e.g. the stallion tutorial protocol): backtest validation
    series, starts = dm.windows(split)
    keep, times = origin_mask(dm, origins, split)
    times = times[keep]
    tracked = calibration is not None and calibration.step is not None
    if not tracked:  # only the origins' windows are needed
        series, starts = series[keep], starts[keep]
    p = predict_windows(module, BatchLoader(dm.tensors(module.device), series, starts, dm.eval_batch_size))
    if calibration is not None:
        p["pred"] = calibration.apply(p["pred"], p["scale"])
    if tracked:  # adaptive: the offsets at an origin are tracked over every window of the split before it
        p["pred"] = calibration.track(p["pred"], p["target"], p["mask"], p["scale"], p["series"], p["decoder_start"])
        p = {k: v[keep] for k, v in p.items()}
    return p, times, split


def backtest(module: TFTModule, dm: TimeSeriesDataModule, origins: int, split: str = "test",
             calibration: Calibration | None = None) -> dict:
    """backtest.json's content: metrics per origin and overall, the model's and the seasonal-naive's."""
    p, times, split = backtest_forecasts(module, dm, origins, split, calibration)
    quantiles = list(module.hparams.quantiles)
    per_origin = []
    for t in np.unique(times):
        sel = times == t
        ours, base = split_metrics({k: v[sel] for k, v in p.items()}, dm, quantiles)
        per_origin.append({"origin": str(pd.Timestamp(t)), "n_series": int(sel.sum()), "model": ours, "baseline": base})
    ours, base = split_metrics(p, dm, quantiles)
    return {
        "split": split, "origins": len(per_origin), "horizon": dm.schema.max_prediction_length,
        "freq": dm.pp.freq, "seasonal_period": dm.seasonal_period, "baseline_name": "seasonal naive",
        "calibration": calibration.to_dict() if calibration is not None else None,
        "overall": {"model": ours, "baseline": base}, "per_origin": per_origin,
    }


def backtest_figure(result: dict, metrics: tuple[str, ...] = ("mae", "coverage_p10_p90")):
    """One panel per metric: model vs seasonal naive at each origin (pooled values in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origins = pd.to_datetime([o["origin"] for o in result["per_origin"]])
    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 2.8 * len(metrics)), dpi=100, sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], metrics):
        for who, style in (("model", "o-"), ("baseline", "s--")):
            if name == "coverage_p10_p90" and who == "baseline":
                continue  # a point forecast has no interval
            values = [o[who][name] for o in result["per_origin"]]
            label = "TFT" if who == "model" else result["baseline_name"]
            ax.plot(origins, values, style, label=f"{label} (overall {result['overall'][who][name]:.4g})")
        if name == "coverage_p10_p90":
            ax.axhline(0.8, color="grey", lw=0.8, ls=":", label="nominal 0.8")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    axes[0, 0].set_title(f"backtest over {result['split']}: {result['origins']} origins, horizon {result['horizon']}")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def write_backtest(result: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """Write backtest.json and backtest.png into `output_dir`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / BACKTEST_FILE).write_text(json.dumps(result, indent=2))
    fig = backtest_figure(result)
    fig.savefig(out / BACKTEST_PLOT)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out / BACKTEST_FILE, out / BACKTEST_PLOT
