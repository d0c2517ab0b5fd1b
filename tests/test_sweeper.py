"""fusioncast's Optuna sweeper (src/hydra_plugins/fusioncast_optuna_sweeper): search space, pruning, resume
after a crash, and one study shared by two worker processes on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from hydra_plugins.fusioncast_optuna_sweeper._search_space import parse
from tests.conftest import TINY

# the tiny synthetic run of tests/conftest.py as a sweep; data.max_encoder_length, model.hidden_size and
# data.batch_size are fixed there, so the search is over attention heads, dropout and learning rate
SWEEP = ["hparams_search=optuna", *TINY, "trainer.limit_val_batches=2", "hydra.sweeper.heartbeat_interval=1"]


def sweep_command(tmp_path: Path, name: str, storage: str, study: str, n_trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fusioncast.train", *SWEEP, f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweep.dir={tmp_path / name}", f"paths.log_dir={tmp_path}", *extra]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def trial_metrics(sweep_dirs: list[Path], number: int) -> dict:
    found = [d / str(number) / "metrics.json" for d in sweep_dirs if (d / str(number) / "metrics.json").exists()]
    assert len(found) == 1, f"trial {number}: metrics.json in {found}"
    return json.loads(found[0].read_text())


def test_search_space_from_config_and_command_line():
    space, fixed = parse(["model.hidden_size=choice(16, 32, 64)", "model.dropout=interval(0.0, 0.3)",
                          "model.optimizer.lr=tag(log, interval(0.0003, 0.01))", "data.batch_size=range(32, 129, 32)",
                          "model.attention_heads=tag(int, interval(1, 4))", "trainer.max_epochs=3",
                          # the command line comes after the config: it narrows one range and fixes another
                          "model.hidden_size=choice(8,16)", "model.dropout=0.1"])
    assert space == {"model.hidden_size": CategoricalDistribution([8, 16]),
                     "model.optimizer.lr": FloatDistribution(0.0003, 0.01, log=True),
                     "data.batch_size": IntDistribution(32, 128, step=32),  # end-exclusive, as Hydra's range
                     "model.attention_heads": IntDistribution(1, 4)}
    assert fixed == {"trainer.max_epochs": "3", "model.dropout": "0.1"}
    with pytest.raises(ValueError, match="data.x.*empty"):
        parse(["data.x=range(5, 5)"])


def test_storage_in_logs_and_files_hides_the_password():
    from hydra_plugins.fusioncast_optuna_sweeper._storage import describe

    assert describe("postgresql+psycopg://fc:s3cret@db:5432/optuna") == "postgresql+psycopg://fc:***@db:5432/optuna"
    assert describe("/nfs/optuna/study.log") == "/nfs/optuna/study.log" and describe(None) == "memory"


def test_sweeper_plugin_is_discovered():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = [f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Sweeper)]
    assert "hydra_plugins.fusioncast_optuna_sweeper.optuna_sweeper.OptunaSweeper" in names


# a Hydra app with nothing of fusioncast in it: the sweeper on its own, in seconds
APP = """
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    return (cfg.x - 1) ** 2 + (0 if cfg.y == "b" else 1)

if __name__ == "__main__":
    main()
"""
APP_CONFIG = """
defaults:
  - override hydra/sweeper: fusioncast_optuna
  - _self_
x: 0
y: a
hydra:
  sweeper:
    params:
      x: interval(-2, 2)
      y: choice(a, b)
"""


def run_app(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config.yaml").write_text(APP_CONFIG)
    cmd = [sys.executable, "app.py", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_sweeper_in_memory_and_grid(tmp_path):
    done = run_app(tmp_path, "hydra.sweeper.n_trials=5", "hydra/launcher=basic")
    assert done.returncode == 0, done.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.trials == {"complete": 5} and set(results.best_params) == {"x", "y"}
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2", "3", "4"]

    # the grid sampler runs each combination once, however many trials are asked for
    storage = f"sqlite:///{tmp_path}/grid.db"
    done = run_app(tmp_path, "hydra/sweeper/sampler=grid", "x=range(0,3)", "hydra.sweeper.n_trials=100",
                   f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=grid")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="grid", storage=storage).trials
    assert sorted((t.params["x"], t.params["y"]) for t in trials) == [(x, y) for x in range(3) for y in "ab"]
    assert min(t.value for t in trials) == 0 and OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml"
                                                                 ).best_params == {"x": 1, "y": "b"}


def test_parallel_trials_in_joblib_processes(tmp_path):
    storage = f"sqlite:///{tmp_path}/par.db"
    done = run_app(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                   "hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=par")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout + done.stderr).count("is launching 2 jobs") == 2
    trials = optuna.load_study(study_name="par", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    # drawn while the other trial of their launch was running (constant liar): no two alike
    assert len({(t.params["x"], t.params["y"]) for t in trials}) == 4


def test_two_workers_share_a_journal_file(tmp_path):
    """Optuna's journal file storage (no database server, NFS-friendly): a path instead of a URL."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config.yaml").write_text(APP_CONFIG)
    journal = tmp_path / "studies" / "app.log"
    workers = [subprocess.Popen([sys.executable, "app.py", "-m", f"hydra.sweep.dir={tmp_path / f'w{i}'}",
                                 "hydra/launcher=basic", f"hydra.sweeper.storage={journal}",
                                 "hydra.sweeper.study_name=journal", "hydra.sweeper.n_trials=8",
                                 "hydra.sweep.subdir=${hydra.sweeper.trial}"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    for w in workers:
        out = w.communicate(timeout=300)[0]
        assert w.returncode == 0, out[-3000:]
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    trials = optuna.load_study(study_name="journal", storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    ran = sorted(int(p.name) for i in range(2) for p in (tmp_path / f"w{i}").iterdir() if p.name.isdigit())
    assert ran == list(range(8))  # each trial ran once, in one of the two workers


def test_sweeper_refuses_what_cannot_work(tmp_path):
    # trials in joblib processes cannot reach a study kept in the sweeper's memory
    done = run_app(tmp_path, "hydra/launcher=joblib")
    assert done.returncode != 0 and "hydra.sweeper.storage=null" in done.stderr
    done = run_app(tmp_path, "hydra/launcher=basic", "hydra/sweeper/pruner=median",
                   "hydra.sweeper.direction=[minimize,maximize]")
    assert done.returncode != 0 and "single-objective" in done.stderr


@pytest.mark.slow
def test_hopeless_trial_is_pruned_and_a_rerun_continues_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # no search space: each run fixes the learning rate, so trial 1 is the hopeless one (lr 0: never learns)
    pruning = ["hydra.sweeper.params={}", "trainer.max_epochs=6", "callbacks.early_stopping.patience=10",
               "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
               "hydra.sweeper.pruner.n_warmup_steps=1"]
    run(sweep_command(tmp_path, "first", storage, "prune", 1, *pruning, "model.optimizer.lr=0.01"), tmp_path)
    done = run(sweep_command(tmp_path, "second", storage, "prune", 2, *pruning, "model.optimizer.lr=0"), tmp_path)

    study = optuna.load_study(study_name="prune", storage=storage)
    good, hopeless = study.trials
    assert good.state == TrialState.COMPLETE and len(good.intermediate_values) == 6
    assert good.value == pytest.approx(trial_metrics([tmp_path / "first"], 0)["val"]["loss"])
    # reported every epoch, stopped at the first epoch the pruner may act on (warm-up: 1 epoch)
    assert hopeless.state == TrialState.PRUNED
    assert sorted(hopeless.intermediate_values) == [0, 1]
    assert hopeless.intermediate_values[1] > good.intermediate_values[1]
    assert not (tmp_path / "second" / "1" / "metrics.json").exists()  # no evaluation of a pruned trial
    assert "trial 1 pruned after 2 epochs" in done.stdout + done.stderr
    results = (tmp_path / "second" / "optimization_results.yaml").read_text()
    assert "complete: 1" in results and "pruned: 1" in results and "best_trial: 0" in results


@pytest.mark.slow
def test_sweep_killed_mid_trial_resumes_from_the_storage(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = sweep_command(tmp_path, "run", storage, "resume", 3, "hydra.sweeper.grace_period=3")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    # its own process group, so that the kill takes the launcher's worker process too (a machine going down)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (tmp_path / "run" / "1").exists():  # trial 0 done, trial 1 started
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before trial 1"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = optuna.load_study(study_name="resume", storage=storage).trials
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING]

    run(cmd, tmp_path)  # the same command again
    trials = optuna.load_study(study_name="resume", storage=storage).trials
    # trial 1 went silent: failed, and run again (as trial 3) with its parameters; trial 2 ran from the queue
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert trials[3].params == trials[1].params and trials[0].params != trials[2].params
    for t in (trials[0], trials[2], trials[3]):
        assert t.value == pytest.approx(trial_metrics([tmp_path / "run"], t.number)["val"]["loss"])


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres_url):
    study_name, n_trials = f"shared-{uuid.uuid4().hex[:8]}", 4
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(sweep_command(tmp_path, f"worker{i}", postgres_url, study_name, n_trials,
                                              "hydra/sweeper/pruner=none"),
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-5000:]

    trials = optuna.load_study(study_name=study_name, storage=postgres_url).trials
    assert len(trials) == n_trials and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials
    dirs = [tmp_path / "worker0", tmp_path / "worker1"]
    for t in trials:
        assert t.value == pytest.approx(trial_metrics(dirs, t.number)["val"]["loss"])
    # both workers ran trials, and each one's results cover the whole study
    assert all(any(p.name.isdigit() for p in d.iterdir()) for d in dirs)
    for d in dirs:
        assert f"complete: {n_trials}" in (d / "optimization_results.yaml").read_text()
