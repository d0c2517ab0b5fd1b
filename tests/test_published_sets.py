"""M4 Hourly and NYC taxi on its published span: the named sets read the published files as they are,
their splits are the protocols', and the M4 scoring reproduces the competition's benchmark figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.schema import SchemaError
from fusioncast.data.sources import load_named
from fusioncast.data.wide import M4_ORIGIN, read_m4, read_wide
from fusioncast.evaluation import m4
from fusioncast.evaluation.metrics import forecast_metrics
from tests.conftest import compose_config, needs_shared


def test_m4_scoring_reproduces_the_published_benchmarks():
    """Seasonal naive 13.912 / 1.193 / OWA 0.628 and Naive2 18.383 / 2.395 (OWA 1) on the 414 test horizons."""
    train, test = read_wide(needs_shared("m4_hourly_train.csv")), read_wide(needs_shared("m4_hourly_test.csv"))
    keys = list(train)
    actual, history = [test[k] for k in keys], [train[k] for k in keys]
    snaive = m4.score(actual, [m4.seasonal_naive(x, 48, 24) for x in history], history, 24, m4.NAIVE2_HOURLY)
    assert (snaive["smape"], snaive["mase"], snaive["owa"]) == pytest.approx((13.912, 1.193, 0.628), abs=6e-4)
    naive2 = m4.score(actual, [m4.naive2(x, 48, 24) for x in history], history, 24, m4.NAIVE2_HOURLY)
    assert (naive2["smape"], naive2["mase"], naive2["owa"]) == pytest.approx((18.383, 2.395, 1.0), abs=6e-4)
    assert snaive["n_series"] == 414


def test_m4_metrics_by_hand():
    y, f = np.array([100.0, 50.0]), np.array([80.0, 50.0])
    assert m4.smape(y, f) == pytest.approx(200 * 20 / 180 / 2)
    x = np.array([1.0, 2.0, 4.0, 7.0])  # |y_t - y_{t-2}|: 3, 5
    assert m4.mase_scale(x, 2) == pytest.approx(4.0)
    assert m4.score([y], [f], [x], 2)["mase"] == pytest.approx(10.0 / 4.0)
    assert m4.owa(9.0, 1.0, {"smape": 18.0, "mase": 2.0}) == pytest.approx(0.5)
    # a pure season is its own Naive2 forecast; white noise fails the seasonality test
    season = np.tile(np.array([1.0, 2.0, 3.0, 2.0]), 20)
    assert m4.is_seasonal(season, 4) and np.allclose(m4.naive2(season, 8, 4), season[:8])
    assert not m4.is_seasonal(np.random.default_rng(0).normal(10, 1, 200), 4)


def write_m4_head(tmp_path, rows: int = 3):
    """The first `rows` series of the shared M4 files, as the competition names them, in tmp_path."""
    for part, name in (("train", "Hourly-train.csv"), ("test", "Hourly-test.csv")):
        lines = needs_shared(f"m4_hourly_{part}.csv").read_text().splitlines()[: rows + 1]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path / "Hourly-train.csv"


def test_m4_hourly_named_set_cuts_validation_and_test_as_the_competition(tmp_path):
    path = write_m4_head(tmp_path)
    train, test = read_wide(path), read_wide(tmp_path / "Hourly-test.csv")
    cfg = compose_config("train.yaml", tmp_path, ["experiment=m4_hourly", f"data.path={path}"])
    dm = TimeSeriesDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    dm.setup()
    assert dm.enc.keys == list(train)
    for s, key in enumerate(dm.enc.keys):
        n = len(train[key])
        assert (dm.val_idx[s], dm.test_idx[s], dm.enc.length[s]) == (n - 48, n, n + 48)
        assert np.array_equal(dm.enc.real[s, : n + 48, 0], np.concatenate([train[key], test[key]]).astype(np.float32))
        assert pd.Timestamp(dm.enc.start[s]) + pd.Timedelta(hours=n) == M4_ORIGIN
    for split, first in (("val", dm.val_idx), ("test", dm.test_idx)):
        series, starts = dm.windows(split)
        assert series.tolist() == [0, 1, 2] and (starts == first).all()  # one window per series: the horizon
    series, starts = dm.windows("train")
    assert (starts + 48 <= dm.val_idx[series]).all()  # no training target inside validation
    # the same files in a folder under their shared names
    for part in ("train", "test"):
        (tmp_path / f"m4_hourly_{part}.csv").write_text((tmp_path / f"Hourly-{part}.csv").read_text())
    again = load_named("m4_hourly", str(tmp_path))
    assert again["series"].nunique() == 3 and len(again) == sum(len(train[k]) + 48 for k in train)


def test_m4_reader_names_the_series_with_a_hole(tmp_path):
    (tmp_path / "train.csv").write_text('"V1","V2","V3","V4"\n"H1",1,2,3\n"H2",1,,3\n')
    with pytest.raises(SchemaError, match="H2"):
        read_m4(tmp_path / "train.csv")
    (tmp_path / "ok.csv").write_text('"V1","V2","V3","V4"\n"H1",1,2,3\n"H2",1,2,\n')
    table = read_m4(tmp_path / "ok.csv")
    assert table.groupby("series").size().to_dict() == {"H1": 3, "H2": 2}
    assert table.groupby("series")["timestamp"].max().eq(M4_ORIGIN - pd.Timedelta(hours=1)).all()


def test_nyc_taxi_numenta_scores_every_5_step_forecast_from_row_10000(tmp_path):
    """Cui et al. 2016: 5-step-ahead forecasts whose 5th step is row 10,000 (2015-01-25 08:00) or later."""
    needs_shared("nyc_taxi_numenta_year.csv")
    cfg = compose_config("train.yaml", tmp_path, ["experiment=nyc_taxi_numenta"])
    dm = TimeSeriesDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    dm.setup()
    raw = pd.read_csv(needs_shared("nyc_taxi_numenta_year.csv"), skiprows=[1, 2])
    assert dm.enc.length[0] == len(raw) == 17520
    assert np.array_equal(dm.enc.real[0, :17520, 0], raw["passenger_count"].to_numpy(np.float32))
    _, starts = dm.windows("test")
    fifth = starts + 4
    assert (fifth[0], fifth[-1], len(fifth)) == (10000, 17519, 7520) and (np.diff(starts) == 1).all()
    assert str(raw["timestamp"][fifth[0]]) == "2015-01-25 08:00:00"
    _, val_starts = dm.windows("val")
    assert val_starts[-1] + 5 <= dm.test_idx[0] <= 10000  # validation is cut from the training rows
    assert cfg.data.max_prediction_length == 5


def test_mape_at_the_last_step():
    y = np.array([[10.0, 20.0, 40.0], [10.0, 10.0, 60.0]])
    pred = np.repeat(np.array([[10.0, 20.0, 30.0], [10.0, 10.0, 70.0]])[..., None], 3, -1)
    out = forecast_metrics(y, np.ones_like(y, bool), pred, [0.1, 0.5, 0.9], np.ones(2), np.ones(2))
    assert out["mape_step3"] == pytest.approx(20.0 / 100.0)


def test_bench_accuracy_scores_m4_rows_as_the_competition(tmp_path):
    """scripts/bench_accuracy.py's M4 row: the seasonal-naive forecast of the data module's test windows
    scores exactly what fusioncast.evaluation.m4 gives on the raw files (in-sample = the whole training file)."""
    import importlib.util

    from fusioncast.evaluation.forecasts import predict_windows
    from fusioncast.models.module import TFTModule
    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "scripts" / "bench_accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = write_m4_head(tmp_path, rows=4)
    train, test = read_wide(path), read_wide(tmp_path / "Hourly-test.csv")
    cfg = compose_config("train.yaml", tmp_path, ["experiment=m4_hourly", f"data.path={path}", "model.hidden_size=8"])
    dm = TimeSeriesDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    dm.setup()
    module = TFTModule(data_kwargs=dm.model_kwargs(), hidden_size=8, linear_skip=168)
    p = predict_windows(module, dm.loader("test", shuffle=False))
    got = bench.protocol_metrics("m4", bench.naive_forecasts(p, dm.seasonal_period), dm, "test")
    keys = list(train)
    want = m4.score([test[k] for k in keys], [m4.seasonal_naive(train[k], 48, 24) for k in keys],
                    [train[k] for k in keys], 24, m4.NAIVE2_HOURLY)
    assert (got["smape"], got["mase"], got["owa"]) == pytest.approx((want["smape"], want["mase"], want["owa"]), rel=1e-6)
    assert bench.fmt("m4", got).count("/") == 2
