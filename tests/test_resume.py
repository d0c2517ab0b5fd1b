"""Exact resume: a real `fusioncast-train` killed with SIGKILL and resumed from its last.ckpt ends where the
uninterrupted run ends (validation loss and weights); a checkpoint saved inside an epoch resumes exactly;
resumes that cannot be exact (an ensemble, another config) are refused before anything is written."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fusioncast.data.windows import BatchLoader
from fusioncast.train import train
from fusioncast.training import checkpoint
from fusioncast.training.checkpoint import CheckpointError, SafeCheckpointIO
from fusioncast.training.resume import merged_overrides
from tests.conftest import TINY, compose_config

EPOCHS = 4
# TINY for 4 epochs; dropout on, the plateau scheduler with patience 0 (it acts every epoch), early
# stopping with patience 1: every kind of state a resume has to carry changes epoch by epoch
RUN = [t for t in TINY if not t.startswith("trainer.max_epochs")] + [
    f"trainer.max_epochs={EPOCHS}", "model.scheduler.patience=0", "callbacks.early_stopping.patience=3",
    "callbacks.throughput.verbose=false"]


def command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "fusioncast.train", *overrides]


def environment(tmp_path: Path) -> dict:
    return {**os.environ, "FUSIONCAST_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"}


def last_epoch(run: Path) -> int | None:
    try:
        return checkpoint.load(run / "checkpoints" / "last.ckpt")["epoch"]
    except (FileNotFoundError, CheckpointError):
        return None


def state(path: Path) -> dict:
    return checkpoint.load(path)["state_dict"]


def test_a_killed_training_resumes_exactly(tmp_path):
    env = environment(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    victim = subprocess.Popen(command(*RUN, f"hydra.run.dir={killed}"), **quiet)
    # the uninterrupted run alongside (the two share nothing); the victim dies once epoch 1 is saved
    reference = subprocess.Popen(command(*RUN, f"hydra.run.dir={whole}"), **quiet)
    deadline = time.monotonic() + 600
    while victim.poll() is None and (last_epoch(killed) or 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    at = last_epoch(killed)
    assert victim.returncode == -signal.SIGKILL and at is not None and 1 <= at < EPOCHS - 1, (victim.returncode, at)
    assert not (killed / "metrics.json").exists()
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]

    # the resume is the checkpoint alone: the run's overrides come from its directory
    resumed = subprocess.run(command(f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}"), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = (json.loads((run / "metrics.json").read_text()) for run in (whole, killed))
    assert b["val"]["loss"] == a["val"]["loss"] and b["test"] == a["test"]
    assert Path(b["best_checkpoint"]).name == Path(a["best_checkpoint"]).name
    assert Path(b["best_checkpoint"]).parent == killed / "checkpoints"  # the run continued in its directory
    for name in ("last.ckpt", Path(a["best_checkpoint"]).name):
        sa, sb = state(whole / "checkpoints" / name), state(killed / "checkpoints" / name)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    # the resumed epochs are the next CSV version of the same run, from the epoch after the checkpoint's
    versions = sorted(p.name for p in (killed / "csv").iterdir())
    assert versions == ["version_0", "version_1"]
    assert all((killed / "csv" / v / "metrics.csv").stat().st_size > 0 for v in versions)
    with open(killed / "csv" / "version_1" / "metrics.csv") as f:
        epochs = {int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("epoch")}
    assert min(epochs) == at + 1


def tiny(tmp_path: Path, *more: str):
    cfg = compose_config("train.yaml", tmp_path, [*TINY, "trainer.max_epochs=2", "model.scheduler.patience=0", *more])
    L.seed_everything(cfg.seed, workers=True)
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup("fit")
    return cfg, dm, hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")


def fit_tiny(tmp_path: Path, ckpt_path: str | None = None):
    cfg, dm, module = tiny(tmp_path)
    every = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=8, logger=False, callbacks=[every],
                        enable_progress_bar=False, enable_model_summary=False, plugins=[SafeCheckpointIO()])
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def test_a_checkpoint_saved_inside_an_epoch_resumes_exactly(tmp_path):
    whole = fit_tiny(tmp_path / "whole")
    mid = tmp_path / "whole" / "steps" / "step=3.ckpt"  # 3 of the first epoch's 8 batches
    assert checkpoint.load(mid)["TimeSeriesDataModule"]["sampler_resume_at"] == 3
    resumed = fit_tiny(tmp_path / "resumed", str(mid))
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_the_sampler_continues_where_it_stood(tmp_path):
    cfg, dm, _ = tiny(tmp_path)
    series, starts = dm.windows("train")
    make = lambda: BatchLoader(dm.tensors("cpu"), series, starts, 16, shuffle=True, seed=3)  # noqa: E731
    run = make()
    epochs = [[b.decoder_start for b in run] for _ in range(3)]
    after_one = make()
    list(after_one)
    again = make()
    again.load_sampler_state(after_one.sampler_state())  # saved at an epoch's end: the next epoch comes next
    assert all(torch.equal(x, y) for x, y in zip(epochs[1], [b.decoder_start for b in again]))
    inside = make()
    inside.load_sampler_state({"epoch": 2}, resume_at=5)  # inside epoch 1, 5 batches in
    assert all(torch.equal(x, y) for x, y in zip(epochs[1][5:], [b.decoder_start for b in inside], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(epochs[2], [b.decoder_start for b in inside]))


def test_an_ensemble_run_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "ensemble"
    member = tmp_path / "run" / "checkpoints" / "seed_1" / "last.ckpt"  # refused before it is read
    cfg = compose_config("train.yaml", out, TINY + ["ensemble.seeds=[1,2]", f"ckpt_path={member}"])
    with pytest.raises(ValueError, match="seed ensemble .* cannot be resumed"):
        train(cfg)
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run that early stopping ended after its second epoch (no later epoch improves by 1000)."""
    out = tmp_path_factory.mktemp("stopped")
    cfg = compose_config("train.yaml", out, [*RUN, "callbacks.early_stopping.patience=1",
                                             "callbacks.early_stopping.min_delta=1000"])
    train(cfg)
    return cfg, out / "checkpoints" / "last.ckpt"


def test_a_finished_run_resumes_without_training_further(stopped):
    cfg, last = stopped
    before = checkpoint.load(last)
    assert before["epoch"] == 1 < EPOCHS - 1
    train(compose_config("train.yaml", last.parents[1], [*RUN, "callbacks.early_stopping.patience=1",
                                                        "callbacks.early_stopping.min_delta=1000", f"ckpt_path={last}"]))
    assert checkpoint.load(last)["global_step"] == before["global_step"]


def test_another_config_is_refused_naming_what_differs(stopped, tmp_path):
    _, last = stopped
    out = tmp_path / "other"
    cfg = compose_config("train.yaml", out, TINY + ["model.hidden_size=8", "data.max_prediction_length=6",
                                                    f"ckpt_path={last}"])
    with pytest.raises(ValueError, match=r"another config.*data\.max_prediction_length: 12 .* 6 now.*model\.hidden_size"):
        train(cfg)
    assert not (out / "csv").exists()


def test_the_command_line_overrides_replace_the_runs_own():
    run = ["data=stallion", "trainer.max_epochs=5", "+trainer.num_sanity_val_steps=0", "model.hidden_size=16"]
    assert merged_overrides(run, ["trainer.max_epochs=9", "ckpt_path=x.ckpt"]) == [
        "data=stallion", "+trainer.num_sanity_val_steps=0", "model.hidden_size=16", "trainer.max_epochs=9",
        "ckpt_path=x.ckpt"]
