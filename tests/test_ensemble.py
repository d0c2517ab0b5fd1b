"""Seed ensembles: members trained per seed, forecasts averaged, one checkpoint and one exported graph."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import pytest
import torch

from fusioncast.evaluation.forecasts import predict_split, split_metrics
from fusioncast.models.ensemble import TFTEnsemble
from fusioncast.models.module import TFTModule
from fusioncast.postfit.seed_ensemble import ENSEMBLE_FILE, ensemble_seeds
from fusioncast.reporting.tracking import summary_metrics
from fusioncast.train import train
from fusioncast.training.checkpoint import load_with_data
from tests.conftest import TINY, compose_config


@pytest.mark.parametrize("seeds", [None, [], [3, 1]])
def test_valid_seeds(seeds):
    assert ensemble_seeds(seeds) == list(seeds or [])


@pytest.mark.parametrize("seeds", [[42], [1, 1], ["a", 2], "12", 7, [1.5, 2], [True, 2]])
def test_bad_seeds_are_refused_naming_the_key(seeds):
    with pytest.raises(ValueError, match="ensemble.seeds"):
        ensemble_seeds(seeds)


def test_an_ensemble_trains_its_members_and_averages_them(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY + ["ensemble.seeds=[3,5]", "export=true"])
    metrics = train(cfg)

    summary = metrics["ensemble"]
    assert summary["seeds"] == [3, 5]
    assert Path(metrics["best_checkpoint"]).name == ENSEMBLE_FILE
    paths = [m["checkpoint"] for m in summary["members"]]
    assert [Path(p).parent.name for p in paths] == ["seed_3", "seed_5"]

    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    assert isinstance(module.net, TFTEnsemble) and len(module.net.members) == 2
    members = [load_with_data(p, device="cpu")[0] for p in paths]
    for member, stored in zip(members, module.net.members):
        # the ensemble holds each member's best weights, shrinkage factors included
        for (name, a), b in zip(member.net.state_dict().items(), stored.state_dict().values()):
            assert torch.equal(a, b), name
    assert not torch.equal(members[0].net.output.weight, members[1].net.output.weight)  # seeds differ

    ours = predict_split(module, dm, "val")
    alone = [predict_split(m, dm, "val") for m in members]
    np.testing.assert_allclose(ours["pred"], (alone[0]["pred"] + alone[1]["pred"]) / 2, rtol=1e-5, atol=1e-5)
    quantiles = list(module.hparams.quantiles)
    assert metrics["val"]["mae"] == pytest.approx(split_metrics(ours, dm, quantiles)[0]["mae"], rel=1e-5)
    for entry, p, member in zip(summary["members"], alone, members):
        assert entry["val"]["mae"] == pytest.approx(split_metrics(p, dm, quantiles)[0]["mae"], rel=1e-5)
        assert entry["best_val_loss"] > 0
        # each member was shrunk on validation on its own, and keeps its factors inside the ensemble
        assert list(entry["correction_scale"].values()) == pytest.approx(member.net.correction_scale.tolist())

    summary_keys = summary_metrics(metrics)  # what W&B's run summary gets
    assert summary_keys["ensemble/seed_5/val/mae"] == summary["members"][1]["val"]["mae"]
    assert summary_keys["val/mae"] == metrics["val"]["mae"]

    # one graph for the whole ensemble, checked against PyTorch like any export
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["parity"]["max_rel_diff"] < meta["parity"]["tolerance"]
    assert meta["model"]["hparams"]["ensemble_size"] == 2


def test_an_ensemble_is_not_fit_as_one_model(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY)
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup("fit")
    module = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), ensemble_size=2, _convert_="object")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="member by member"):
        trainer.fit(module, datamodule=dm)


def test_resuming_an_ensemble_is_refused(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY + ["ensemble.seeds=[1,2]", "ckpt_path=/nonexistent.ckpt"])
    with pytest.raises(ValueError, match="ensemble.seeds"):
        train(cfg)


def test_single_model_checkpoints_still_load_as_before(tmp_path):
    metrics = train(compose_config("train.yaml", tmp_path, TINY))
    module, _ = load_with_data(metrics["best_checkpoint"], device="cpu")
    assert not isinstance(module.net, TFTEnsemble) and module.hparams.ensemble_size == 1
    assert "ensemble" not in metrics
    assert isinstance(module, TFTModule)
