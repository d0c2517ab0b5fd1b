"""Training end to end on the real config: metrics.json, learning, reproducibility, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusioncast.evaluation.forecasts import evaluate_model
from fusioncast.evaluation.metrics import METRIC_NAMES
from fusioncast.train import train
from fusioncast.training.checkpoint import load_with_data
from tests.conftest import TINY, compose_config, needs_shared


def test_train_writes_metrics_and_checkpoint(cfg_train, tmp_path):
    metrics = train(cfg_train)
    written = json.loads((tmp_path / "metrics.json").read_text())
    for block in (written["val"], written["test"], written["baseline"]["val"], written["baseline"]["test"]):
        assert set(METRIC_NAMES) <= set(block)
    assert written["test"]["mae"] == pytest.approx(metrics["test"]["mae"])
    assert Path(written["best_checkpoint"]).exists()
    assert written["train_samples_per_sec"] > 0
    # the baseline is evaluated on the same windows as the model
    assert written["baseline"]["test"]["n_windows"] == written["test"]["n_windows"] > 0


def test_training_improves_validation_loss(tmp_path):
    before = compose_config("train.yaml", tmp_path / "a", TINY + ["trainer.max_epochs=1", "trainer.limit_train_batches=1",
                                                                 "optimized_metric=null"])
    after = compose_config("train.yaml", tmp_path / "b", TINY + ["trainer.max_epochs=4", "trainer.limit_train_batches=20"])
    assert train(after)["val"]["loss"] < train(before)["val"]["loss"]


def test_same_seed_same_cpu_metrics(tmp_path):
    runs = [train(compose_config("train.yaml", tmp_path / str(i), TINY)) for i in range(2)]
    assert runs[0]["test"] == runs[1]["test"]
    other = compose_config("train.yaml", tmp_path / "other", TINY + ["seed=7"])
    assert train(other)["test"]["mae"] != runs[0]["test"]["mae"]


def test_eval_recomputes_metrics_from_checkpoint(cfg_train):
    metrics = train(cfg_train)
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    again = evaluate_model(module, dm)
    assert again["test"]["mae"] == pytest.approx(metrics["test"]["mae"], rel=1e-5)
    assert again["baseline"]["test"]["mae"] == pytest.approx(metrics["baseline"]["test"]["mae"], rel=1e-6)


def test_custom_table_trains_from_overrides_alone(tmp_path):
    path = needs_shared("ETTh1.csv")
    cfg = compose_config("train.yaml", tmp_path, [
        "data=custom", f"data.path={path}", "data.time_col=date", "data.target=OT",
        "data.time_varying_unknown_reals=[HUFL,HULL,MUFL,MULL,LUFL,LULL]", "data.max_encoder_length=48",
        "data.max_prediction_length=12", "data.val_start=0.6", "data.test_start=0.8", "model.hidden_size=8",
        "trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.eval_stride=24",
        "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2",
    ])
    metrics = train(cfg)
    assert metrics["seasonal_period"] == 24  # hourly frequency inferred from the table
    assert metrics["test"]["n_windows"] > 0
