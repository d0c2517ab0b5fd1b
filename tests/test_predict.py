"""fusioncast-predict: batch scoring of a whole table with the bundle (onnx) or the checkpoint (torch)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusioncast.data.schema import SchemaError
from fusioncast.predict import predict
from tests.conftest import compose_config, needs_shared
from tests.serve.test_requests import STALLION, forecast_table


def stallion_subset() -> pd.DataFrame:
    """35 of the 350 stallion series (every 10th): the same code paths, faster."""
    df = pd.read_parquet(needs_shared("stallion.parquet"))
    keys = df[["agency", "sku"]].drop_duplicates().sort_values(["agency", "sku"]).iloc[::10]
    return df.merge(keys, on=["agency", "sku"])


def run(tmp_path, *overrides: str) -> pd.DataFrame:
    return predict(compose_config("predict.yaml", tmp_path, list(overrides)))


def test_onnx_and_torch_backends_agree(real_bundle, tmp_path):
    rb = real_bundle("stallion")
    table = forecast_table(stallion_subset(), STALLION, "2017-07-01")
    table.to_parquet(tmp_path / "input.parquet")
    onnx_out, torch_out = tmp_path / "onnx.parquet", tmp_path / "torch.csv"
    run(tmp_path, f"bundle={rb.path}", f"input={tmp_path / 'input.parquet'}", f"output={onnx_out}")
    run(tmp_path, "backend=torch", f"ckpt_path={rb.checkpoint}", f"input={tmp_path / 'input.parquet'}",
        f"output={torch_out}")
    a, b = pd.read_parquet(onnx_out), pd.read_csv(torch_out, parse_dates=["date"])
    # a long table: group ids, time, one column per quantile; H rows per series, after its last observation
    assert list(a.columns) == ["agency", "sku", "date", "q0.1", "q0.5", "q0.9"]
    assert len(a) == 35 * 6 and a.groupby(["agency", "sku"]).size().eq(6).all()
    assert sorted(a.date.unique()) == list(pd.date_range("2017-07-01", periods=6, freq="MS"))
    keys = ["agency", "sku", "date"]
    assert (a[keys].astype(str).to_numpy() == b[keys].astype(str).to_numpy()).all()
    q = ["q0.1", "q0.5", "q0.9"]
    scale = np.abs(a[q].to_numpy()).max(axis=1, keepdims=True)
    assert (np.abs(a[q].to_numpy() - b[q].to_numpy()) <= 1e-4 * np.maximum(scale, 1.0)).all()
    assert a["q0.5"].std() > 0


def test_model_without_known_inputs_needs_no_future_rows(real_bundle, tmp_path):
    rb = real_bundle("nyc_taxi")  # calendar features only: future rows are derived
    df = pd.read_csv(needs_shared("nyc_taxi.csv")).iloc[:5000]
    df.to_csv(tmp_path / "input.csv", index=False)
    out = run(tmp_path, f"bundle={rb.path}", f"input={tmp_path / 'input.csv'}", "output=null")
    H = rb.dm.schema.max_prediction_length
    last = pd.Timestamp(df.timestamp.iloc[-1])
    assert list(out.timestamp) == list(pd.date_range(last, periods=H + 1, freq="30min")[1:])
    assert np.isfinite(out[["q0.1", "q0.5", "q0.9"]].to_numpy()).all()


def test_missing_future_rows_are_named(real_bundle, tmp_path):
    rb = real_bundle("stallion")
    table = forecast_table(stallion_subset(), STALLION, "2017-07-01")
    table = table[~((table.agency == "Agency_15") & (table.sku == "SKU_02") & (table.date >= "2017-10-01"))]
    table.to_parquet(tmp_path / "input.parquet")
    with pytest.raises(SchemaError, match="agency=Agency_15, sku=SKU_02.*the table has 3"):
        run(tmp_path, f"bundle={rb.path}", f"input={tmp_path / 'input.parquet'}", "output=null")
