"""Shrinking the TFT's correction of its linear skip: the factor's effect, its choice on validation, and
that the chosen factor travels in the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from fusioncast.evaluation.forecasts import evaluate_model, predict_split
from fusioncast.postfit.shrinkage import _unsorted, pinball
from fusioncast.train import train
from fusioncast.training.checkpoint import load_with_data
from tests.conftest import TINY, compose_config
from tests.models.test_tft import RICH, make_batch, make_model


def test_unsorted_forecasts_are_affine_in_the_factor_and_at_0_ignore_the_correction():
    model = make_model(RICH, linear_skip=8).eval()
    with torch.no_grad():
        model.skip.weight.normal_(0, 0.1)  # a skip that is not the zero-initialised one
        model.output.weight.normal_(0, 0.5)
    batch = make_batch(model, 4)

    def at(a):  # before the final sort (which the factors could make reorder quantiles)
        with torch.no_grad(), _unsorted(model):
            model.correction_scale.copy_(torch.as_tensor(a).expand_as(model.correction_scale))
            return model(**batch)

    full, none, part = at(1.0), at(0.0), at(0.3)
    torch.testing.assert_close(part, none + 0.3 * (full - none), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, none)
    with torch.no_grad():  # at 0 the TFT's input-dependent output plays no part
        model.output.weight.normal_(0, 0.5)
    torch.testing.assert_close(at(0.0), none, rtol=0, atol=0)
    # one factor per quantile: shrinking the median's leaves the other quantiles as they were
    mixed = at(torch.tensor([1.0, 0.0, 1.0]))
    new_full = at(1.0)
    torch.testing.assert_close(mixed[..., [0, 2]], new_full[..., [0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(mixed[..., 1], none[..., 1], rtol=1e-6, atol=1e-6)


def test_a_state_dict_without_the_factor_loads_with_factor_1():
    model = make_model(RICH, linear_skip=8)
    state = {k: v for k, v in model.state_dict().items() if k != "correction_scale"}
    fresh = make_model(RICH, linear_skip=8)
    fresh.correction_scale.fill_(0.25)
    fresh.load_state_dict(state)
    assert fresh.correction_scale.tolist() == [1.0] * len(fresh.quantiles)


def test_training_chooses_the_factor_on_validation_and_writes_it_into_the_checkpoint(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY + ["model.linear_skip=12", "model.shrink_correction=true"])
    metrics = train(cfg)
    chosen = metrics["correction_scale"]
    factors = list(chosen["factors"].values())
    assert list(chosen["factors"]) == ["0.1", "0.5", "0.9"] and set(factors) <= set(chosen["grid"])
    assert chosen["split"] == "val" and chosen["loss"] <= min(chosen["loss_at_0"], chosen["loss_at_1"])
    assert json.loads((tmp_path / "metrics.json").read_text())["correction_scale"]["factors"] == chosen["factors"]

    # the checkpoint holds the factors, and its validation loss is the one the choice measured
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    assert module.net.correction_scale.tolist() == pytest.approx(factors)
    p = predict_split(module, dm, "val")
    loss = pinball(p["pred"], p["target"], p["mask"], list(module.hparams.quantiles), p["scale"]).sum()
    assert loss == pytest.approx(chosen["loss"], rel=1e-4)
    # and metrics.json's test block is of the model with that factor
    calibration = OmegaConf.to_container(cfg.calibration, resolve=True) if cfg.get("calibration") else None
    assert evaluate_model(module, dm, calibration=calibration)["test"]["mae"] == pytest.approx(metrics["test"]["mae"])


def test_without_a_skip_nothing_is_chosen(tmp_path):
    assert "correction_scale" not in train(compose_config("train.yaml", tmp_path, TINY + ["model.linear_skip=0"]))
