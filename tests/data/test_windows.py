"""Windows cut by index arithmetic equal a naive slicing loop; splits don't leak; gaps are masked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.windows import BatchLoader
from fusioncast.models.tft import TemporalFusionTransformer

SYNTH = dict(
    name="synthetic", synthetic={"n_zones": 4, "days": 20}, time_col="timestamp", target="pickups",
    group_ids=["zone"], static_categoricals=["zone", "borough"], static_reals=["population"],
    time_varying_known_categoricals=["holiday"], time_varying_known_reals=["fare_multiplier"],
    time_varying_unknown_categoricals=["weather"], time_varying_unknown_reals=["temperature"],
    calendar=["hour"], max_encoder_length=24, max_prediction_length=12, val_start=0.6, test_start=0.8,
    batch_size=32, target_normalizer="series",  # windows carry their series' fitted scale as it is
)


@pytest.fixture(scope="module")
def dm() -> TimeSeriesDataModule:
    d = TimeSeriesDataModule(**SYNTH)
    d.setup()
    return d


def test_batches_equal_naive_slicing(dm):
    enc, L, H = dm.enc, 24, 12
    n_kc, n_kr = 2, 1  # holiday + hour; fare_multiplier
    for split in ("train", "val", "test"):
        seen = 0
        for b in dm.loader(split, shuffle=False):
            for i in range(len(b.series)):
                s, d = int(b.series[i]), int(b.decoder_start[i])
                assert torch.equal(b.encoder_cat[i], torch.as_tensor(enc.cat[s, d - L:d]).long())
                assert torch.equal(b.encoder_real[i], torch.as_tensor(enc.real[s, d - L:d]))
                assert torch.equal(b.decoder_cat[i], torch.as_tensor(enc.cat[s, d:d + H, :n_kc]).long())
                assert torch.equal(b.decoder_real[i], torch.as_tensor(enc.real[s, d:d + H, 1:1 + n_kr]))
                assert torch.equal(b.target[i], torch.as_tensor(enc.real[s, d:d + H, 0]))
                assert torch.equal(b.encoder_mask[i], torch.as_tensor(enc.observed[s, d - L:d]))
                assert torch.equal(b.static_cat[i], torch.as_tensor(enc.static_cat[s]))
                assert torch.equal(b.target_scale[i], torch.as_tensor(enc.target_scale[s]))
            seen += len(b.series)
        assert seen == len(dm.windows(split)[0]) > 0


def test_every_window_found_once(dm):
    """The index equals a brute-force enumeration of all valid (series, start) pairs per split."""
    L, H = 24, 12
    for split in ("train", "val", "test"):
        expected = []
        for s, n in enumerate(dm.enc.length):
            for d in range(L, n - H + 1):
                lo, hi = {"train": (0, dm.val_idx[s]), "val": (dm.val_idx[s], dm.test_idx[s]),
                          "test": (dm.test_idx[s], n)}[split]
                if lo <= d and d + H <= hi and dm.enc.observed[s, d:d + H].any():
                    expected.append((s, d))
        series, starts = dm.windows(split)
        assert list(zip(series.tolist(), starts.tolist())) == expected


def test_no_window_reaches_a_later_split(dm):
    for split, limit in (("train", dm.val_idx), ("val", dm.test_idx)):
        series, starts = dm.windows(split)
        assert (starts + 12 <= limit[series]).all()
    series, starts = dm.windows("test")
    assert (starts >= dm.test_idx[series]).all()
    series, starts = dm.windows("val")
    assert (starts >= dm.val_idx[series]).all()


def test_preprocessing_sees_training_rows_only(dm):
    """Changing targets after val_start changes neither scalers nor per-series target scales."""
    frame = dm.frame.copy()
    later = frame.groupby("zone").cumcount().to_numpy() >= dm.val_idx[frame.groupby("zone").ngroup().to_numpy()]
    frame.loc[later, "pickups"] *= 100
    frame.loc[later, "temperature"] += 50
    from fusioncast.data.preprocess import Preprocessor

    refit = Preprocessor(dm.schema, dm.pp.freq).fit(frame, ~later)
    assert refit.target_scales == dm.pp.target_scales
    assert refit.real_center == dm.pp.real_center and refit.real_scale == dm.pp.real_scale


def test_filled_gaps_are_masked_out(tmp_path):
    from fusioncast.data.sources import load_named

    table = load_named("synthetic", synthetic={"n_zones": 4, "days": 20})
    t0 = pd.Timestamp("2024-01-08")  # 7 days after the start: grid steps 168..172 go missing
    drop = (table.zone == "zone_001") & (table.timestamp >= t0) & (table.timestamp < t0 + pd.Timedelta("5h"))
    table[~drop].to_parquet(tmp_path / "holes.parquet")
    dm = TimeSeriesDataModule(**{**SYNTH, "name": "custom", "path": str(tmp_path / "holes.parquet")})
    dm.setup()
    s, gap = dm.enc.keys.index("zone_001"), slice(168, 173)
    assert not dm.enc.observed[s, gap].any() and dm.enc.observed[s, :dm.enc.length[s]].sum() == dm.enc.length[s] - 5
    # every batch's target_mask and encoder_mask are False exactly where the grid was filled
    for split in ("train", "val"):
        for b in dm.loader(split, shuffle=False):
            hit = b.series == s
            t = b.decoder_start[hit, None] + torch.arange(-24, 12)
            in_gap = (t >= 168) & (t < 173)
            mask = torch.cat([b.encoder_mask[hit], b.target_mask[hit]], dim=1)
            assert not mask[in_gap].any() and mask[~in_gap].all()


def test_future_targets_and_observed_inputs_cannot_change_a_forecast(dm):
    torch.manual_seed(0)
    net = TemporalFusionTransformer(**dm.model_kwargs(), hidden_size=16).eval()
    b = next(iter(dm.loader("val", shuffle=False)))
    with torch.no_grad():
        base = net(*b.inputs())
    # perturb every target and observed (unknown) input at and after each window's decoder start
    enc = dm.enc
    perturbed = TimeSeriesDataModule(**SYNTH)
    perturbed.pp, perturbed.enc = dm.pp, type(enc)(**{**enc.__dict__, "real": enc.real.copy(), "cat": enc.cat.copy()})
    perturbed.val_idx, perturbed.test_idx = dm.val_idx, dm.test_idx
    perturbed.seasonal_period, perturbed.mase_scale = dm.seasonal_period, dm.mase_scale
    for s in range(len(enc.keys)):
        d0 = dm.val_idx[s]
        perturbed.enc.real[s, d0:, 0] = 1e4          # targets
        perturbed.enc.real[s, d0:, 2] = -1e3         # temperature (observed real)
        perturbed.enc.cat[s, d0:, 2] = 1             # weather (observed categorical)
    b2 = next(iter(perturbed.loader("val", shuffle=False)))
    # compare the windows whose decoder starts where the perturbation starts
    first = b.decoder_start == torch.as_tensor(dm.val_idx)[b.series]
    assert first.sum() == len(enc.keys)
    assert not torch.equal(b.target[first], b2.target[first])  # the perturbation did reach the windows
    with torch.no_grad():
        assert torch.equal(base[first], net(*b2.inputs())[first])


def test_short_encoders_are_padded_and_masked():
    dm = TimeSeriesDataModule(**{**SYNTH, "min_encoder_length": 6})
    dm.setup()
    series, starts = dm.windows("train")
    assert starts.min() == 6  # decoders start 6 steps in, not 24
    b = dm.tensors().gather(torch.as_tensor(series[:1]), torch.as_tensor(starts[:1]))
    s = int(series[0])
    assert not b.encoder_mask[0, :18].any()  # 18 steps before the series' start: padding
    assert torch.equal(b.encoder_mask[0, 18:], torch.as_tensor(dm.enc.observed[s, :6]))
    assert torch.equal(b.encoder_real[0, 18:], torch.as_tensor(dm.enc.real[s, :6]))


def test_long_windows_evaluate_in_smaller_batches():
    """Evaluation batches shrink where attention would not fit in memory, and still cover every window."""
    from fusioncast.data.datamodule import MAX_EVAL_ATTENTION_CELLS

    assert TimeSeriesDataModule(**SYNTH).eval_batch_size == 1024  # 12 x 36 cells a window: the config's
    long = TimeSeriesDataModule(**{**SYNTH, "synthetic": {"n_zones": 2, "days": 120}, "max_encoder_length": 336,
                                   "max_prediction_length": 480, "eval_batch_size": 1024})
    assert long.eval_batch_size == MAX_EVAL_ATTENTION_CELLS // (480 * 816) < 1024
    long.setup()
    batches = list(long.loader("val"))
    assert max(len(b.series) for b in batches) == long.eval_batch_size
    assert sum(len(b.series) for b in batches) == len(long.windows("val")[0])


class _Windows:
    """Stands in for SeriesTensors: a "batch" is just the (series, start) index pairs."""

    device = torch.device("cpu")

    def gather(self, series, starts, target_factor=None):
        return torch.stack([series, starts], -1)


@pytest.mark.parametrize("n", [40, 43])
def test_ddp_shards_together_make_the_single_process_batches(n):
    series, starts = np.arange(n) % 5, np.arange(n)
    single = BatchLoader(_Windows(), series, starts, batch_size=8, shuffle=True, seed=3)
    ranks = [BatchLoader(_Windows(), series, starts, batch_size=4, shuffle=True, seed=3, rank=r, world_size=2)
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # DDP ranks step in lockstep
    for whole, *parts in zip(single, *ranks):
        if len(whole) == 8:  # full batches: the ranks' halves are exactly the single process's batch
            assert sorted(torch.cat(parts)[:, 1].tolist()) == sorted(whole[:, 1].tolist())


@pytest.mark.parametrize("n", [40, 43])
def test_evaluation_shards_cover_every_window_once(n):
    series, starts = np.zeros(n, np.int64), np.arange(n)
    ranks = [BatchLoader(_Windows(), series, starts, batch_size=8, shuffle=False, rank=r, world_size=3)
             for r in range(3)]
    seen = [int(s) for loader in ranks for b in loader for s in b[:, 1]]
    assert sorted(seen) == list(range(n))
    assert [sum(len(b) for b in loader) for loader in ranks] == [len(range(r, n, 3)) for r in range(3)]


def test_codes_are_stored_in_the_smallest_exact_dtype_and_gathered_as_int64(dm):
    from fusioncast.data.preprocess import code_dtype

    assert [code_dtype(n) for n in (1, 256, 257, 32768, 32769, 2**31 + 1)] == [
        np.uint8, np.uint8, np.int16, np.int16, np.int32, np.int64]
    assert dm.enc.cat.dtype == np.uint8 and dm.enc.observed.dtype == bool  # 24 hours, a few weather codes
    batch = next(iter(dm.train_dataloader()))
    assert batch.encoder_cat.dtype == batch.decoder_cat.dtype == torch.int64
    assert int(batch.encoder_cat.max()) == int(dm.enc.cat.max())  # no code wrapped around
