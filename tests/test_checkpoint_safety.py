"""A checkpoint never runs code: a real checkpoint with a `__reduce__` payload is refused by every entry
point that reads checkpoints (eval, export, predict backend=torch, train's resume, ensemble assembly),
and the payload never runs; a pre-change checkpoint (Hydra objects in its hyperparameters) is refused
with the same clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch

from fusioncast import evaluate, export, predict, train
from fusioncast.models.module import TFTModule, torch_class
from fusioncast.postfit.seed_ensemble import write_checkpoint
from fusioncast.training import checkpoint
from fusioncast.training.checkpoint import CheckpointError
from tests.conftest import TINY, compose_config


class Payload:
    """Unpickled, it creates `marker`: what an attacker's file would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(a real checkpoint, the same with a payload added, the marker the payload would create)."""
    out = tmp_path_factory.mktemp("crafted")
    cfg = compose_config("train.yaml", out, TINY + ["trainer.max_epochs=1", "trainer.limit_train_batches=2",
                                                    "model.shrink_correction=false"])
    real = train.train(cfg)["best_checkpoint"]
    marker = out / "payload_ran"
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["extra"] = Payload(marker)
    crafted = out / "checkpoints" / "crafted.ckpt"
    torch.save(ckpt, crafted)
    # the file is a live threat: an unsafe load runs the payload
    torch.load(crafted, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return Path(real), crafted, marker


def refused(marker: Path):
    return pytest.raises(CheckpointError, match=r"refused to load.*names exec")


def test_real_checkpoints_load_as_plain_data(files):
    real, _, _ = files
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(real)) == []
    module, ckpt = checkpoint.load_model(real)
    assert ckpt["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert isinstance(module, TFTModule)


def test_every_entry_point_refuses_a_crafted_checkpoint(files, tmp_path):
    real, crafted, marker = files
    with refused(marker):
        evaluate.main(compose_config("eval.yaml", tmp_path / "eval", [f"ckpt_path={crafted}"]))
    with refused(marker):
        export.main(compose_config("export.yaml", tmp_path / "export", [f"ckpt_path={crafted}"]))
    # fusioncast-predict's main answers a refused file as one line and exit status 1 (predict.main)
    with pytest.raises(SystemExit, match=r"fusioncast-predict: .*refused to load.*names exec"):
        predict.main(["backend=torch", f"ckpt_path={crafted}", f"input={tmp_path / 'unread.csv'}", "output=null"])
    logs = sorted((real.parents[1] / "csv").iterdir())  # the resume would continue the checkpoint's run
    with refused(marker):
        train.main(compose_config("train.yaml", tmp_path / "resume", TINY + [f"ckpt_path={crafted}"]))
    assert sorted((real.parents[1] / "csv").iterdir()) == logs  # refused before any log was started
    module = checkpoint.load_model(real)[0]
    with refused(marker):
        write_checkpoint(module, str(crafted), tmp_path / "ensemble.ckpt")
    assert not marker.exists()


def test_the_eval_command_exits_with_the_error(files, tmp_path):
    _, crafted, marker = files
    env = {**os.environ, "FUSIONCAST_LOG_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "fusioncast.evaluate", f"ckpt_path={crafted}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "refused to load" in proc.stderr and "names exec" in proc.stderr
    assert not marker.exists()
    assert not list(tmp_path.rglob("metrics.json"))


def test_a_pre_change_checkpoint_is_refused_clearly(files, tmp_path):
    real, _, _ = files
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    # what checkpoints held before: the optimiser as a Hydra partial
    ckpt["hyper_parameters"]["optimizer"] = hydra.utils.instantiate(
        {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.003})
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(CheckpointError, match=r"names hydra\._internal.*retrain it"):
        checkpoint.load(old)


def test_a_truncated_checkpoint_is_named(files, tmp_path):
    real, _, _ = files
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(real.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(cut)


@pytest.mark.parametrize("target", ["builtins.exec", "os.system", "torch.optim.lr_scheduler.StepLR",
                                    "torch.nn.Linear", "nowhere.Optimizer"])
def test_an_optimizer_target_must_be_a_torch_optimizer(target):
    with pytest.raises(ValueError, match="model.optimizer._target_ must name a torch.optim optimizer"):
        torch_class({"_target_": target}, "optimizer", "torch.optim")


def test_torch_optimizers_and_schedulers_are_found():
    assert torch_class({"_target_": "torch.optim.AdamW"}, "optimizer", "torch.optim") is torch.optim.AdamW
    assert torch_class({"_target_": "torch.optim.adamw.AdamW"}, "optimizer", "torch.optim") is torch.optim.AdamW
    step = torch_class({"_target_": "torch.optim.lr_scheduler.StepLR"}, "scheduler", "torch.optim.lr_scheduler")
    assert step is torch.optim.lr_scheduler.StepLR
