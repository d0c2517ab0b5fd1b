"""Refitting on a schedule over the test span: what a forecaster retrained every week (or day, month)
would have issued.

`refit.every=7D` (in `fusioncast-train`) cuts the test span into periods of that length. For each period
a fresh model (or seed ensemble) is trained exactly as the run's own, on everything before the period,
with validation the same length of time before it as the run's (early stopping, shrinkage and calibration
are fitted there; preprocessing is refitted too); it then forecasts every window whose decoder starts
inside the period, from the history before each origin. Pooled over the periods, the forecasts are scored
like the test split and written into metrics.json's `refit` block (the model trained once stays in `test`).
A period's windows may run past its end, as a forecast issued on its last day does: only the origins
belong to the period. The cost is one training per period; `refit.warm_start=true` makes each one a
fine-tuning of the model before it (`refit.max_epochs` epochs), as online learners keep learning.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.timeline import decoder_start_times
from fusioncast.evaluation.forecasts import (
    fit_calibration,
    predict_split,
    split_metrics,
)

log = logging.getLogger(__name__)


def refit_periods(dm: TimeSeriesDataModule, every: str) -> tuple[list[pd.Timestamp], pd.Timedelta]:
    """The period starts over the test span (the first test origin, then every `every`) and the time from
    the first validation origin to the first test origin (each refit's validation length)."""
    step = pd.tseries.frequencies.to_offset(dm.pp.freq)
    try:
        length = pd.Timedelta(every)
    except ValueError as e:
        raise ValueError(f"refit.every must be a duration such as 7D or 24h, got {every!r}") from e
    if length < pd.Timedelta(step):
        raise ValueError(f"refit.every={every!r} is shorter than one step ({dm.pp.freq})")
    test, val = (decoder_start_times(dm, *dm.windows(split)) for split in ("test", "val"))
    if len(test) == 0 or len(val) == 0:
        raise ValueError("refit.every needs a validation and a test split with windows")
    first, last = pd.Timestamp(test.min()), pd.Timestamp(test.max())
    starts = list(pd.date_range(first, last, freq=length))
    return starts, first - pd.Timestamp(val.min())


def period_config(cfg: DictConfig, start: pd.Timestamp, end: pd.Timestamp | None, val_length: pd.Timedelta,
                  horizon: int, freq: str, output_dir: Path) -> DictConfig:
    """The run's config for one period: train before `start - val_length`, validate up to `start`, test
    the origins in [start, end) (the data after their horizons dropped)."""
    step = pd.tseries.frequencies.to_offset(freq)
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.data.val_start = str(start - val_length)
        out.data.test_start = str(start)
        if end is not None:
            stop = end + (horizon - 1) * step
            given = cfg.data.get("test_end")
            out.data.test_end = str(stop if given is None else min(stop, pd.Timestamp(given)))
        out.paths.output_dir = str(output_dir)
        out.ckpt_path = None
    return out


def refit_backtest(cfg: DictConfig, dm: TimeSeriesDataModule, every: str, initial=None,
                   initial_checkpoint: str = "") -> dict:
    """metrics.json's `refit` block: one training per period of the test span, forecasts pooled and scored
    on the run's test windows (`dm`, the run's own data module), next to the seasonal-naive baseline.

    With `refit.warm_start` each period's model starts from the one before it (the first from `initial`,
    the run's own model) and trains for `refit.max_epochs` (null: the run's max_epochs): fine-tuning on
    the data that arrived, much cheaper than training afresh. Seed ensembles refit afresh only. When the
    first period's split is the run's own (timestamps), `initial` (the run's model) serves it as it is."""
    import lightning as L

    from fusioncast.postfit.seed_ensemble import ensemble_seeds
    from fusioncast.training.fit import fit, fit_ensemble

    starts, val_length = refit_periods(dm, every)
    seeds = ensemble_seeds((cfg.get("ensemble") or {}).get("seeds"))
    options = cfg.get("refit") or {}
    warm = bool(options.get("warm_start"))
    if warm and (seeds or initial is None):
        raise ValueError("refit.warm_start needs one model to start from: it does not go with ensemble.seeds")
    calibration = OmegaConf.to_container(cfg.calibration, resolve=True) if cfg.get("calibration") else None
    H = dm.schema.max_prediction_length
    preds, periods = [], []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else None
        pcfg = period_config(cfg, start, end, val_length, H, dm.pp.freq, Path(cfg.paths.output_dir) / "refit" / f"{k:03d}")
        if options.get("max_epochs"):
            with open_dict(pcfg):
                pcfg.trainer.max_epochs = int(options["max_epochs"])
        t0 = time.perf_counter()
        pdm = hydra.utils.instantiate(pcfg.data, _convert_="object")
        pdm.setup("fit")
        if k == 0 and initial is not None and _same_split(cfg, pcfg):  # trained on this period's data already
            module, best = initial, initial_checkpoint
        elif seeds:
            module, best, *_ = fit_ensemble(pcfg, pdm, [], seeds)
        else:
            if pcfg.get("seed") is not None:
                L.seed_everything(pcfg.seed, workers=True)
            one = fit(pcfg, pdm, [], init=initial if warm else None)
            module, best = one.module, one.best
            initial = module
        p = predict_split(module, pdm, "test")
        cal = fit_calibration(module, pdm, calibration)
        if cal is not None:
            p["pred"] = cal.apply(p["pred"], p["scale"])
            if cal.step is not None:
                p["pred"] = cal.track(p["pred"], p["target"], p["mask"], p["scale"], p["series"], p["decoder_start"])
        preds.append(p)
        periods.append({"start": str(start), "end": None if end is None else str(end), "n_windows": len(p["series"]),
                        "checkpoint": best, "seconds": round(time.perf_counter() - t0, 1)})
        log.info("refit period %d of %d (%s): %d windows, %.0f s", k + 1, len(starts), start, len(p["series"]),
                 periods[-1]["seconds"])
    pooled = {key: np.concatenate([p[key] for p in preds]) for key in preds[0]}
    _check_covers_test(dm, pooled)
    ours, base = split_metrics(pooled, dm, list(module.hparams.quantiles))
    return {"every": every, "warm_start": warm, "max_epochs": options.get("max_epochs"), "periods": periods,
            "test": ours, "baseline": {"test": base}}


def _same_split(cfg: DictConfig, pcfg: DictConfig) -> bool:
    """Whether a period's validation and test start where the run's do (the run split by timestamps)."""
    keys = ("val_start", "test_start")
    if any(not isinstance(cfg.data[k], str) for k in keys):  # a fraction of each series' span
        return False
    try:
        return all(pd.Timestamp(cfg.data[k]) == pd.Timestamp(pcfg.data[k]) for k in keys)
    except ValueError:
        return False


def _check_covers_test(dm: TimeSeriesDataModule, pooled: dict) -> None:
    """The periods' windows are the run's test windows, each once (same series order and steps)."""
    series, starts = dm.windows("test")
    got = sorted(zip(pooled["series"].tolist(), pooled["decoder_start"].tolist()))
    if got != sorted(zip(series.tolist(), starts.tolist())):
        raise RuntimeError(f"refit periods forecast {len(got)} windows, the test split has {len(series)}")
