"""Benchmark protocols as experiment configs: they compose, and their splits are the published ones."""

from __future__ import annotations

import re
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.frame import split_points
from fusioncast.data.preprocess import Preprocessor
from fusioncast.data.schema import SchemaError
from tests.conftest import CONFIG_DIR, TINY, compose_config, needs_shared

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
HORIZONS = (24, 48, 96, 168, 192, 336, 720)


@pytest.mark.parametrize("data", ["custom", "synthetic", "stallion", "nyc_taxi", "etth1", "etth1_univariate"])
def test_every_data_set_gets_the_default_calibration_and_budget(data, tmp_path):
    cfg = compose_config("train.yaml", tmp_path, [f"data={data}"])
    assert cfg.calibration.method == "adaptive" and cfg.calibration.step == 0.01
    assert cfg.calibration.width_step == 0.002 and cfg.trainer.max_time == "00:00:10:00"
    assert compose_config("eval.yaml", tmp_path, ["ckpt_path=x"]).calibration.method == "adaptive"


def test_every_benchmark_protocol_has_a_config():
    wanted = {"stallion_tutorial", "nyc_taxi_h5", "etth1_univariate", "etth1_covariates", "m4_hourly",
              "nyc_taxi_numenta"}
    assert wanted <= set(EXPERIMENTS)
    # a horizon is an override of its protocol, not a file of its own
    assert not [name for name in EXPERIMENTS if re.fullmatch(r".*_h\d+", name) and name != "nyc_taxi_h5"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, tmp_path):
    cfg = compose_config("train.yaml", tmp_path, [f"experiment={name}"])
    assert cfg.data.max_prediction_length >= 1 and cfg.model._target_.endswith("TFTModule")
    # what a user gets: calibrated intervals (the default calibration) and a time budget
    assert cfg.calibration.method == "adaptive" and cfg.trainer.max_time == cfg.budget is not None
    if name in ("etth1_univariate", "etth1_covariates"):
        # the protocol's units: the training std of OT (the window centring the model uses leaves errors alone)
        assert cfg.data.target_normalizer in ("global", "encoder") and cfg.data.eval_stride == 1
        covariates = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"] if "covariates" in name else []
        assert list(cfg.data.time_varying_unknown_reals) == covariates


def etth1(tmp_path, horizon: int) -> TimeSeriesDataModule:
    needs_shared("ETTh1.csv")
    cfg = compose_config("train.yaml", tmp_path, ["experiment=etth1_univariate", f"data.max_prediction_length={horizon}"])
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup()
    return dm


@pytest.mark.parametrize("horizon", [24, 720])
def test_etth1_univariate_split_is_informers(tmp_path, horizon):
    """Informer's data_loader.py: border1s = [0, 12*30*24 - seq_len, 16*30*24 - seq_len], border2s =
    [12*30*24, 16*30*24, 20*30*24], StandardScaler fitted on rows [0, 12*30*24) of OT, every window."""
    dm = etth1(tmp_path, horizon)
    train_end, val_end, test_end = 12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24
    assert (dm.val_idx[0], dm.test_idx[0], dm.enc.length[0]) == (train_end, val_end, test_end)
    L = dm.schema.max_encoder_length
    for split, lo, hi in (("train", 0, train_end), ("val", train_end - L, val_end), ("test", val_end - L, test_end)):
        series, starts = dm.windows(split)
        # Informer's __len__: len(data[border1:border2]) - seq_len - pred_len + 1 windows, one per step
        assert len(starts) == (hi - lo) - L - horizon + 1
        assert starts[0] - L == lo and starts[-1] + horizon == hi and (np.diff(starts) == 1).all()
    ot = pd.read_csv(needs_shared("ETTh1.csv"))["OT"].to_numpy(np.float64)
    center, scale = dm.enc.target_scale[0]
    assert center == pytest.approx(ot[:train_end].mean(), rel=1e-6)
    assert scale == pytest.approx(ot[:train_end].std(), rel=1e-6)  # ddof=0, as sklearn's StandardScaler
    assert pd.Timestamp(dm.enc.start[0]) == pd.Timestamp("2016-07-01")


def test_etth1_covariates_compose_with_the_same_split(tmp_path):
    needs_shared("ETTh1.csv")
    cfg = compose_config("train.yaml", tmp_path, ["experiment=etth1_covariates", "data.max_prediction_length=96"])
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup()
    assert (dm.val_idx[0], dm.test_idx[0], dm.enc.length[0]) == (8640, 11520, 14400)
    assert dm.model_kwargs()["num_unknown_reals"] == 6


def test_stallion_tutorial_validates_on_the_last_window_of_each_series(tmp_path):
    needs_shared("stallion.parquet")
    cfg = compose_config("train.yaml", tmp_path, ["experiment=stallion_tutorial"])
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup()
    series, starts = dm.windows("val")
    assert len(series) == len(np.unique(series)) == 350  # one window per series: predict=True
    assert (starts + 6 == dm.enc.length[series]).all()
    assert all(pd.Timestamp(dm.enc.start[s]) + pd.DateOffset(months=int(d)) == pd.Timestamp("2017-07-01")
               for s, d in zip(series[:5], starts[:5]))
    assert len(dm.windows("test")[0]) == 0


def test_no_test_split_gives_a_val_block_only(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY + ["data.test_start=null", "data.val_start=0.8"])
    from fusioncast.train import train

    metrics = train(cfg)
    assert "val" in metrics and "test" not in metrics and "test" not in metrics["baseline"]


def test_split_points_without_test_and_test_end_truncation():
    start = np.array(["2020-01-01", "2020-01-03"], dtype="datetime64[ns]")
    length = np.array([10, 6])
    val, test = split_points(start, length, "D", "2020-01-06", None)
    assert val.tolist() == [5, 3] and test.tolist() == [10, 6]
    dm = TimeSeriesDataModule(name="synthetic", synthetic={"n_zones": 2, "days": 10}, time_col="timestamp",
                              target="pickups", group_ids=["zone"], max_encoder_length=24, max_prediction_length=6,
                              val_start=0.6, test_start=0.8, test_end="2024-01-08")
    dm.setup()
    ends = [pd.Timestamp(s) + pd.Timedelta(hours=int(n) - 1) for s, n in zip(dm.enc.start, dm.enc.length)]
    assert all(e == pd.Timestamp("2024-01-07 23:00") for e in ends)


def test_global_target_normalizer_shares_one_scale(tmp_path):
    common = dict(name="synthetic", synthetic={"n_zones": 4, "days": 14}, time_col="timestamp", target="pickups",
                  group_ids=["zone"], max_encoder_length=24, max_prediction_length=6, val_start=0.7, test_start=0.85)
    per_series = TimeSeriesDataModule(**common, target_normalizer="series")
    shared = TimeSeriesDataModule(**common, target_normalizer="global")
    per_series.setup(), shared.setup()
    assert len({tuple(v) for v in per_series.pp.target_scales.values()}) == 4
    assert len({tuple(v) for v in shared.pp.target_scales.values()}) == 1
    train_rows = shared.frame.groupby("zone").cumcount() < shared.val_idx[shared.frame.groupby("zone", sort=False).ngroup()]
    y = shared.frame.loc[train_rows.to_numpy() & shared.frame["_observed"].to_numpy(), "pickups"]
    assert shared.pp.target_scales[shared.enc.keys[0]] == pytest.approx((y.mean(), y.std(ddof=0)))
    # an unseen series gets the shared scale too, and the choice survives the checkpoint/bundle dict
    again = Preprocessor.from_dict(shared.pp.to_dict())
    assert again.target_scale("new zone", np.array([1e6, 2e6])) == pytest.approx((y.mean(), y.std(ddof=0)))
    assert per_series.pp.target_scale("new zone", np.array([1.0, 3.0])) == pytest.approx((2.0, 1.0))
    with pytest.raises(SchemaError, match="target_normalizer"):
        TimeSeriesDataModule(**common, target_normalizer="windowed")


def test_etth1_protocol_reproduces_published_nlinear(tmp_path):
    """NLinear (Zeng et al. 2023) fitted by least squares on our training windows (lookback 336) scores
    the published test MSE/MAE on our test windows: the split, scaling and metric are the published ones."""
    dm = etth1(tmp_path, 96)
    z = (dm.enc.real[0, : dm.enc.length[0], 0].astype(np.float64) - dm.enc.target_scale[0, 0]) / dm.enc.target_scale[0, 1]
    L, H = 336, 96

    def xy(split):
        starts = dm.windows(split)[1]
        starts = starts[starts >= L]  # our encoder is 168 steps; NLinear looks back 336
        return np.stack([z[d - L:d] for d in starts]), np.stack([z[d:d + H] for d in starts])

    x, y = xy("train")
    a = np.c_[x - x[:, -1:], np.ones(len(x))]
    w = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ (y - x[:, -1:]))
    x, y = xy("test")
    assert len(y) == 2880 - H + 1
    err = np.c_[x - x[:, -1:], np.ones(len(x))] @ w + x[:, -1:] - y
    assert (err**2).mean() == pytest.approx(0.053, abs=0.001) and np.abs(err).mean() == pytest.approx(0.177, abs=0.001)
