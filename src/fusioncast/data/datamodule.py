"""LightningDataModule: table → frame → preprocessing fitted on train → windows on the device."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch

from fusioncast.data.augment import LevelShift
from fusioncast.data.frame import prepare_frame, seasonal_period, split_points, truncate
from fusioncast.data.preprocess import Encoded, Preprocessor
from fusioncast.data.schema import Schema, SchemaError
from fusioncast.data.sources import load_named
from fusioncast.data.windows import BatchLoader, SeriesTensors, window_index

log = logging.getLogger(__name__)
# Evaluation batches hold at most this many (batch x horizon x window) attention cells, about 1 GiB of
# fp32 scores at 4 heads: see TimeSeriesDataModule.eval_batch_size.
MAX_EVAL_ATTENTION_CELLS = 1 << 26


class TimeSeriesDataModule(L.LightningDataModule):
    """A table of time series with pytorch-forecasting's column roles, ready for the TFT.

    `name` is a built-in set (synthetic, nyc_taxi, stallion, etth1) or `custom` (with `path`).
    `val_start`/`test_start` are timestamps or fractions of each series' span; `test_start=None` means
    no test split (validation runs to the end); data at or after `test_end` (if set) is dropped.
    `target_normalizer`: "series" (per-series mean/std on training rows), "global" (one for all) or
    "encoder" (per-window center: the encoder's mean; per-series scale).
    `level_shift` ({prob, sigma, span}; off by default) augments the training windows
    (fusioncast/data/augment.py). `epoch_windows`: a training epoch is at most this many windows,
    sampled afresh each epoch (data/windows.py, BatchLoader); null: every training window.
    """

    def __init__(
        self,
        *,
        time_col: str,
        target: str,
        name: str = "custom",
        path: str | None = None,
        synthetic: dict | None = None,
        group_ids: list[str] | None = None,
        static_categoricals: list[str] | None = None,
        static_reals: list[str] | None = None,
        time_varying_known_categoricals: list[str] | None = None,
        time_varying_known_reals: list[str] | None = None,
        time_varying_unknown_categoricals: list[str] | None = None,
        time_varying_unknown_reals: list[str] | None = None,
        calendar: list[str] | None = None,
        freq: str | None = None,
        max_encoder_length: int = 24,
        max_prediction_length: int = 6,
        min_encoder_length: int | None = None,
        val_start: float | str = 0.7,
        test_start: float | str | None = 0.85,
        test_end: float | str | None = None,
        target_normalizer: str = "encoder",
        seasonal_period: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        eval_stride: int = 1,
        seed: int = 0,
        level_shift: dict | None = None,
        epoch_windows: int | None = 32768,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.level_shift = LevelShift.from_config(level_shift, max_encoder_length)
        self.schema = Schema(
            time_col=time_col, target=target, group_ids=group_ids, static_categoricals=static_categoricals,
            static_reals=static_reals, time_varying_known_categoricals=time_varying_known_categoricals,
            time_varying_known_reals=time_varying_known_reals,
            time_varying_unknown_categoricals=time_varying_unknown_categoricals,
            time_varying_unknown_reals=time_varying_unknown_reals, calendar=calendar, freq=freq,
            max_encoder_length=max_encoder_length, max_prediction_length=max_prediction_length,
            target_normalizer=target_normalizer,
        )
        self.pp: Preprocessor | None = None
        self.enc: Encoded | None = None
        self._tensors: SeriesTensors | None = None
        self._train_loader: BatchLoader | None = None
        self._sampler_to_load: tuple[dict, int | None] | None = None  # from a checkpoint, for the next train loader

    # ---- preparation (numpy, once) -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.enc is None:
            self._prepare()
        if self.trainer is not None and self.trainer.world_size > 1:
            self._share_preprocessing(self.trainer.strategy.broadcast)

    def _share_preprocessing(self, broadcast) -> None:
        """Adopt global rank 0's fitted preprocessing on every rank (called under DDP, once per fit).

        Each rank fits its own copy before the processes meet (the model's shapes need it), and a
        deterministic fit on the same table gives the same result; but a rank that read a different
        file, or a fit that is not deterministic (pytorch-forecasting #1825), must not train with its
        own category codes and scales. So rank 0's win, and a rank whose category counts differ
        fails loudly, since its model was built for other shapes.
        """
        mine = self.pp.to_dict()
        ours = broadcast(mine, src=0)
        if ours == mine:
            return
        shared = Preprocessor.from_dict(ours)
        counts = lambda pp: {k: v for k, v in pp.model_kwargs().items() if k.endswith("cardinalities")}  # noqa: E731
        if counts(shared) != counts(self.pp):
            raise SchemaError("this rank's data has other categories than rank 0's: "
                              "every rank must read the same table")
        log.warning("rank %d: preprocessing differed from rank 0's; using rank 0's", self.trainer.global_rank)
        self.pp, self.enc, self._tensors = shared, None, None
        self._prepare()

    def _prepare(self) -> None:
        h = self.hparams
        frame, freq = prepare_frame(load_named(h.name, h.path, h.synthetic), self.schema)
        frame = truncate(frame, self.schema, freq, h.get("test_end"))
        if self.pp is None:  # a checkpoint's preprocessor (load_state_dict) is kept as it is
            g = frame.groupby(self.schema.group_ids, sort=False) if self.schema.group_ids else frame.groupby(
                np.zeros(len(frame), np.int64))
            times = g[self.schema.time_col]
            val_idx, _ = split_points(times.first().to_numpy(), times.size().to_numpy(), freq, h.val_start, h.test_start)
            train_rows = g.cumcount().to_numpy() < val_idx[g.ngroup().to_numpy()]
            if not train_rows.any():
                raise SchemaError(f"no rows before val_start={h.val_start}: nothing to fit preprocessing on")
            self.pp = Preprocessor(self.schema, freq).fit(frame, train_rows)
        self.frame = frame
        self.enc = self.pp.transform(frame)
        self.val_idx, self.test_idx = split_points(self.enc.start, self.enc.length, freq, h.val_start, h.test_start)
        self.seasonal_period = h.seasonal_period or seasonal_period(freq)
        self.mase_scale = self._mase_scale()

    def _mase_scale(self) -> np.ndarray:
        """Per series, the in-sample seasonal-naive MAE over the training period (MASE's denominator)."""
        m, out = self.seasonal_period, np.ones(len(self.enc.keys), np.float64)
        for s, v in enumerate(self.val_idx):
            y, o = self.enc.real[s, :v, 0].astype(np.float64), self.enc.observed[s, :v]
            both = o[m:] & o[:-m] if v > m else np.zeros(0, bool)
            if both.any():
                d = np.abs(y[m:] - y[:-m])[both].mean()
                out[s] = d if d > 0 else 1.0
        return out

    def windows(self, split: str, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        s = self.schema
        return window_index(self.enc.length, self.enc.observed, self.val_idx, self.test_idx,
                            s.max_encoder_length, s.max_prediction_length, split, stride,
                            self.hparams.min_encoder_length)

    def model_kwargs(self) -> dict:
        """The dataset-dependent arguments of TemporalFusionTransformer (after setup)."""
        return self.pp.model_kwargs()

    # ---- tensors and loaders -----------------------------------------------------------------------
    def tensors(self, device: torch.device | str | None = None) -> SeriesTensors:
        """All series as tensors on `device` (default: the trainer's device), built once per device."""
        if device is None:
            device = self.trainer.strategy.root_device if self.trainer is not None else "cpu"
        device = torch.device(device)
        if self._tensors is None or self._tensors.device != device:
            s = self.schema
            self._tensors = SeriesTensors(self.enc, len(s.known_categoricals), len(s.time_varying_known_reals),
                                          s.max_encoder_length, s.max_prediction_length, device,
                                          encoder_center=s.target_normalizer == "encoder",
                                          encoder_scale=s.target_normalizer == "window")
        return self._tensors

    @property
    def eval_batch_size(self) -> int:
        """`eval_batch_size`, capped so that one batch's attention scores stay near 1 GiB.

        Attention holds (batch, heads, H, L + H) floats, which grows with the square of the window:
        at ETTh1's 336 + 720 steps, 1,024 windows need ~12 GiB per copy of the scores, more than a
        24 GiB machine has for the forward pass. Results do not depend on the batch size.
        """
        s = self.schema
        cells = s.max_prediction_length * (s.max_encoder_length + s.max_prediction_length)
        return max(1, min(int(self.hparams.eval_batch_size), MAX_EVAL_ATTENTION_CELLS // cells))

    def loader(self, split: str, device=None, shuffle: bool | None = None, shard: bool = False,
               augment: bool = False) -> BatchLoader:
        """Batches of a split's windows; `shard`: only this DDP rank's share (the trainer's loaders);
        `augment`: with `level_shift` (the trainer's training loader only)."""
        h = self.hparams
        train = split == "train"
        series, starts = self.windows(split, 1 if train else h.eval_stride)
        if len(series) == 0:
            raise SchemaError(
                f"the {split} split has no windows of {self.schema.max_encoder_length} + "
                f"{self.schema.max_prediction_length} steps; move val_start/test_start or shorten the windows"
            )
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if shard and self.trainer else (0, 1)
        return BatchLoader(self.tensors(device), series, starts, h.batch_size if train else self.eval_batch_size,
                           shuffle=train if shuffle is None else shuffle, drop_last=False, seed=h.seed,
                           rank=rank, world_size=world, level_shift=self.level_shift if augment else None,
                           epoch_windows=h.get("epoch_windows") if train else None)

    def train_dataloader(self) -> BatchLoader:
        self._train_loader = self.loader("train", shard=True, augment=True)
        if self._sampler_to_load is not None:  # a resumed fit: the sampler continues where it stood
            self._train_loader.load_sampler_state(*self._sampler_to_load)
            self._sampler_to_load = None
        return self._train_loader

    def val_dataloader(self) -> BatchLoader:
        return self.loader("val", shard=True)

    def test_dataloader(self) -> BatchLoader:
        return self.loader("test", shard=True)

    # ---- checkpoint state: the fitted preprocessing travels with the model, the sampler with the fit ---
    def state_dict(self) -> dict:
        state = {"preprocessor": self.pp.to_dict() if self.pp else None, "hparams": dict(self.hparams)}
        if self._train_loader is not None:
            state["sampler"] = self._train_loader.sampler_state()
            state["sampler_resume_at"] = self._batches_into_epoch()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("preprocessor"):
            self.pp = Preprocessor.from_dict(state["preprocessor"])
        if state.get("sampler") is not None:
            self._sampler_to_load = state["sampler"], state.get("sampler_resume_at")

    def _batches_into_epoch(self) -> int | None:
        """Saved inside a training epoch: the batches of it the fit loop has taken (Lightning fetches one
        ahead, so the loader's own count is one more); None at an epoch's end."""
        loop = getattr(getattr(self.trainer, "fit_loop", None), "epoch_loop", None)
        if loop is None or loop.batch_progress.is_last_batch:
            return None
        return loop.batch_progress.current.ready or None
