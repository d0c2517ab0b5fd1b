"""Forecasts and metrics on the validation/test windows; `fusioncast-eval ckpt_path=...`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fusioncast.calibration import METHODS, Calibration, cross_fit
from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.windows import BatchLoader
from fusioncast.metrics import forecast_metrics, seasonal_naive
from fusioncast.models.module import TFTModule
from fusioncast.report import write_plots, write_report

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
    return {"per_horizon": calibration.get("per_horizon", True), "adjust_median": calibration.get("adjust_median", False),
            "method": calibration["method"], "step": calibration.get("step", 0.01),
            "width_step": calibration.get("width_step", 0.0)}


def evaluate_model(module: TFTModule, dm: TimeSeriesDataModule, splits=("val", "test"),
                   calibration: dict | None = None) -> dict:
    """metrics.json's content: a block per split and a `baseline` block with the same metrics.

    With test_start=None there is no test split and no test block. With a `calibration` config
    (method conformal) the val and test blocks are of calibrated forecasts (the test block with
    offsets fitted on all of val; the val block cross-fitted, so that it is out of sample), the
    raw model's blocks move to `uncalibrated` and the fitted offsets to `calibration`. Method
    adaptive then tracks the offsets online over each split's windows (Calibration.track); the
    blocks before tracking go to `conformal_static`.
    """
    metrics: dict = {"baseline": {}, "seasonal_period": dm.seasonal_period}
    if dm.hparams.test_start is None:
        splits = [s for s in splits if s != "test"]
    quantiles = list(module.hparams.quantiles)
    preds = {split: predict_split(module, dm, split) for split in splits}
    cal = fit_calibration(module, dm, calibration, preds.get("val"))
    if cal is not None:
        metrics["calibration"], metrics["uncalibrated"] = cal.to_dict(), {}
    for split, p in preds.items():
        if cal is not None:
            metrics["uncalibrated"][split] = split_metrics(p, dm, quantiles)[0]
            if split == "val":
                pred = cross_fit(p["pred"], p["target"], p["mask"], p["scale"], quantiles,
                                 folds=calibration.get("folds", 5), **_fit_options(calibration))
            else:
                pred = cal.apply(p["pred"], p["scale"])
            if cal.step is not None:
                metrics.setdefault("conformal_static", {})[split] = split_metrics({**p, "pred": pred}, dm, quantiles)[0]
                pred = cal.track(pred, p["target"], p["mask"], p["scale"], p["series"], p["decoder_start"])
            p = {**p, "pred": pred}
        ours, base = split_metrics(p, dm, quantiles)
        metrics[split], metrics["baseline"][split] = ours, base
    return metrics


def write_metrics(metrics: dict, output_dir: str | Path) -> Path:
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
    for split in ("val", "test"):
        if split in metrics:
            log.info("%s: MAE %.4g (seasonal naive %.4g), coverage P10-P90 %.2f", split, metrics[split]["mae"],
                     metrics["baseline"][split]["mae"], metrics[split]["coverage_p10_p90"])
    return path


def load_checkpoint(ckpt_path: str, data_overrides: dict | None = None, device: str | None = None):
    """(module, datamodule) from a checkpoint: the data config and fitted preprocessing travel in it.

    `data_overrides` replace keys of the stored data config (e.g. `path` to point at another copy).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    state = ckpt.get(TimeSeriesDataModule.__qualname__)
    if state is None:
        raise ValueError(f"{ckpt_path} is not a fusioncast checkpoint (no {TimeSeriesDataModule.__qualname__} state)")
    hparams = {**state["hparams"], **{k: v for k, v in (data_overrides or {}).items() if v is not None}}
    dm = TimeSeriesDataModule(**hparams)
    dm.load_state_dict(state)
    dm.setup("test")
    module = TFTModule.load_from_checkpoint(ckpt_path, map_location=device, weights_only=False)
    return module, dm


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    """Recompute metrics.json (val, test, baseline) from a checkpoint into this run's output directory."""
    overrides = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    module, dm = load_checkpoint(cfg.ckpt_path, overrides)
    calibration = OmegaConf.to_container(cfg.calibration, resolve=True) if cfg.get("calibration") else None
    metrics = evaluate_model(module, dm, calibration=calibration)
    metrics["checkpoint"] = str(cfg.ckpt_path)
    print(f"wrote {write_metrics(metrics, cfg.paths.output_dir)}")
    if cfg.get("backtest") and cfg.backtest.origins:
        from fusioncast.backtest import backtest, write_backtest  # backtest imports this module

        result = backtest(module, dm, cfg.backtest.origins, cfg.backtest.split,
                          Calibration.from_dict(metrics.get("calibration")))
        print("wrote {} and {}".format(*write_backtest(result, cfg.paths.output_dir)))
    plot_paths = write_plots(module, dm, cfg.paths.output_dir,
                             calibration=Calibration.from_dict(metrics.get("calibration")))
    print(f"wrote {write_report(metrics, plot_paths, cfg.paths.output_dir, title=f'fusioncast-eval: {dm.hparams.name}')}")


if __name__ == "__main__":
    main()
