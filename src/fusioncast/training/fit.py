"""Fitting models: one TFT from a config (its best checkpoint reloaded, shrunk on validation when asked),
a warm start from another, and seed ensembles of them. `fusioncast-train` (train.py) and the scheduled
refits (evaluation/refit.py) both fit through here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from omegaconf import DictConfig

from fusioncast.models.module import TFTModule
from fusioncast.training import checkpoint
from fusioncast.training.budget import parse_budget

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
    training: dict             # how the fit ended (training_summary)


def training_summary(trainer: L.Trainer, budget, seconds: float) -> dict:
    """metrics.json's `training` block: the budget, how long the fit took, how many epochs and steps it
    ran, and what stopped it (budget, early_stopping or max_epochs)."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    early = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    if budget is not None and timer is not None and timer.time_remaining() is not None and timer.time_remaining() <= 0:
        stopped_by = "budget"
    elif early is not None and early.stopped_epoch > 0:
        stopped_by = "early_stopping"
    elif trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
        stopped_by = "max_epochs"
    else:
        stopped_by = "other"  # max_steps, a KeyboardInterrupt, ...
    ckpt = trainer.checkpoint_callback
    score = getattr(ckpt, "best_model_score", None) if ckpt is not None else None
    return {"budget_s": None if budget is None else budget.total_seconds(), "fit_s": round(seconds, 2),
            "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step), "stopped_by": stopped_by,
            "best_val_loss": None if score is None else float(score)}


def build_module(cfg: DictConfig, dm) -> TFTModule:
    return hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")


def fit(cfg: DictConfig, dm, loggers: list, checkpoint_dir: str | None = None, init: TFTModule | None = None) -> Fitted:
    """Build, fit and reload (best checkpoint) one model; with `model.shrink_correction`, shrink it on validation.
    With `ckpt_path`, the fit resumes from that checkpoint (read through fusioncast/training/checkpoint.py).
    `init`: a trained model whose weights this one starts from (a warm-started refit, fusioncast/evaluation/refit.py);
    the normalisation buffers stay this data's own."""
    module = build_module(cfg, dm)
    if init is not None:
        warm_start(module, init)
    callbacks = instantiate_list(cfg.get("callbacks"))
    if checkpoint_dir is not None:  # an ensemble member: checkpoints of its own
        for c in callbacks:
            if isinstance(c, ModelCheckpoint):
                c.dirpath = checkpoint_dir
    budget = parse_budget(cfg.trainer.get("max_time"))  # `budget=15m` sets trainer.max_time (configs/train.yaml)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                 max_time=budget, plugins=[checkpoint.SafeCheckpointIO()])
    if isinstance(trainer.accelerator, CUDAAccelerator):
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast

    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    training = training_summary(trainer, budget, time.perf_counter() - start)
    if training["stopped_by"] == "budget":
        log.info("training stopped by its budget (%s) after %d epochs", budget, training["epochs"])

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        log.info("best checkpoint: %s", best)
        module = checkpoint.load_model(best, module.device)[0]
    shrinkage = None
    if trainer.is_global_zero and module.hparams.get("shrink_correction") and module.net.skip is not None:
        from fusioncast.postfit.shrinkage import choose_correction_scale, write_correction_scale

        shrinkage = choose_correction_scale(module, dm)
        log.info("TFT correction of the linear skip scaled by %s (validation loss %.5g; %.5g at 1, %.5g at 0)",
                 shrinkage["factors"], shrinkage["loss"], shrinkage["loss_at_1"], shrinkage["loss_at_0"])
        if best:
            write_correction_scale(best, list(shrinkage["factors"].values()))
    return Fitted(module, best, trainer, callbacks, shrinkage, training)


def warm_start(module: TFTModule, init: TFTModule) -> None:
    """Copy `init`'s weights into `module` (same config, possibly refitted preprocessing)."""
    own = module.net.state_dict()
    keep = {"real_center", "real_scale", "correction_scale"}  # this fit's scalers; training starts at factor 1
    given = {k: v for k, v in init.net.state_dict().items() if k not in keep}
    wrong = [k for k, v in given.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"cannot warm-start from a model of another shape ({wrong[:3]}): the data's categories changed")
    module.net.load_state_dict(given, strict=False)


def fit_ensemble(cfg: DictConfig, dm, loggers: list, seeds: list[int]) -> tuple[TFTModule, str, list[Fitted], dict]:
    """One member per seed (fusioncast/postfit/seed_ensemble.py), then the assembled ensemble, its checkpoint and a
    summary."""
    from fusioncast.evaluation.forecasts import predict_split, split_metrics
    from fusioncast.postfit.seed_ensemble import ENSEMBLE_FILE, assemble, write_checkpoint

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
        entry["training"] = m.training
        summary["members"].append(entry)
    return module, best, members, summary
