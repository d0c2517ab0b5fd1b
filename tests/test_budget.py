"""The training budget (`budget=...` / `trainer.max_time=...`) and epochs of sampled windows
(`data.epoch_windows`): a tiny budget stops training, and the best checkpoint within it is the model."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fusioncast.budget import parse_budget
from fusioncast.data.windows import BatchLoader
from fusioncast.evaluate import load_checkpoint, predict_split, split_metrics
from fusioncast.train import train
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
                                                         "model.shrink_correction=false"])
    metrics = train(cfg)
    t = metrics["training"]
    assert t["stopped_by"] == "budget" and t["budget_s"] == 1.0 and t["epochs"] < 200
    # the best validation loss over the epochs run is the checkpoint's, and the model evaluated is that one
    history = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert t["best_val_loss"] == pytest.approx(history["val/loss"].min(), rel=1e-6)
    module, dm = load_checkpoint(metrics["best_checkpoint"], device="cpu")
    val = split_metrics(predict_split(module, dm, "val"), dm, list(module.hparams.quantiles))[0]
    assert val["mae"] == pytest.approx(metrics["val"]["mae"], rel=1e-6)
    assert val["loss"] == pytest.approx(t["best_val_loss"], rel=1e-3)


def test_budget_key_sets_trainer_max_time(tmp_path):
    assert compose_config("train.yaml", tmp_path, ["budget=7m"]).trainer.max_time == "7m"
    assert compose_config("train.yaml", tmp_path, ["trainer.max_time=00:00:02:00"]).trainer.max_time == "00:00:02:00"
    default = compose_config("train.yaml", tmp_path, []).trainer.max_time
    assert parse_budget(default) == dt.timedelta(minutes=10)
