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


def adaptive_bundle(rb, path, step: float):
    """A copy of a real bundle with an adaptive calibration: zero offsets, tracking step `step`."""
    import json
    import shutil

    from fusioncast.postfit.calibration import Calibration
    from fusioncast.serve.bundle import write_meta

    shutil.copytree(rb.path, path)
    meta = json.loads((path / "bundle.json").read_text())
    H = rb.dm.schema.max_prediction_length
    meta["calibration"] = Calibration([0.1, 0.5, 0.9], np.zeros((H, 3)), "adaptive", {}, np.full(H, step)).to_dict()
    write_meta(path, meta, list(meta["integrity"]["files"]))  # sealed again: an edit alone is refused
    return path


def test_replay_tracks_the_calibration_over_the_forecasts_of_earlier_origins(real_bundle, tmp_path):
    from fusioncast.batch.score import table_windows
    from fusioncast.postfit.calibration import Calibration
    from fusioncast.serve.bundle import Bundle

    rb = real_bundle("nyc_taxi")
    bundle = adaptive_bundle(rb, tmp_path / "adaptive", step=0.2)
    cal = Calibration.from_dict(Bundle.load(bundle).meta["calibration"])
    df = pd.read_csv(needs_shared("nyc_taxi.csv")).iloc[:3000]
    H, K, q = rb.dm.schema.max_prediction_length, 24, ["q0.1", "q0.5", "q0.9"]

    def score(frame: pd.DataFrame, *overrides: str) -> pd.DataFrame:
        frame.to_csv(tmp_path / "input.csv", index=False)
        return run(tmp_path, f"bundle={bundle}", f"input={tmp_path / 'input.csv'}", "output=null", *overrides)

    # what the job would have issued at each of the K origins before the table's end, from the table cut there
    past = [score(df.iloc[: len(df) - k]) for k in range(K, 0, -1)]
    pred = np.stack([p[q].to_numpy() for p in past])                     # (K, H, Q), zero offsets: the model's
    y = df.value.to_numpy(float)
    ends = np.arange(len(df) - K, len(df))                                # first forecast step of each
    steps = ends[:, None] + np.arange(H)
    target, mask = np.where(steps < len(df), y[steps.clip(max=len(df) - 1)], 0.0), steps < len(df)
    plain = score(df)
    w = table_windows(df, Bundle.load(bundle).pp, replay=K)
    assert len(w.replay.series) == K and (w.replay.decoder_start == w.decoder_start[0] - np.arange(K, 0, -1)).all()
    assert np.allclose(w.replay.target[mask], target[mask]) and (w.replay.mask == mask).all()  # the table's actuals
    # the replayed windows' forecasts are the ones issued from the cut tables, tracked in time order
    scale = np.concatenate([w.replay.inputs["target_scale"], w.inputs["target_scale"]])
    expected = cal.track(np.concatenate([pred, plain[q].to_numpy()[None]]), np.concatenate([target, np.zeros((1, H))]),
                         np.concatenate([mask, np.zeros((1, H), bool)]), scale, np.zeros(K + 1, np.int64),
                         np.r_[ends, len(df)])[-1]
    replayed = score(df, f"replay={K}")
    np.testing.assert_allclose(replayed[q].to_numpy(), expected, rtol=1e-5, atol=1e-3)
    assert np.abs(replayed[q].to_numpy() - plain[q].to_numpy()).max() > 1.0  # the offsets moved...
    np.testing.assert_array_equal(replayed["q0.5"].to_numpy(), plain["q0.5"].to_numpy())  # ...not the median's


def test_replay_needs_an_adaptive_calibration(real_bundle, tmp_path):
    rb = real_bundle("nyc_taxi")
    pd.read_csv(needs_shared("nyc_taxi.csv")).iloc[:3000].to_csv(tmp_path / "input.csv", index=False)
    with pytest.raises(ValueError, match="replay=10 needs a model trained with calibration=adaptive.*none"):
        run(tmp_path, f"bundle={rb.path}", f"input={tmp_path / 'input.csv'}", "output=null", "replay=10")
    bundle = adaptive_bundle(rb, tmp_path / "adaptive", step=0.1)
    with pytest.raises(ValueError, match="replay must be >= 0"):
        run(tmp_path, f"bundle={bundle}", f"input={tmp_path / 'input.csv'}", "output=null", "replay=-1")
    with pytest.raises(ValueError, match="replay must be a whole number.*'ten'"):
        run(tmp_path, f"bundle={bundle}", f"input={tmp_path / 'input.csv'}", "output=null", "replay=ten")


def _scored(tmp_path, bundle, table: pd.DataFrame, name: str = "input.parquet", output: str = "null"):
    table.to_parquet(tmp_path / name) if name.endswith(".parquet") else table.to_csv(tmp_path / name, index=False)
    return run(tmp_path, f"bundle={bundle}", f"input={tmp_path / name}", f"output={output}")


def test_batch_scoring_refuses_what_the_server_refuses(real_bundle, tmp_path):
    """NaN or infinite covariates (training's path would fill them with the mean), an infinite target,
    dates beyond datetime64[ns] and a forecast that overflows: each an error naming the series, never
    empty cells or a wrapped date."""
    rb = real_bundle("stallion")
    table = forecast_table(stallion_subset(), STALLION, "2017-07-01").reset_index(drop=True)
    row = table.index[(table.agency == "Agency_15") & (table.sku == "SKU_02") & (table.date == "2016-03-01")][0]
    for col, value, match in [("price_regular", np.nan, "column 'price_regular' is nan at 2016-03-01"),
                              ("industry_volume", np.inf, "column 'industry_volume' is inf"),
                              ("avg_population_2017", -np.inf, "column 'avg_population_2017' is -inf"),
                              ("volume", np.inf, "column .volume. is inf at 2016-03-01.*the target may be empty, never infinite")]:
        bad = table.copy()
        bad[col] = bad[col].astype(float)
        rows = bad.index[(bad.agency == "Agency_15") & (bad.sku == "SKU_02")] if col.startswith("avg_") else [row]
        bad.loc[rows, col] = value  # a static column: the whole series
        with pytest.raises(SchemaError, match=f"agency=Agency_15, sku=SKU_02: {match}"):
            _scored(tmp_path, rb.path, bad)
    late = table.copy()
    late["date"] = late["date"].astype(str).str.replace("2017-", "2263-")
    with pytest.raises(SchemaError, match="has 2263-.* outside the times the model can represent"):
        _scored(tmp_path, rb.path, late, "late.csv")
    # a series unseen in training with targets of +-3.3e38 is scaled by its own history: the forecast overflows
    huge = table[(table.agency == "Agency_15") & (table.sku == "SKU_02")].copy()
    huge["agency"] = "Agency_99"
    observed = huge.volume.notna().to_numpy()
    huge.loc[observed, "volume"] = np.where(np.arange(observed.sum()) % 2, 3.3e38, -3.3e38)
    with pytest.raises(SchemaError, match="agency=Agency_99, sku=SKU_02: the model's forecast is not finite.*"
                                          "column 'volume' \\(history rows\\)"):
        _scored(tmp_path, rb.path, pd.concat([table, huge], ignore_index=True))


def test_batch_scoring_of_an_empty_table_says_so(real_bundle, tmp_path):
    rb = real_bundle("stallion")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SchemaError, match="is empty: no header, no rows"):
        run(tmp_path, f"bundle={rb.path}", f"input={tmp_path / 'empty.csv'}", "output=null")
    (tmp_path / "header.csv").write_text("agency,sku,date,volume\n")
    with pytest.raises(SchemaError, match="has no rows"):
        run(tmp_path, f"bundle={rb.path}", f"input={tmp_path / 'header.csv'}", "output=null")


def test_outputs_are_replaced_whole(real_bundle, tmp_path):
    """The forecasts go to a temporary file renamed over the output: a reader of the earlier output keeps
    reading it whole, and nothing is left beside it."""
    rb = real_bundle("stallion")
    table = forecast_table(stallion_subset(), STALLION, "2017-07-01")
    out = tmp_path / "out" / "forecasts.csv"
    first = _scored(tmp_path, rb.path, table, output=str(out))
    before = out.read_bytes()
    with open(out, "rb") as reader:  # opened before the next job writes
        _scored(tmp_path, rb.path, forecast_table(stallion_subset(), STALLION, "2017-06-01"), output=str(out))
        assert reader.read() == before  # in-place writing would have truncated what it reads
    assert out.read_bytes() != before and sorted(p.name for p in out.parent.iterdir()) == ["forecasts.csv"]
    assert len(first) == 35 * 6
