"""Batch scoring on Apache Spark: the single-process scorer (batch.score.score) on each group of whole series.

`score_spark(df, bundle)` groups a Spark DataFrame by the model's group ids (or, with `buckets`, by a
hash of them: many whole series per call, fewer calls) and runs `groupBy(...).applyInPandas` with the
scorer, a pure function of the series it is given, so the forecasts equal the single-process job's.
The bundle directory is checked on the driver and shipped to the executors once (SparkContext.addFile);
each Python worker loads it once, into one onnxruntime session per process (a module-level cache keyed
by the bundle's digest), whose digest it checks against the driver's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

_RUNNERS: dict[tuple, tuple] = {}  # (bundle digest, variant, threads) -> onnx_runner's result, per worker process


def _runner(name: str, digest: str, variant: str, threads: int) -> tuple:
    key = (digest, variant, threads)
    if key not in _RUNNERS:
        from pyspark import SparkFiles

        from fusioncast.batch.score import onnx_runner

        _RUNNERS[key] = onnx_runner(SparkFiles.get(name), variant, threads, expect_sha256=digest)
    return _RUNNERS[key]


def output_schema(pp, quantiles: list[float]) -> str:
    """The forecasts' Spark schema (DDL): group ids as text, the time without time zone, quantiles."""
    s = pp.schema
    cols = [f"`{c}` string" for c in s.group_ids] + [f"`{s.time_col}` timestamp_ntz"]
    return ", ".join(cols + [f"`q{q:g}` float" for q in quantiles])


def score_spark(df, bundle: str | Path, *, variant: str = "fp32", threads: int = 1, batch_size: int = 1024,
                replay: int = 0, chunk_size: int = 4096, buckets: int = 0, bundle_sha256: str | None = None):
    """The forecasts of every series of the Spark DataFrame `df` (the columns of the training table) as a
    Spark DataFrame. `buckets` > 0 groups the series into that many hash buckets of whole series."""
    from pyspark.sql import functions as F

    from fusioncast.batch.score import check_replay, score
    from fusioncast.data.schema import used_columns
    from fusioncast.serve.bundle import Bundle

    bundle = Path(bundle).resolve()
    checked = Bundle.load(bundle, expect_sha256=bundle_sha256)  # refused here, before any executor starts
    pp, quantiles, digest = checked.pp, checked.quantiles, checked.digest
    if replay:
        from fusioncast.postfit.calibration import Calibration

        check_replay(Calibration.from_dict(checked.meta.get("calibration")) if checked.meta.get("calibration")
                     else None, replay)
    df.sparkSession.sparkContext.addFile(str(bundle), recursive=True)
    name = bundle.name

    def score_group(pdf: pd.DataFrame) -> pd.DataFrame:
        pp_, quantiles_, run, calibration = _runner(name, digest, variant, threads)
        return score(pdf, pp_, quantiles_, run, batch_size, calibration, replay, chunk_size)

    df = df.select(*used_columns(pp.schema, df.columns))  # column pruning, pushed down to the files
    groups = pp.schema.group_ids
    if buckets and groups:
        keyed = df.withColumn("_bucket", F.pmod(F.xxhash64(*groups), F.lit(buckets)))
        return keyed.groupBy("_bucket").applyInPandas(lambda pdf: score_group(pdf.drop(columns="_bucket")),
                                                      output_schema(pp, quantiles))
    grouped = df.groupBy(*groups) if groups else df.groupBy()
    return grouped.applyInPandas(score_group, output_schema(pp, quantiles))


def read(spark, path: str):
    """A table for scoring: parquet (a file or a folder of parts) or CSV with a header."""
    if str(path).endswith(".csv"):
        return spark.read.csv(str(path), header=True, inferSchema=True)
    return spark.read.parquet(str(path))


def predict_spark(cfg: Mapping) -> pd.DataFrame | None:
    """`fusioncast-predict engine=spark`: the session spark-submit (or the cluster) gives, else a local one;
    cfg.output is written by Spark (a folder of parquet parts, or CSV with a header); with output=null the
    forecasts are collected and returned."""
    from pyspark.sql import SparkSession

    if cfg["backend"] != "onnx" or not cfg["bundle"]:
        raise ValueError("engine=spark scores with a bundle: give bundle=DIR (backend=onnx)")
    spark = SparkSession.builder.appName("fusioncast-predict").getOrCreate()
    out = score_spark(read(spark, cfg["input"]), cfg["bundle"], variant=cfg["variant"], threads=cfg["threads"],
                      batch_size=cfg["batch_size"], replay=cfg.get("replay") or 0,
                      chunk_size=cfg.get("chunk_size") or 4096, buckets=cfg.get("spark_buckets") or 0,
                      bundle_sha256=cfg.get("bundle_sha256"))
    if not cfg["output"]:
        return out.toPandas()
    writer = out.write.mode("overwrite")
    if str(cfg["output"]).endswith(".csv"):
        writer.csv(str(cfg["output"]), header=True)
    else:
        writer.parquet(str(cfg["output"]))
    return None
