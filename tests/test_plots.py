"""Plots and report: valid PNGs drawn from the model's real forecasts, in train and eval runs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusioncast import evaluate
from fusioncast.evaluation.forecasts import predict_split
from fusioncast.postfit.calibration import Calibration
from fusioncast.reporting import plots, report
from fusioncast.train import train
from fusioncast.training.checkpoint import load_with_data
from tests.conftest import compose_config

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    from tests.conftest import TINY

    metrics = train(compose_config("train.yaml", out, TINY))
    return out, metrics


def test_training_writes_plots_and_report(trained):
    out, metrics = trained
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    # 3 synthetic zones: a fan chart each; static, encoder and decoder importance; attention
    assert names == ["attention.png", "decoder_variables.png", "encoder_variables.png", "forecast_00.png",
                     "forecast_01.png", "forecast_02.png", "static_variables.png"]
    for name in names:
        w, h = png_size(out / "plots" / name)
        assert 300 <= w <= 2000 and 200 <= h <= 2000, (name, w, h)
        assert (out / "plots" / name).stat().st_size > 5_000  # something was drawn

    text = (out / "report.md").read_text()
    assert f"| mae | {metrics['val']['mae']:.4g} | {metrics['baseline']['val']['mae']:.4g} |" in text
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(links) == len(names) and all((out / link).exists() for link in links)


def drawn_forecasts(module, dm, out: Path, monkeypatch, **kwargs) -> dict[str, dict]:
    """The lines of every fan chart write_plots saves, by file name, read back before the figure closes."""
    drawn, save = {}, plots.save

    def keep(fig, path):
        drawn[Path(path).name] = {line.get_label(): line.get_data() for line in fig.axes[0].get_lines()}
        return save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    report.write_plots(module, dm, out, **kwargs)
    monkeypatch.setattr(plots, "save", save)
    return drawn


def test_fan_chart_plots_the_models_forecast_and_the_real_actuals(trained, monkeypatch, tmp_path):
    _, metrics = trained
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    drawn = drawn_forecasts(module, dm, tmp_path, monkeypatch)

    p = predict_split(module, dm, "val")  # the evaluation's own forecasts of every val window
    median = list(module.hparams.quantiles).index(0.5)
    series, starts = report.first_windows(dm, "val")
    H, schema = dm.schema.max_prediction_length, dm.schema
    for i, (s, d) in enumerate(zip(series, starts)):
        lines = drawn[f"forecast_{i:02d}.png"]
        k = np.flatnonzero((p["series"] == s) & (p["decoder_start"] == d))[0]
        x, y = lines[plots.MEDIAN_LABEL]
        np.testing.assert_allclose(np.asarray(y, float), p["pred"][k, :, median], rtol=1e-5, atol=1e-4)

        # the actuals line is the raw table's target at the plotted timestamps
        ax_time, actual = lines[plots.ACTUAL_LABEL]
        assert pd.Timestamp(ax_time[-H]) == pd.Timestamp(x[0])
        rows = dm.frame[dm.frame[schema.group_ids[0]].astype(str) == dm.enc.keys[s]].set_index(schema.time_col)
        raw = rows.loc[pd.DatetimeIndex(ax_time), schema.target].to_numpy(float)
        np.testing.assert_allclose(np.asarray(actual, float), raw, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(actual, float)[-H:], p["target"][k], rtol=1e-5)

    # with a calibration the charts show the calibrated quantiles (what metrics and the bundle use)
    q = list(module.hparams.quantiles)
    cal = Calibration(q, np.full((H, len(q)), 0.5))
    shifted = drawn_forecasts(module, dm, tmp_path / "cal", monkeypatch, calibration=cal)
    for i, s in enumerate(series):
        plain = np.asarray(drawn[f"forecast_{i:02d}.png"][plots.MEDIAN_LABEL][1], float)
        moved = np.asarray(shifted[f"forecast_{i:02d}.png"][plots.MEDIAN_LABEL][1], float)
        np.testing.assert_allclose(moved - plain, 0.5 * dm.enc.target_scale[s, 1], rtol=1e-4)


def test_interpretation_names_and_weights(trained):
    _, metrics = trained
    module, dm = load_with_data(metrics["best_checkpoint"], device="cpu")
    interp = report.interpretation(module, dm, "val")
    assert list(interp["static"]) == ["zone", "borough", "population", "pickups_level", "pickups_scale"]
    assert list(interp["encoder"]) == ["holiday", "hour", "day_of_week", "weather", "pickups", "fare_multiplier",
                                       "temperature"]
    assert list(interp["decoder"]) == ["holiday", "hour", "day_of_week", "fare_multiplier"]
    for group in ("static", "encoder", "decoder"):
        assert sum(interp[group].values()) == pytest.approx(1.0, abs=1e-4)
    L, H = dm.schema.max_encoder_length, dm.schema.max_prediction_length
    assert interp["attention"].shape == (H, L + H)
    np.testing.assert_allclose(interp["attention"].sum(-1), 1.0, atol=1e-4)


def test_eval_writes_plots_and_report(trained, tmp_path):
    _, metrics = trained
    cfg = compose_config("eval.yaml", tmp_path, [f"ckpt_path={metrics['best_checkpoint']}"])
    evaluate.main(cfg)
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "report.md").exists()
    assert len(list((tmp_path / "plots").glob("forecast_*.png"))) == 3
