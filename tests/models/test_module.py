"""TFTModule: the large-batch lr rule, optional torch.compile, and no host sync in a CUDA step."""

from __future__ import annotations

from types import SimpleNamespace

import hydra
import lightning as L
import pytest
import torch

from fusioncast.models.module import TFTModule
from tests.conftest import TINY, compose_config


def module(**kwargs) -> TFTModule:
    data = dict(static_categorical_cardinalities=[3], encoder_categorical_cardinalities=[4], num_known_categoricals=1,
                num_static_reals=1, num_known_reals=1, num_unknown_reals=1, max_encoder_length=8,
                max_prediction_length=4)
    return TFTModule(data, hidden_size=16, **kwargs)


@pytest.mark.parametrize("rule, batch, devices, accumulate, factor", [
    (None, 1024, 1, 1, 1.0), ("sqrt", 128, 1, 1, 1.0), ("sqrt", 512, 1, 1, 2.0), ("sqrt", 256, 4, 2, 4.0),
    ("linear", 256, 2, 1, 4.0),
])
def test_lr_follows_the_global_batch(rule, batch, devices, accumulate, factor):
    m = module(lr_batch_scaling=rule, reference_batch_size=128,
               optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3}, scheduler=None)
    m._trainer = SimpleNamespace(datamodule=SimpleNamespace(hparams={"batch_size": batch}), world_size=devices,
                                 accumulate_grad_batches=accumulate)
    opt = m.configure_optimizers()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * factor)


def test_unknown_lr_rule_is_refused():
    with pytest.raises(ValueError, match="lr_batch_scaling"):
        module(lr_batch_scaling="cube")


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """model.compile=true trains the same network (compiled in place: checkpoints keep plain keys)."""
    runs = {}
    for compiled in (False, True):
        cfg = compose_config("train.yaml", tmp_path / str(compiled), TINY + ["model.dropout=0.0"])
        L.seed_everything(0)
        dm = hydra.utils.instantiate(cfg.data, _convert_="object")
        dm.setup("fit")
        m = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), compile=compiled, _convert_="object")
        trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(m, datamodule=dm)
        runs[compiled] = m
    assert runs[True].net._compiled_call_impl is not None
    assert set(runs[True].state_dict()) == set(runs[False].state_dict())
    for name, p in runs[False].state_dict().items():
        torch.testing.assert_close(runs[True].state_dict()[name], p, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_cuda_training_step_never_waits_for_the_host(tmp_path):
    """bf16 training steps on CUDA raise on any device-to-host sync (.item(), nonzero, blocking copies)."""

    class NoSync(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx >= 1:  # the first step may allocate and autotune
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.set_sync_debug_mode("default")

    cfg = compose_config("train.yaml", tmp_path, TINY + ["trainer=gpu"])
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup("fit")
    m = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=5, limit_val_batches=0,
                        gradient_clip_val=0.1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[NoSync()])
    try:
        trainer.fit(m, datamodule=dm)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bf16_training_clips_gradients_with_the_fused_optimizer(tmp_path):
    """trainer=gpu's pair (bf16-mixed, clipping) with the config's fused AdamW: Lightning alone refuses it."""
    cfg = compose_config("train.yaml", tmp_path, TINY)
    assert cfg.model.optimizer.fused and cfg.trainer.gradient_clip_val > 0
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup("fit")
    m = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")
    clipped = []

    class Norm(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # after clip and step
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            clipped.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=0.1, max_steps=2,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Norm()])
    trainer.fit(m, datamodule=dm)
    assert len(clipped) == 2 and all(n <= 0.1 + 1e-4 for n in clipped)
