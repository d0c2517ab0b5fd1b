"""Online calibration in the server: for a bundle trained with calibration=adaptive, posting the actuals of
a held-out period one step at a time moves the served quantiles exactly as Calibration.track moves
them over the same windows and actuals (evaluation's and `replay`'s tracker)."""

from __future__ import annotations

import numpy as np
import pytest

from fusioncast.serve.bundle import Model
from fusioncast.serve.requests import RequestParser
from tests.serve.feedback_cases import Zones, post, quantiles, store_url
from tests.serve.test_server import Server

STEPS = 30


@pytest.fixture(scope="module")
def zones(synthetic_bundle) -> Zones:
    return Zones(synthetic_bundle)


def test_served_offsets_follow_the_posted_actuals_as_calibration_track(zones, synthetic_bundle, tmp_path):
    model = Model(zones.bundle, cache=False)
    assert model.calibration is not None and model.calibration.method == "adaptive"
    parser = RequestParser(zones.bundle.pp)
    s = zones.schema
    first = len(zones.times) - STEPS - zones.H
    srv = Server(synthetic_bundle, tmp_path, "--store", store_url("sqlite", tmp_path))
    served, base, scales, targets = [], [], [], []
    try:
        for k in range(STEPS):
            origin = zones.times[first + k]
            body = zones.request(origin)
            r = post(srv.url, "/v1/forecast", body)
            assert r.status_code == 200, r.text
            served.append(quantiles(r.json()))
            parsed = parser.parse_obj(body)
            base.append(model(parsed.inputs)[0])  # the fitted offsets applied: what tracking starts from
            scales.append(parsed.inputs["target_scale"])
            horizon = zones.times[first + k:first + k + zones.H]
            table = zones.df[zones.df[s.time_col].isin(horizon)].pivot(index="zone", columns=s.time_col,
                                                                        values=s.target)
            targets.append(table.loc[[f["id"] for f in r.json()["forecasts"]]].to_numpy())
            assert post(srv.url, "/v1/actuals", {"actuals": zones.actuals([origin])}).status_code == 200
    finally:
        assert srv.stop(), srv.log.read_text()
    Z = len(zones.zones)
    # windows in (step, zone) order; Calibration.track orders each zone's by decoder start
    pred, got = np.concatenate(base), np.concatenate(served)
    tracked = model.calibration.track(pred, np.concatenate(targets).astype(np.float32), np.ones(pred.shape[:2], bool),
                                      np.concatenate(scales), np.tile(np.arange(Z), STEPS),
                                      np.repeat(np.arange(STEPS), Z))
    np.testing.assert_allclose(got, tracked, rtol=1e-5, atol=1e-4)
    # and tracking did move them: the last windows are served away from the fitted offsets
    assert np.abs(got[-Z:] - pred[-Z:]).max() > 0.05
    assert np.array_equal(got[:Z], pred[:Z]) or np.allclose(got[:Z], pred[:Z], rtol=1e-6)
