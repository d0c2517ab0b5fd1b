"""Refitting on a schedule (fusioncast/evaluation/refit.py): each period's model sees only the data before the period,
and the periods' forecasts together are the run's test windows, each once."""

from __future__ import annotations

import hydra
import numpy as np
import pandas as pd
import pytest
import torch

from fusioncast.data.timeline import decoder_start_times
from fusioncast.evaluation.refit import period_config, refit_periods
from tests.conftest import TINY, compose_config


def test_period_configs_train_before_the_period_and_test_inside_it(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY)
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup()
    starts, val_length = refit_periods(dm, "1D")
    assert len(starts) >= 2 and val_length > pd.Timedelta(0)
    assert starts[0] == pd.Timestamp(decoder_start_times(dm, *dm.windows("test")).min())
    seen = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else None
        pcfg = period_config(cfg, start, end, val_length, dm.schema.max_prediction_length, dm.pp.freq, tmp_path / str(k))
        pdm = hydra.utils.instantiate(pcfg.data, _convert_="object")
        pdm.setup()
        test = decoder_start_times(pdm, *pdm.windows("test"))
        assert (test >= start).all() and (end is None or (test < end).all())
        step = pd.Timedelta(hours=1)
        series, vstarts = pdm.windows("val")
        val_end = decoder_start_times(pdm, series, vstarts) + step * (pdm.schema.max_prediction_length - 1)
        assert (val_end < start).all()  # no validation (nor training) target at or after the period's start
        seen += list(zip(*pdm.windows("test")))
    assert sorted(seen) == sorted(zip(*dm.windows("test")))


def test_refit_block_scores_the_test_windows(tmp_path):
    from fusioncast.train import train

    cfg = compose_config("train.yaml", tmp_path, TINY + ["refit.every=2D", "trainer.max_epochs=1"])
    metrics = train(cfg)
    refit = metrics["refit"]
    assert refit["every"] == "2D" and len(refit["periods"]) >= 2
    assert sum(p["n_windows"] for p in refit["periods"]) == metrics["test"]["n_windows"] == refit["test"]["n_windows"]
    assert all(p["checkpoint"] for p in refit["periods"])
    # the TINY split is by fractions, so the first period is trained afresh, not taken from the run
    assert refit["periods"][0]["checkpoint"] != metrics["best_checkpoint"]
    assert np.isfinite(refit["test"]["mae"]) and refit["baseline"]["test"]["mae"] == pytest.approx(
        metrics["baseline"]["test"]["mae"])
    with pytest.raises(ValueError, match="refit.every"):
        dm = hydra.utils.instantiate(cfg.data, _convert_="object")
        dm.setup()
        refit_periods(dm, "soon")


def test_warm_started_refits_fine_tune_the_model_before(tmp_path):
    from fusioncast.models.module import TFTModule
    from fusioncast.train import train
    from fusioncast.training.fit import warm_start

    cfg = compose_config("train.yaml", tmp_path, TINY + ["refit.every=2D", "refit.warm_start=true", "refit.max_epochs=1"])
    metrics = train(cfg)
    refit = metrics["refit"]
    assert refit["warm_start"] and refit["max_epochs"] == 1 and len(refit["periods"]) >= 2
    assert refit["test"]["n_windows"] == metrics["test"]["n_windows"]
    # warm_start copies the weights, not this data's scalers
    first = TFTModule.load_from_checkpoint(refit["periods"][0]["checkpoint"], weights_only=False)
    second = TFTModule.load_from_checkpoint(refit["periods"][1]["checkpoint"], weights_only=False)
    second.net.real_center += 1.0
    center = second.net.real_center.clone()
    warm_start(second, first)
    assert torch.equal(second.net.output.weight, first.net.output.weight)
    assert torch.equal(second.net.real_center, center)
    with pytest.raises(ValueError, match="warm_start"):
        train(compose_config("train.yaml", tmp_path / "e", TINY + ["refit.every=2D", "refit.warm_start=true",
                                                                   "ensemble.seeds=[1,2]"]))


def test_first_period_reuses_the_run_model_when_the_split_is_the_runs(tmp_path):
    from fusioncast.train import train

    cfg = compose_config("train.yaml", tmp_path, TINY)
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup()
    val, test = (pd.Timestamp(decoder_start_times(dm, *dm.windows(s)).min()) for s in ("val", "test"))
    cfg = compose_config("train.yaml", tmp_path, TINY + [f"data.val_start='{val}'", f"data.test_start='{test}'",
                                                         "refit.every=3D", "trainer.max_epochs=1"])
    metrics = train(cfg)
    assert metrics["refit"]["periods"][0]["checkpoint"] == metrics["best_checkpoint"]
    assert metrics["refit"]["test"]["n_windows"] == metrics["test"]["n_windows"]
