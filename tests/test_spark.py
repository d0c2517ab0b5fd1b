"""Batch scoring on a real local Spark session: the Spark job's forecasts are the single-process job's."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest

from fusioncast.batch.options import defaults
from fusioncast.predict import predict
from tests.conftest import ROOT
from tests.serve.test_requests import STALLION, forecast_table

KEYS, Q = ["agency", "sku", "date"], ["q0.1", "q0.5", "q0.9"]


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    # the Python workers: this interpreter, the project's sources first (as an installed wheel would be)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    session = (SparkSession.builder.master("local[1]").appName("fusioncast-test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    yield session
    session.stop()


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(date=pd.to_datetime(df.date).astype("datetime64[ns]"))
    return df.sort_values(KEYS).reset_index(drop=True)


def test_spark_forecasts_equal_the_single_process_job(real_bundle, spark, tmp_path):
    from fusioncast.batch.spark import score_spark
    from tests.test_predict import stallion_subset

    rb = real_bundle("stallion")
    forecast_table(stallion_subset(), STALLION, "2017-07-01").to_parquet(tmp_path / "t.parquet")
    opts = {**defaults(), "bundle": str(rb.path), "input": str(tmp_path / "t.parquet"), "output": None}
    local = _sorted(predict(opts))
    assert len(local) == 35 * 6 and local["q0.5"].std() > 0
    # the Python API, many series per call (hash buckets of whole series)
    buckets = _sorted(score_spark(spark.read.parquet(str(tmp_path / "t.parquet")), rb.path, buckets=3).toPandas())
    # the command's engine: one call per series (groupBy the group ids), written by Spark
    predict({**opts, "engine": "spark", "output": str(tmp_path / "out.parquet")})
    per_series = _sorted(pd.read_parquet(tmp_path / "out.parquet"))
    for got in (buckets, per_series):
        assert list(got.columns) == list(local.columns)
        pd.testing.assert_frame_equal(got[KEYS], local[KEYS])
        # float32 graphs over batches of other sizes sum in another order: equal to a few ulps of the forecast
        np.testing.assert_allclose(got[Q].to_numpy(), local[Q].to_numpy(), rtol=1e-5, atol=1e-5)
