"""Batch scoring reads only what a forecast uses (batch.select), builds the windows of a chunk of series at
once (batch.windows), and gives exactly the model inputs of training's pandas path over every row
(batch/score.py table_windows), on real tables with gaps, missing values, short and unseen series."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fusioncast.batch.score import forecast_table, onnx_runner, score, table_windows
from fusioncast.batch.select import OBSERVED_BEFORE, select
from fusioncast.batch.windows import chunk_windows, series_chunks
from fusioncast.data.schema import SchemaError, validate
from fusioncast.data.synthetic import make_taxi_demand
from tests.conftest import needs_shared
from tests.serve.test_requests import STALLION, SYNTH, fitted
from tests.serve.test_requests import forecast_table as cut_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fast_windows(source, pp, replay=0, chunk_size=4096, rows=1 << 20):
    schema = dataclasses.replace(pp.schema, freq=pp.freq)
    raw = validate(select(source, schema, pp.freq, replay, rows), schema, keep=(OBSERVED_BEFORE,))
    return [chunk_windows(chunk, pp, replay) for chunk in series_chunks(raw, schema, chunk_size)]


def assert_same(reference, chunks):
    keys = [k for w in chunks for k in w.keys]
    assert keys == reference.keys
    for name, want in reference.inputs.items():
        got = np.concatenate([w.inputs[name] for w in chunks])
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(np.concatenate([w.times for w in chunks]), reference.times)
    pd.testing.assert_frame_equal(pd.concat([w.groups for w in chunks], ignore_index=True), reference.groups)
    if reference.replay is not None:
        for field in ("target", "mask"):
            np.testing.assert_array_equal(np.concatenate([getattr(w.replay, field) for w in chunks]),
                                          getattr(reference.replay, field), err_msg=field)
        for name, want in reference.replay.inputs.items():
            np.testing.assert_array_equal(np.concatenate([w.replay.inputs[name] for w in chunks]), want, err_msg=name)


@pytest.fixture(scope="module")
def synthetic():
    df = make_taxi_demand(n_zones=6, days=21)
    return df, fitted(df, SYNTH, "2024-01-14")


def awkward(df: pd.DataFrame) -> pd.DataFrame:
    """Gaps (one at a series' encoder's first step: its covariates come from the row before), missing
    targets, a missing categorical, an unseen series with a short history, a short series."""
    df = df.copy()
    t, z = df.timestamp, df.zone
    df.loc[(z == "zone_002") & t.between("2024-01-20 20:00", "2024-01-20 23:00"), "pickups"] = np.nan
    df.loc[(z == "zone_001") & (t == "2024-01-20 03:00"), "weather"] = None
    # zone_003's encoder (24 steps up to its last target, 2024-01-21 05:00) starts at 2024-01-20 06:00: a gap
    df = df[~((z == "zone_003") & t.between("2024-01-20 04:00", "2024-01-20 09:00"))]
    df = df[~((df.zone == "zone_004") & (df.timestamp < "2024-01-21 00:00"))]  # a history shorter than the encoder
    new = df[df.zone == "zone_005"].assign(zone="zone_new", borough="Atlantis")
    return pd.concat([df, new], ignore_index=True)


@pytest.mark.parametrize("replay", [0, 30])
def test_windows_equal_the_pandas_path_synthetic(synthetic, replay):
    df, pp = synthetic
    table = cut_table(awkward(df), SYNTH, "2024-01-21 06:00")
    reference = table_windows(table, pp, replay)
    assert_same(reference, fast_windows(table, pp, replay))
    assert_same(reference, fast_windows(table, pp, replay, chunk_size=2, rows=500))  # chunks, batches of rows


def test_windows_equal_the_pandas_path_on_files(synthetic, tmp_path):
    """A parquet file read column-pruned in row batches, a CSV in chunks: the same windows."""
    df, pp = synthetic
    table = cut_table(awkward(df), SYNTH, "2024-01-21 06:00").sample(frac=1.0, random_state=0)  # any row order
    table["unused"] = "x"
    reference = table_windows(table, pp)
    table.to_parquet(tmp_path / "t.parquet", row_group_size=700)
    table.to_csv(tmp_path / "t.csv", index=False)
    for path in (tmp_path / "t.parquet", tmp_path / "t.csv"):
        assert_same(reference, fast_windows(path, pp, rows=1000))


def test_windows_equal_the_pandas_path_stallion(tmp_path):
    """Monthly steps (a calendar offset), two group ids, a dozen known categoricals."""
    df = pd.read_parquet(needs_shared("stallion.parquet"))
    pp = fitted(df, STALLION, "2017-01-01")
    table = cut_table(df, STALLION, "2017-07-01")
    table = table[~((table.agency == "Agency_01") & (table.date == "2015-02-01"))]  # a gap at an encoder's start
    assert_same(table_windows(table, pp), fast_windows(table, pp, chunk_size=100))


def test_windows_equal_the_pandas_path_without_known_inputs():
    """nyc_taxi: calendar features only, no future rows (they are derived)."""
    from fusioncast.data.schema import Schema

    schema = Schema(time_col="timestamp", target="value", calendar=["hour", "day_of_week"], freq="30min",
                    max_encoder_length=48, max_prediction_length=12)
    df = pd.read_csv(needs_shared("nyc_taxi.csv")).iloc[:4000]
    pp = fitted(df, schema, "2014-07-30")
    assert_same(table_windows(df, pp, replay=20), fast_windows(df, pp, replay=20))


def test_selection_reads_only_the_rows_a_forecast_uses(synthetic, tmp_path):
    df, pp = synthetic
    table = cut_table(awkward(df), SYNTH, "2024-01-21 06:00")
    schema = dataclasses.replace(pp.schema, freq=pp.freq)
    kept = select(table, schema, pp.freq)
    per_series = kept.groupby("zone").size()
    L, H = SYNTH.max_encoder_length, SYNTH.max_prediction_length
    # the encoder's steps, the horizon's and the row before them; of zone_004 its 6 steps of history
    assert per_series["zone_000"] == L + H + 1 and per_series["zone_004"] == 6 + H
    assert per_series["zone_003"] == L - 4 + 1 + H  # the gap, and the row before it
    assert len(kept) < len(table) / 10


def test_errors_name_the_series(synthetic):
    df, pp = synthetic
    table = cut_table(df, SYNTH, "2024-01-21 06:00")
    z, t = table.zone, table.timestamp
    with pytest.raises(SchemaError, match="series zone=zone_002: the 6 steps after .* the table has 4"):
        score(table[~((z == "zone_002") & (t >= "2024-01-21 10:00"))], pp, [0.1, 0.5, 0.9], lambda x: x)
    with pytest.raises(SchemaError, match="series zone=zone_001: no observed 'pickups'"):
        bad = table.copy()
        bad.loc[bad.zone == "zone_001", "pickups"] = np.nan
        score(bad, pp, [0.1, 0.5, 0.9], lambda x: x)
    bad = table.copy()
    bad["timestamp"] = bad.timestamp.where(~((z == "zone_004") & (t == "2024-01-21 01:00")),
                                           pd.Timestamp("2024-01-21 01:30"))
    with pytest.raises(SchemaError, match="series zone=zone_004: timestamp 2024-01-21 01:30:00 .* not on the 'h' grid"):
        score(bad, pp, [0.1, 0.5, 0.9], lambda x: x)


def test_forecasts_equal_the_pandas_path_with_a_real_bundle(real_bundle, tmp_path):
    """The whole job against the old one (table_windows + forecast_table) with a real bundle."""
    from tests.test_predict import stallion_subset

    rb = real_bundle("stallion")
    pp, quantiles, run, calibration = onnx_runner(str(rb.path))
    table = cut_table(stallion_subset(), STALLION, "2017-07-01")
    table.to_parquet(tmp_path / "t.parquet")
    want = forecast_table(table_windows(table, pp), pp, quantiles, run, 1024, calibration)
    got = score(tmp_path / "t.parquet", pp, quantiles, run, 1024, calibration, chunk_size=7)
    pd.testing.assert_frame_equal(got, want)


def test_onnx_backend_runs_without_torch_lightning_or_hydra(real_bundle, tmp_path):
    """What the serving image has (the `serve` extra): the CLI with torch, lightning and Hydra unimportable."""
    from tests.test_predict import stallion_subset

    rb = real_bundle("stallion")
    cut_table(stallion_subset(), STALLION, "2017-07-01").to_parquet(tmp_path / "t.parquet")
    blocked = ("torch", "lightning", "pytorch_lightning", "hydra", "omegaconf")
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "from fusioncast.predict import main\nmain()")
    out = tmp_path / "f.csv"
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    run = subprocess.run([sys.executable, "-c", code, f"bundle={rb.path}", f"input={tmp_path / 't.parquet'}",
                          f"output={out}", "chunk_size=10"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(pd.read_csv(out)) == 35 * 6
    bad = subprocess.run([sys.executable, "-c", code, f"bundle={rb.path}", "input=x.parquet", "outptu=y.csv"],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
        "fusioncast-predict: unknown option 'outptu'")
