"""POST /v1/actuals and the store behind it, against the real SQLite file, a real PostgreSQL server and a
real Redis server on loopback: two server processes see the same actuals, a restart loses none, a
forecast request may leave out the history the server holds, monitoring equals the numbers computed
here from the actuals posted, and bad actuals get a 4xx naming the field."""

from __future__ import annotations

import re
from collections import defaultdict

import httpx
import numpy as np
import pytest

from tests.serve.feedback_cases import Zones, post, quantiles, store_url
from tests.serve.test_server import Server

STORES = ["sqlite", "postgresql", "redis"]


@pytest.fixture(scope="module")
def zones(synthetic_bundle) -> Zones:
    return Zones(synthetic_bundle)


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    kind = request.param
    pg = request.getfixturevalue("postgres_url") if kind == "postgresql" else None
    rd = request.getfixturevalue("redis_url") if kind == "redis" else None
    return store_url(kind, tmp_path, pg, rd)


def test_two_workers_share_the_actuals_and_a_restart_loses_none(zones, synthetic_bundle, store, tmp_path):
    origin = zones.times[-3 * zones.H]
    history = zones.times[zones.times < origin][-zones.L:]
    actuals = zones.actuals(history)
    a = Server(synthetic_bundle, tmp_path, "--store", store)
    b = Server(synthetic_bundle, tmp_path, "--store", store)
    try:
        half = len(actuals) // 2
        for srv, part in ((a, actuals[:half]), (b, actuals[half:])):
            r = post(srv.url, "/v1/actuals", {"actuals": part})
            assert r.status_code == 200, r.text
            assert r.json()["stored"] == len(part)
        want = {z: [x["value"] for x in actuals if x["series"] == z] for z in zones.zones}
        for srv in (a, b):
            for z in zones.zones:
                got = httpx.get(f"{srv.url}/v1/series/{z}", timeout=30).json()["actuals"]
                assert got["value"] == want[z] and len(got["time"]) == zones.L
        full = post(a.url, "/v1/forecast", zones.request(origin))
        held = post(b.url, "/v1/forecast", zones.request(origin, history=False))  # "forecast every zone now"
        assert full.status_code == held.status_code == 200, held.text
        np.testing.assert_allclose(quantiles(held.json()), quantiles(full.json()), rtol=1e-6)
        assert a.stop()
        a = Server(synthetic_bundle, tmp_path, "--store", store)  # the same store after a restart
        for z in zones.zones:
            assert httpx.get(f"{a.url}/v1/series/{z}", timeout=30).json()["actuals"]["value"] == want[z]
        again = post(a.url, "/v1/forecast", zones.request(origin, history=False))
        np.testing.assert_allclose(quantiles(again.json()), quantiles(full.json()), rtol=1e-6)
    finally:
        assert a.stop() and b.stop(), a.log.read_text() + b.log.read_text()


def expected_monitoring(answers: list[tuple[dict, list]], posted: list[dict], quantile_keys: list[str]) -> dict:
    """The monitoring numbers from the forecast answers and the actuals posted, computed here."""
    value = {(x["series"], x["time"][:19]): x["value"] for x in posted}
    lo, med, hi = quantile_keys[0], "0.5", quantile_keys[-1]
    pairs = []
    for answer in answers:
        for f in answer["forecasts"]:
            for h, t in enumerate(f["timestamp"]):
                y = value.get((f["id"], t[:19]))
                if y is not None:
                    pairs.append((f["id"], t[:13], y, f["quantiles"][med][h], f["quantiles"][lo][h], f["quantiles"][hi][h]))

    def stats(rows):
        y, m, a, b = (np.array([r[k] for r in rows]) for k in (2, 3, 4, 5))
        return {"pairs": len(rows), "mae": np.abs(y - m).mean(), "coverage": ((a <= y) & (y <= b)).mean(),
                "wape": np.abs(y - m).sum() / np.abs(y).sum()}

    by_hour = defaultdict(list)
    by_series = defaultdict(list)
    for p in pairs:
        by_hour[p[1]].append(p)
        by_series[p[0]].append(p)
    totals = defaultdict(float)
    for x in posted:
        totals[x["series"]] += x["value"]
    return {"overall": stats(pairs), "by_hour": {h: stats(v) for h, v in by_hour.items()},
            "series": {s: stats(v) for s, v in by_series.items()}, "totals": dict(totals)}


@pytest.mark.parametrize("kind", ["sqlite"])
def test_monitoring_equals_the_numbers_of_the_posted_actuals(zones, synthetic_bundle, tmp_path, kind):
    srv = Server(synthetic_bundle, tmp_path, "--store", store_url(kind, tmp_path))
    try:
        start = int(np.flatnonzero(zones.times == zones.times[-3 * zones.H])[0])
        answers, posted = [], []
        for k in range(8):
            origin = zones.times[start + k]
            r = post(srv.url, "/v1/forecast", zones.request(origin))
            assert r.status_code == 200, r.text
            answers.append(r.json())
            batch = zones.actuals([origin])
            assert post(srv.url, "/v1/actuals", {"actuals": batch}).status_code == 200
            posted += batch
        got = httpx.get(f"{srv.url}/v1/monitoring", timeout=30).json()
        keys = sorted(answers[0]["forecasts"][0]["quantiles"], key=float)
        want = expected_monitoring(answers, posted, keys)
        assert got["actuals"] == len(posted) and got["interval"] == [float(keys[0]), float(keys[-1])]
        for name in ("pairs", "mae", "coverage", "wape"):
            assert got["overall"][name] == pytest.approx(want["overall"][name], rel=1e-9)
        assert [h["hour"][:13] for h in got["by_hour"]] == sorted(want["by_hour"])
        for h in got["by_hour"]:
            for name in ("pairs", "mae", "coverage"):
                assert h[name] == pytest.approx(want["by_hour"][h["hour"][:13]][name], rel=1e-9)
        worst = sorted(want["series"], key=lambda s: -want["series"][s]["wape"])[:5]
        assert [w["series"] for w in got["worst"]] == worst
        busiest = sorted(want["totals"], key=lambda s: -want["totals"][s])[:5]
        assert [b["series"] for b in got["busiest"]] == busiest
        assert [b["total"] for b in got["busiest"]] == pytest.approx([want["totals"][s] for s in busiest])
        metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
        mae = float(re.search(r"^fusioncast_monitor_mae (\S+)$", metrics, re.MULTILINE).group(1))
        assert mae == pytest.approx(want["overall"]["mae"], rel=1e-9)
    finally:
        assert srv.stop(), srv.log.read_text()


@pytest.fixture(scope="module")
def server(synthetic_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("actuals-server")
    srv = Server(synthetic_bundle, tmp, "--store", str(tmp / "store.sqlite3"), "--max-actuals", "50")
    yield srv
    assert srv.stop(), srv.log.read_text()


GOOD = {"series": "zone_000", "time": "2024-01-20T10:00:00", "value": 12.0}


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, None),
    ({"items": []}, 400, "actuals"),
    ({"actuals": []}, 422, "actuals"),
    ({"actuals": [GOOD] * 51}, 413, "actuals"),
    ({"actuals": [5]}, 422, "actuals[0]"),
    ({"actuals": [{**GOOD, "extra": 1}]}, 422, "actuals[0].extra"),
    ({"actuals": [{k: v for k, v in GOOD.items() if k != "value"}]}, 422, "actuals[0].value"),
    ({"actuals": [GOOD, {**GOOD, "value": "12"}]}, 422, "actuals[1].value"),
    ({"actuals": [{**GOOD, "value": True}]}, 422, "actuals[0].value"),
    ({"actuals": [{**GOOD, "value": None}]}, 422, "actuals[0].value"),
    (b'{"actuals": [{"series": "zone_000", "time": "2024-01-20T10:00:00", "value": NaN}]}', 400, None),  # not JSON
    ({"actuals": [{**GOOD, "time": "yesterday"}]}, 422, "actuals[0].time"),
    ({"actuals": [{**GOOD, "time": 1700000000}]}, 422, "actuals[0].time"),
    ({"actuals": [{**GOOD, "series": [1, 2]}]}, 422, "actuals[0].series"),
    ({"actuals": [{**GOOD, "series": {"borough": "x"}}]}, 422, "actuals[0].series"),
    ({"actuals": [{**GOOD, "inputs": {"nope": 1}}]}, 422, "actuals[0].inputs.nope"),
    ({"actuals": [{**GOOD, "inputs": {"temperature": "hot"}}]}, 422, "actuals[0].inputs.temperature"),
    ({"actuals": [{**GOOD, "inputs": [1]}]}, 422, "actuals[0].inputs"),
])
def test_bad_actuals_get_a_4xx_naming_the_field(server, body, status, field):
    r = post(server.url, "/v1/actuals", content=body if isinstance(body, bytes) else None,
             obj=None if isinstance(body, bytes) else body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["detail"]
    if field and field.startswith("actuals["):
        assert field.split(".")[0] in r.json()["detail"]


def test_nothing_of_a_refused_request_is_stored_and_other_mistakes_are_4xx(server, zones):
    t = "2024-01-21T03:00:00"
    r = post(server.url, "/v1/actuals", {"actuals": [{**GOOD, "time": t}, {**GOOD, "value": None}]})
    assert r.status_code == 422
    assert t not in httpx.get(f"{server.url}/v1/series/zone_000", timeout=30).json()["actuals"]["time"]
    r = httpx.post(f"{server.url}/v1/actuals", content=b'{"actuals": []}', headers={"content-type": "text/plain"})
    assert r.status_code == 415
    # a forecast that leaves out the history of a series the server holds nothing of
    body = zones.request(zones.times[-zones.H], history=False)
    body["series"][0]["id"] = "zone_999"
    r = post(server.url, "/v1/forecast", body)
    assert r.status_code == 422 and r.json()["field"] == "history" and "zone_999" in r.json()["detail"]
    # a history built from actuals without the inputs the model reads: the missing column is named
    assert post(server.url, "/v1/actuals", {"actuals": [{**GOOD, "series": "zone_001"}]}).status_code == 200
    r = post(server.url, "/v1/forecast", {"series": [{**zones.request(zones.times[-zones.H], history=False)["series"][1],
                                                      "future": None}]})
    assert r.status_code == 422 and r.json()["field"].startswith("history."), r.text


def test_a_server_without_a_store_says_so(synthetic_bundle, tmp_path):
    srv = Server(synthetic_bundle, tmp_path, "--store", "none")
    try:
        r = post(srv.url, "/v1/actuals", {"actuals": [GOOD]})
        assert r.status_code == 404 and "none" in r.json()["detail"]
        assert httpx.get(f"{srv.url}/v1/monitoring", timeout=30).status_code == 404
    finally:
        assert srv.stop()


def test_a_store_that_goes_away_gets_503_and_forecasts_go_on(zones, synthetic_bundle, tmp_path):
    from tests import redis_server

    try:
        own = redis_server.start()
    except (FileNotFoundError, RuntimeError) as e:
        pytest.skip(f"no Redis server: {e}")
    srv = Server(synthetic_bundle, tmp_path, "--store", own.url)
    try:
        origin = zones.times[-2 * zones.H]
        assert post(srv.url, "/v1/actuals", {"actuals": zones.actuals(zones.times[zones.times < origin][-zones.L:])}
                    ).status_code == 200
        assert post(srv.url, "/v1/forecast", zones.request(origin, history=False)).status_code == 200
        own.stop()
        r = post(srv.url, "/v1/forecast", zones.request(origin, history=False))
        assert r.status_code == 503 and "store" in r.json()["detail"]
        r = post(srv.url, "/v1/forecast", zones.request(origin))  # with its history: answered, fitted offsets
        assert r.status_code == 200, r.text
        assert post(srv.url, "/v1/actuals", {"actuals": [GOOD]}).status_code == 503
        assert httpx.get(f"{srv.url}/v1/monitoring", timeout=30).status_code == 503
        assert httpx.get(f"{srv.url}/metrics", timeout=30).status_code == 200
    finally:
        own.stop()
        assert srv.stop(), srv.log.read_text()


def test_the_default_store_where_it_cannot_be_made_is_left_out_a_named_one_must_open(synthetic_bundle, tmp_path,
                                                                                      monkeypatch):
    from fusioncast.serve.app import ServeConfig, create_app

    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache directory would go: nothing can be made under it
    monkeypatch.setenv("FUSIONCAST_CACHE", str(blocked))
    app = create_app(ServeConfig(bundle=str(synthetic_bundle), cache_dir=str(tmp_path / "ort")))
    assert app.state.config.store == "sqlite"
    with pytest.raises(ValueError, match="cannot open the SQLite store"):
        create_app(ServeConfig(bundle=str(synthetic_bundle), cache_dir=str(tmp_path / "ort"),
                               store=str(blocked / "actuals.sqlite3")))
