"""`fusioncast-predict bundle=DIR input=FILE output=FILE [backend=onnx|torch ckpt_path=...]`: batch scoring.

For every series of the table, forecasts the `max_prediction_length` steps after its last observed
target. Rows after it (target empty) supply the known future inputs; calendar features are derived.
The table goes through the same pandas path as training (schema.validate → grid → calendar →
Preprocessor.transform), then through data.inference.assemble_window like a served request, so the
server and this job give the same forecast for the same input. Output: a long table with the group
ids, the time column and one column per quantile (`q0.1`, `q0.5`, `q0.9`), as parquet or CSV.

With a bundle trained with calibration=adaptive, `replay=N` also forecasts the N origins before each
series' last observation, whose actuals the table holds, and tracks the calibration offsets over
them in time order (Calibration.track, as evaluation does over the test windows) before it applies
them to the forecast: the intervals follow the table's recent errors, not only validation's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from fusioncast.calibration import Calibration
from fusioncast.data.frame import prepare_frame
from fusioncast.data.grid import series_name
from fusioncast.data.inference import INPUT_NAMES, assemble_window, stack_windows
from fusioncast.data.preprocess import Preprocessor
from fusioncast.data.schema import SchemaError, validate
from fusioncast.data.sources import read_table

log = logging.getLogger(__name__)

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # named inputs -> quantiles (B, H, Q)


@dataclasses.dataclass
class Replay:
    """Past windows of a table's series, whose actuals it holds (for tracking an adaptive calibration)."""

    inputs: dict[str, np.ndarray]      # model inputs, batch = replayed windows
    series: np.ndarray                 # (R,) index of each window's series in Windows.keys
    decoder_start: np.ndarray          # (R,) first forecast step, in grid steps of its series
    target: np.ndarray                 # (R, H) actuals (raw units), 0 where unobserved
    mask: np.ndarray                   # (R, H) observed actuals


@dataclasses.dataclass
class Windows:
    """The forecast window of every series of a table."""

    keys: list[str]
    groups: pd.DataFrame               # the group-id values of each series (one row per series)
    inputs: dict[str, np.ndarray]      # model inputs, batch = series
    times: np.ndarray                  # (S, H) datetime64[ns] forecast times
    decoder_start: np.ndarray | None = None  # (S,) each forecast's first step, in grid steps of its series
    replay: Replay | None = None


def _extend(df: pd.DataFrame, pp: Preprocessor) -> pd.DataFrame:
    """A model without known inputs needs no future rows: add the missing ones (time stamps only)."""
    s, H = pp.schema, pp.schema.max_prediction_length
    groups = df.groupby(s.group_ids, sort=False) if s.group_ids else [((), df)]
    extra = []
    for _, g in groups:
        last = g.loc[g[s.target].notna(), s.time_col]
        if last.empty:
            continue
        want = pd.date_range(last.iloc[-1], periods=H + 1, freq=pp.freq)[1:]
        missing = want[~want.isin(g[s.time_col])]
        if len(missing):
            row = g.iloc[[0]].drop(columns=[s.time_col, s.target])
            extra.append(row.loc[row.index.repeat(len(missing))].assign(**{s.time_col: missing, s.target: np.nan}))
    return pd.concat([df, *extra], ignore_index=True) if extra else df


def table_windows(df: pd.DataFrame, pp: Preprocessor, replay: int = 0) -> Windows:
    """Encode a raw table (history + future rows) into one forecast window per series, and with `replay`
    the windows of up to that many origins before it per series (Windows.replay)."""
    schema = dataclasses.replace(pp.schema, freq=pp.freq)  # the model's grid, never a re-inferred one
    L, H = schema.max_encoder_length, schema.max_prediction_length
    known = schema.time_varying_known_categoricals + schema.time_varying_known_reals
    raw = validate(df, schema)
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
    out = w.groups.loc[w.groups.index.repeat(H)].reset_index(drop=True)
    out[pp.schema.time_col] = w.times.reshape(-1)
    for j, q in enumerate(quantiles):
        out[f"q{q:g}"] = pred[..., j].reshape(-1).astype(np.float32)
    return out


def onnx_runner(bundle_dir: str, variant: str = "fp32", threads: int = 2
                ) -> tuple[Preprocessor, list[float], Runner, Calibration | None]:
    from fusioncast.serve.bundle import Bundle, Model

    bundle = Bundle.load(bundle_dir)
    model = Model(bundle, variant=variant, threads=threads)
    return bundle.pp, bundle.quantiles, lambda inputs: model(inputs)[0], model.calibration


def torch_runner(ckpt_path: str) -> tuple[Preprocessor, list[float], Runner, Calibration | None]:
    """The checkpoint's PyTorch model (eager, CPU) and its fitted preprocessing; the quantile calibration
    of its training run (metrics.json next to checkpoints/) is applied as the bundle's is."""
    import json

    import torch

    from fusioncast.data.datamodule import TimeSeriesDataModule
    from fusioncast.models.module import TFTModule

    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)[TimeSeriesDataModule.__qualname__]
    pp = Preprocessor.from_dict(state["preprocessor"])
    module = TFTModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=False).eval()
    metrics_file = Path(ckpt_path).resolve().parent.parent / "metrics.json"
    calibration = Calibration.from_dict(json.loads(metrics_file.read_text()).get("calibration")) if (
        metrics_file.is_file()) else None

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            pred = module(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES)).float().numpy()
        return pred if calibration is None else calibration.apply(pred, inputs["target_scale"])

    return pp, [float(q) for q in module.hparams.quantiles], run, calibration


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        raise SchemaError(f"output '{path}': use a .parquet or .csv file name")
    return path


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Score cfg.input with the bundle (backend=onnx) or the checkpoint (backend=torch); write cfg.output."""
    if cfg.backend == "onnx":
        if not cfg.bundle:
            raise ValueError("backend=onnx needs bundle=DIR")
        pp, quantiles, run, calibration = onnx_runner(cfg.bundle, cfg.variant, cfg.threads)
    elif cfg.backend == "torch":
        if not cfg.ckpt_path:
            raise ValueError("backend=torch needs ckpt_path=FILE")
        pp, quantiles, run, calibration = torch_runner(cfg.ckpt_path)
    else:
        raise ValueError(f"backend must be onnx or torch, got {cfg.backend!r}")
    replay = cfg.get("replay") or 0
    if not isinstance(replay, int) or isinstance(replay, bool):
        raise ValueError(f"replay must be a whole number of past origins per series, got {replay!r}")
    if replay:
        check_replay(calibration, replay)  # before any work is done
    windows = table_windows(read_table(cfg.input), pp, replay)
    table = forecast_table(windows, pp, quantiles, run, cfg.batch_size, calibration)
    if cfg.output:
        log.info("wrote %d forecasts of %d series to %s", len(table),
                 len(table) // pp.schema.max_prediction_length, write_table(table, cfg.output))
    return table


@hydra.main(version_base="1.3", config_path="configs", config_name="predict.yaml")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
