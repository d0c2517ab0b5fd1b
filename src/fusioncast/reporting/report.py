"""What a run shows people: forecast fan charts, interpretation plots and a markdown report.

`write_plots` draws real forecasts of a trained model (a few validation series) and its
interpretation averaged over validation windows (variable importance, attention) into
`<output_dir>/plots/`; `write_report` writes `<output_dir>/report.md` (metrics vs the baseline,
links to the plots). Both run at the end of `fusioncast-train` and in `fusioncast-eval`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.inference import variable_names
from fusioncast.data.timeline import window_times
from fusioncast.data.windows import BatchLoader
from fusioncast.evaluation.metrics import METRIC_NAMES
from fusioncast.models.module import TFTModule
from fusioncast.postfit.calibration import Calibration
from fusioncast.reporting import plots

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"


def first_windows(dm: TimeSeriesDataModule, split: str = "val", n_series: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(series, decoder_start) of the first window of each of the first `n_series` series in a split."""
    series, starts = dm.windows(split)
    _, first = np.unique(series, return_index=True)
    first = np.sort(first)[:n_series]
    return series[first], starts[first]


@torch.inference_mode()
def forward_windows(module: TFTModule, dm: TimeSeriesDataModule, series: np.ndarray, starts: np.ndarray,
                    batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Quantiles and interpretation of the given windows: pred (N,H,Q) in target units, static (N,n_s),
    encoder (N,L,n_e), decoder (N,H,n_d) selection weights, attention (N,H,L+H), encoder_mask (N,L)."""
    module.eval()
    keys = ("pred", "static", "encoder", "decoder", "attention", "encoder_mask")
    out: dict[str, list] = {k: [] for k in keys}
    for b in BatchLoader(dm.tensors(module.device), series, starts, batch_size, shuffle=False):
        result = module(*b.inputs(), return_interpretation=True)
        for k, v in zip(keys, (*result, b.encoder_mask)):
            out[k].append(v.float() if v.is_floating_point() else v)
    return {k: torch.cat(v).cpu().numpy() for k, v in out.items()}


def interpretation(module: TFTModule, dm: TimeSeriesDataModule, split: str = "val",
                   max_windows: int = 2048) -> dict:
    """Mean variable importance (static / encoder / decoder, summing to 1 each) and mean attention
    (H, L+H) over up to `max_windows` evenly spaced windows of a split. Encoder weights are averaged
    over observed history steps only."""
    series, starts = dm.windows(split)
    if len(series) > max_windows:
        keep = np.linspace(0, len(series) - 1, max_windows).round().astype(int)
        series, starts = series[keep], starts[keep]
    f = forward_windows(module, dm, series, starts, dm.eval_batch_size)
    m = f["encoder_mask"][..., None].astype(np.float64)
    names = variable_names(dm.pp)
    return {
        "static": dict(zip(names["static"], f["static"].mean(0).tolist())),
        "encoder": dict(zip(names["encoder"], ((f["encoder"] * m).sum((0, 1)) / max(m.sum(), 1.0)).tolist())),
        "decoder": dict(zip(names["decoder"], f["decoder"].mean((0, 1)).tolist())),
        "attention": f["attention"].mean(0),
        "n_windows": int(len(series)),
    }


def forecast_figure(dm: TimeSeriesDataModule, series: int, decoder_start: int, pred: np.ndarray,
                    quantiles: list[float], split: str = "val"):
    """Fan chart of one window's forecast pred (H, Q) against the series' actuals."""
    L, H = dm.schema.max_encoder_length, dm.schema.max_prediction_length
    steps = np.arange(decoder_start - L, decoder_start + H)
    valid = steps >= 0  # a short encoder's padding before the series' start
    steps = steps.clip(0)
    time = window_times(dm, series, decoder_start)
    title = f"{dm.schema.target} · series {dm.enc.keys[series] or '(single)'} · {split} forecast from {pd.Timestamp(time[L])}"
    return plots.forecast_chart(time, dm.enc.real[series, steps, 0], dm.enc.observed[series, steps] & valid, pred,
                                quantiles, L, title)


def write_plots(module: TFTModule, dm: TimeSeriesDataModule, output_dir: str | Path, split: str = "val",
                n_series: int = 4, calibration: Calibration | None = None) -> dict[str, list[Path]]:
    """Forecast fan charts for a few series and interpretation plots, as PNGs under output_dir/plots/.

    With a `calibration` the fan charts show the calibrated quantiles (what metrics.json scores and the
    bundle serves). Returns {"forecasts": [...], "interpretation": [...]} (paths). Empty variable groups
    get no plot.
    """
    out = Path(output_dir) / PLOTS_DIR
    quantiles = list(module.hparams.quantiles)
    series, starts = first_windows(dm, split, n_series)
    pred = forward_windows(module, dm, series, starts)["pred"]
    if calibration is not None:
        pred = calibration.apply(pred, dm.enc.target_scale[series])
    label = f"{split}, calibrated" if calibration is not None else split
    forecasts = [plots.save(forecast_figure(dm, int(s), int(d), pred[i], quantiles, label), out / f"forecast_{i:02d}.png")
                 for i, (s, d) in enumerate(zip(series, starts))]

    interp = interpretation(module, dm, split)
    figures = []
    for group in ("static", "encoder", "decoder"):
        if interp[group]:
            fig = plots.importance_chart(list(interp[group]), np.array(list(interp[group].values())),
                                         f"{group} variable importance ({split}, {interp['n_windows']} windows)")
            figures.append(plots.save(fig, out / f"{group}_variables.png"))
    fig = plots.attention_chart(interp["attention"], dm.schema.max_encoder_length,
                                f"mean attention ({split}, {interp['n_windows']} windows)")
    figures.append(plots.save(fig, out / "attention.png"))
    log.info("plots written to %s", out)
    return {"forecasts": forecasts, "interpretation": figures}


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def write_report(metrics: dict, plot_paths: dict[str, list[Path]], output_dir: str | Path,
                 title: str = "fusioncast run") -> Path:
    """report.md: metrics next to the seasonal-naive baseline, then the plots (relative links)."""
    output_dir = Path(output_dir)
    splits = [s for s in ("val", "test") if s in metrics]
    lines = [f"# {title}", ""]
    if metrics.get("best_checkpoint") or metrics.get("checkpoint"):
        lines += [f"Checkpoint: `{metrics.get('best_checkpoint') or metrics.get('checkpoint')}`", ""]
    lines += ["## Metrics", "", "Model against the seasonal-naive forecast on the same windows "
              f"(season {metrics.get('seasonal_period')} steps).", ""]
    header = [f"{s}{h}" for s in splits for h in ("", " baseline")]
    lines += ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for name in (*METRIC_NAMES, "n_windows"):
        row = [_fmt(block.get(name, "")) for s in splits for block in (metrics[s], metrics["baseline"].get(s, {}))]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    if "train_samples_per_sec" in metrics:
        lines += ["", f"Training throughput: {metrics['train_samples_per_sec']:,.0f} samples/s (median epoch)."]
    for section, key in (("Forecasts (validation series)", "forecasts"), ("Interpretation", "interpretation")):
        if plot_paths.get(key):
            lines += ["", f"## {section}", ""]
            lines += [f"![{p.stem}]({p.relative_to(output_dir).as_posix()})" for p in plot_paths[key]]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
