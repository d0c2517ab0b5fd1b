"""DDP on CPU (gloo): two processes train like one, and every rank uses rank 0's preprocessing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import lightning as L
import pytest

from fusioncast.data.datamodule import TimeSeriesDataModule
from tests.conftest import TINY, compose_config

# dropout 0 and a few steps: the only differences left between 1 and 2 processes are float sums
DDP_RUN = TINY + ["model.dropout=0.0", "trainer.max_epochs=1", "trainer.limit_train_batches=6", "logger=none",
                  "seed=3", "trainer.enable_model_summary=false"]


def run_cli(out: Path, overrides: list[str]) -> tuple[dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "fusioncast.train", f"hydra.run.dir={out}", *overrides],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["data.level_shift.prob=0.5", "data.level_shift.span=6"]],
                         ids=["plain", "level_shift"])
def test_two_cpu_processes_train_like_one(tmp_path, extra):
    """Batch 64 in one process vs 32 per rank in two, same seed: same windows per step, same updates
    (with level-shift augmentation: the same shifts of each window too)."""
    one, _ = run_cli(tmp_path / "one", DDP_RUN + extra + ["trainer=cpu", "data.batch_size=64"])
    two, log = run_cli(tmp_path / "two", DDP_RUN + extra + ["trainer=ddp", "trainer.accelerator=cpu",
                                                            "trainer.devices=2", "trainer.precision=32-true",
                                                            "data.batch_size=32"])
    assert "MEMBER: 2/2" in log  # really two processes
    # both evaluated on every validation window (rank 0 after fit), not on one rank's shard
    assert one["val"]["n_windows"] == two["val"]["n_windows"] > 0
    # float sums in another order over 6 Adam steps moved the loss by 4e-9 (relative); a rank training on
    # other windows, or another global batch (2 x 64), moved it by 4 %
    assert two["val"]["loss"] == pytest.approx(one["val"]["loss"], rel=1e-4)
    assert two["test"]["mae"] == pytest.approx(one["test"]["mae"], rel=1e-4)


class DivergingDataModule(TimeSeriesDataModule):
    """Rank 1 starts from another fit (as if its file or fitting differed); every rank logs what it used."""

    out_dir = ""

    def setup(self, stage=None):
        if self.trainer is None:  # the launching process's own fit
            return super().setup(stage)
        rank = self.trainer.global_rank
        if rank == 1:
            col = next(iter(self.pp.vocab))
            self.pp.vocab[col] = self.pp.vocab[col][::-1]
            col = next(iter(self.pp.real_center))
            self.pp.real_center[col] += 1.0
        super().setup(stage)
        digest = {
            "pp": hashlib.sha256(json.dumps(self.pp.to_dict(), sort_keys=True).encode()).hexdigest(),
            "enc": hashlib.sha256(self.enc.cat.tobytes() + self.enc.real.tobytes()).hexdigest(),
        }
        Path(self.out_dir, f"rank{rank}.json").write_text(json.dumps(digest))


@pytest.mark.slow
def test_every_rank_adopts_rank_zeros_preprocessing(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY)
    dm = hydra.utils.instantiate(cfg.data, _convert_="object", _target_=f"{__name__}.DivergingDataModule")
    dm.out_dir = str(tmp_path)
    dm.setup("fit")  # fitted once, in the launching process
    module = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")
    trainer = L.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=1, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    want = hashlib.sha256(json.dumps(dm.pp.to_dict(), sort_keys=True).encode()).hexdigest()
    assert ranks[0]["pp"] == want
