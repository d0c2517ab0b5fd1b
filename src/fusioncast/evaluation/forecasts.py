"""A model's forecasts on the validation/test windows and their metrics (metrics.json): what
`fusioncast-train` and `fusioncast-eval` write, and what backtests, shrinkage and ensembles score with."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.windows import BatchLoader
from fusioncast.evaluation.metrics import forecast_metrics, seasonal_naive
from fusioncast.models.module import TFTModule
from fusioncast.postfit.calibration import METHODS, NONE, Calibration, cross_fit

log = logging.getLogger(__name__)


def predict_split(module: TFTModule, dm: TimeSeriesDataModule, split: str) -> dict[str, np.ndarray]:
    """Quantile forecasts (target units) for every window of a split, with actuals and encoder targets."""
    return predict_windows(module, dm.loader(split, device=module.device, shuffle=False))


@torch.inference_mode()
def predict_windows(module: TFTModule, loader: BatchLoader) -> dict[str, np.ndarray]:
    """Quantile forecasts of the windows a loader yields: pred (N, H, Q), target/mask (N, H), series,
    decoder_start (N,), encoder targets enc_y/enc_mask (N, L) and the target scale (N,)."""
    module.eval()
    out: dict[str, list] = {k: [] for k in ("pred", "target", "mask", "series", "decoder_start", "enc_y", "enc_mask", "scale")}
    for b in loader:
        out["pred"].append(module(*b.inputs()).float())
        out["target"].append(b.target)
        out["mask"].append(b.target_mask)
        out["series"].append(b.series)
        out["decoder_start"].append(b.decoder_start)
        out["enc_y"].append(b.encoder_real[..., 0])
        out["enc_mask"].append(b.encoder_mask)
        out["scale"].append(b.target_scale[:, 1])
    return {k: torch.cat(v).cpu().numpy() for k, v in out.items()}


def split_metrics(p: dict[str, np.ndarray], dm: TimeSeriesDataModule, quantiles: list[float]) -> tuple[dict, dict]:
    """(model metrics, seasonal-naive metrics) on the same windows."""
    scale = dm.mase_scale[p["series"]]
    ours = forecast_metrics(p["target"], p["mask"], p["pred"], quantiles, scale, p["scale"])
    naive = seasonal_naive(p["enc_y"], p["enc_mask"], p["target"].shape[1], dm.seasonal_period)
    base = forecast_metrics(p["target"], p["mask"], np.repeat(naive[..., None], len(quantiles), -1), quantiles, scale,
                            p["scale"])
    ours["n_windows"] = base["n_windows"] = int(len(p["series"]))
    return ours, base


def fit_calibration(module: TFTModule, dm: TimeSeriesDataModule, calibration: dict | None,
                    val: dict[str, np.ndarray] | None = None) -> Calibration | None:
    """The calibration a `calibration` config asks for (None for method none), fitted on the val windows."""
    if not calibration or calibration.get("method", "none") == "none":
        return None
    if calibration["method"] not in METHODS:
        raise ValueError(f"calibration.method must be one of {', '.join(METHODS)}, got {calibration['method']!r}")
    p = val if val is not None else predict_split(module, dm, "val")
    return Calibration.fit(p["pred"], p["target"], p["mask"], p["scale"], list(module.hparams.quantiles),
                           **_fit_options(calibration))


def _fit_options(calibration: dict) -> dict:
    """Calibration.fit's arguments from a calibration config; keys it leaves out take fit's defaults."""
    keys = ("per_horizon", "adjust_median", "method", "step", "width_step")
    return {k: calibration[k] for k in keys if calibration.get(k) is not None}


def evaluate_model(module: TFTModule, dm: TimeSeriesDataModule, splits=("val", "test"),
                   calibration: dict | None = None) -> dict:
    """metrics.json's content: a block per split and a `baseline` block with the same metrics.

    With test_start=None there is no test split and no test block. With a `calibration` config
    (method conformal) the val and test blocks are of calibrated forecasts (the test block with
    offsets fitted on all of val; the val block cross-fitted, so that it is out of sample), the
    raw model's blocks move to `uncalibrated` and the fitted offsets to `calibration`. Method
    adaptive then tracks the offsets online over each split's windows (Calibration.track), as a
    forecaster fed each actual would; the blocks before tracking go to `served`, since the fitted
    offsets, applied as they are, are what the server (which sees no actuals) gives. With method
    conformal `served` equals the val/test blocks. `coverage_p10_p90` sums up the P10-P90 coverage
    per split: raw, served (static offsets) and tracked (null unless adaptive). Without a calibration
    (method none) `calibration` is `{"method": "none", ...}`.
    """
    metrics: dict = {"baseline": {}, "seasonal_period": dm.seasonal_period}
    if dm.hparams.test_start is None:
        splits = [s for s in splits if s != "test"]
    quantiles = list(module.hparams.quantiles)
    preds = {split: predict_split(module, dm, split) for split in splits}
    cal = fit_calibration(module, dm, calibration, preds.get("val"))
    if cal is not None:
        metrics["calibration"], metrics["uncalibrated"], metrics["served"] = cal.to_dict(), {}, {}
        coverage = metrics["coverage_p10_p90"] = {}
    else:
        metrics["calibration"] = copy.deepcopy(NONE)
    for split, p in preds.items():
        if cal is not None:
            metrics["uncalibrated"][split] = split_metrics(p, dm, quantiles)[0]
            if split == "val":
                pred = cross_fit(p["pred"], p["target"], p["mask"], p["scale"], quantiles,
                                 folds=calibration.get("folds", 5), **_fit_options(calibration))
            else:
                pred = cal.apply(p["pred"], p["scale"])
            metrics["served"][split] = split_metrics({**p, "pred": pred}, dm, quantiles)[0]
            if cal.step is not None:
                pred = cal.track(pred, p["target"], p["mask"], p["scale"], p["series"], p["decoder_start"])
            p = {**p, "pred": pred}
        ours, base = split_metrics(p, dm, quantiles)
        metrics[split], metrics["baseline"][split] = ours, base
        if cal is not None:
            coverage[split] = {"raw": metrics["uncalibrated"][split]["coverage_p10_p90"],
                               "served": metrics["served"][split]["coverage_p10_p90"],
                               "tracked": ours["coverage_p10_p90"] if cal.step is not None else None}
    return metrics


def write_metrics(metrics: dict, output_dir: str | Path) -> Path:
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
    for split in ("val", "test"):
        if split in metrics:
            log.info("%s: MAE %.4g (seasonal naive %.4g), coverage P10-P90 %.2f", split, metrics[split]["mae"],
                     metrics["baseline"][split]["mae"], metrics[split]["coverage_p10_p90"])
            c = metrics.get("coverage_p10_p90", {}).get(split)
            if c and c["tracked"] is not None:
                log.info("%s: coverage P10-P90 raw %.2f, served (fitted offsets) %.2f, tracked %.2f", split, c["raw"],
                         c["served"], c["tracked"])
    return path
