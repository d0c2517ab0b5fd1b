"""Batch scoring as functions (no CLI): the rows a forecast uses selected, validated and turned into model
inputs chunk by chunk of series, scored by a runner (the bundle's onnxruntime graph, or a checkpoint), and
the forecasts as a long table. `fusioncast-predict` (predict.py) and the Spark job (batch/spark.py) call
`score`; `table_windows` is training's pandas path, kept as the reference the fast path is tested against.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from fusioncast.batch.select import OBSERVED_BEFORE, select
from fusioncast.batch.windows import (
    Replay,
    Windows,
    check_finite,
    chunk_windows,
    series_chunks,
)
from fusioncast.data.frame import prepare_frame
from fusioncast.data.grid import series_name
from fusioncast.data.inference import (
    INPUT_NAMES,
    assemble_window,
    nonfinite_windows,
    overflow_message,
    stack_windows,
)
from fusioncast.data.preprocess import Preprocessor
from fusioncast.data.schema import SchemaError, validate
from fusioncast.postfit.calibration import Calibration

log = logging.getLogger(__name__)

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # named inputs -> quantiles (B, H, Q)


def _extend(df: pd.DataFrame, pp: Preprocessor) -> pd.DataFrame:
    """A model without known inputs needs no future rows: add the missing ones (time stamps only)."""
    s, H = pp.schema, pp.schema.max_prediction_length
    groups = df.groupby(s.group_ids, sort=False) if s.group_ids else [((), df)]
    extra = []
    for key, g in groups:
        last = g.loc[g[s.target].notna(), s.time_col]
        if last.empty:
            continue
        want = pd.date_range(last.iloc[-1], periods=H + 1, freq=pp.freq)[1:]
        if want[-1] > pd.Timestamp.max:
            raise SchemaError(f"series {series_name(s, key)}: its forecast would reach {want[-1]}, past "
                              f"{pd.Timestamp.max.floor('s')}, the last time the model can represent")
        missing = want[~want.isin(g[s.time_col])]
        if len(missing):
            row = g.iloc[[0]].drop(columns=[s.time_col, s.target])
            extra.append(row.loc[row.index.repeat(len(missing))].assign(**{s.time_col: missing, s.target: np.nan}))
    return pd.concat([df, *extra], ignore_index=True) if extra else df


def table_windows(df: pd.DataFrame, pp: Preprocessor, replay: int = 0) -> Windows:
    """Encode a raw table (history + future rows) into one forecast window per series, and with `replay`
    the windows of up to that many origins before it per series (Windows.replay), through training's
    pandas path over every row: the reference that batch.windows.chunk_windows is tested against."""
    schema = dataclasses.replace(pp.schema, freq=pp.freq)  # the model's grid, never a re-inferred one
    L, H = schema.max_encoder_length, schema.max_prediction_length
    known = schema.time_varying_known_categoricals + schema.time_varying_known_reals
    raw = validate(df, schema)
    check_finite(raw, schema)
    if not known:
        raw = _extend(raw, pp)
    frame, _ = prepare_frame(raw, schema, drop_short=False)
    enc = pp.transform(frame)
    raw_times = (raw.groupby(schema.group_ids, sort=False)[schema.time_col] if schema.group_ids else
                 [((), raw[schema.time_col])])
    raw_times = {k if isinstance(k, tuple) else (k,): set(pd.DatetimeIndex(t).as_unit("ns").asi8.tolist())
                 for k, t in raw_times}
    first = np.concatenate([[0], np.cumsum(enc.length)])
    times = pd.DatetimeIndex(frame[schema.time_col]).as_unit("ns").asi8
    nk_cat, nk_real = len(schema.known_categoricals), len(schema.time_varying_known_reals)
    windows, out_times, group_rows, starts = [], [], [], []
    past, past_series, past_starts = [], [], []
    for i, key in enumerate(enc.keys):
        n, rows = int(enc.length[i]), frame.iloc[first[i] : first[i] + 1]
        group = tuple(rows[c].iloc[0] for c in schema.group_ids)
        label = series_name(schema, group)
        observed = enc.observed[i, :n]
        if not observed.any():
            raise SchemaError(f"series {label}: no observed '{schema.target}' value to forecast from")
        d = int(np.flatnonzero(observed)[-1]) + 1  # the first forecast step
        step_times = times[first[i] + d : first[i] + min(n, d + H)]
        given = raw_times[group]
        if len(step_times) < H or not all(int(t) in given for t in step_times):
            have = sum(int(t) in given for t in step_times)
            raise SchemaError(
                f"series {label}: the {H} steps after its last observed '{schema.target}' "
                f"({pd.Timestamp(int(times[first[i] + d - 1]), unit='ns')}) need rows with the known inputs "
                f"{known}; the table has {have}")

        def window(t: int, i: int = i, key: str = key) -> tuple[np.ndarray, ...]:  # first forecast step t
            lo = max(0, t - L)
            return assemble_window(
                pp, key, enc.static_cat[i], enc.static_real[i], enc.cat[i, lo:t], enc.real[i, lo:t],
                enc.observed[i, lo:t], enc.cat[i, t : t + H, :nk_cat], enc.real[i, t : t + H, 1 : 1 + nk_real])

        windows.append(window(d))
        out_times.append(step_times)
        group_rows.append(group)
        starts.append(d)
        first_seen = int(np.argmax(observed))  # replayed windows start after an observed target
        for t in range(max(first_seen + 1, d - replay), d):
            past.append(window(t))
            past_series.append(i)
            past_starts.append(t)
    groups = pd.DataFrame(group_rows, columns=schema.group_ids)
    w = Windows(enc.keys, groups, stack_windows(pp, windows), np.asarray(out_times).astype("datetime64[ns]"),
                np.asarray(starts, np.int64))
    if replay:
        series, start = np.asarray(past_series, np.int64), np.asarray(past_starts, np.int64)
        steps = start[:, None] + np.arange(H)  # inside each series' grid: d + H <= its length, checked above
        w.replay = Replay(stack_windows(pp, past), series, start, np.nan_to_num(enc.real[series[:, None], steps, 0]),
                          enc.observed[series[:, None], steps])
    return w


def check_replay(calibration: Calibration | None, replay: int | None = None) -> None:
    """Replaying past origins tracks an adaptive calibration: say so clearly for any other model."""
    if replay is not None and replay < 0:
        raise ValueError(f"replay must be >= 0 (past origins per series), got {replay}")
    if calibration is None or calibration.step is None:
        method = calibration.method if calibration is not None else "none"
        asked = f"replay={replay}" if replay is not None else "replayed windows"
        raise ValueError(f"{asked} needs a model trained with calibration=adaptive; this one's calibration is {method}")


def run_batches(inputs: dict[str, np.ndarray], run: Runner, batch_size: int, H: int, Q: int) -> np.ndarray:
    n = len(next(iter(inputs.values())))
    preds = [run({k: v[i : i + batch_size] for k, v in inputs.items()}) for i in range(0, n, batch_size)]
    return np.concatenate(preds) if preds else np.zeros((0, H, Q), np.float32)


def forecast_table(w: Windows, pp: Preprocessor, quantiles: list[float], run: Runner,
                   batch_size: int = 1024, calibration: Calibration | None = None) -> pd.DataFrame:
    """Run the model over the windows in batches; the long output table. With replayed windows and an
    adaptive `calibration` (whose fitted offsets `run` applies), the offsets are tracked over them first."""
    H = pp.schema.max_prediction_length
    pred = run_batches(w.inputs, run, batch_size, H, len(quantiles))
    if w.replay is not None and len(w.replay.series):
        check_replay(calibration)
        r, n = w.replay, len(pred)
        past = run_batches(r.inputs, run, batch_size, H, len(quantiles))
        scale = np.concatenate([r.inputs["target_scale"], w.inputs["target_scale"]])
        tracked = calibration.track(
            np.concatenate([past, pred]), np.concatenate([r.target, np.zeros((n, H))]),
            np.concatenate([r.mask, np.zeros((n, H), bool)]), scale,
            np.concatenate([r.series, np.arange(n)]), np.concatenate([r.decoder_start, w.decoder_start]))
        pred = tracked[len(past):]
    bad = nonfinite_windows([pred])
    if len(bad):  # never empty cells: name the series and its input furthest outside the training data
        i = int(bad[0])
        _, _, why = overflow_message(pp, w.inputs, i, "column '{col}' ({part} rows)")
        group = tuple(w.groups.iloc[i]) if len(w.groups.columns) else ()
        raise SchemaError(f"series {series_name(pp.schema, group)}: {why}")
    out = w.groups.loc[w.groups.index.repeat(H)].reset_index(drop=True)
    out[pp.schema.time_col] = w.times.reshape(-1)
    for j, q in enumerate(quantiles):
        out[f"q{q:g}"] = pred[..., j].reshape(-1).astype(np.float32)
    return out


def onnx_runner(bundle_dir: str, variant: str = "fp32", threads: int = 2, expect_sha256: str | None = None
                ) -> tuple[Preprocessor, list[float], Runner, Calibration | None]:
    from fusioncast.serve.bundle import Bundle, Model

    bundle = Bundle.load(bundle_dir, expect_sha256=expect_sha256)  # checked whole, as the server checks it
    model = Model(bundle, variant=variant, threads=threads)
    return bundle.pp, bundle.quantiles, lambda inputs: model(inputs)[0], model.calibration


def torch_runner(ckpt_path: str) -> tuple[Preprocessor, list[float], Runner, Calibration | None]:
    """The checkpoint's PyTorch model (eager, CPU) and its fitted preprocessing; the quantile calibration
    of its training run (metrics.json next to checkpoints/) is applied as the bundle's is."""
    import torch

    from fusioncast.training import checkpoint

    module, ckpt = checkpoint.load_model(ckpt_path)
    module.eval()
    pp = Preprocessor.from_dict(checkpoint.data_state(ckpt, ckpt_path)["preprocessor"])
    calibration = Calibration.from_dict((checkpoint.run_metrics(ckpt_path) or {}).get("calibration"))

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            pred = module(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES)).float().numpy()
        return pred if calibration is None else calibration.apply(pred, inputs["target_scale"])

    return pp, [float(q) for q in module.hparams.quantiles], run, calibration


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the forecasts atomically: into a temporary file next to `path`, then renamed over it, so that
    a reader (or a crash) never sees half a table, and an earlier output stays whole until replaced."""
    path = Path(path)
    if path.suffix not in (".parquet", ".pq", ".csv"):
        raise SchemaError(f"output '{path}': use a .parquet or .csv file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix == ".csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def runner(cfg: Mapping) -> tuple[Preprocessor, list[float], Runner, Calibration | None]:
    """The model of the options: the bundle through onnxruntime, or (backend=torch) the checkpoint."""
    if cfg["backend"] == "onnx":
        if not cfg["bundle"]:
            raise ValueError("backend=onnx needs bundle=DIR")
        return onnx_runner(cfg["bundle"], cfg["variant"], cfg["threads"], cfg.get("bundle_sha256"))
    if cfg["backend"] == "torch":
        if not cfg["ckpt_path"]:
            raise ValueError("backend=torch needs ckpt_path=FILE")
        return torch_runner(cfg["ckpt_path"])
    raise ValueError(f"backend must be onnx or torch, got {cfg['backend']!r}")


def whole_number(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what}, got {value!r}")
    return value


def score(source, pp: Preprocessor, quantiles: list[float], run: Runner, batch_size: int = 1024,
          calibration: Calibration | None = None, replay: int = 0, chunk_size: int = 4096) -> pd.DataFrame:
    """The forecasts of every series of `source` (a DataFrame or a .parquet/.csv file): the rows they use
    are selected, validated, and scored `chunk_size` series at a time. A pure function of the series it
    is given (the Spark job runs it on each group of whole series)."""
    schema = dataclasses.replace(pp.schema, freq=pp.freq)
    raw = validate(select(source, schema, pp.freq, replay), schema, keep=(OBSERVED_BEFORE,))
    parts = [forecast_table(chunk_windows(chunk, pp, replay), pp, quantiles, run, batch_size, calibration)
             for chunk in series_chunks(raw, schema, chunk_size)]
    return pd.concat(parts, ignore_index=True)
