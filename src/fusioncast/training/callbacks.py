"""Training callbacks of our own: throughput (samples/s) per epoch, printed and logged; Optuna pruning in sweeps."""

from __future__ import annotations

import time

import lightning as L
import torch


class Throughput(L.Callback):
    """Samples/s of each training epoch, end to end (data included), logged as `train/samples_per_sec`.

    Batch sizes come from tensor shapes (no device sync). The clock runs from the epoch's start to
    its last training batch (validation excluded), after one synchronize there so that asynchronous
    CUDA work is counted.
    """

    def __init__(self, verbose: bool = True):
        self.verbose = verbose
        self.samples = 0
        self.start = self.stop = 0.0
        self.history: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples, self.start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += batch.series.shape[0]
        if batch_idx + 1 == trainer.num_training_batches and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.stop = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = self.stop - self.start
        rate = self.samples * trainer.world_size / max(elapsed, 1e-9)
        self.history.append(rate)
        pl_module.log("train/samples_per_sec", rate, on_epoch=True, rank_zero_only=True)
        if self.verbose and trainer.is_global_zero:
            print(f"epoch {trainer.current_epoch}: {rate:,.0f} samples/s ({self.samples * trainer.world_size} samples in {elapsed:.1f} s)")


def optuna_pruning(monitor: str = "val/loss") -> L.Callback:
    """In a trial of `hparams_search=optuna`: optuna-integration's Lightning pruning callback, which reports
    `monitor` to the trial after every validation and stops the fit (optuna.TrialPruned) when the study's
    pruner says so. Outside a sweep trial there is nothing to report to: a callback that does nothing."""
    from hydra_plugins.fusioncast_optuna_sweeper.trial import current_trial

    trial = current_trial()
    if trial is None:
        return L.Callback()
    from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=monitor)
