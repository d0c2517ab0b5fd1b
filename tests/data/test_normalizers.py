"""target_normalizer=encoder: each window is centred on its encoder's mean, the same in training and serving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.inference import assemble_window

COMMON = dict(name="synthetic", synthetic={"n_zones": 3, "days": 14}, time_col="timestamp", target="pickups",
              group_ids=["zone"], static_categoricals=["zone"], calendar=["hour"], max_encoder_length=24,
              max_prediction_length=6, min_encoder_length=6, val_start=0.7, test_start=0.85)


def test_encoder_center_is_the_mean_of_observed_encoder_targets_and_serving_agrees():
    dm = TimeSeriesDataModule(**COMMON, target_normalizer="encoder")
    dm.setup()
    tensors = dm.tensors("cpu")
    series, starts = dm.windows("train")
    pick = np.r_[0:3, len(series) - 3:len(series)]  # short (padded) encoders at the start, full ones later
    b = tensors.gather(torch.as_tensor(series[pick]), torch.as_tensor(starts[pick]))
    for i, (s, d) in enumerate(zip(series[pick], starts[pick])):
        lo = max(0, d - 24)
        obs = dm.enc.observed[s, lo:d]
        y = dm.enc.real[s, lo:d, 0][obs]
        assert float(b.target_scale[i, 0]) == pytest.approx(y.mean(), rel=1e-5)
        assert float(b.target_scale[i, 1]) == pytest.approx(dm.enc.target_scale[s, 1])  # the series' fitted std
        # serving builds the same window from raw history: same center and scale
        n_kc = len(dm.schema.known_categoricals)
        served = assemble_window(dm.pp, dm.enc.keys[s], dm.enc.static_cat[s], dm.enc.static_real[s],
                                 dm.enc.cat[s, lo:d], dm.enc.real[s, lo:d], dm.enc.observed[s, lo:d],
                                 dm.enc.cat[s, d:d + 6, :n_kc], dm.enc.real[s, d:d + 6, 1:1])
        assert served[-1] == pytest.approx(b.target_scale[i].numpy(), rel=1e-5)


def test_series_normalizer_keeps_fitted_centers():
    dm = TimeSeriesDataModule(**COMMON, target_normalizer="series")
    dm.setup()
    series, starts = dm.windows("val")
    b = dm.tensors("cpu").gather(torch.as_tensor(series[:5]), torch.as_tensor(starts[:5]))
    assert torch.equal(b.target_scale, torch.as_tensor(dm.enc.target_scale[series[:5]]))


def test_window_normalizer_scales_by_the_encoder_std_and_serving_agrees():
    dm = TimeSeriesDataModule(**COMMON, target_normalizer="window")
    dm.setup()
    series, starts = dm.windows("train")
    pick = np.r_[0:3, len(series) - 3:len(series)]
    b = dm.tensors("cpu").gather(torch.as_tensor(series[pick]), torch.as_tensor(starts[pick]))
    for i, (s, d) in enumerate(zip(series[pick], starts[pick])):
        lo = max(0, d - 24)
        y = dm.enc.real[s, lo:d, 0][dm.enc.observed[s, lo:d]].astype(np.float64)
        assert b.target_scale[i].numpy() == pytest.approx([y.mean(), y.std()], rel=1e-5)
        assert dm.pp.target_scale(dm.enc.keys[s], y) == pytest.approx(b.target_scale[i].numpy(), rel=1e-5)
    # a flat or one-value history keeps the series' fitted scale (never a zero scale)
    key, fitted = dm.enc.keys[0], dm.pp.target_scales[dm.enc.keys[0]][1]
    assert dm.pp.target_scale(key, np.full(24, 7.0)) == pytest.approx((7.0, fitted))
    assert dm.pp.target_scale(key, np.array([3.0])) == pytest.approx((3.0, fitted))
    flat = dm.tensors("cpu")
    flat.real[0, :, 0] = 7.0
    b = flat.gather(torch.tensor([0]), torch.tensor([30]))
    assert b.target_scale[0].tolist() == pytest.approx([7.0, fitted], rel=1e-6)
