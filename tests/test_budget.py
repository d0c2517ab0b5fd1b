"""The training budget (`budget=...` / `trainer.max_time=...`) and epochs of sampled windows
(`data.epoch_windows`): a tiny budget stops training, and the best checkpoint within it is the model."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusioncast.data.windows import BatchLoader
from fusioncast.evaluation.forecasts import predict_split, split_metrics
from fusioncast.train import train
from fusioncast.training.budget import parse_budget
from fusioncast.training.checkpoint import load_with_data
from tests.conftest import TINY, compose_config


@pytest.mark.parametrize("text, seconds", [
    ("15m", 900), ("1h30m", 5400), ("90s", 90), ("2h", 7200), ("1.5h", 5400), (15, 900), ("15", 900),
    ("00:00:15:00", 900), ("01:02:03:04", 93784), ("00:10:00", 600), ("05:30", 330), ({"minutes": 2}, 120),
    (dt.timedelta(seconds=7), 7)])
def test_budget_forms(text, seconds):
    assert parse_budget(text).total_seconds() == seconds


@pytest.mark.parametrize("text", [None, "null", "none", 0, "0"])
def test_no_budget(text):
    assert parse_budget(text) is None


@pytest.mark.parametrize("text", ["soon", "15 minutes", "-5m", -1, True, "1:2:3:4:5", {"weeks2": 1}])
def test_bad_budget_is_refused_naming_the_key(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def loader(n: int, epoch_windows: int | None, batch_size: int = 3, seed: int = 5) -> BatchLoader:
    class Windows:  # the loader only gathers through this
        device = torch.device("cpu")
        L = H = 1

        @staticmethod
        def gather(series, starts, factor=None):
            return series

    return BatchLoader(Windows(), np.arange(n), np.zeros(n, np.int64), batch_size, shuffle=True, seed=seed,
                       epoch_windows=epoch_windows)


def epoch_order(b: BatchLoader) -> list[int]:
    return torch.cat(list(b)).tolist()


def test_sampled_epochs_see_every_window_once_before_any_twice():
    b = loader(10, 4)
    assert len(b) == math.ceil(4 / 3)
    epochs = [epoch_order(b) for _ in range(5)]  # 20 windows: the whole set twice
    assert all(len(e) == 4 for e in epochs)
    stream = [w for e in epochs for w in e]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # each pass its own permutation
    # the order of an epoch is a function of (seed, epoch): a fresh loader set to epoch 3 repeats it
    again = loader(10, 4)
    again.epoch = 3
    assert epoch_order(again) == epochs[3]


def test_a_sampled_epoch_resumes_from_its_sampler_state():
    """What a checkpoint saves (sampler_state, and the batch inside an epoch) continues the stream exactly,
    across the end of a pass over the windows too."""
    epochs = [epoch_order(b) for b in [loader(10, 4)] for _ in range(5)]
    at_end = loader(10, 4)
    for _ in range(2):
        list(at_end)
    again = loader(10, 4)
    again.load_sampler_state(at_end.sampler_state())
    assert epoch_order(again) == epochs[2] and epoch_order(again) == epochs[3]
    inside = loader(10, 4, batch_size=1)  # one window a batch: resume 3 windows into epoch 2 (pass 0 -> 1)
    inside.load_sampler_state({"epoch": 3}, resume_at=3)
    assert epoch_order(inside) == epochs[2][3:] and epoch_order(inside) == epochs[3]


def test_a_sampled_fit_resumed_inside_an_epoch_ends_as_the_whole_fit(tmp_path):
    """Lightning's own resume from a checkpoint saved mid-epoch, with epochs of 300 of the 951 windows:
    the weights at the end equal those of the uninterrupted fit."""
    import hydra
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from fusioncast.training import checkpoint

    def fit_sampled(out, ckpt_path=None):
        cfg = compose_config("train.yaml", out, TINY + ["data.epoch_windows=300", "model.scheduler.patience=0"])
        L.seed_everything(cfg.seed, workers=True)
        dm = hydra.utils.instantiate(cfg.data, _convert_="object")
        dm.setup("fit")
        module = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")
        every = ModelCheckpoint(dirpath=out / "steps", every_n_train_steps=7, save_top_k=-1, filename="{step}")
        trainer = L.Trainer(accelerator="cpu", max_epochs=4, logger=False, callbacks=[every], enable_progress_bar=False,
                            enable_model_summary=False, plugins=[checkpoint.SafeCheckpointIO()])
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return module, trainer

    whole, trainer = fit_sampled(tmp_path / "whole")
    assert trainer.global_step == 4 * math.ceil(300 / 64)  # 5 batches an epoch
    mid = tmp_path / "whole" / "steps" / "step=14.ckpt"  # epoch 2, 4 of its 5 batches; epoch 3 wraps the pass
    saved = checkpoint.load(mid)["TimeSeriesDataModule"]
    assert saved["sampler"] == {"epoch": 3} and saved["sampler_resume_at"] == 4
    resumed, _ = fit_sampled(tmp_path / "resumed", str(mid))
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_an_epoch_larger_than_the_table_is_the_whole_table_as_before():
    assert epoch_order(loader(10, 10)) == epoch_order(loader(10, None)) == epoch_order(loader(10, 1000))
    assert sorted(epoch_order(loader(10, None))) == list(range(10))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "many", True])
def test_bad_epoch_windows_is_refused_naming_the_key(bad):
    with pytest.raises(ValueError, match="data.epoch_windows"):
        loader(10, bad)


def test_training_epochs_are_epoch_windows_long(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY + ["trainer.limit_train_batches=null", "data.epoch_windows=100",
                                                         "trainer.max_epochs=3", "model.shrink_correction=false"])
    metrics = train(cfg)
    assert metrics["training"]["epochs"] == 3 and metrics["training"]["stopped_by"] == "max_epochs"
    assert metrics["training"]["steps"] == 3 * math.ceil(100 / cfg.data.batch_size)


def test_a_tiny_budget_stops_training_and_the_best_checkpoint_is_used(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY + ["trainer.max_epochs=200", "budget=1s",
                                                         "callbacks.early_stopping.patience=1000",
                                                         "model.shrink_correction=false", "export=true"])
    metrics = train(cfg)
    t = metrics["training"]
    assert t["stopped_by"] == "budget" and t["budget_s"] == 1.0 and t["epochs"] < 200
    # the best validation loss over the epochs run is the checkpoint's, and the model evaluated is that one
    history = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert t["best_val_loss"] == pytest.approx(history["val/loss"].min(), rel=1e-6)
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    val = split_metrics(predict_split(module, dm, "val"), dm, list(module.hparams.quantiles))[0]
    assert val["mae"] == pytest.approx(metrics["val"]["mae"], rel=1e-6)
    assert val["loss"] == pytest.approx(t["best_val_loss"], rel=1e-3)
    # and the bundle is that checkpoint's: its metrics are metrics.json's, its checkpoint the best one
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["checkpoint"] == Path(metrics["best_checkpoint"]).name
    assert meta["metrics"]["val"] == metrics["val"] and meta["metrics"]["training"] == t
    assert meta["calibration"]["method"] == "adaptive" and meta["calibration"]["served"]["applies"] == "offsets"


def test_budget_key_sets_trainer_max_time(tmp_path):
    assert compose_config("train.yaml", tmp_path, ["budget=7m"]).trainer.max_time == "7m"
    assert compose_config("train.yaml", tmp_path, ["trainer.max_time=00:00:02:00"]).trainer.max_time == "00:00:02:00"
    default = compose_config("train.yaml", tmp_path, []).trainer.max_time
    assert parse_budget(default) == dt.timedelta(minutes=10)


def test_python_defaults_are_the_yaml_defaults(tmp_path):
    import inspect

    from fusioncast.data.datamodule import TimeSeriesDataModule
    from fusioncast.postfit.calibration import DEFAULT_STEP, DEFAULT_WIDTH_STEP, Calibration

    cfg = compose_config("train.yaml", tmp_path, [])
    assert inspect.signature(TimeSeriesDataModule).parameters["epoch_windows"].default == cfg.data.epoch_windows
    fit = inspect.signature(Calibration.fit).parameters
    assert fit["step"].default == DEFAULT_STEP == cfg.calibration.step
    assert fit["width_step"].default == DEFAULT_WIDTH_STEP == cfg.calibration.width_step
