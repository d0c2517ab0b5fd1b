"""Options the accuracy work added: the linear skip (starts as the last-value forecast) and its export."""

from __future__ import annotations

import json

import pytest
import torch

from fusioncast.models.tft import TemporalFusionTransformer
from fusioncast.train import train
from tests.conftest import TINY, compose_config

KW = dict(static_categorical_cardinalities=[3], encoder_categorical_cardinalities=[5], num_known_categoricals=1,
          num_static_reals=0, num_known_reals=1, num_unknown_reals=1, max_encoder_length=12, max_prediction_length=4,
          hidden_size=16, dropout=0.0)


def inputs(B: int = 6):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(B, 12, generator=g) > 0.2
    mask[0, -3:] = False  # the last observed target is three steps back
    return (torch.randint(0, 3, (B, 1), generator=g), torch.zeros(B, 0), torch.randint(0, 5, (B, 12, 1), generator=g),
            torch.randn(B, 12, 3, generator=g) * 5 + 20, torch.randint(0, 5, (B, 4, 1), generator=g),
            torch.randn(B, 4, 1, generator=g), mask, torch.tensor([[20.0, 5.0]]).repeat(B, 1))


def test_linear_skip_starts_from_the_last_observed_value():
    torch.manual_seed(0)
    with_skip = TemporalFusionTransformer(**KW, linear_skip=8).eval()
    plain = TemporalFusionTransformer(**KW).eval()
    plain.load_state_dict({k: v for k, v in with_skip.state_dict().items() if not k.startswith("skip.")})
    x = inputs()
    with torch.no_grad():
        diff = with_skip(*x) - plain(*x)
    mask, y = x[6], x[3][..., 0]
    last = torch.stack([y[i][mask[i]][-1] for i in range(len(y))])  # raw units
    torch.testing.assert_close(diff, (last - 20.0)[:, None, None].expand_as(diff), rtol=1e-4, atol=1e-4)


def test_linear_skip_and_encoder_normalizer_export_with_parity(tmp_path):
    cfg = compose_config("train.yaml", tmp_path, TINY + ["model.linear_skip=24", "data.target_normalizer=encoder",
                                                          "export=true", "calibration=adaptive"])
    metrics = train(cfg)  # export_bundle raises when onnxruntime and PyTorch disagree
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["parity"]["max_rel_diff"] <= 1e-4
    assert meta["schema"]["target_normalizer"] == "encoder"
    assert metrics["calibration"]["method"] == "adaptive"
    # the bundle carries what training fitted: the offsets the server applies and the tracking step
    assert meta["calibration"]["offsets"] == metrics["calibration"]["offsets"]
    assert len(meta["calibration"]["step"]) == meta["max_prediction_length"]


def test_lstsq_skip_is_nlinear_on_etth1(tmp_path):
    """The closed-form skip on ETTh1 (lookback 336) is NLinear: alone it scores NLinear's published 96-step MSE."""
    import hydra
    import numpy as np

    from fusioncast.data.windows import BatchLoader
    from fusioncast.models.linear_skip import fit_linear_skip
    from tests.conftest import needs_shared

    needs_shared("ETTh1.csv")
    cfg = compose_config("train.yaml", tmp_path, ["experiment=etth1_univariate", "data.max_prediction_length=96",
                                                   "data.max_encoder_length=336"])
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup()
    net = TemporalFusionTransformer(**dm.model_kwargs(), hidden_size=8, linear_skip=336)
    assert fit_linear_skip(net, BatchLoader(dm.tensors("cpu"), *dm.windows("train"), 2048)) == len(dm.windows("train")[0])
    b = dm.tensors("cpu").gather(*(torch.as_tensor(a) for a in dm.windows("test")))
    center, scale = b.target_scale[:, :1], b.target_scale[:, 1:]
    with torch.no_grad():
        pred = net._linear_skip((b.encoder_real[..., 0] - center) / scale, b.encoder_mask)
    err = (pred - (b.target - center) / scale).numpy()
    assert np.mean(err**2) == pytest.approx(0.053, abs=0.0015) and np.mean(np.abs(err)) == pytest.approx(0.177, abs=0.002)


def test_lstsq_skip_is_fitted_once_and_kept_fixed(tmp_path):
    from fusioncast.training.checkpoint import load_with_data

    cfg = compose_config("train.yaml", tmp_path, TINY + ["model.linear_skip=24", "model.linear_skip_fit=lstsq"])
    metrics = train(cfg)
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    from fusioncast.data.windows import BatchLoader
    from fusioncast.models.linear_skip import fit_linear_skip

    fitted = TemporalFusionTransformer(**dm.model_kwargs(), hidden_size=16, linear_skip=24)
    fit_linear_skip(fitted, BatchLoader(dm.tensors("cpu"), *dm.windows("train"), 4096))
    assert module.net.skip.weight.abs().sum() > 0
    torch.testing.assert_close(module.net.skip.weight, fitted.skip.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(module.net.skip.bias, fitted.skip.bias, rtol=1e-4, atol=1e-5)
