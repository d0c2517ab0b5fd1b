"""`fusioncast-export ckpt_path=...`: checkpoint → bundle/ (model.onnx + bundle.json), parity-checked.

The graph is exported with torch.onnx's dynamo exporter (dynamic batch axis), checked by onnx's
checker, then run by onnxruntime on real validation windows next to PyTorch: the export fails when
the two disagree beyond `tolerance` (relative). Category codes and raw-unit values go in, quantiles
in target units come out; scaling lives inside the graph, so the bundle needs no other code than
the numpy preprocessing whose fitted state bundle.json carries.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import onnx
import onnxruntime as ort
import orjson
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import fusioncast
from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.inference import (
    INPUT_NAMES,
    INTERPRETATION_NAMES,
    OUTPUT_NAMES,
    variable_names,
)
from fusioncast.data.windows import Batch
from fusioncast.models.tft import MIN_TARGET_SCALE, TemporalFusionTransformer
from fusioncast.quantiles import median_index
from fusioncast.serve.bundle import (
    BUNDLE_FORMAT,
    DISABLED_OPTIMIZERS,
    EXAMPLE_FILE,
    FORMAT_VERSION,
    INT8_FILE,
    INTEGRITY,
    META_FILE,
    MODEL_FILE,
    preprocessing_meta,
    sha256_file,
    without_paths,
    write_meta,
)
from fusioncast.serve.requests import series_payload

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model (or could not be built)."""


class _Graph(nn.Module):
    """A graph has fixed outputs: fix `return_interpretation` for the exporter."""

    def __init__(self, net: TemporalFusionTransformer, interpretation: bool):
        super().__init__()
        self.net, self.interpretation = net, interpretation

    def forward(self, static_cat, static_real, encoder_cat, encoder_real, decoder_cat, decoder_real, encoder_mask,
                target_scale):
        return self.net(static_cat, static_real, encoder_cat, encoder_real, decoder_cat, decoder_real, encoder_mask,
                        target_scale, return_interpretation=self.interpretation)


def real_windows(dm: TimeSeriesDataModule, n: int, split: str = "val") -> tuple[Batch, str]:
    """Up to `n` real windows of `split` (spread evenly over it), on the CPU; falls back to the other splits."""
    for name in dict.fromkeys([split, "val", "test", "train"]):
        series, starts = dm.windows(name)
        if len(series):
            idx = np.unique(np.linspace(0, len(series) - 1, min(n, len(series))).round().astype(np.int64))
            tensors = dm.tensors("cpu")
            return tensors.gather(torch.as_tensor(series[idx]), torch.as_tensor(starts[idx])), name
    raise ExportError("the data has no window to check the export on")


def export_onnx(graph: _Graph, example: tuple[torch.Tensor, ...], path: Path) -> None:
    """torch.onnx (dynamo) export with a dynamic batch axis on every input, then onnx's checker."""
    batch = torch.export.Dim("batch")
    names = list(OUTPUT_NAMES) + (list(INTERPRETATION_NAMES) if graph.interpretation else [])
    torch.onnx.export(graph, example, str(path), dynamo=True, external_data=False, input_names=list(INPUT_NAMES),
                      output_names=names, dynamic_shapes={n: {0: batch} for n in INPUT_NAMES}, verbose=False)
    onnx.checker.check_model(str(path), full_check=True)


def relative_difference(got: np.ndarray, want: np.ndarray, target_scale: np.ndarray) -> float:
    """max |got - want| / max(|want|, series scale): relative, floored by the series' target scale so that
    quantiles near zero are judged on the scale the model works in."""
    floor = np.maximum(np.abs(want), np.maximum(target_scale[:, 1], MIN_TARGET_SCALE)[:, None, None])
    return float((np.abs(got.astype(np.float64) - want) / floor).max())


def _session(path: Path) -> ort.InferenceSession:
    """The graph optimised as the server optimises it, so that parity holds for what is served."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def _run(session: ort.InferenceSession, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return session.run(outputs, feed)


def _chunks(n: int) -> list[slice]:
    """Batches the check runs the graph at: all windows at once, single windows, and an odd size."""
    parts = [slice(0, n)] + [slice(i, i + 1) for i in range(min(n, 4))]
    parts += [slice(i, min(i + 7, n)) for i in range(0, n, 7)]
    return parts


def check_parity(path: Path, graph: _Graph, batch: Batch, tolerance: float) -> dict:
    """Run onnxruntime and PyTorch on the same windows; raise ExportError beyond `tolerance`."""
    inputs = {n: t.numpy() for n, t in zip(INPUT_NAMES, batch.inputs())}
    with torch.inference_mode():
        want = [t.double().numpy() for t in _as_tuple(graph(*batch.inputs()))]
    names = list(OUTPUT_NAMES) + (list(INTERPRETATION_NAMES) if graph.interpretation else [])
    session = _session(path)
    scale = inputs["target_scale"]
    rel, interp = 0.0, 0.0
    for part in _chunks(len(scale)):
        got = _run(session, {k: v[part] for k, v in inputs.items()}, names)
        if got[0].shape != want[0][part].shape:
            raise ExportError(f"onnxruntime gives quantiles of shape {got[0].shape}, PyTorch {want[0][part].shape}")
        rel = max(rel, relative_difference(got[0], want[0][part], scale[part]))
        for g, w in zip(got[1:], want[1:]):  # weights and attention lie in [0, 1]: absolute difference
            interp = max(interp, float(np.abs(g - w[part]).max(initial=0.0)))
    sizes = sorted({p.stop - p.start for p in _chunks(len(scale))})
    report = {"split": None, "windows": int(len(scale)), "batch_sizes": sizes,
              "max_rel_diff": rel, "max_abs_diff_interpretation": interp if graph.interpretation else None,
              "tolerance": tolerance, "definition": "max |onnx - torch| / max(|torch|, series target scale)"}
    log.info("ONNX vs PyTorch on %d real windows: max relative difference %.3g (tolerance %.0e)%s", len(scale), rel,
             tolerance, f", interpretation max abs difference {interp:.3g}" if graph.interpretation else "")
    if not (rel <= tolerance and interp <= tolerance):
        raise ExportError(f"onnxruntime disagrees with PyTorch on real windows: max relative difference {rel:.3g}, "
                          f"interpretation {interp:.3g}, tolerance {tolerance:g} ({path})")
    return report


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _mae(pred: np.ndarray, batch: Batch, median: int) -> float:
    mask = batch.target_mask.numpy()
    return float(np.abs(pred[..., median] - batch.target.numpy())[mask].mean()) if mask.any() else float("nan")


def _batch1_ms(session: ort.InferenceSession, inputs: dict[str, np.ndarray], repeat: int = 200) -> float:
    one = {k: v[:1] for k, v in inputs.items()}
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        _run(session, one, list(OUTPUT_NAMES))
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def quantize_int8(out_dir: Path, batch: Batch, quantiles: list[float], tolerance: float) -> dict:
    """Dynamic int8 quantisation of the weights, kept only when the validation MAE changes by at most
    `tolerance` (relative) on the same windows; the measurements are recorded either way."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = out_dir / MODEL_FILE, out_dir / INT8_FILE
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    inputs = {n: t.numpy() for n, t in zip(INPUT_NAMES, batch.inputs())}
    s32, s8 = _session(fp32), _session(int8)
    p32 = _run(s32, inputs, list(OUTPUT_NAMES))[0]
    p8 = _run(s8, inputs, list(OUTPUT_NAMES))[0]
    median = median_index(quantiles)
    mae32, mae8 = _mae(p32, batch, median), _mae(p8, batch, median)
    change = (mae8 - mae32) / mae32 if mae32 > 0 else 0.0
    report = {
        "file": INT8_FILE, "windows": int(len(p32)),
        "max_rel_diff_vs_fp32": relative_difference(p8, p32, inputs["target_scale"]),
        "mae_fp32": mae32, "mae_int8": mae8, "mae_change": change, "tolerance": tolerance,
        "batch1_ms_fp32": _batch1_ms(s32, inputs), "batch1_ms_int8": _batch1_ms(s8, inputs),
        "kept": bool(change <= tolerance),
    }
    log.info("int8: MAE %.4g vs fp32 %.4g (%+.2f%%), batch-1 %.3f ms vs %.3f ms: %s", mae8, mae32, 100 * change,
             report["batch1_ms_int8"], report["batch1_ms_fp32"], "kept" if report["kept"] else "dropped")
    if report["kept"]:
        report["sha256"] = sha256_file(int8)
    else:
        int8.unlink()
        report["file"] = None
    return report


def export_bundle(module, dm: TimeSeriesDataModule, out_dir: str | Path, *, interpretation: bool = True,
                  tolerance: float = 1e-4, windows: int = 256, split: str = "val", int8: bool = False,
                  int8_tolerance: float = 0.01, metrics: dict | None = None, checkpoint: str | None = None) -> Path:
    """Write `out_dir`/{model.onnx, bundle.json, example_request.json} from a trained TFTModule and its
    (set-up) datamodule; raises ExportError when onnxruntime does not reproduce PyTorch."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (META_FILE, INT8_FILE):  # a failed export must not leave a bundle that looks valid
        (out_dir / stale).unlink(missing_ok=True)
    net = copy.deepcopy(module.net).float().cpu().eval()
    graph = _Graph(net, interpretation).eval()
    batch, used_split = real_windows(dm, windows, split)
    model_path = out_dir / MODEL_FILE
    t0 = time.perf_counter()
    example = tuple(t[: max(2, min(4, len(t)))] for t in batch.inputs())  # batch >= 2 keeps the axis dynamic
    try:
        export_onnx(graph, example, model_path)
    except Exception as e:  # the exporter's errors are long; say what failed first
        raise ExportError(f"torch.onnx export failed: {type(e).__name__}: {e}") from e
    log.info("exported %s in %.1fs", model_path, time.perf_counter() - t0)
    parity = check_parity(model_path, graph, batch, tolerance)
    parity["split"] = used_split

    pp, quantiles = dm.pp, [float(q) for q in module.hparams.quantiles]
    proto = onnx.load(str(model_path), load_external_data=False)
    io = lambda vs: [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,  # noqa: E731
                      "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in vs]
    meta = {
        "format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "version": fusioncast.__version__,
        "name": dm.hparams.name, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"file": MODEL_FILE, "sha256": sha256_file(model_path), "bytes": model_path.stat().st_size,
                  "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                  "inputs": io(proto.graph.input), "outputs": io(proto.graph.output), "interpretation": interpretation,
                  "hparams": {k: v for k, v in json.loads(json.dumps(dict(module.hparams), default=str)).items()
                              if k not in ("data_kwargs", "optimizer", "scheduler")},
                  "parameters": int(sum(p.numel() for p in net.parameters()))},
        **preprocessing_meta(pp),
        "max_encoder_length": pp.schema.max_encoder_length, "max_prediction_length": pp.schema.max_prediction_length,
        "quantiles": quantiles, "variables": variable_names(pp),
        # no path of this machine (the checkpoint's, the run's): a bundle is shipped to other machines
        "metrics": without_paths(metrics), "checkpoint": Path(checkpoint).name if checkpoint else None,
        "parity": parity,
        # conformal offsets fitted in training (calibration=conformal): applied to the graph's quantiles
        # by serve.bundle.Model; the parity check is of the graph itself
        "calibration": (metrics or {}).get("calibration"),
        "int8": quantize_int8(out_dir, batch, quantiles, int8_tolerance) if int8 else None,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "data": _data_span(dm),
    }
    (out_dir / EXAMPLE_FILE).write_bytes(orjson.dumps(_example_request(dm, batch), option=orjson.OPT_INDENT_2))
    files = [MODEL_FILE, EXAMPLE_FILE] + ([INT8_FILE] if (meta["int8"] or {}).get("kept") else [])
    digest = write_meta(out_dir, meta, files)  # last: the integrity record seals what was written
    log.info("bundle written to %s (bundle sha256 %s)", out_dir, digest)
    return out_dir


def _data_span(dm: TimeSeriesDataModule) -> dict | None:
    """The training table's time span, rows and series, and its split points (the model card's data span)."""
    frame = getattr(dm, "frame", None)
    if frame is None:
        return None
    times = frame[dm.pp.schema.time_col]
    return {"start": str(times.min()), "end": str(times.max()), "rows": len(frame),
            "series": len(dm.pp.target_scales), "val_start": str(dm.hparams.val_start),
            "test_start": None if dm.hparams.test_start is None else str(dm.hparams.test_start)}


def _example_request(dm: TimeSeriesDataModule, batch: Batch) -> dict:
    """A real request body for the bundle (one validation window), for docs, smoke tests and benchmarks."""
    s, d = int(batch.series[0]), int(batch.decoder_start[0])
    first = int(dm.enc.length[:s].sum())  # the frame holds the series one after another, in encoding order
    L, H = dm.schema.max_encoder_length, dm.schema.max_prediction_length
    return {"series": [series_payload(dm.frame.iloc[first + max(0, d - L) : first + d + H], dm.schema, H)]}


@hydra.main(version_base="1.3", config_path="configs", config_name="export.yaml")
def main(cfg: DictConfig) -> None:
    """Export a checkpoint into a bundle directory (default: this run's output directory /bundle)."""
    from fusioncast.training.checkpoint import load_with_data, run_metrics

    overrides = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    module, dm = load_with_data(cfg.ckpt_path, overrides, device="cpu")
    metrics = run_metrics(cfg.ckpt_path)
    out = export_bundle(
        module, dm, cfg.output_dir or Path(cfg.paths.output_dir) / "bundle", interpretation=cfg.interpretation,
        tolerance=cfg.parity.tolerance, windows=cfg.parity.windows, split=cfg.parity.split, int8=cfg.int8.enabled,
        int8_tolerance=cfg.int8.tolerance, metrics=metrics, checkpoint=str(cfg.ckpt_path),
    )
    digest = json.loads((Path(out) / META_FILE).read_text())[INTEGRITY]["sha256"]
    print(f"wrote {out} (bundle sha256 {digest})")


if __name__ == "__main__":
    main()
