"""The dashboard at / in a real headless Chromium (Debian's, driven by Playwright's client; never
`playwright install`) against a real server with a store and an API token: no console error, every
series shown, the chart's median is POST /v1/forecast's for the same input, the monitoring numbers are
those computed from the actuals posted here, and a screenshot is taken."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serve.feedback_cases import Zones, post, store_url
from tests.serve.test_actuals import expected_monitoring
from tests.serve.test_server import Server

TOKEN = "dashboard-test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# set to a path to keep the screenshot (docs/images/dashboard.png is made so)
SCREENSHOT_ENV = "FUSIONCAST_DASHBOARD_SCREENSHOT"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: apt-get install chromium")
        pytest.skip("no chromium (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def zones(synthetic_bundle) -> Zones:
    return Zones(synthetic_bundle)


@pytest.fixture(scope="module")
def fed(zones, synthetic_bundle, tmp_path_factory):
    """A server whose store holds forecasts of every zone at a few origins and the actuals since."""
    tmp = tmp_path_factory.mktemp("dashboard")
    srv = Server(synthetic_bundle, tmp, "--store", store_url("sqlite", tmp), env={"FUSIONCAST_API_TOKEN": TOKEN})
    start = len(zones.times) - 2 * zones.H - 10
    answers, posted, last = [], [], None
    for k in range(10):
        origin = zones.times[start + k]
        last = zones.request(origin)
        r = post(srv.url, "/v1/forecast", last, headers=AUTH)
        assert r.status_code == 200, r.text
        answers.append(r.json())
        batch = zones.actuals([origin])
        assert post(srv.url, "/v1/actuals", {"actuals": batch}, headers=AUTH).status_code == 200
        posted += batch
    yield srv, answers, posted, last
    assert srv.stop(), srv.log.read_text()


def test_the_dashboard_in_chromium(fed, zones, tmp_path):
    from playwright.sync_api import sync_playwright

    srv, answers, posted, last = fed
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        response = page.goto(srv.url + "/")
        assert response.status == 200 and "script-src 'self'" in response.headers["content-security-policy"]
        # no token yet: the API answers 401 and the page asks for one
        page.wait_for_selector("#token-form:not([hidden])")
        assert all("401" in e for e in errors), errors
        errors.clear()
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        page.wait_for_selector("body[data-ready=true]", timeout=30000)
        assert page.evaluate("sessionStorage.getItem('fusioncast-token')") == TOKEN
        # every series, coloured by its forecast
        tiles = page.eval_on_selector_all("#grid .tile", "ts => ts.map(t => [t.dataset.series, t.dataset.demand])")
        assert sorted(t[0] for t in tiles) == zones.zones and all(t[1] for t in tiles)
        page.fill("#search", "003")
        assert page.eval_on_selector_all("#grid .tile", "ts => ts.map(t => t.dataset.series)") == ["zone_003"]
        page.click("#grid .tile[data-series=zone_003]")
        page.wait_for_selector("#chart[data-series=zone_003]")
        median = json.loads(page.get_attribute("#chart", "data-median"))
        # the same input (the zone's last request) through the API, now
        body = {"series": [s for s in last["series"] if s["id"] == "zone_003"]}
        want = post(srv.url, "/v1/forecast", body, headers=AUTH).json()["forecasts"][0]["quantiles"]["0.5"]
        assert median == pytest.approx(want, rel=1e-12) and len(median) == zones.H
        assert json.loads(page.get_attribute("#interpretation", "data-attention"))
        # monitoring: the numbers computed here from the posted actuals and the answers
        expected = expected_monitoring(answers, posted, ["0.1", "0.5", "0.9"])
        shown = page.eval_on_selector("#monitoring", "m => ({...m.dataset})")
        assert float(shown["mae"]) == pytest.approx(expected["overall"]["mae"], rel=1e-9)
        assert float(shown["coverage"]) == pytest.approx(expected["overall"]["coverage"], rel=1e-9)
        assert int(shown["pairs"]) == expected["overall"]["pairs"] and int(shown["actuals"]) == len(posted)
        hours = page.eval_on_selector_all("#monitoring tr[data-hour]",
                                          "rs => rs.map(r => [r.dataset.hour, +r.dataset.mae, +r.dataset.coverage])")
        assert [h[0][:13] for h in hours] == sorted(expected["by_hour"])
        for hour, mae, coverage in hours:
            assert mae == pytest.approx(expected["by_hour"][hour[:13]]["mae"], rel=1e-9)
            assert coverage == pytest.approx(expected["by_hour"][hour[:13]]["coverage"], rel=1e-9)
        busiest = page.eval_on_selector_all("#monitoring tr.busiest", "rs => rs.map(r => r.dataset.series)")
        assert busiest == sorted(expected["totals"], key=lambda s: -expected["totals"][s])[:5]
        card = page.inner_text("#card")
        assert "seasonal naive" in card and "adaptive" in card and "parity" in card.lower()
        assert f"{zones.times[0]} to {zones.times[-1]}" in card  # the training data's span
        page.fill("#search", "")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get(SCREENSHOT_ENV):
            Path(os.environ[SCREENSHOT_ENV]).write_bytes(shot.read_bytes())
        browser.close()
    assert errors == []


def test_the_dashboard_files_are_static_and_need_no_token(fed):
    srv = fed[0]
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        r = httpx.get(srv.url + path, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "default-src 'none'" in r.headers["content-security-policy"]
    html = httpx.get(srv.url + "/", timeout=30).text
    assert "<script>" not in html and "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert httpx.get(srv.url + "/static/../bundle.json", timeout=30).status_code == 404
    assert httpx.get(srv.url + "/static/nope.js", timeout=30).status_code == 404
    assert httpx.get(srv.url + "/v1/monitoring", timeout=30).status_code == 401
