"""Level-shift augmentation: what it scales, that only training batches get it, repeatability, bad config."""

from __future__ import annotations

import pytest
import torch

from fusioncast.data.augment import LevelShift
from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.data.windows import BatchLoader
from tests.data.test_windows import SYNTH

L, H = SYNTH["max_encoder_length"], SYNTH["max_prediction_length"]


@pytest.fixture(scope="module")
def dm() -> TimeSeriesDataModule:
    d = TimeSeriesDataModule(**{**SYNTH, "target_normalizer": "encoder"},
                             level_shift={"prob": 0.5, "sigma": 0.3, "span": 6})
    d.setup()
    return d


def test_factors_shift_once_in_the_encoder_tail():
    shift = LevelShift(prob=1.0, sigma=0.3, span=6)
    f = LevelShift.factors(*shift.draw(500, torch.Generator().manual_seed(0)), L, H)
    assert f.shape == (500, L + H)
    assert (f[:, : L - 6] == 1).all()  # nothing before the span
    assert (f[:, L - 1 :] == f[:, -1:]).all()  # the last encoder step and the horizon: one factor
    starts = (f != 1).int().argmax(1)
    assert starts.min() >= L - 6 and starts.max() <= L - 1 and len(starts.unique()) == 6
    log_f = f[:, -1].log()
    assert abs(log_f.std().item() - 0.3) < 0.05 and abs(log_f.mean().item()) < 0.05
    factor, _ = LevelShift(prob=0.3, sigma=0.3, span=6).draw(2000, torch.Generator().manual_seed(1))
    assert 0.25 < (factor != 1).float().mean().item() < 0.35


def test_gather_scales_the_target_and_recenters(dm):
    t = dm.tensors("cpu")
    series, starts = (torch.as_tensor(a[:64]) for a in dm.windows("train"))
    plain = t.gather(series, starts)
    factor = LevelShift.factors(*LevelShift(prob=1.0, sigma=0.3, span=6).draw(64, torch.Generator().manual_seed(2)), L, H)
    shifted = t.gather(series, starts, factor)
    assert torch.allclose(shifted.target, plain.target * factor[:, L:])
    assert torch.allclose(shifted.encoder_real[..., 0], plain.encoder_real[..., 0] * factor[:, :L])
    # known and other observed inputs do not move
    assert torch.equal(shifted.encoder_real[..., 1:], plain.encoder_real[..., 1:])
    assert torch.equal(shifted.decoder_real, plain.decoder_real)
    # target_normalizer=encoder: the center is the shifted encoder's mean, the scale the series'
    mask = plain.encoder_mask.float()
    center = (shifted.encoder_real[..., 0] * mask).sum(1) / mask.sum(1)
    assert torch.allclose(shifted.target_scale[:, 0], center, rtol=1e-5)
    assert torch.equal(shifted.target_scale[:, 1], plain.target_scale[:, 1])
    assert not torch.allclose(shifted.target_scale[:, 0], plain.target_scale[:, 0])


def test_only_the_training_loader_shifts_and_it_repeats(dm):
    plain = TimeSeriesDataModule(**{**SYNTH, "target_normalizer": "encoder"})
    plain.setup()
    a, b, ref = dm.train_dataloader(), dm.train_dataloader(), plain.train_dataloader()
    moved = 0
    for x, y, r in zip(a, b, ref):
        assert torch.equal(x.target, y.target)  # same seed and epoch: same shifts
        assert torch.equal(x.series, r.series) and torch.equal(x.decoder_start, r.decoder_start)
        same = (x.target == r.target).all(1)
        moved += int((~same).sum())
    n = len(dm.windows("train")[0])
    assert 0.4 * n < moved < 0.6 * n  # prob 0.5 (windows whose horizon is all zero could not show it)
    # each epoch draws new shifts (same windows in order here, so only the shifts differ)
    fixed = BatchLoader(dm.tensors("cpu"), *dm.windows("train"), 32, level_shift=dm.level_shift)
    first, second = next(iter(fixed)), next(iter(fixed))
    assert torch.equal(first.series, second.series) and not torch.equal(first.target, second.target)
    for split in ("val", "test"):
        for x, r in zip(dm.loader(split), plain.loader(split)):
            assert torch.equal(x.target, r.target) and torch.equal(x.target_scale, r.target_scale)


def test_ddp_ranks_shift_each_window_as_one_process_does(dm):
    t, windows = dm.tensors("cpu"), dm.windows("train")
    single = BatchLoader(t, *windows, batch_size=16, shuffle=True, seed=5, level_shift=dm.level_shift)
    ranks = [BatchLoader(t, *windows, batch_size=8, shuffle=True, seed=5, rank=r, world_size=2,
                         level_shift=dm.level_shift) for r in range(2)]

    def targets(loaders):
        return {(int(s), int(d)): y for loader in loaders for b in loader
                for s, d, y in zip(b.series, b.decoder_start, b.target)}

    one, two = targets([single]), targets(ranks)
    assert len(two) >= len(one) - 1 and len(two) > 0  # the ranks drop at most the odd window out
    assert all(torch.equal(one[k], two[k]) for k in two)


@pytest.mark.parametrize("cfg, key", [
    ({"prob": 1.5}, "data.level_shift.prob"),
    ({"prob": "often"}, "data.level_shift.prob"),
    ({"prob": 0.3, "sigma": 0}, "data.level_shift.sigma"),
    ({"prob": 0.3, "span": 0}, "data.level_shift.span"),
    ({"prob": 0.3, "span": 2.5}, "data.level_shift.span"),
    ({"prob": 0.3, "spam": 3}, "unknown keys ['spam']"),
])
def test_bad_config_names_the_key(cfg, key):
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        TimeSeriesDataModule(**SYNTH, level_shift=cfg)


def test_span_longer_than_the_encoder_is_cut_to_it(caplog):
    # a sweep over data.max_encoder_length must not fail on its short encoders
    with caplog.at_level("WARNING", logger="fusioncast.data.augment"):
        shift = TimeSeriesDataModule(**SYNTH, level_shift={"prob": 0.3, "span": L + 5}).level_shift
    assert shift.span == L and "data.level_shift.span" in caplog.text
    _, back = shift.draw(4000, torch.Generator().manual_seed(3))
    assert int(back.max()) == L - 1  # shifts can start at the encoder's first step, never before


def test_off_by_default_and_at_prob_zero():
    assert TimeSeriesDataModule(**SYNTH).level_shift is None
    assert TimeSeriesDataModule(**SYNTH, level_shift={"prob": 0.0, "sigma": 0.15, "span": 99}).level_shift is None
