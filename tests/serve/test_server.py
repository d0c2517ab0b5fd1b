"""The real server (fusioncast-serve in a subprocess, uvicorn on a loopback port) over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from fusioncast.predict import predict
from tests.conftest import compose_config, needs_shared
from tests.serve.cases import bodies, random_bodies
from tests.serve.test_requests import STALLION, forecast_table, requests_for


class Server:
    def __init__(self, bundle: Path, tmp: Path, *args: str, env: dict | None = None, preexec_fn=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "fusioncast.serve.cli", str(bundle), "--port", str(self.port), "--log-level",
               "warning", "--cache-dir", str(tmp / "ort-cache"), *args]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     env=None if env is None else {**os.environ, **env}, preexec_fn=preexec_fn)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready: {self.log.read_text()}")

    def post(self, body: bytes, **kw) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/forecast", content=body, headers={"content-type": "application/json"},
                          timeout=30, **kw)

    def stop(self) -> bool:
        """SIGTERM and wait: True when it shut down by itself (uvicorn re-raises the signal after a graceful
        shutdown, so the exit status is 0 or -SIGTERM; a kill after the timeout is not)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def stallion(real_bundle):
    return real_bundle("stallion")


@pytest.fixture(scope="module")
def server(stallion, tmp_path_factory):
    srv = Server(stallion.path, tmp_path_factory.mktemp("server"), "--max-series", "50", "--max-body-bytes",
                 "2000000", "--max-wait-ms", "2")
    yield srv
    assert srv.stop(), srv.log.read_text()


@pytest.fixture(scope="module")
def example(stallion) -> dict:
    return json.loads((stallion.path / "example_request.json").read_text())


def test_endpoints(server, example):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    model = httpx.get(f"{server.url}/v1/model").json()
    assert model["freq"] == "MS" and model["quantiles"] == [0.1, 0.5, 0.9] and model["max_prediction_length"] == 6
    assert model["schema"]["target"] == "volume" and "SKU_01" in model["vocabularies"]["sku"]
    answer = server.post(orjson.dumps(example))
    assert answer.status_code == 200, answer.text
    f = answer.json()["forecasts"][0]
    assert f["id"] == example["series"][0]["id"] and len(f["date"]) == 6
    assert set(f["quantiles"]) == {"0.1", "0.5", "0.9"}
    q = np.array([f["quantiles"][k] for k in ("0.1", "0.5", "0.9")])
    assert np.isfinite(q).all() and (np.diff(q, axis=0) >= 0).all()  # ordered: the model sorts them
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'fusioncast_requests_total{status="200"}' in metrics and "fusioncast_batch_series_bucket" in metrics
    assert httpx.get(f"{server.url}/docs").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    body = spec["paths"]["/v1/forecast"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("ForecastRequest") and body["example"] == example
    # interpretation on request: weights per variable and attention over the window
    interp = server.post(orjson.dumps({**example, "interpretation": True})).json()["forecasts"][0]["interpretation"]
    assert set(interp) == {"static_weights", "encoder_weights", "decoder_weights", "attention"}
    assert abs(sum(interp["encoder_weights"].values()) - 1) < 1e-4 and len(interp["attention"]) == 6


def test_served_forecast_equals_batch_scoring(server, stallion, tmp_path):
    df = pd.read_parquet(needs_shared("stallion.parquet"))
    keys = df[["agency", "sku"]].drop_duplicates().iloc[:: 35]
    table = forecast_table(df.merge(keys, on=["agency", "sku"]), STALLION, "2017-06-01")
    table.to_parquet(tmp_path / "input.parquet")
    cfg = compose_config("predict.yaml", tmp_path, [f"bundle={stallion.path}", f"input={tmp_path / 'input.parquet'}",
                                                   f"output={tmp_path / 'forecasts.parquet'}"])
    predict(cfg)
    scored = pd.read_parquet(tmp_path / "forecasts.parquet")
    L = STALLION.max_encoder_length
    series = requests_for(table, STALLION, L)
    # one request with every series, and each series alone (batched differently by the server)
    answers = [server.post(orjson.dumps({"series": series})).json()["forecasts"]]
    answers.append([server.post(orjson.dumps({"series": [s]})).json()["forecasts"][0] for s in series])
    for forecasts in answers:
        assert len(forecasts) == len(keys)
        for f in forecasts:
            rows = scored[(scored.agency == f["id"]["agency"]) & (scored.sku == f["id"]["sku"])]
            assert list(pd.to_datetime(f["date"])) == list(rows.date)
            for q in ("0.1", "0.5", "0.9"):
                np.testing.assert_allclose(f["quantiles"][q], rows[f"q{q}"].to_numpy(), rtol=1e-5, atol=1e-4)


def test_bad_input_gets_4xx_naming_series_and_field(server, example):
    for name, body, status, field in bodies(example, STALLION):
        r = server.post(body)
        assert r.status_code == status, (name, r.status_code, r.text)
        if field:
            assert r.json()["field"] == field and field in r.json()["detail"], (name, r.text)
    # size limits: the body, and the series per request
    r = server.post(b'{"series": [' + b" " * 2_000_001 + b"]}")
    assert r.status_code == 413, r.text
    r = server.post(orjson.dumps({"series": example["series"] * 51}))
    assert r.status_code == 413 and "at most 50" in r.json()["detail"]
    # a chunked body (no Content-Length) is counted as it arrives, and otherwise answered alike
    body = orjson.dumps(example)
    chunked = server.post((body[i:i + 1000] for i in range(0, len(body), 1000)))
    assert chunked.status_code == 200 and chunked.content == server.post(body).content
    r = server.post((b" " * 100_000 for _ in range(21)))
    assert r.status_code == 413 and "exceeds 2000000 bytes" in r.json()["detail"]
    # an unknown category and an unseen series are answered, with warnings naming them
    s = json.loads(json.dumps(example["series"][0]))
    s["id"] = {"agency": "Agency_99", "sku": "SKU_01"}
    s["history"]["easter_day"][0] = "maybe"
    r = server.post(orjson.dumps({"series": [s]}))
    assert r.status_code == 200, r.text
    warnings = " ".join(r.json()["forecasts"][0]["warnings"])
    assert "'Agency_99'" in warnings and "'maybe'" in warnings and "not seen in training" in warnings
    # nothing above was a 500 and the server still answers
    assert server.post(orjson.dumps(example)).status_code == 200
    assert 'status="500"' not in httpx.get(f"{server.url}/metrics").text


def test_random_mutations_never_get_a_500(server, example):
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:
        for body in random_bodies(example, 200, seed=1):
            r = client.post(f"{server.url}/v1/forecast", content=body)
            assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:300], body[:300])
            assert r.status_code == 200 or r.json()["detail"], r.text
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert {200, 400, 422} <= statuses.keys(), statuses
    assert server.post(orjson.dumps(example)).status_code == 200
    assert 'status="500"' not in httpx.get(f"{server.url}/metrics").text
    # no request reached the handler's last-resort 422 for exceptions no rule foresaw
    assert "unreadable request" not in server.log.read_text()


def test_a_client_leaving_mid_body_leaves_the_server_serving(server, example):
    body = orjson.dumps(example)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/forecast HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
        # closed half way: nothing to answer; the next client is served as usual
        assert server.post(body).status_code == 200
    assert "Traceback" not in server.log.read_text() and 'status="500"' not in httpx.get(f"{server.url}/metrics").text


async def _burst(url: str, body: bytes, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers={"content-type": "application/json"}) as client:
        return await asyncio.gather(*[client.post(f"{url}/v1/forecast", content=body) for _ in range(n)])


def test_concurrent_requests_are_batched(server, example):
    answers = asyncio.run(_burst(server.url, orjson.dumps(example), 48))
    assert all(r.status_code == 200 for r in answers)
    assert len({r.content for r in answers}) == 1  # batched or alone, the same answer
    metrics = httpx.get(f"{server.url}/metrics").text
    count = float(next(m for m in metrics.splitlines() if m.startswith("fusioncast_batch_series_count")).split()[-1])
    total = float(next(m for m in metrics.splitlines() if m.startswith("fusioncast_batch_series_sum")).split()[-1])
    assert total / count > 1.5  # several requests per model call


def test_burst_past_the_queue_bound_gets_503_then_recovers(stallion, example, tmp_path):
    # batches are held up to 200 ms to fill to 8, so 4 queued series fill the queue and the rest of the burst is refused
    srv = Server(stallion.path, tmp_path, "--max-queue", "4", "--max-batch-size", "8", "--max-wait-ms", "200")
    try:
        answers = asyncio.run(_burst(srv.url, orjson.dumps(example), 40))
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 503} and codes.count(200) >= 4, codes
        refused = next(r for r in answers if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "retry" in refused.json()["detail"]
        assert srv.post(orjson.dumps(example)).status_code == 200
    finally:
        assert srv.stop()


def test_graceful_shutdown_finishes_queued_requests(stallion, example, tmp_path):
    srv = Server(stallion.path, tmp_path, "--max-wait-ms", "1500", "--max-batch-size", "64")

    async def requests_then_sigterm():
        async def terminate():
            await asyncio.sleep(0.5)  # the requests are queued, waiting for the batch to fill
            srv.proc.send_signal(signal.SIGTERM)
        return (await asyncio.gather(_burst(srv.url, orjson.dumps(example), 5), terminate()))[0]

    answers = asyncio.run(requests_then_sigterm())
    assert [r.status_code for r in answers] == [200] * 5
    assert srv.proc.wait(30) in (0, -signal.SIGTERM)


def test_several_workers(stallion, example, tmp_path):
    srv = Server(stallion.path, tmp_path, "--workers", "2")
    try:
        answers = asyncio.run(_burst(srv.url, orjson.dumps(example), 16))
        assert all(r.status_code == 200 for r in answers)
        metrics = httpx.get(f"{srv.url}/metrics").text  # summed over the workers, whichever answers
        line = next(m for m in metrics.splitlines() if m.startswith('fusioncast_requests_total{status="200"}'))
        assert float(line.split()[-1]) == 16
    finally:
        assert srv.stop()


def test_server_imports_no_torch(stallion):
    code = ("import sys; from fusioncast.serve.app import ServeConfig, create_app; "
            f"create_app(ServeConfig(bundle={str(stallion.path)!r}, cache_dir=None)); "
            "bad = [m for m in ('torch', 'lightning', 'hydra') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "FUSIONCAST_CACHE": "/tmp"})
