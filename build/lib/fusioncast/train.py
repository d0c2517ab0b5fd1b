"""`fusioncast-train`: Hydra entry. fit (one model, or one per seed of an ensemble) → best checkpoint →
val/test metrics.json → (export)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
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


@dataclass
class Fitted:
    module: TFTModule
    best: str                  # best checkpoint ("" without a checkpoint callback)
    trainer: L.Trainer
    callbacks: list
    shrinkage: dict | None


def fit(cfg: DictConfig, dm, loggers: list, checkpoint_dir: str | None = None) -> Fitted:
    """Build, fit and reload (best checkpoint) one model; with `model.shrink_correction`, shrink it on validation."""
    module: TFTModule = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")
    callbacks = instantiate_list(cfg.get("callbacks"))
    if checkpoint_dir is not None:  # an ensemble member: checkpoints of its own
        for c in callbacks:
            if isinstance(c, ModelCheckpoint):
                c.dirpath = checkpoint_dir
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if isinstance(trainer.accelerator, CUDAAccelerator):
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast

    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        log.info("best checkpoint: %s", best)
        module = TFTModule.load_from_checkpoint(best, map_location=module.device, weights_only=False)
    shrinkage = None
    if trainer.is_global_zero and module.hparams.get("shrink_correction") and module.net.skip is not None:
        from fusioncast.shrinkage import choose_correction_scale, write_correction_scale

        shrinkage = choose_correction_scale(module, dm)
        log.info("TFT correction of the linear skip scaled by %s (validation loss %.5g; %.5g at 1, %.5g at 0)",
                 shrinkage["factors"], shrinkage["loss"], shrinkage["loss_at_1"], shrinkage["loss_at_0"])
        if best:
            write_correction_scale(best, list(shrinkage["factors"].values()))
    return Fitted(module, best, trainer, callbacks, shrinkage)


def fit_ensemble(cfg: DictConfig, dm, loggers: list, seeds: list[int]) -> tuple[TFTModule, str, list[Fitted], dict]:
    """One member per seed (fusioncast/ensemble.py), then the assembled ensemble, its checkpoint and a summary."""
    from fusioncast.ensemble import ENSEMBLE_FILE, assemble, write_checkpoint
    from fusioncast.evaluate import predict_split, split_metrics

    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    members = []
    for i, seed in enumerate(seeds):
        log.info("ensemble member %d of %d: seed %d", i + 1, len(seeds), seed)
        L.seed_everything(seed, workers=True)
        members.append(fit(cfg, dm, loggers, checkpoint_dir=str(checkpoints / f"seed_{seed}")))
    module = assemble([m.module for m in members])
    best = ""
    if members[0].trainer.is_global_zero and all(m.best for m in members):
        best = write_checkpoint(module, members[0].best, checkpoints / ENSEMBLE_FILE)
        log.info("ensemble checkpoint: %s", best)
    summary = {"seeds": seeds, "members": []}
    quantiles = list(module.hparams.quantiles)
    for seed, m in zip(seeds, members):
        score = m.trainer.checkpoint_callback.best_model_score if m.trainer.checkpoint_callback else None
        entry = {"seed": seed, "checkpoint": m.best, "best_val_loss": None if score is None else float(score),
                 # each member alone on the validation windows: what the average is measured against
                 "val": split_metrics(predict_split(m.module, dm, "val"), dm, quantiles)[0]}
        if m.shrinkage is not None:
            entry["correction_scale"] = m.shrinkage["factors"]
        summary["members"].append(entry)
    return module, best, members, summary


def train(cfg: DictConfig) -> dict:
    """Train (one model, or an ensemble with `ensemble.seeds`), evaluate and write metrics.json into
    cfg.paths.output_dir; returns the metrics."""
    from fusioncast.ensemble import ensemble_seeds

    seeds = ensemble_seeds((cfg.get("ensemble") or {}).get("seeds"))
    if seeds and cfg.get("ckpt_path"):
        raise ValueError("ckpt_path (resuming a fit) does not go with ensemble.seeds: an ensemble is trained afresh")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    # fitted here, before any DDP process starts; under DDP every rank then adopts rank 0's fit
    dm.setup("fit")
    loggers = instantiate_list(cfg.get("logger"))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if seeds:
        module, best, fitted, ensemble = fit_ensemble(cfg, dm, loggers, seeds)
    else:
        one = fit(cfg, dm, loggers)
        module, best, fitted, ensemble = one.module, one.best, [one], None
    metrics, plot_paths = {}, []
    if fitted[0].trainer.is_global_zero:
        calibration = OmegaConf.to_container(cfg.calibration, resolve=True) if cfg.get("calibration") else None
        metrics = evaluate_model(module, dm, calibration=calibration)
        metrics["best_checkpoint"] = best
        if ensemble is not None:
            metrics["ensemble"] = ensemble
        elif fitted[0].shrinkage is not None:
            metrics["correction_scale"] = fitted[0].shrinkage
        history = [x for f in fitted for c in f.callbacks if getattr(c, "history", None) for x in c.history]
        if history:
            metrics["train_samples_per_sec"] = float(torch.tensor(history).median())
        write_metrics(metrics, cfg.paths.output_dir)
        if cfg.get("export"):
            from fusioncast.export import export_bundle  # onnx and its exporter load only when exporting

            export_bundle(module, dm, Path(cfg.paths.output_dir) / "bundle", metrics=metrics, checkpoint=best or None)
        plot_paths = write_plots(module, dm, cfg.paths.output_dir,
                                 calibration=Calibration.from_dict(metrics.get("calibration")))
        write_report(metrics, plot_paths, cfg.paths.output_dir, title=f"fusioncast-train: {cfg.data.name}")
        # keep last (after any export): W&B gets the bundle, else the best checkpoint, as the model artifact
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
