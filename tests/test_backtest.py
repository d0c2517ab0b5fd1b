"""Rolling-origin backtest: origins over the test period, metrics per origin and overall, the baseline."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fusioncast.evaluation.backtest import backtest, select_origins, write_backtest
from fusioncast.evaluation.metrics import METRIC_NAMES
from fusioncast.train import train
from fusioncast.training.checkpoint import load_with_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import TINY, compose_config

    cfg = compose_config("train.yaml", tmp_path_factory.mktemp("bt"), TINY)
    metrics = train(cfg)
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    return metrics, module, dm


def test_origins_are_evenly_spaced_inside_the_test_period(trained):
    _, _, dm = trained
    series, starts, times = select_origins(dm, 5)
    origins = np.unique(times)
    assert len(origins) == 5
    steps = np.diff(origins).astype("timedelta64[h]").astype(int)
    assert steps.max() - steps.min() <= 1  # even spacing up to rounding
    H = dm.schema.max_prediction_length
    assert (starts >= dm.test_idx[series]).all() and (starts + H <= dm.enc.length[series]).all()
    # every series forecast at every origin (all synthetic zones share one calendar)
    assert len(series) == 5 * len(dm.enc.keys)
    assert len(np.unique(select_origins(dm, 10_000)[2])) == len(np.unique(dm.windows("test")[1]))  # capped


def test_backtest_metrics_per_origin_and_overall_with_baseline(trained, tmp_path):
    metrics, module, dm = trained
    result = backtest(module, dm, origins=4)
    assert result["origins"] == len(result["per_origin"]) == 4
    assert result["split"] == "test" and result["horizon"] == dm.schema.max_prediction_length
    for block in [result["overall"]] + result["per_origin"]:
        for who in ("model", "baseline"):
            assert set(METRIC_NAMES) <= set(block[who])
            assert block["model"]["n_windows"] == block["baseline"]["n_windows"]
    times = [pd.Timestamp(o["origin"]) for o in result["per_origin"]]
    assert times == sorted(times)
    assert sum(o["n_series"] for o in result["per_origin"]) == result["overall"]["model"]["n_windows"]
    # the overall MAE pools the origins' windows (equal sizes: the mean of per-origin MAEs)
    assert result["overall"]["model"]["mae"] == pytest.approx(np.mean([o["model"]["mae"] for o in result["per_origin"]]))
    json_path, png = write_backtest(result, tmp_path)
    assert json.loads(json_path.read_text())["origins"] == 4 and png.stat().st_size > 1000


def test_eval_cli_writes_backtest_and_calibration(trained, tmp_path):
    metrics, _, _ = trained
    run = subprocess.run([sys.executable, "-m", "fusioncast.evaluate", f"ckpt_path={metrics['best_checkpoint']}",
                          "backtest.origins=3", "calibration=adaptive", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "backtest.json").read_text())
    assert result["origins"] == 3 and result["calibration"]["method"] == "adaptive"
    assert (tmp_path / "backtest.png").exists()
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert "calibration" in written and "uncalibrated" in written and "served" in written
    assert written["calibration"]["fitted_on"]["step"] == 0.01  # the config group's default


def test_adaptive_backtest_tracks_over_every_test_window_before_each_origin(trained):
    from fusioncast.evaluation.forecasts import (
        fit_calibration,
        predict_split,
        split_metrics,
    )

    _, module, dm = trained
    cal = fit_calibration(module, dm, {"method": "adaptive", "step": 0.05})
    result = backtest(module, dm, origins=3, calibration=cal)
    assert result["calibration"]["method"] == "adaptive"
    # the same forecasts as tracking over the whole test split, read at the origins' windows
    p = predict_split(module, dm, "test")
    tracked = cal.track(cal.apply(p["pred"], p["scale"]), p["target"], p["mask"], p["scale"], p["series"],
                        p["decoder_start"])
    series, starts, _ = select_origins(dm, 3)
    pick = [int(np.flatnonzero((p["series"] == a) & (p["decoder_start"] == b))[0]) for a, b in zip(series, starts)]
    ours, _ = split_metrics({**{k: v[pick] for k, v in p.items()}, "pred": tracked[pick]}, dm, list(cal.quantiles))
    assert result["overall"]["model"] == pytest.approx(ours)
    static = backtest(module, dm, origins=3, calibration=fit_calibration(module, dm, {"method": "conformal"}))
    # the median is not tracked (a barely trained model's crossing quantiles, re-sorted, move its MAE a little)
    assert static["overall"]["model"]["mae"] == pytest.approx(result["overall"]["model"]["mae"], rel=0.01)
    assert static["overall"]["model"]["qrisk_p90"] != result["overall"]["model"]["qrisk_p90"]
