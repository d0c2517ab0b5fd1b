"""`fusioncast-train`: Hydra entry. fit → best checkpoint → val/test metrics.json → (export)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from omegaconf import DictConfig, OmegaConf

from fusioncast.calibration import Calibration
from fusioncast.evaluate import evaluate_model, write_metrics
from fusioncast.models.module import TFTModule
from fusioncast.report import write_plots, write_report
from fusioncast.tracking import log_results

log = logging.getLogger(__name__)


def instantiate_list(cfg: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a group like `callbacks` or `logger` (None entries skipped)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def train(cfg: DictConfig) -> dict:
    """Train, evaluate and write metrics.json into cfg.paths.output_dir; returns the metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    # fitted here, before any DDP process starts; under DDP every rank then adopts rank 0's fit
    dm.setup("fit")
    module: TFTModule = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if isinstance(trainer.accelerator, CUDAAccelerator):
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        log.info("best checkpoint: %s", best)
        module = TFTModule.load_from_checkpoint(best, map_location=module.device, weights_only=False)
    metrics = {}
    if trainer.is_global_zero:
        shrinkage = None
        if module.hparams.get("shrink_correction") and module.net.skip is not None:
            from fusioncast.shrinkage import choose_correction_scale, write_correction_scale

            shrinkage = choose_correction_scale(module, dm)
            log.info("TFT correction of the linear skip scaled by %s (validation loss %.5g; %.5g at 1, %.5g at 0)",
                     shrinkage["factors"], shrinkage["loss"], shrinkage["loss_at_1"], shrinkage["loss_at_0"])
            if best:
                write_correction_scale(best, list(shrinkage["factors"].values()))
        calibration = OmegaConf.to_container(cfg.calibration, resolve=True) if cfg.get("calibration") else None
        metrics = evaluate_model(module, dm, calibration=calibration)
        metrics["best_checkpoint"] = best
        if shrinkage is not None:
            metrics["correction_scale"] = shrinkage
        throughput = [c for c in callbacks if hasattr(c, "history") and c.history]
        if throughput:
            metrics["train_samples_per_sec"] = float(torch.tensor(throughput[0].history).median())
        write_metrics(metrics, cfg.paths.output_dir)
        if cfg.get("export"):
            from fusioncast.export import export_bundle  # onnx and its exporter load only when exporting

            export_bundle(module, dm, Path(cfg.paths.output_dir) / "bundle", metrics=metrics, checkpoint=best or None)
        plot_paths = write_plots(module, dm, cfg.paths.output_dir,
                                 calibration=Calibration.from_dict(metrics.get("calibration")))
        write_report(metrics, plot_paths, cfg.paths.output_dir, title=f"fusioncast-train: {cfg.data.name}")
    # keep last (after any export): W&B gets the bundle, else the best checkpoint, as the model artifact
    if trainer.is_global_zero:
        bundle = Path(cfg.paths.output_dir) / "bundle"
        log_results(loggers, metrics, plot_paths, bundle if bundle.is_dir() else best, cfg.data.name)
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # the value an Optuna sweep minimises: `optimized_metric` as "split/metric", e.g. "val/mae"
    name = cfg.get("optimized_metric")
    if name and metrics:
        split, metric = name.split("/")
        return float(metrics[split][metric])
    return None


if __name__ == "__main__":
    main()
