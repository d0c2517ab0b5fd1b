"""Accuracy on the shared real sets: our TFT, pytorch-forecasting's TFT trained in the same run on the same
split with the same budget, the seasonal-naive baseline and the published figures, in one table.

    python scripts/bench_accuracy.py --quick          # CI-sized: a few batches, short horizons (minutes)
    python scripts/bench_accuracy.py                  # the full protocols (hours on 2 CPU cores)
    python scripts/bench_accuracy.py --only etth1_univariate --horizons 24,96 --no-pf

Every protocol is an experiment config (configs/experiment/): `stallion_tutorial`,
`etth1_univariate_h{H}`, `etth1_covariates_h{H}`, `nyc_taxi_h5`, `m4_hourly` (sMAPE / MASE / OWA as the
M4 competition scored them, fusioncast/evaluation/m4.py) and `nyc_taxi_numenta` (Cui et al. 2016's span, trained
once and, as a row of its own, refitted every `--refit-every`); the split, scaling and metric are
the published ones whatever the mode, `--quick` only shortens training. Runs are written under --out
(metrics.json per run), the table to <out>/bench_accuracy.md and the numbers to bench_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "src" / "fusioncast" / "configs")
SHARED = ROOT.parent / "shared" / "data"
QUANTILES = [0.1, 0.5, 0.9]

# Published figures (MSE, MAE) on ETTh1 univariate: Informer (Zhou et al. 2021, table 1) and NLinear
# (Zeng et al. 2023, "Are Transformers Effective for Time Series Forecasting?", table 4).
INFORMER = {24: (0.098, 0.247), 48: (0.158, 0.319), 168: (0.183, 0.346), 336: (0.222, 0.387), 720: (0.269, 0.435)}
NLINEAR = {96: (0.053, 0.177), 192: (0.069, 0.204), 336: (0.081, 0.226), 720: (0.080, 0.226)}
HORIZONS = (24, 48, 96, 168, 192, 336, 720)
# M4 Hourly (Makridakis et al. 2020, table 4 and the submissions' hourly results): sMAPE, MASE, OWA
M4_PUBLISHED = "Naive2 18.383 / 2.395 / 1.000; ES-RNN 9.328 / 0.893 / 0.440; best submission OWA 0.410"
# Cui, Ahmad & Hawkins 2016, scored from the published models' own prediction files (numenta/htmresearch)
NYC_PUBLISHED = "kNN 0.0706, HTM 0.0809, TDNN 0.104, ESN 0.128 (each learning online through the test span)"
QUICK_HORIZONS = (24, 96)


def experiment_overrides(name: str) -> list[str]:
    """A protocol's overrides: `etth1_univariate_h96` is experiment etth1_univariate at horizon 96 (a horizon is
    an override, not a config file of its own), any other name its experiment config."""
    m = re.fullmatch(r"(etth1_(?:univariate|covariates))_h(\d+)", name)
    return [f"experiment={m[1]}", f"data.max_prediction_length={m[2]}"] if m else [f"experiment={name}"]


def compose(experiment: str | None, out: Path, overrides: list[str]):
    """The experiment's Hydra config as `fusioncast-train experiment=...` composes it (None: no experiment),
    writing into `out`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        experiment_override = experiment_overrides(experiment) if experiment else []
        cfg = hydra_compose("train.yaml", overrides=[*experiment_override, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(out)
        del cfg.hydra
    GlobalHydra.instance().clear()
    return cfg


def budget_overrides(quick: bool, epochs: int | None) -> list[str]:
    # no time budget: published rows are defined by epochs and early stopping, not by the machine's
    # speed (a `budget=...` extra override puts one back, docs/training.md)
    # the default calibration (configs/train.yaml), so that the table shows what a user gets
    common = ["export=false", "logger=none", "budget=null", "trainer.enable_progress_bar=false",
              "trainer.enable_model_summary=false"]
    if quick:
        return common + ["trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.limit_val_batches=4"]
    return common + ([f"trainer.max_epochs={epochs}"] if epochs else [])


# ---- ours -------------------------------------------------------------------------------------------
def run_ours(experiment: str, out: Path, overrides: list[str]) -> dict:
    """Train one experiment; returns its metrics.json and the eval split's forecasts (for protocol metrics)."""
    from fusioncast.evaluation.forecasts import predict_split
    from fusioncast.train import train
    from fusioncast.training.checkpoint import load_with_data

    cfg = compose(experiment, out, overrides)
    t0 = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - t0
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    split = "test" if "test" in metrics else "val"
    # a seed ensemble: each member's own forecasts too (reported next to the average, never chosen on)
    members = [predict_split(load_with_data(m["checkpoint"], device="cpu")[0], dm, split)
               for m in metrics.get("ensemble", {}).get("members", [])]
    return {"metrics": metrics, "split": split, "pred": predict_split(module, dm, split), "dm": dm,
            "seconds": seconds, "cfg": cfg, "members": members}


# ---- pytorch-forecasting's TFT ------------------------------------------------------------------------
def pf_frame(dm):
    """Our regular-grid frame as pytorch-forecasting wants it: a time_idx per series and a group id."""
    frame = dm.frame.copy()
    s = dm.schema
    groups = s.group_ids or ["_series"]
    if not s.group_ids:
        frame["_series"] = "0"
    frame["time_idx"] = frame.groupby(groups, sort=False).cumcount()
    reals = [s.target, *s.static_reals, *s.time_varying_known_reals, *s.time_varying_unknown_reals]
    frame[reals] = frame[reals].astype(np.float64)  # an integer target would be taken for class labels
    return frame, groups


def stallion_tutorial_frame(frame):
    """The feature engineering of pytorch-forecasting's stallion tutorial (its TFT's inputs)."""
    data = frame.copy()
    data["month"] = data["date"].dt.month.astype(str).astype("category")
    data["log_volume"] = np.log(data.volume + 1e-8)
    data["avg_volume_by_sku"] = data.groupby(["time_idx", "sku"], observed=True).volume.transform("mean")
    data["avg_volume_by_agency"] = data.groupby(["time_idx", "agency"], observed=True).volume.transform("mean")
    special = ["easter_day", "good_friday", "new_year", "christmas", "labor_day", "independence_day",
               "revolution_day_memorial", "regional_games", "fifa_u_17_world_cup", "football_gold_cup",
               "beer_capital", "music_fest"]
    data[special] = data[special].apply(lambda x: x.map({"0": "-", "1": x.name, "0.0": "-", "1.0": x.name})
                                        ).astype("category")
    for col in ("agency", "sku"):
        data[col] = data[col].astype("category")
    return data, special


def run_pf(dm, cfg, kind: str, quick: bool) -> dict:
    """pytorch-forecasting's TFT on the same split, windows and training budget (epochs, batches, batch
    size, early stopping) as ours; its forecasts of the same evaluation windows."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import EarlyStopping
    from pytorch_forecasting import (
        GroupNormalizer,
        QuantileLoss,
        TemporalFusionTransformer,
        TimeSeriesDataSet,
    )

    s, h = dm.schema, dm.hparams
    L, H = s.max_encoder_length, s.max_prediction_length
    frame, groups = pf_frame(dm)
    series_idx = frame.groupby(groups, sort=False).ngroup().to_numpy()
    step = frame["time_idx"].to_numpy()
    train_rows = step < dm.val_idx[series_idx]
    if kind == "stallion":
        data, special = stallion_tutorial_frame(frame)
        training = TimeSeriesDataSet(
            data[train_rows], time_idx="time_idx", target="volume", group_ids=["agency", "sku"],
            min_encoder_length=L // 2, max_encoder_length=L, min_prediction_length=1, max_prediction_length=H,
            static_categoricals=["agency", "sku"], static_reals=["avg_population_2017", "avg_yearly_household_income_2017"],
            time_varying_known_categoricals=["special_days", "month"], variable_groups={"special_days": special},
            time_varying_known_reals=["time_idx", "price_regular", "discount_in_percent"],
            time_varying_unknown_reals=["volume", "log_volume", "industry_volume", "soda_volume", "avg_max_temp",
                                        "avg_volume_by_agency", "avg_volume_by_sku"],
            target_normalizer=GroupNormalizer(groups=["agency", "sku"], transformation="softplus"),
            add_relative_time_idx=True, add_target_scales=True, add_encoder_length=True)
        validation = TimeSeriesDataSet.from_dataset(training, data, predict=True, stop_randomization=True)
        evaluation = validation
        model_kw = dict(learning_rate=0.03, hidden_size=16, attention_head_size=2, dropout=0.1, hidden_continuous_size=8)
    else:
        data = frame
        known_cat = s.known_categoricals
        training = TimeSeriesDataSet(
            data[train_rows], time_idx="time_idx", target=s.target, group_ids=groups,
            min_encoder_length=L, max_encoder_length=L, min_prediction_length=H, max_prediction_length=H,
            static_categoricals=s.static_categoricals, static_reals=s.static_reals,
            time_varying_known_categoricals=known_cat, time_varying_known_reals=s.time_varying_known_reals,
            time_varying_unknown_reals=[s.target, *s.time_varying_unknown_reals],
            add_relative_time_idx=True, add_target_scales=True, add_encoder_length=False)
        upto_test = data[step < dm.test_idx[series_idx]]
        validation = TimeSeriesDataSet.from_dataset(training, upto_test, min_prediction_idx=int(dm.val_idx.min()),
                                                    stop_randomization=True)
        evaluation = TimeSeriesDataSet.from_dataset(training, data, min_prediction_idx=int(dm.test_idx.min()),
                                                    stop_randomization=True)
        model_kw = dict(learning_rate=float(cfg.model.optimizer.lr), hidden_size=int(cfg.model.hidden_size),
                        attention_head_size=int(cfg.model.attention_heads), dropout=float(cfg.model.dropout),
                        hidden_continuous_size=max(8, int(cfg.model.hidden_size) // 2))
    bs = int(h.batch_size)
    train_dl = training.to_dataloader(train=True, batch_size=bs, num_workers=0)
    val_dl = validation.to_dataloader(train=False, batch_size=1024, num_workers=0)
    eval_dl = evaluation.to_dataloader(train=False, batch_size=1024, num_workers=0)
    our_batches = -(-len(dm.windows("train")[0]) // bs)
    limit = cfg.trainer.limit_train_batches or our_batches
    tft = TemporalFusionTransformer.from_dataset(training, loss=QuantileLoss(QUANTILES), optimizer="adam",
                                                 reduce_on_plateau_patience=2, log_interval=-1, **model_kw)
    trainer = pl.Trainer(max_epochs=int(cfg.trainer.max_epochs), accelerator="cpu", gradient_clip_val=0.1,
                         limit_train_batches=limit, limit_val_batches=cfg.trainer.limit_val_batches,
                         callbacks=[EarlyStopping("val_loss", patience=int(cfg.callbacks.early_stopping.patience))],
                         enable_progress_bar=False, enable_model_summary=False, logger=False,
                         # no checkpoint: Lightning's default one (no monitor) held the last epoch's weights,
                         # the ones `tft` has after fit; its hyperparameters hold objects a safe load refuses
                         enable_checkpointing=False, default_root_dir=str(Path(cfg.paths.output_dir) / "pf"))
    t0 = time.perf_counter()
    trainer.fit(tft, train_dataloaders=train_dl, val_dataloaders=val_dl)
    seconds = time.perf_counter() - t0
    with torch.inference_mode():
        p = tft.predict(eval_dl, mode="quantiles", return_y=True,
                        trainer_kwargs=dict(accelerator="cpu", logger=False, enable_progress_bar=False))
    pred = p.output.float().numpy()
    y = p.y[0].float().numpy()
    key = [k for k in dm.pp.target_scales]
    scale = np.full(len(y), dm.pp.target_scales[key[0]][1]) if s.target_normalizer == "global" or len(key) == 1 else None
    return {"pred": pred, "target": y, "mask": np.ones_like(y, bool), "scale": scale, "seconds": seconds,
            "windows": int(len(y)), "epochs": int(trainer.current_epoch), "limit_train_batches": limit}


# ---- protocol metrics ---------------------------------------------------------------------------------
def protocol_metrics(kind: str, p: dict, dm=None, split: str | None = None) -> dict:
    """The published metric(s) of a protocol from forecasts p (pred (N,H,Q), target, mask[, scale]); M4 also
    needs the data module and split, for each series' in-sample history (MASE's scale)."""
    point, y, m = p["pred"][..., 1].astype(np.float64), p["target"].astype(np.float64), p["mask"].astype(bool)
    lo, hi = p["pred"][..., 0], p["pred"][..., 2]
    out = {"coverage_p10_p90": float(((y >= lo) & (y <= hi))[m].mean())}
    if kind == "m4":  # the competition's scoring: everything before the horizon is the series' in-sample part
        from fusioncast.evaluation import m4

        cut = dm.test_idx if split == "test" else dm.val_idx
        history = [dm.enc.real[s, : cut[s], 0] for s in p["series"]]
        out.update(m4.score(list(y), list(point), history, dm.seasonal_period, m4.NAIVE2_HOURLY))
    elif kind == "etth1":
        e = ((y - point) / p["scale"][:, None])[m]
        out.update(mse=float((e**2).mean()), mae=float(np.abs(e).mean()))
    elif kind == "stallion":
        out.update(mae=float(np.abs(y - point)[m].mean()))
    else:  # nyc: MAPE = Σ|e| / Σ|y| at the last horizon step (5 steps = 2.5 h ahead) and over all steps
        last = m[:, -1]
        out.update(mape=float(np.abs(y - point)[:, -1][last].sum() / np.abs(y[:, -1][last]).sum()),
                   mape_all=float(np.abs(y - point)[m].sum() / np.abs(y[m]).sum()))
    return out


def naive_forecasts(p: dict, period: int) -> dict:
    from fusioncast.evaluation.metrics import seasonal_naive

    naive = seasonal_naive(p["enc_y"], p["enc_mask"], p["target"].shape[1], period)
    return {**p, "pred": np.repeat(naive[..., None], 3, -1)}


# ---- table --------------------------------------------------------------------------------------------
def fmt(kind: str, r: dict | None) -> str:
    if not r:
        return "—"
    if kind == "etth1":
        return f"{r['mse']:.3f} / {r['mae']:.3f}"
    if kind == "m4":
        return f"{r['smape']:.3f} / {r['mase']:.3f} / {r['owa']:.3f}"
    return f"{r['mae']:.1f}" if kind == "stallion" else f"{r['mape']:.4f}"


def published(kind: str, horizon: int | None, covariates: bool) -> str:
    if kind == "etth1":
        if covariates:
            return "— (univariate: see above)"
        parts = [f"{name} {v[0]:.3f} / {v[1]:.3f}" for name, v in (("Informer", INFORMER.get(horizon)),
                                                                     ("NLinear", NLINEAR.get(horizon))) if v]
        return "; ".join(parts) or "—"
    if kind == "stallion":
        return "last-value baseline 293.0; TFT 246–359"
    if kind == "m4":
        return M4_PUBLISHED
    if kind == "nyc_numenta":
        return NYC_PUBLISHED
    # Cui et al. 2016 score from row 10,000 of Numenta's year-long file (2015-01-25..06-30), not this
    # split's last 20 % of NAB's copy (README, "NYC taxi: not met")
    return "LSTM ≈ 0.08, HTM ≈ 0.08 (on 2015-01-25..06-30)"


def budget_time(minutes: int | None) -> list[str]:
    """Overrides that train for `minutes` of wall time (the `budget` key; the best checkpoint within it is
    evaluated), with no epoch cap."""
    if minutes is None:
        return []
    return [f"budget={minutes}m", "trainer.max_epochs=100000"]


def budget(quick: bool, overrides: list[str]) -> str:
    """How a row was trained: the experiment's own budget, or what the overrides cut it to."""
    if quick:
        return "quick"
    timed = [o.split("=", 1)[1] for o in overrides if o.startswith(("budget=", "trainer.max_time=", "++trainer.max_time="))]
    if timed and timed[-1] not in ("null", "none"):
        return f"budget {timed[-1]}"
    cut = [o.split("=", 1)[1] + " " + o.split("=", 1)[0].split(".")[-1].replace("limit_train_batches", "batches/epoch")
           .replace("max_epochs", "epochs") for o in overrides if o.startswith(("trainer.max_epochs", "trainer.limit_train"))]
    return "reduced: " + ", ".join(cut) if cut else "full"


def table(rows: list[dict]) -> str:
    head = ("| protocol | metric | ours | ours P10–P90 cov. (raw → served → default calibration) | "
            "pytorch-forecasting TFT | seasonal naive | published | training |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "coverage_static" in r:  # raw → the fitted offsets (what the server applies) → as evaluated (tracked)
            cov = " → ".join("—" if r[k] is None else f"{r[k]:.3f}" for k in ("coverage_raw", "coverage_static", "coverage"))
        else:  # a run from before calibration=adaptive (--collect): its calibration was conformal
            cov = f"{r['coverage_raw']:.3f} → {r['coverage']:.3f} → —"
        naive = fmt(r["kind"], r["naive"])
        if r.get("last_value"):
            naive += f" (last value {fmt(r['kind'], r['last_value'])})"
        pf = fmt(r["kind"], r["pf"]) if r.get("pf") else r.get("pf_note", "—")
        ours = f"**{fmt(r['kind'], r['ours'])}**"
        if r.get("members"):  # a seed ensemble: each member alone (the median, which calibration leaves as it is)
            ours += f" ({len(r['members'])} seeds; alone {' / '.join(fmt(r['kind'], x) for x in r['members'])})"
        lines.append(f"| {r['name']} | {r['metric']} | {ours} | {cov} | {pf} | {naive} | "
                     f"{r['published']} | {r.get('budget', '')} |")
    return "\n".join(lines)


def protocols(only: set[str] | None, horizons: tuple[int, ...]) -> list[tuple[str, str, int | None, bool]]:
    """(experiment, kind, horizon, covariates) of every protocol to run."""
    todo = [("stallion_tutorial", "stallion", None, False)]
    todo += [(f"etth1_univariate_h{h}", "etth1", h, False) for h in horizons]
    todo += [(f"etth1_covariates_h{h}", "etth1", h, True) for h in horizons]
    todo += [("nyc_taxi_h5", "nyc", 5, False), ("nyc_taxi_numenta", "nyc_numenta", 5, False),
             ("m4_hourly", "m4", 48, False)]
    if only:
        todo = [t for t in todo if any(t[0].startswith(o) for o in only)]
    return todo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized training (2 epochs of 6 batches), horizons 24 and 96")
    ap.add_argument("--only", default="", help="comma-separated experiment name prefixes, e.g. etth1_univariate,nyc")
    ap.add_argument("--horizons", default="", help="ETTh1 horizons (default: all published; --quick: 24,96)")
    ap.add_argument("--no-pf", action="store_true", help="skip pytorch-forecasting's TFT")
    ap.add_argument("--pf-max-horizon", type=int, default=96, help="train pytorch-forecasting's TFT up to this ETTh1 horizon")
    ap.add_argument("--epochs", type=int, default=None, help="override every experiment's max_epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    ap.add_argument("--out", default=str(ROOT / "logs" / "bench_accuracy" / time.strftime("%Y-%m-%d_%H-%M-%S")))
    ap.add_argument("--refit-every", default="7D", help="nyc_taxi_numenta's refitted row: one training per this "
                    "period of the test span (fusioncast/evaluation/refit.py); empty: trained once only")
    ap.add_argument("--budgets", default="", help="comma-separated training budgets in minutes (e.g. 5,15,60): "
                    "each protocol is trained once per budget (budget=Nm, no epoch cap), a row each")
    ap.add_argument("--collect", nargs="+", metavar="DIR", help="print one table of earlier runs' bench_accuracy.json")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for our runs, e.g. model.hidden_size=64")
    args = ap.parse_args()
    if args.collect:
        rows = []
        for d in args.collect:
            run = json.loads((Path(d) / "bench_accuracy.json").read_text())
            rows += [{**r, "budget": r.get("budget") or budget(run["quick"], run["overrides"])} for r in run["rows"]]
        order = [t[0] for t in protocols(None, HORIZONS)]
        rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
        print(table(rows))
        return

    import torch

    torch.set_num_threads(args.threads)
    if SHARED.exists():
        os.environ.setdefault("FUSIONCAST_DATA_DIR", str(SHARED))
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(args.out)
    horizons = tuple(int(h) for h in args.horizons.split(",") if h) or (QUICK_HORIZONS if args.quick else HORIZONS)
    only = {o for o in args.only.split(",") if o} or None
    overrides = budget_overrides(args.quick, args.epochs) + list(args.overrides)

    budgets = [int(b) for b in args.budgets.split(",") if b] or [None]
    rows = []
    for (experiment, kind, horizon, covariates), minutes in ((t, b) for t in protocols(only, horizons) for b in budgets):
        print(f"== {experiment}" + (f", budget {minutes} min" if minutes else ""), flush=True)
        refit = [f"refit.every={args.refit_every}"] if kind == "nyc_numenta" and args.refit_every else []
        timed = budget_time(minutes)
        name = experiment if minutes is None else f"{experiment} ({minutes} min)"
        run = run_ours(experiment, out / name.replace(" ", "_").replace("(", "").replace(")", ""),
                       overrides + refit + timed)
        m, split, p, dm = run["metrics"], run["split"], run["pred"], run["dm"]
        row = {"name": name, "kind": kind, "budget_minutes": minutes, "horizon": horizon, "split": split, "seconds": round(run["seconds"], 1),
               "metric": {"etth1": f"{split} MSE / MAE (z-norm.)", "stallion": f"{split} MAE",
                          "nyc": f"{split} MAPE at t+5", "nyc_numenta": f"{split} MAPE at t+5, trained once",
                          "m4": f"{split} sMAPE / MASE / OWA"}[kind],
               "ours": protocol_metrics(kind, p, dm, split),
               "naive": protocol_metrics(kind, naive_forecasts(p, dm.seasonal_period), dm, split),
               "coverage_raw": m["uncalibrated"][split]["coverage_p10_p90"], "coverage": m[split]["coverage_p10_p90"],
               # the fitted offsets applied as they are: what the server serves (`conformal_static` in older runs)
               "coverage_static": m.get("served", m.get("conformal_static", {})).get(split, {}).get("coverage_p10_p90"),
               "calibration": m.get("calibration", {}).get("method", "none"),
               "published": published(kind, horizon, covariates), "metrics": m,
               "budget": budget(args.quick, overrides + timed)}
        if run["members"]:
            row["members"] = [protocol_metrics(kind, mp, dm, split) for mp in run["members"]]
        if kind == "stallion":
            row["last_value"] = protocol_metrics(kind, naive_forecasts(p, 1))
        pf_ok = not args.no_pf and kind in ("etth1", "stallion", "nyc") and (kind != "etth1" or horizon <= args.pf_max_horizon)
        if pf_ok:
            try:
                pf = run_pf(dm, run["cfg"], kind, args.quick)
                if pf["scale"] is None:
                    pf["scale"] = np.ones(len(pf["target"]))
                row["pf"] = protocol_metrics(kind, pf)
                row["pf"].update(seconds=round(pf["seconds"], 1), windows=pf["windows"], epochs=pf["epochs"])
            except Exception as e:  # the reference must never hide our numbers
                row["pf_note"] = f"failed: {type(e).__name__}"
                print(f"pytorch-forecasting failed on {experiment}: {e!r}", flush=True)
        elif kind in ("m4", "nyc_numenta"):
            row["pf_note"] = "not run"
        else:
            row["pf_note"] = "not run" if args.no_pf else f"not run (horizon > {args.pf_max_horizon})"
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        if "refit" in m:  # the same protocol, one training per period of the test span: a row of its own
            r, n = m["refit"], len(m["refit"]["periods"])
            rows.append({**row, "name": f"{name} (refitted every {r['every']})",
                         "metric": f"{split} MAPE at t+5, refitted", "members": None, "pf_note": "—",
                         "ours": {"mape": r["test"][f"mape_step{horizon}"], "mape_all": r["test"]["qrisk_p50"]},
                         "coverage_raw": None, "coverage_static": None, "coverage": r["test"]["coverage_p10_p90"],
                         "seconds": round(sum(x["seconds"] for x in r["periods"]), 1),
                         "budget": f"{row['budget']}; {n} trainings, one per {r['every']}"})
            print(table([rows[-1]]).splitlines()[-1], flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_accuracy.json").write_text(json.dumps({"quick": args.quick, "overrides": overrides, "rows": rows},
                                                            indent=2, default=float))

    text = table(rows)
    mode = "quick (CI-sized training)" if args.quick else "full protocol"
    (out / "bench_accuracy.md").write_text(f"Mode: {mode}. Overrides: `{' '.join(overrides)}`\n\n{text}\n")
    print(f"\nMode: {mode}\n\n{text}\n\nwritten to {out}")


if __name__ == "__main__":
    main()
