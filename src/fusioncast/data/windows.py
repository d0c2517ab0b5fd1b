"""The whole data set as dense tensors on the training device; batches by index arithmetic.

A window is (series, decoder start d): encoder steps [d - L, d), decoder steps [d, d + H). A batch
of windows is one advanced-indexing gather per tensor, so there is no per-sample Python and no
DataLoader worker: the GPU is fed at memory speed (neuralforecast cuts windows the same way).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from fusioncast.data.augment import LevelShift
from fusioncast.data.preprocess import Encoded
from fusioncast.data.schema import WINDOW_SCALE_FLOOR

SPLITS = ("train", "val", "test")


class Batch(NamedTuple):
    """One batch of windows. The first eight fields are the model's inputs, in its argument order."""

    static_cat: Tensor      # (B, n_static_cat) int64
    static_real: Tensor     # (B, n_static_real)
    encoder_cat: Tensor     # (B, L, n_tv_cat) int64
    encoder_real: Tensor    # (B, L, 1 + n_known_real + n_unknown_real), target first
    decoder_cat: Tensor     # (B, H, n_known_cat) int64
    decoder_real: Tensor    # (B, H, n_known_real)
    encoder_mask: Tensor    # (B, L) bool, target observed
    target_scale: Tensor    # (B, 2)
    target: Tensor          # (B, H) raw target (0 where unobserved)
    target_mask: Tensor     # (B, H) bool, target observed
    series: Tensor          # (B,) int64 series index
    decoder_start: Tensor   # (B,) int64 first decoder step

    def inputs(self) -> tuple[Tensor, ...]:
        return tuple(self[:8])


def window_index(length: np.ndarray, observed: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray,
                 L: int, H: int, split: str, stride: int = 1, min_encoder_length: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(series, decoder_start) of every window of a split.

    A decoder may start as early as `min_encoder_length` (default L) steps into a series; the encoder
    steps before the series' start are then padding, masked like gaps (pytorch-forecasting's
    min_encoder_length: short histories give many more training windows).

    A window's decoder lies wholly inside its split (train: before val_idx; val: [val_idx, test_idx);
    test: from test_idx on), so no window's targets, nor its encoder, reach into a later split.
    Windows whose decoder holds no observed target are skipped: they carry no signal.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    series, starts = [], []
    for s, n in enumerate(length):
        first = L if min_encoder_length is None else max(1, min(min_encoder_length, L))
        lo = {"train": first, "val": max(first, val_idx[s]), "test": max(first, test_idx[s])}[split]
        hi = {"train": val_idx[s], "val": test_idx[s], "test": n}[split] - H  # last valid decoder start
        if hi < lo:
            continue
        d = np.arange(lo, hi + 1, stride)
        csum = np.concatenate([[0], np.cumsum(observed[s, :n])])
        d = d[csum[d + H] - csum[d] > 0]
        series.append(np.full(len(d), s))
        starts.append(d)
    if not series:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(series).astype(np.int64), np.concatenate(starts).astype(np.int64)


class SeriesTensors:
    """The encoded arrays of all series as tensors on one device, and the gather that cuts windows."""

    def __init__(self, enc: Encoded, n_known_cat: int, n_known_real: int, L: int, H: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, encoder_center: bool = False,
                 encoder_scale: bool = False):
        self.L, self.H, self.n_known_cat, self.n_known_real = L, H, n_known_cat, n_known_real
        # target_normalizer=encoder: each window's target center is the mean of its encoder's observed targets;
        # window: its scale is also their std (the series' scale where the encoder is flat or too short)
        self.encoder_center = encoder_center or encoder_scale
        self.encoder_scale = encoder_scale
        self.device = torch.device(device)
        t = lambda a, dt=None: torch.as_tensor(a, dtype=dt, device=self.device)  # noqa: E731
        self.static_cat = t(enc.static_cat)
        self.static_real = t(enc.static_real, dtype)
        self.cat = t(enc.cat)  # the small code dtype of Preprocessor.transform: cast per gathered batch
        self.real = t(enc.real, dtype)
        self.observed = t(enc.observed)
        self.target_scale = t(enc.target_scale, dtype)
        self.offsets = torch.arange(L + H, device=self.device)

    def gather(self, series: Tensor, decoder_start: Tensor, target_factor: Tensor | None = None) -> Batch:
        """Cut the windows (series[i], decoder_start[i]) in one vectorised gather; `target_factor`
        (B, L+H) multiplies their target step by step (augmentation; the encoder center follows)."""
        L = self.L
        t = (decoder_start - L)[:, None] + self.offsets  # (B, L+H) time steps
        s = series[:, None]
        # steps before a series' start (short encoders) read step 0 and are masked out
        tc = t.clamp_min(0)
        cat, real, obs = self.cat[s, tc].long(), self.real[s, tc], self.observed[s, tc] & (t >= 0)
        if target_factor is not None:  # real is the gather's own copy
            real[..., 0] *= target_factor.to(real)
        target_scale = self.target_scale[series]
        if self.encoder_center:
            n = obs[:, :L].sum(1)
            mean = (real[:, :L, 0] * obs[:, :L]).sum(1) / n.clamp_min(1)
            scale = target_scale[:, 1]
            if self.encoder_scale:
                var = (((real[:, :L, 0] - mean[:, None]) ** 2) * obs[:, :L]).sum(1) / n.clamp_min(1)
                std = var.sqrt()
                scale = torch.where((n > 1) & (std > WINDOW_SCALE_FLOOR * mean.abs().clamp_min(1.0)), std, scale)
            target_scale = torch.stack([torch.where(n > 0, mean, target_scale[:, 0]), scale], -1)
        return Batch(
            static_cat=self.static_cat[series],
            static_real=self.static_real[series],
            encoder_cat=cat[:, :L],
            encoder_real=real[:, :L],
            decoder_cat=cat[:, L:, : self.n_known_cat],
            decoder_real=real[:, L:, 1 : 1 + self.n_known_real],
            encoder_mask=obs[:, :L],
            target_scale=target_scale,
            target=real[:, L:, 0],
            target_mask=obs[:, L:],
            series=series,
            decoder_start=decoder_start,
        )


class BatchLoader:
    """Iterates batches of one split's windows, shuffled per epoch, sharded across DDP ranks.

    Every rank draws the same permutation and takes every world_size-th window from its rank on, so
    the ranks' batches i together are the single-process batch i of batch_size * world_size.
    Shuffled (training) shards are cut to equal length, as DDP steps in lockstep; unshuffled
    (evaluation) shards keep every window, so metrics cover the whole split.
    `level_shift` (training only) scales the target of some windows (fusioncast/data/augment.py).
    `sampler_state()` / `load_sampler_state()` carry where the sampler stands through a checkpoint (the
    datamodule's state; not named state_dict, or Lightning would restore the loader itself, and only
    inside an epoch, a batch off, as it fetches one ahead).

    `epoch_windows` (shuffled loaders only): an epoch is at most this many windows, so that on a large
    table epochs stay short enough for validation, early stopping and the lr schedule to act on. The
    epochs then walk through a stream of permutations of all windows (the c-th seeded by seed + c),
    epoch k taking its k-th stretch of `epoch_windows`: every window is seen once before any is seen
    twice. The order of any epoch is a function of (seed, epoch) alone, so `epoch` is the whole state
    of the sampler between epochs (what `sampler_state` saves; inside an epoch the resume also
    skips the batches taken, as without it).
    """

    def __init__(self, tensors: SeriesTensors, series: np.ndarray, starts: np.ndarray, batch_size: int,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 level_shift: LevelShift | None = None, epoch_windows: int | None = None):
        if epoch_windows is not None and (isinstance(epoch_windows, bool) or not isinstance(epoch_windows, int)
                                          or epoch_windows < 1):
            raise ValueError(f"data.epoch_windows must be a whole number >= 1 or null, got {epoch_windows!r}")
        self.tensors = tensors
        self.level_shift = level_shift
        self.series = torch.as_tensor(series, device=tensors.device)
        self.starts = torch.as_tensor(starts, device=tensors.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch_windows = epoch_windows
        self.epoch = 0  # epochs started; epoch e draws with seed + e
        self._resume_at: int | None = None

    def sampler_state(self) -> dict:
        """Where the sampler stands, as plain data (a checkpoint holds it)."""
        return {"epoch": self.epoch}

    def load_sampler_state(self, state: dict, resume_at: int | None = None) -> None:
        """Continue from a `sampler_state()`: the next iteration draws the epoch after the saved one; with
        `resume_at` (a checkpoint saved inside an epoch, that many batches in) it redraws the saved epoch
        and starts at that batch."""
        self.epoch = int(state["epoch"])
        self._resume_at = resume_at if resume_at and self.epoch > 0 else None

    @property
    def sampled(self) -> bool:
        """Whether an epoch is a sample of `epoch_windows` windows rather than all of them."""
        return self.shuffle and self.epoch_windows is not None and self.epoch_windows < len(self.series)

    def _epoch_size(self) -> int:
        return self.epoch_windows if self.sampled else len(self.series)

    def _sample(self) -> Tensor:
        """This epoch's stretch of the stream of permutations (class docstring)."""
        n, m = len(self.series), self.epoch_windows
        parts, pos = [], self.epoch * m
        while pos < (self.epoch + 1) * m:
            cycle, offset = divmod(pos, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + cycle))
            take = min(n - offset, (self.epoch + 1) * m - pos)
            parts.append(perm[offset : offset + take])
            pos += take
        return torch.cat(parts)

    def _per_rank(self) -> int:
        n, world = self._epoch_size(), self.world_size
        return n // world if self.shuffle else len(range(self.rank, n, world))

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n, t = len(self.series), self.tensors
        first = 0
        if self._resume_at is not None:  # redraw the saved epoch's permutation, continue inside it
            self.epoch, first, self._resume_at = self.epoch - 1, self._resume_at, None
        # same permutation (and level shifts) on every rank, seeded by epoch; each rank takes its own slice
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.sampled:
            order = self._sample().to(t.device)
        elif self.shuffle:
            order = torch.randperm(n, generator=g).to(t.device)
        else:
            order = torch.arange(n, device=t.device)
        shift = None if self.level_shift is None else [a.to(t.device) for a in self.level_shift.draw(n, g)]
        self.epoch += 1
        if self.world_size > 1:
            k = len(order)
            order = order[: k - k % self.world_size if self.shuffle else k][self.rank :: self.world_size]
        for i in range(first, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            factor = None if shift is None else LevelShift.factors(shift[0][idx], shift[1][idx], t.L, t.H)
            yield t.gather(self.series[idx], self.starts[idx], factor)
