"""LightningModule around the TFT: masked quantile loss, metrics on device, optimiser and scheduler."""

from __future__ import annotations

import sys

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor

from fusioncast.data.windows import Batch
from fusioncast.models.ensemble import TFTEnsemble
from fusioncast.models.tft import TemporalFusionTransformer
from fusioncast.quantiles import median_index
from fusioncast.training import rng

RNG_KEY = "rng_states"  # checkpoint key of the generators' states at the time of saving (fusioncast/training/rng.py)


def quantile_loss(pred: Tensor, target: Tensor, mask: Tensor, quantiles: Tensor, scale: Tensor) -> Tensor:
    """Pinball loss averaged over observed points, in units of each series' target scale.

    pred (B, H, Q), target/mask (B, H), quantiles (Q,), scale (B,). Dividing by the series scale makes
    every series count alike, whatever its level; unobserved points (gaps) contribute nothing.
    """
    err = (target.unsqueeze(-1) - pred.float()) / scale[:, None, None]
    loss = torch.maximum(quantiles * err, (quantiles - 1) * err).sum(-1)
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


# configs/model/tft.yaml's optimizer and scheduler (tests/test_defaults.py keeps them equal); None: no scheduler
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 0.003, "weight_decay": 0.0001, "fused": True}
DEFAULT_SCHEDULER = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "mode": "min", "factor": 0.5,
                     "patience": 2}


class TFTModule(L.LightningModule):
    """Trains a TemporalFusionTransformer; `data_kwargs` comes from the fitted preprocessing.

    ``compile`` runs the network through torch.compile for training (``compile_mode``, e.g.
    "reduce-overhead" for CUDA graphs or "max-autotune"); it compiles in place, so checkpoints and
    export see a plain module. ``lr_batch_scaling`` ("sqrt" or "linear") scales the optimiser's lr
    by the global batch (batch size x devices x accumulation) over ``reference_batch_size``, the
    batch the lr was tuned for: large GPU batches keep training at a matched step size.
    ``shrink_correction`` (with a linear skip): after the fit, `fusioncast-train` scales the TFT's
    correction of the skip by factors chosen on validation (fusioncast/postfit/shrinkage.py).
    ``ensemble_size`` > 1 makes the network a TFTEnsemble of that many such TFTs, whose forecasts are
    averaged; it is assembled from separately trained members (fusioncast/postfit/seed_ensemble.py), never fit as one.
    ``optimizer`` / ``scheduler`` are plain config dicts (``_target_`` naming a torch.optim optimizer /
    torch.optim.lr_scheduler scheduler, and its arguments), built in configure_optimizers: checkpoints
    then hold plain data only (fusioncast/training/checkpoint.py).
    """

    def __init__(
        self,
        data_kwargs: dict,
        hidden_size: int = 32,
        attention_heads: int = 4,
        dropout: float = 0.1,
        lstm_layers: int = 1,
        quantiles: list[float] = (0.1, 0.5, 0.9),
        optimizer: dict | None = DEFAULT_OPTIMIZER,
        scheduler: dict | None = DEFAULT_SCHEDULER,
        variable_size: int | None = 8,
        compile: bool = False,
        compile_mode: str | None = None,
        lr_batch_scaling: str | None = "sqrt",
        reference_batch_size: int = 128,
        linear_skip: int | None = None,
        loss_weighting: str = "series",
        linear_skip_fit: str = "train",
        shrink_correction: bool = True,
        ensemble_size: int = 1,
    ):
        super().__init__()
        if lr_batch_scaling not in (None, "sqrt", "linear"):
            raise ValueError(f"lr_batch_scaling must be null, sqrt or linear, got {lr_batch_scaling!r}")
        if loss_weighting not in ("series", "raw"):
            raise ValueError(f"loss_weighting must be series or raw, got {loss_weighting!r}")
        if linear_skip_fit not in ("train", "lstsq"):
            raise ValueError(f"linear_skip_fit must be train or lstsq, got {linear_skip_fit!r}")
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size!r}")
        for name, spec, package in (("optimizer", optimizer, "torch.optim"),
                                    ("scheduler", scheduler, "torch.optim.lr_scheduler")):
            if spec is not None:
                torch_class(spec, name, package)  # refused here, not at the first fit
        # copies, so that nothing done to this module's hparams reaches the shared defaults; None: the
        # whole encoder (as configs/model/tft.yaml's ${data.max_encoder_length})
        optimizer, scheduler = (None if x is None else dict(x) for x in (optimizer, scheduler))
        if linear_skip is None:
            linear_skip = data_kwargs["max_encoder_length"]
        self.save_hyperparameters(logger=False)

        def tft() -> TemporalFusionTransformer:
            return TemporalFusionTransformer(
                **data_kwargs, quantiles=list(quantiles), hidden_size=hidden_size,
                attention_heads=attention_heads, dropout=dropout, lstm_layers=lstm_layers,
                variable_size=variable_size, linear_skip=linear_skip,
            )

        self.net = tft() if ensemble_size == 1 else TFTEnsemble([tft() for _ in range(ensemble_size)])
        self.register_buffer("quantiles", torch.tensor(list(quantiles), dtype=torch.float32), persistent=False)
        self.median = median_index(quantiles)
        self._rng_to_restore: dict | None = None

    def forward(self, *inputs: Tensor, return_interpretation: bool = False):
        return self.net(*inputs, return_interpretation=return_interpretation)

    def on_fit_start(self) -> None:
        if isinstance(self.net, TFTEnsemble):
            raise RuntimeError("an ensemble is trained member by member (fusioncast-train ensemble.seeds=[...]), "
                               "not fit as one model")
        # training always sees the whole correction (a checkpoint may hold factors shrunk after an earlier fit)
        self.net.correction_scale.fill_(1.0)
        # linear_skip_fit=lstsq: the skip is solved in closed form once (not when resuming) and kept fixed
        dm = self.trainer.datamodule
        if self.net.skip is not None and self.hparams.linear_skip_fit == "lstsq" and dm is not None:
            self.net.skip.requires_grad_(False)
            if self.trainer.ckpt_path is None:
                from fusioncast.data.windows import BatchLoader
                from fusioncast.models.linear_skip import fit_linear_skip

                # every window on every rank (not the rank's shard), so that all ranks solve the same fit
                loader = BatchLoader(dm.tensors(self.device), *dm.windows("train"), batch_size=4096)
                fit_linear_skip(self.net, loader)

    # ---- exact resume: the generators continue where the checkpoint left them --------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng.collect()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    def on_train_start(self) -> None:
        # after the sanity check (which Lightning runs with the generators isolated), before the first batch
        if self._rng_to_restore is not None:
            rng.restore(self._rng_to_restore)
            self._rng_to_restore = None
        # a fit that early stopping had ended stays ended (Lightning does not save should_stop)
        if self.trainer.ckpt_path and any(c.wait_count >= c.patience for c in self.trainer.early_stopping_callbacks):
            self.trainer.should_stop = True

    def _step(self, batch: Batch, stage: str) -> Tensor:
        pred = self(*batch.inputs())
        scale = batch.target_scale[:, 1]
        if self.hparams.loss_weighting == "raw":
            # errors in target units (over one constant per batch): big series count more, as in a MAE
            # over all series; "series" divides by each series' scale, so that every series counts alike
            scale = scale.mean().expand_as(scale)
        loss = quantile_loss(pred, batch.target, batch.target_mask, self.quantiles, scale)
        # logged on epoch only: Lightning accumulates on device, so there is no host sync per step
        n = batch.series.shape[0]
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=stage != "train")
        if stage != "train":
            mask = batch.target_mask.float()
            mae = ((pred[..., self.median].float() - batch.target).abs() * mask).sum() / mask.sum().clamp_min(1.0)
            self.log(f"{stage}/mae", mae, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Without a loss scaler (fp32, bf16-mixed) clip as usual, also with a fused optimizer: Lightning's
        # mixed-precision plugin refuses that pair for fear of a scaler that bf16 does not have.
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and getattr(plugin, "scaler", None) is None:
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_model(self) -> None:
        if self.hparams.compile and getattr(self.net, "_compiled_call_impl", None) is None:
            self.net.compile(mode=self.hparams.compile_mode)

    def lr_factor(self) -> float:
        """The large-batch rule's factor on the configured lr (1 without a rule or a datamodule)."""
        rule, trainer = self.hparams.lr_batch_scaling, self._trainer
        batch = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("batch_size") if trainer else None
        if rule is None or batch is None:
            return 1.0
        ratio = batch * trainer.world_size * trainer.accumulate_grad_batches / self.hparams.reference_batch_size
        return ratio**0.5 if rule == "sqrt" else ratio

    def on_train_epoch_end(self) -> None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_epoch=True)
        # The epoch's scheduler step, here rather than where Lightning steps (after the epoch's checkpoint
        # is written, and skipped for that epoch on resume): so the checkpoint holds the stepped state.
        if not self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # an epoch cut short (max_steps): no step, as Lightning
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != "epoch" or (self.current_epoch + 1) % config.frequency:
                continue
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = self.trainer.callback_metrics.get(config.monitor)
                if metric is None:
                    raise ValueError(f"the scheduler ReduceLROnPlateau needs {config.monitor}, which this epoch did "
                                     "not log (validation off?): set model.scheduler=null or validate every epoch")
                config.scheduler.step(metric)
            else:
                config.scheduler.step()

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Lightning's step: none (on_train_epoch_end has stepped the scheduler)."""

    def configure_optimizers(self):
        spec = self.hparams.optimizer or DEFAULT_OPTIMIZER
        opt = torch_class(spec, "optimizer", "torch.optim")(self.parameters(), **_arguments(spec))
        for group in opt.param_groups:
            group["lr"] *= self.lr_factor()
        spec = self.hparams.scheduler
        if spec is None:
            return opt
        scheduler = torch_class(spec, "scheduler", "torch.optim.lr_scheduler")(opt, **_arguments(spec))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}}


def torch_class(spec: dict, name: str, package: str) -> type:
    """The class a config dict's `_target_` names in `package` (torch.optim or torch.optim.lr_scheduler).

    Looked up among torch's already imported modules, never imported by name: a checkpoint's
    hyperparameters are data, and a `_target_` read from one must not reach anything else."""
    target = spec.get("_target_") if isinstance(spec, dict) else None
    example = f"{package}.{'AdamW' if name == 'optimizer' else 'ReduceLROnPlateau'}"
    if not isinstance(target, str):
        raise ValueError(f"model.{name} must be a config dict with a _target_ (e.g. {example}), got {spec!r}")
    module, _, attr = target.rpartition(".")
    found = getattr(sys.modules[module], attr, None) if module.split(".")[:2] == ["torch", "optim"] and (
        module in sys.modules) else None
    base = torch.optim.Optimizer if name == "optimizer" else (torch.optim.lr_scheduler.LRScheduler,
                                                              torch.optim.lr_scheduler.ReduceLROnPlateau)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ValueError(f"model.{name}._target_ must name a {package} {name} (e.g. {example}), got {target!r}")
    return found


def _arguments(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if not k.startswith("_")}
