"""Optuna sweep (`hparams_search=optuna`) on a real shared set, run as users run it, and its resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from fusioncast.training.sweep import best_experiment
from tests.conftest import CONFIG_DIR, compose_config, needs_shared
from tests.test_wandb import _by_type, read_finished_run

# tiny budgets; the search space narrowed on the command line as a user would
TINY_SWEEP = [
    "hparams_search=optuna", "data=nyc_taxi", "logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "data.eval_stride=96", "data.eval_batch_size=256", "data.max_encoder_length=choice(24,48)",
    "model.hidden_size=choice(8,16)", "data.batch_size=choice(32,64)", "hydra.sweeper.study_name=pytest",
]


def run_sweep(tmp_path: Path, name: str, n_trials: int) -> Path:
    sweep_dir = tmp_path / name
    cmd = [sys.executable, "-m", "fusioncast.train", *TINY_SWEEP, f"hydra.sweeper.n_trials={n_trials}",
           f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
           f"paths.log_dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sweep_dir


def val_losses(sweep_dir: Path) -> list[float]:
    return [json.loads(p.read_text())["val"]["loss"] for p in sorted(sweep_dir.glob("*/metrics.json"))]


@pytest.mark.slow
def test_optuna_sweep_records_trials_best_config_and_resumes(tmp_path):
    needs_shared("nyc_taxi.csv")
    first = run_sweep(tmp_path, "first", n_trials=3)

    # every trial is a run of its own; the sweep's result is the best trial's val/loss (train()'s return)
    assert sorted(p.name for p in first.iterdir() if p.is_dir()) == ["0", "1", "2"]
    losses = val_losses(first)
    assert len(losses) == 3
    results = OmegaConf.load(first / "optimization_results.yaml")
    assert results.best_value == pytest.approx(min(losses))
    assert set(results.best_params) == {"model.hidden_size", "model.attention_heads", "model.dropout",
                                        "model.optimizer.lr", "data.max_encoder_length", "data.batch_size"}

    # the trials share one W&B group: the study
    for trial in "012":
        run_file = next((first / trial / "wandb").glob("offline-run-*/run-*.wandb"))
        assert _by_type(read_finished_run(run_file), "run")[0].run_group == "pytest"

    # best_experiment.yaml is an experiment config that re-creates the best trial's run
    configs = tmp_path / "my_configs" / "experiment"
    configs.mkdir(parents=True)
    (configs / "best.yaml").write_text((first / "best_experiment.yaml").read_text())
    cfg = compose_config("train.yaml", tmp_path / "rerun",
                         [f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]", "experiment=best"])
    for key, value in results.best_params.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert cfg.data.name == "nyc_taxi" and cfg.trainer.max_epochs == 1 and cfg.data.eval_stride == 96
    assert "hparams_search" not in (first / "best_experiment.yaml").read_text()  # a plain run, no sweep

    # the same command with the same storage continues the study instead of starting over: n_trials is the
    # size of the study, so one more trial runs, numbered on from the first run's
    second = run_sweep(tmp_path, "second", n_trials=4)
    assert sorted(p.name for p in second.iterdir() if p.is_dir()) == ["3"]
    optuna = pytest.importorskip("optuna")
    study = optuna.load_study(study_name="pytest", storage=f"sqlite:///{tmp_path}/optuna.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and [t.number for t in complete] == [0, 1, 2, 3]
    assert complete[3].params != complete[0].params  # the seeded sampler does not replay the first run
    assert sorted(t.value for t in complete) == pytest.approx(sorted(losses + val_losses(second)))
    again = OmegaConf.load(second / "optimization_results.yaml")
    assert again.best_value == pytest.approx(min(losses + val_losses(second)))


def test_best_experiment_from_overrides():
    text = best_experiment(
        {"model.hidden_size": 64, "model.optimizer.lr": 0.001},
        ["hparams_search=optuna", "data=stallion", "model.hidden_size=choice(16,64)", "trainer.max_epochs=3",
         "hydra.sweeper.n_trials=5", "paths.log_dir=/tmp/x", "data.calendar=[month]"],
        {"data": "stallion", "model": "tft", "hparams_search": "optuna", "hydra/launcher": "joblib"},
        header="best trial")
    assert text.startswith("# @package _global_\n# best trial\ndefaults:\n  - override /data: stallion\n")
    body = OmegaConf.create(text)
    assert body.model == {"hidden_size": 64, "optimizer": {"lr": 0.001}}
    assert body.trainer.max_epochs == 3 and body.data.calendar == ["month"]
    assert "hydra" not in body and "paths" not in body and "hparams_search" not in body


def test_sweep_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train.yaml", overrides=["hparams_search=optuna", "data=stallion"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.fusioncast_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.multivariate and sweeper.sampler.constant_liar and sweeper.sampler.seed == cfg.seed
    assert sweeper.pruner._target_ == "optuna.pruners.SuccessiveHalvingPruner"
    assert cfg.callbacks.optuna_pruning.monitor == "val/loss"
    assert sweeper.study_name == "tft-stallion"
    assert sweeper.storage == f"sqlite:///{cfg.paths.log_dir}/optuna/tft-stallion.db"
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == sweeper.n_jobs
    assert cfg.optimized_metric == "val/loss" and cfg.export is False
