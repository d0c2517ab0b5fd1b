"""Training throughput: our TFT against pytorch-forecasting's, same data, matched sizes, one run.

    python scripts/bench_train.py --setup a                      # stallion, this machine's CPU
    python scripts/bench_train.py --setup b --device cuda        # NVIDIA's electricity config, one GPU
    python scripts/bench_train.py --setup b --device cuda model.compile=true

Setups:
  a  stallion as in pytorch-forecasting's tutorial: hidden 64, 4 heads, batch 128, encoder 36,
     horizon 6, dropout 0.1, per-variable width 8 (our variable_size = its hidden_continuous_size).
  b  NVIDIA's electricity configuration (hidden 128, 4 heads, encoder 168, horizon 24, batch 1024,
     dropout 0.1, every variable at the full width 128) on ETTh1's 7 columns as 7 hourly series,
     with NVIDIA's inputs: the series id (static), hour, day of week and hours from start (known
     reals), the value (observed).

Both models train with a Lightning Trainer (same precision, gradient clipping 0.1, AdamW, no
validation) from their own data pipeline: ours gathers windows on the device; pytorch-forecasting's
TimeSeriesDataSet goes through its DataLoader (`--pf-workers`: 0 on CPU, where workers would take
the cores the model trains on; up to 8 with CUDA, pinned memory). Precision is the trainer config's
(trainer=cpu: 32-true; trainer=gpu: bf16-mixed) for both; TF32 on for both with CUDA. The clock runs
over `--steps` optimiser steps after `--warmup`, data loading included, synchronising CUDA at both
ends; `--repeats` rounds alternate ours and pytorch-forecasting, and the table shows medians (the
ratio: the median of the rounds' ratios). FLOPs per sample are counted with torch.utils.flop_counter
on one training step, forward + backward (LSTM matmuls, which fused kernels hide from it, are added
from the shapes for both models); achieved FLOP/s = FLOPs per sample x samples/s, against the
device's dense peak (data sheet on CUDA; cores x clock x 32 FLOP/cycle on CPU, `--peak-tflops` to
correct it). Extra arguments are Hydra overrides for our side (e.g. `trainer.precision=bf16-mixed`
is applied to both sides, since they share the trainer config).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

QUANTILES = [0.1, 0.5, 0.9]


@dataclass
class Setup:
    name: str
    data_overrides: list[str]
    hidden: int
    heads: int
    batch: int
    L: int
    H: int
    variable_size: int
    dropout: float = 0.1


def setups(tmp: Path) -> dict[str, Setup]:
    return {
        "a": Setup("stallion", ["experiment=stallion"], hidden=64, heads=4, batch=128, L=36, H=6, variable_size=8),
        "b": Setup("electricity", electricity_overrides(tmp), hidden=128, heads=4, batch=1024, L=168, H=24,
                   variable_size=128),
    }


# ---- data ----------------------------------------------------------------------------------------
def electricity_overrides(tmp: Path) -> list[str]:
    """ETTh1's 7 columns as 7 hourly series, with the inputs of NVIDIA's electricity config."""
    src = Path(os.environ.get("FUSIONCAST_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = tmp / "etth1_series.parquet"
    if not path.exists():
        wide = pd.read_csv(src / "ETTh1.csv", parse_dates=["date"])
        long = wide.melt(id_vars="date", var_name="series", value_name="value")
        t = long["date"]
        long["hour"] = t.dt.hour.astype(np.float32)
        long["day_of_week"] = t.dt.dayofweek.astype(np.float32)
        long["hours_from_start"] = ((t - t.min()) / pd.Timedelta("1h")).astype(np.float32)
        long.to_parquet(path)
    return ["data=custom", f"data.path={path}", "data.time_col=date", "data.target=value", "data.group_ids=[series]",
            "data.static_categoricals=[series]", "data.time_varying_known_reals=[hour,day_of_week,hours_from_start]",
            "data.freq=h", "data.val_start=0.6", "data.test_start=0.8"]


def compose(setup: Setup, device: str, overrides: list[str], tmp: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import fusioncast.configs

    trainer = "gpu" if device == "cuda" else "cpu"
    base = [*setup.data_overrides, f"trainer={trainer}", f"data.max_encoder_length={setup.L}",
            f"data.max_prediction_length={setup.H}", f"data.batch_size={setup.batch}",
            f"model.hidden_size={setup.hidden}", f"model.attention_heads={setup.heads}",
            f"model.dropout={setup.dropout}",
            "model.scheduler=null", f"paths.output_dir={tmp}", "logger=none", "callbacks=none"]
    with initialize_config_dir(version_base="1.3", config_dir=str(Path(fusioncast.configs.__file__).parent)):
        cfg = hydra_compose(config_name="train.yaml", overrides=base + overrides)
    if "variable_size" in cfg.model and not any(o.startswith("model.variable_size=") for o in overrides):
        cfg.model.variable_size = setup.variable_size
    return cfg


# ---- measurement ---------------------------------------------------------------------------------
class RSSPeak:
    """Peak resident memory above the start, sampled every 5 ms (CPU runs have no allocator stats).

    Memory freed earlier (the other model's, the FLOP count's) goes back to the OS first (glibc's
    malloc_trim), or the run would reuse it unseen.
    """

    def __enter__(self):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def bytes(self) -> int:
        return self.peak - self.base


class StepClock(L.Callback):
    """Times `steps` training batches after `warmup`, end to end (data loading between steps included)."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.seen = self.samples = 0
        self.start = self.stop = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen > self.warmup:
            self.samples += tree_leaves(batch)[0].shape[0]
        if self.seen in (self.warmup, self.warmup + self.steps):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            if self.seen == self.warmup:
                self.start = time.perf_counter()
            else:
                self.stop = time.perf_counter()
                trainer.should_stop = True


def lstm_flops(module: torch.nn.LSTM, x) -> int:
    """Matmul FLOPs of one nn.LSTM call, forward + backward (2x forward)."""
    tokens = x.data.shape[0] if isinstance(x, PackedSequence) else x.shape[0] * x.shape[1]
    h, n_in = module.hidden_size, module.input_size
    return sum(3 * 2 * tokens * 4 * h * ((n_in if layer == 0 else h) + h) for layer in range(module.num_layers))


def counter_sees_lstm(device: torch.device, packed: bool) -> bool:
    """Whether FlopCounterMode counts an nn.LSTM's matmuls on this device (fused kernels hide them)."""
    lstm = torch.nn.LSTM(4, 4, batch_first=True).to(device)
    x = torch.randn(2, 3, 4, device=device, requires_grad=True)
    inputs = pack_padded_sequence(x, torch.tensor([3, 3]), batch_first=True) if packed else x
    with FlopCounterMode(display=False) as counter:
        out = lstm(inputs)[0]
        (out.data if packed else out).sum().backward()
    return counter.get_total_flops() > 0


def count_flops(model: torch.nn.Module, loss_fn) -> float:
    """FLOPs of one training step's forward + backward (loss_fn runs the forward and returns the loss).

    The counter cannot see into fused LSTM kernels (oneDNN, cuDNN); their matmuls are added from the
    shapes wherever it would miss them.
    """
    device = next(model.parameters()).device
    missed = {packed: not counter_sees_lstm(device, packed) for packed in (False, True)}
    extra = [0]

    def hook(module, args, out):
        if missed[isinstance(args[0], PackedSequence)]:
            extra[0] += lstm_flops(module, args[0])

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.LSTM)]
    try:
        with FlopCounterMode(display=False) as counter:
            loss_fn().backward()
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() + extra[0]


def peak_flops(device: str, precision: str) -> tuple[float, str]:
    """The machine's dense peak FLOP/s for this precision, and where the number comes from."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        bf16 = "bf16" in precision or "16" in precision
        table = {  # dense tensor-core peaks from NVIDIA's data sheets: (bf16/fp16, tf32)
            "H100 SXM": (989e12, 495e12), "H100 NVL": (835e12, 418e12), "H100 PCIe": (756e12, 378e12),
            "H100": (989e12, 495e12), "H200": (989e12, 495e12), "A100": (312e12, 156e12),
            "L40S": (362e12, 183e12), "A10": (125e12, 62.5e12), "L4": (121e12, 60e12),
        }
        for key, (half, tf32) in table.items():
            if key in name:
                return (half if bf16 else tf32), f"{name} data sheet, dense {'bf16' if bf16 else 'tf32'}"
        return float("nan"), f"{name}: unknown peak"
    # CPU: cores x clock x FMA lanes. Two 256-bit FMA pipes (Zen 4, most Xeons with AVX2) = 32 fp32
    # FLOPs per cycle; AVX-512 cores with two 512-bit pipes do 64, which this estimate does not assume.
    cores = len(os.sched_getaffinity(0))
    ghz = 0.0
    try:
        text = Path("/proc/cpuinfo").read_text()
        ghz = float(re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)[0]) / 1000
        model = re.findall(r"model name\s*:\s*(.*)", text)[0].strip()
    except (OSError, IndexError, ValueError):
        model = "CPU"
    per_cycle = 32 if "bf16" not in precision else 64  # avx512_bf16 dot products double the bf16 rate
    return cores * ghz * 1e9 * per_cycle, f"{model}: {cores} cores x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle"


# ---- the two sides -------------------------------------------------------------------------------
def trainer_kwargs(cfg) -> dict:
    t = cfg.trainer
    return dict(accelerator=t.accelerator, devices=1, precision=t.precision, gradient_clip_val=t.gradient_clip_val)


def make_trainer(cfg, clock: StepClock, tmp: Path) -> L.Trainer:
    return L.Trainer(**trainer_kwargs(cfg), max_steps=clock.warmup + clock.steps, max_epochs=-1,
                     limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp))


@dataclass
class Side:
    """One model ready to train: fit(trainer) trains it from its own data pipeline."""

    name: str
    model: torch.nn.Module
    fit: object
    flops_per_sample: float


def prepare_ours(cfg, args) -> Side:
    import hydra

    from fusioncast.models.module import quantile_loss

    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup("fit")
    module = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")
    device = torch.device(args.device)
    batch = next(iter(dm.loader("train", device=device)))
    net = module.net.to(device).train()
    q = torch.tensor(QUANTILES, device=device)
    flops = count_flops(net, lambda: quantile_loss(net(*batch.inputs()), batch.target, batch.target_mask, q,
                                                     batch.target_scale[:, 1])) / batch.series.shape[0]
    return Side("fusioncast", module, lambda trainer: trainer.fit(module, datamodule=dm), flops)


def pf_dataset(cfg, dm):
    """pytorch-forecasting's TimeSeriesDataSet over the same training rows, with the same column roles."""
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import GroupNormalizer

    s = dm.schema
    frame = dm.frame.copy()
    groups = frame.groupby(s.group_ids, sort=False)
    frame["time_idx"] = groups.cumcount()
    val_idx = dm.val_idx[groups.ngroup().to_numpy()]
    train = frame[frame["time_idx"] < val_idx].copy()
    cats = s.static_categoricals + s.known_categoricals + s.time_varying_unknown_categoricals
    for c in cats + s.group_ids:
        train[c] = train[c].astype(str)
    reals = s.static_reals + s.time_varying_known_reals + s.time_varying_unknown_reals + [s.target]
    train[reals] = train[reals].astype(np.float32)
    return TimeSeriesDataSet(
        train, time_idx="time_idx", target=s.target, group_ids=s.group_ids,
        max_encoder_length=s.max_encoder_length, min_encoder_length=s.max_encoder_length,
        max_prediction_length=s.max_prediction_length, min_prediction_length=s.max_prediction_length,
        static_categoricals=s.static_categoricals, static_reals=s.static_reals,
        time_varying_known_categoricals=s.known_categoricals, time_varying_known_reals=s.time_varying_known_reals,
        time_varying_unknown_categoricals=s.time_varying_unknown_categoricals,
        time_varying_unknown_reals=[s.target] + s.time_varying_unknown_reals,
        target_normalizer=GroupNormalizer(groups=s.group_ids), add_target_scales=True,
        add_relative_time_idx=False, add_encoder_length=False, allow_missing_timesteps=True,
    )


def prepare_pf(cfg, args, setup: Setup) -> Side:
    import hydra
    import torch.nn as nn
    from pytorch_forecasting import TemporalFusionTransformer
    from pytorch_forecasting.metrics import QuantileLoss

    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup("fit")
    ds = pf_dataset(cfg, dm)
    workers = args.pf_workers
    loader = ds.to_dataloader(train=True, batch_size=setup.batch, num_workers=workers, persistent_workers=workers > 0,
                              pin_memory=args.device == "cuda")
    model = TemporalFusionTransformer.from_dataset(
        ds, hidden_size=setup.hidden, attention_head_size=setup.heads, dropout=setup.dropout,
        hidden_continuous_size=setup.variable_size, loss=QuantileLoss(QUANTILES), learning_rate=3e-3,
        optimizer="adamw", weight_decay=1e-4, log_interval=-1, logging_metrics=nn.ModuleList([]),
    )
    device = torch.device(args.device)
    x, y = next(iter(loader))
    x = {k: v.to(device) if torch.is_tensor(v) else v for k, v in x.items()}
    y = tuple(v.to(device) if torch.is_tensor(v) else v for v in y)
    model.to(device).train()
    flops = count_flops(model, lambda: model.loss(model(x)["prediction"], y)) / x["encoder_lengths"].shape[0]
    return Side("pytorch-forecasting", model, lambda trainer: trainer.fit(model, train_dataloaders=loader), flops)


def measure(side: Side, cfg, args, tmp: Path) -> dict:
    """Train `side` for warmup + steps in a fresh Trainer; throughput, step time, peak memory."""
    clock = StepClock(args.warmup, args.steps)
    trainer = make_trainer(cfg, clock, tmp)
    trainer.callbacks.append(clock)
    device = args.device
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with RSSPeak() as rss:
        side.fit(trainer)
    if clock.stop <= clock.start:
        raise RuntimeError("the run ended before the timed steps were done")
    elapsed = clock.stop - clock.start
    return dict(
        samples_per_s=clock.samples / elapsed, step_ms=1000 * elapsed / clock.steps,
        peak_mib=(torch.cuda.max_memory_allocated() if device == "cuda" else rss.bytes) / 2**20,
        params=sum(p.numel() for p in side.model.parameters()), flops_per_sample=side.flops_per_sample,
    )


def median_row(rounds: list[dict]) -> dict:
    """Medians over rounds (peak memory: the largest)."""
    med = lambda k: float(np.median([r[k] for r in rounds]))  # noqa: E731
    return {**rounds[0], "samples_per_s": med("samples_per_s"), "step_ms": med("step_ms"),
            "peak_mib": max(r["peak_mib"] for r in rounds)}


# ---- report --------------------------------------------------------------------------------------
def table(rows: list[tuple[str, str, dict]], peak: float, ratios: dict[str, float]) -> str:
    head = ("| setup | model | samples/s | step ms | peak MiB | params | GFLOP/sample | achieved TFLOP/s "
            "| % of peak | ours / pf |")
    lines = [head, "| --- " * 10 + "|"]
    for setup, model, r in rows:
        achieved = r["flops_per_sample"] * r["samples_per_s"]
        ratio = f"{ratios[setup]:.1f}x" if model == "fusioncast" and setup in ratios else ""
        lines.append(f"| {setup} | {model} | {r['samples_per_s']:,.0f} | {r['step_ms']:.1f} | {r['peak_mib']:,.0f} "
                     f"| {r['params']:,} | {r['flops_per_sample'] / 1e9:.3f} | {achieved / 1e12:.4f} "
                     f"| {100 * achieved / peak:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[tuple[str, str, dict]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", choices=["a", "b", "both"], default="a")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=30, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, autotuning, compile)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of ours then pytorch-forecasting; medians reported")
    p.add_argument("--only", choices=["ours", "pf"], help="run one side only")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--pf-workers", type=int, help="pytorch-forecasting DataLoader workers (default: 0 on CPU, "
                   "where they would take the cores the model trains on; up to 8 with CUDA)")
    p.add_argument("--peak-tflops", type=float, help="the machine's peak, if the built-in estimate is wrong")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for our side, e.g. model.compile=true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pf_workers is None:
        args.pf_workers = 0 if args.device == "cpu" else min(8, max(1, len(os.sched_getaffinity(0)) - 1))
    if args.device == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for both, as fusioncast-train does on CUDA
    L.seed_everything(0, verbose=False)
    rows, ratios, spread = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        chosen = setups(tmp)
        for key in ("a", "b") if args.setup == "both" else (args.setup,):
            setup = chosen[key]
            if args.tiny:
                setup.hidden, setup.batch, setup.variable_size = 16, 16, min(setup.variable_size, 8)
                setup.L, setup.H = min(setup.L, 24), min(setup.H, 6)
            cfg = compose(setup, args.device, args.overrides, tmp)
            label = f"{key}: {setup.name}"
            sides = ([prepare_ours(cfg, args)] if args.only != "pf" else []) + (
                [prepare_pf(cfg, args, setup)] if args.only != "ours" else [])
            rounds = {side.name: [] for side in sides}
            for _ in range(args.repeats):  # alternate, so that a noisy spell hits both sides alike
                for side in sides:
                    rounds[side.name].append(measure(side, cfg, args, tmp))
            rows += [(label, name, median_row(r)) for name, r in rounds.items()]
            if len(rounds) == 2:
                per_round = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(*rounds.values())]
                ratios[label] = float(np.median(per_round))
                spread[label] = per_round
    peak, source = peak_flops(args.device, cfg.trainer.precision)
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e12, "--peak-tflops"
    print(f"\ndevice {args.device}, precision {cfg.trainer.precision}, torch threads {torch.get_num_threads()}, "
          f"pytorch-forecasting DataLoader workers {args.pf_workers}, {args.steps} timed steps after {args.warmup}; "
          f"peak {peak / 1e12:.3f} TFLOP/s ({source})")
    print(table(rows, peak, ratios))
    for label, per_round in spread.items():
        print(f"{label}: ours / pytorch-forecasting per round: {', '.join(f'{r:.2f}' for r in per_round)} "
              f"(table: medians over {args.repeats} rounds)")
    return rows


if __name__ == "__main__":
    main()
