"""`fusioncast-train`: Hydra entry. fit (one model, or one per seed of an ensemble) → best checkpoint →
val/test metrics.json → (export)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from fusioncast.evaluation.forecasts import evaluate_model, write_metrics
from fusioncast.postfit.calibration import Calibration
from fusioncast.reporting.report import write_plots, write_report
from fusioncast.reporting.tracking import log_results
from fusioncast.training import checkpoint
from fusioncast.training.fit import build_module, fit, fit_ensemble, instantiate_list
from fusioncast.training.resume import check_fits, resumed_config

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Train (one model, or an ensemble with `ensemble.seeds`), evaluate and write metrics.json into
    cfg.paths.output_dir; returns the metrics."""
    from fusioncast.postfit.seed_ensemble import ensemble_seeds

    seeds = ensemble_seeds((cfg.get("ensemble") or {}).get("seeds"))
    ckpt_path = cfg.get("ckpt_path")
    if seeds and ckpt_path:
        raise ValueError(f"ckpt_path={ckpt_path}: a seed ensemble (ensemble.seeds={seeds}) cannot be resumed; "
                         "train it again (its members are trained afresh), or resume one model's run")
    refit = cfg.get("refit") or {}
    if seeds and refit.get("every") and refit.get("warm_start"):
        raise ValueError("refit.warm_start needs one model to start from: it does not go with ensemble.seeds")
    # a checkpoint that is unsafe, or not of this config, is refused before anything is written
    resumed = checkpoint.load(ckpt_path) if ckpt_path else None
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    # fitted here, before any DDP process starts; under DDP every rank then adopts rank 0's fit
    dm.setup("fit")
    if resumed is not None:
        check_fits(resumed, ckpt_path, dict(dm.hparams), dict(build_module(cfg, dm).hparams))
        log.info("resuming from %s (epoch %s)", ckpt_path, resumed.get("epoch"))
    loggers = instantiate_list(cfg.get("logger"))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if seeds:
        module, best, fitted, ensemble = fit_ensemble(cfg, dm, loggers, seeds)
    else:
        one = fit(cfg, dm, loggers)
        module, best, fitted, ensemble = one.module, one.best, [one], None
    metrics, plot_paths = {}, {}
    if fitted[0].trainer.is_global_zero:
        calibration = OmegaConf.to_container(cfg.calibration, resolve=True) if cfg.get("calibration") else None
        metrics = evaluate_model(module, dm, calibration=calibration)
        metrics["best_checkpoint"] = best
        if ensemble is None:
            metrics["training"] = fitted[0].training
        if ensemble is not None:
            metrics["ensemble"] = ensemble
        elif fitted[0].shrinkage is not None:
            metrics["correction_scale"] = fitted[0].shrinkage
        history = [x for f in fitted for c in f.callbacks if getattr(c, "history", None) for x in c.history]
        if history:
            metrics["train_samples_per_sec"] = float(torch.tensor(history).median())
        every = (cfg.get("refit") or {}).get("every")
        if every:  # one more training per period of the test span (fusioncast/evaluation/refit.py)
            from fusioncast.evaluation.refit import refit_backtest

            metrics["refit"] = refit_backtest(cfg, dm, str(every), initial=module, initial_checkpoint=best)
        write_metrics(metrics, cfg.paths.output_dir)
        if cfg.get("export"):
            from fusioncast.export import (
                export_bundle,  # onnx and its exporter load only when exporting
            )

            export_bundle(module, dm, Path(cfg.paths.output_dir) / "bundle", metrics=metrics, checkpoint=best or None)
        if cfg.plots:
            plot_paths = write_plots(module, dm, cfg.paths.output_dir,
                                     calibration=Calibration.from_dict(metrics.get("calibration")))
        write_report(metrics, plot_paths, cfg.paths.output_dir, title=f"fusioncast-train: {cfg.data.name}")
        # keep last (after any export): W&B gets the bundle, else the best checkpoint, as the model artifact
        bundle = Path(cfg.paths.output_dir) / "bundle"
        log_results(loggers, metrics, plot_paths, bundle if bundle.is_dir() else best, cfg.data.name)
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    metrics = train(resumed_config(cfg))
    # the value an Optuna sweep minimises: `optimized_metric` as "split/metric", e.g. "val/mae"
    name = cfg.get("optimized_metric")
    if name and metrics:
        split, metric = name.split("/")
        return float(metrics[split][metric])
    return None


if __name__ == "__main__":
    main()
