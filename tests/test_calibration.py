"""Conformal calibration: lifts a miscalibrated model's coverage to nominal on held-out data; off is a no-op;
the adaptive method follows a shift after validation, using only actuals already observed."""

from __future__ import annotations

import numpy as np
import pytest

from fusioncast.evaluation.forecasts import evaluate_model
from fusioncast.postfit.calibration import Calibration, cross_fit
from fusioncast.train import train
from fusioncast.training.checkpoint import load_with_data

Q = [0.1, 0.5, 0.9]
Z90 = 1.2815515655446004  # standard normal 90 % quantile


def forecasts(n: int, H: int, true_sigma, believed_sigma, seed: int, bias: float = 0.0):
    """Series with very different scales; the model's quantiles assume `believed_sigma` (in units of the
    series scale), the actuals have `true_sigma` (both may grow with the horizon step)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 50.0, n)
    center = rng.normal(0, 10, (n, 1))
    true_sigma, believed_sigma = np.broadcast_to(true_sigma, (H,)), np.broadcast_to(believed_sigma, (H,))
    y = center + scale[:, None] * (bias + true_sigma * rng.standard_normal((n, H)))
    pred = center[..., None] + scale[:, None, None] * believed_sigma[None, :, None] * np.array([-Z90, 0, Z90])
    return pred, y, np.ones((n, H), bool), scale


def coverage(pred, y):
    return float(((y >= pred[..., 0]) & (y <= pred[..., 2])).mean())


@pytest.mark.parametrize("believed", [0.4, 2.5])  # intervals far too narrow, then far too wide
def test_conformal_lifts_coverage_to_nominal_on_held_out_data(believed):
    fit_set = forecasts(2000, 6, 1.0, believed, seed=0)
    held_out = forecasts(2000, 6, 1.0, believed, seed=1)
    before = coverage(held_out[0], held_out[1])
    assert abs(before - 0.8) > 0.15  # really miscalibrated
    cal = Calibration.fit(*fit_set, Q)
    after = coverage(cal.apply(held_out[0], held_out[3]), held_out[1])
    assert abs(after - 0.8) < 0.03
    # each quantile, not only the interval, is calibrated: ~10 % of actuals below P10, ~90 % below P90
    calibrated = cal.apply(held_out[0], held_out[3])
    assert np.mean(held_out[1] < calibrated[..., 0]) == pytest.approx(0.1, abs=0.02)
    assert np.mean(held_out[1] < calibrated[..., 2]) == pytest.approx(0.9, abs=0.02)


def test_per_horizon_offsets_follow_uncertainty_growing_with_the_horizon():
    H = 8
    sigma = np.linspace(0.5, 2.0, H)  # the model believes 1.0 at every step
    fit_set, held_out = forecasts(3000, H, sigma, 1.0, seed=2), forecasts(3000, H, sigma, 1.0, seed=3)
    per_h = Calibration.fit(*fit_set, Q, per_horizon=True).apply(held_out[0], held_out[3])
    pooled = Calibration.fit(*fit_set, Q, per_horizon=False).apply(held_out[0], held_out[3])
    cov_h = [coverage(per_h[:, h:h + 1], held_out[1][:, h:h + 1]) for h in range(H)]
    cov_pooled = [coverage(pooled[:, h:h + 1], held_out[1][:, h:h + 1]) for h in range(H)]
    assert max(abs(c - 0.8) for c in cov_h) < 0.04
    assert max(abs(c - 0.8) for c in cov_pooled) > 0.1  # one offset for all steps cannot fit both ends


def test_median_is_kept_quantiles_stay_ordered_and_the_dict_round_trips():
    pred, y, mask, scale = forecasts(500, 4, 1.0, 0.3, seed=4, bias=0.5)
    cal = Calibration.fit(pred, y, mask, scale, Q)
    out = cal.apply(pred, np.stack([np.zeros_like(scale), scale], -1))  # (N, 2) target scale works too
    assert np.array_equal(out[..., 1], pred[..., 1])
    assert (np.diff(out, axis=-1) >= 0).all()
    again = Calibration.from_dict(cal.to_dict())
    assert np.allclose(again.apply(pred, scale), out)
    shifted = Calibration.fit(pred, y, mask, scale, Q, adjust_median=True).apply(pred, scale)
    assert abs(np.mean(y < shifted[..., 1]) - 0.5) < abs(np.mean(y < pred[..., 1]) - 0.5)


def test_cross_fit_is_out_of_sample_and_unobserved_points_are_ignored():
    pred, y, mask, scale = forecasts(1000, 3, 1.0, 0.4, seed=5)
    mask[::7] = False
    y = np.where(mask, y, 1e9)  # filler values where unobserved must not move the offsets
    out = cross_fit(pred, y, mask, scale, Q, folds=5)
    assert abs(((y >= out[..., 0]) & (y <= out[..., 2]))[mask].mean() - 0.8) < 0.04
    assert Calibration.from_dict(None) is None and Calibration.from_dict({"method": "none"}) is None


def in_time_order(n: int, series: int = 1):
    """(series, decoder_start) of stride-1 windows of `series` series, n windows each."""
    return np.repeat(np.arange(series), n), np.tile(np.arange(n), series)


@pytest.mark.parametrize("after", [0.5, 2.0])  # the forecast period is calmer, then wilder, than validation
def test_adaptive_follows_a_shift_that_fixed_offsets_miss(after):
    H = 4
    fit_set = forecasts(2000, H, 1.0, 1.0, seed=6)
    shifted = forecasts(4000, H, after, 1.0, seed=7)
    cal = Calibration.fit(*fit_set, Q, method="adaptive", step=0.01)
    static = cal.apply(shifted[0], shifted[3])
    assert abs(coverage(static, shifted[1]) - 0.8) > 0.1  # the shift defeats offsets fitted once
    tracked = cal.track(static, shifted[1], shifted[2], shifted[3], *in_time_order(2000, 2))
    settled = np.r_[1000:2000, 3000:4000]  # each series' second half, once the offsets have moved
    assert abs(coverage(tracked[settled], shifted[1][settled]) - 0.8) < 0.03
    assert abs(coverage(tracked, shifted[1]) - 0.8) < abs(coverage(static, shifted[1]) - 0.8) / 2
    assert np.array_equal(tracked[..., 1], static[..., 1])  # the median is not tracked
    assert (np.diff(tracked, axis=-1) >= 0).all()
    # the tracking step is stored per horizon step and survives the dict round trip
    again = Calibration.from_dict(cal.to_dict())
    assert again.method == "adaptive" and again.step.shape == (H,) and (again.step > 0).all()
    assert np.allclose(again.track(static, shifted[1], shifted[2], shifted[3], *in_time_order(2000, 2)), tracked)
    with pytest.raises(ValueError, match="does not track"):
        Calibration.fit(*fit_set, Q).track(static, shifted[1], shifted[2], shifted[3], *in_time_order(2000, 2))


def test_shared_width_carries_a_calmer_period_from_the_short_steps_to_the_long_ones():
    # 48 steps: step h's own actuals arrive h + 1 windows late and its per-step offset moves slowly, so
    # after a shift (here: errors halve at every step) the far steps stay too wide for long
    H, n = 48, 400
    fit_set = forecasts(3000, H, 1.0, 1.0, seed=11)
    calm = forecasts(2 * n, H, 0.5, 1.0, seed=12)
    order = in_time_order(n, 2)
    far = np.s_[:, H // 2:]
    per_step = Calibration.fit(*fit_set, Q, method="adaptive", step=0.01, width_step=0.0)
    shared = Calibration.fit(*fit_set, Q, method="adaptive", step=0.01, width_step=0.05)
    static = per_step.apply(calm[0], calm[3])
    assert np.array_equal(static, shared.apply(calm[0], calm[3]))  # the fitted offsets are the same
    alone = per_step.track(static, calm[1], calm[2], calm[3], *order)
    both = shared.track(static, calm[1], calm[2], calm[3], *order)
    gap_alone = abs(coverage(alone[far], calm[1][far]) - 0.8)
    gap_both = abs(coverage(both[far], calm[1][far]) - 0.8)
    assert gap_alone > 0.08 and gap_both < gap_alone / 2
    assert np.array_equal(both[..., 1], static[..., 1]) and (np.diff(both, axis=-1) >= 0).all()
    again = Calibration.from_dict(shared.to_dict())
    assert again.width_step == 0.05 and np.array_equal(again.track(static, calm[1], calm[2], calm[3], *order), both)
    for bad in (-0.1, "fast", float("nan")):
        with pytest.raises(ValueError, match="calibration.width_step"):
            Calibration.fit(*fit_set, Q, method="adaptive", width_step=bad)


@pytest.mark.parametrize("width_step", [0.0, 0.05])
def test_adaptive_uses_only_actuals_observed_before_each_window(width_step):
    H, n = 5, 300
    pred, y, mask, scale = forecasts(n, H, 1.0, 0.5, seed=8)
    cal = Calibration.fit(pred, y, mask, scale, Q, method="adaptive", step=0.05, width_step=width_step)
    series, starts = in_time_order(n)
    base = cal.track(pred, y, mask, scale, series, starts)
    h = 3  # the actual of window k's step 3 is at time k + 3: windows starting at k + 4 on may see it
    k = 100 + int(np.argmax(y[100:, h] > pred[100:, h, 2]))  # an actual above every quantile...
    moved = y.copy()
    moved[k, h] = pred[k, h, 0] - 100.0 * scale[k]  # ...moved below every quantile
    out = cal.track(pred, moved, mask, scale, series, starts)
    changed = np.flatnonzero(np.abs(out - base).max(axis=(1, 2)) > 0)
    assert changed.min() == k + h + 1
    # an unobserved actual teaches nothing, whatever its filler value
    hidden = mask.copy()
    hidden[k, h] = False
    assert np.array_equal(cal.track(pred, moved, hidden, scale, series, starts),
                          cal.track(pred, y, hidden, scale, series, starts))
    # series are tracked separately: another series' errors do not move this one's offsets
    two = cal.track(np.concatenate([pred, pred]), np.concatenate([y, moved]), np.concatenate([mask, mask]),
                    np.concatenate([scale, scale]), *in_time_order(n, 2))
    assert np.array_equal(two[:n], base)


def test_calibration_none_is_a_no_op_in_evaluation(cfg_train):
    metrics = train(cfg_train)
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    plain = evaluate_model(module, dm)
    none = evaluate_model(module, dm, calibration={"method": "none"})
    assert none == plain and none["calibration"]["method"] == "none" and "served" not in none
    conformal = evaluate_model(module, dm, calibration={"method": "conformal", "per_horizon": True})
    assert conformal["uncalibrated"]["test"] == plain["test"]
    # the median gets no offset; its MAE may still move where a barely trained model's quantiles cross
    # and are re-sorted, so the exact property is checked on the offsets, not on the MAE
    offsets = np.asarray(conformal["calibration"]["offsets"])
    assert offsets.shape == (dm.schema.max_prediction_length, 3)
    assert (offsets[:, 1] == 0).all() and (offsets[:, [0, 2]] != 0).any()
    adaptive = evaluate_model(module, dm, calibration={"method": "adaptive", "per_horizon": True, "step": 0.05})
    assert adaptive["served"]["test"] == conformal["test"]  # before tracking: the conformal forecasts, as served
    assert conformal["served"]["test"] == conformal["test"]  # a conformal calibration serves what it is scored on
    # the summary says which coverage is served and which is tracked
    assert adaptive["coverage_p10_p90"]["test"] == {"raw": plain["test"]["coverage_p10_p90"],
                                                   "served": conformal["test"]["coverage_p10_p90"],
                                                   "tracked": adaptive["test"]["coverage_p10_p90"]}
    assert conformal["coverage_p10_p90"]["test"]["tracked"] is None
    assert adaptive["calibration"]["served"] == {"applies": "offsets", "tracks": True,
                                                 "tracked_by": ["POST /v1/actuals", "fusioncast-predict replay=N"]}
    assert adaptive["calibration"]["method"] == "adaptive" and len(adaptive["calibration"]["step"]) == offsets.shape[0]
    assert adaptive["test"]["coverage_p10_p90"] != conformal["test"]["coverage_p10_p90"]
