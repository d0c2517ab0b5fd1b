"""The server as an attacker or a careless client meets it (real fusioncast-serve on loopback): forecasts
that overflow, content types, hosts, tokens, CORS, what /v1/model and /docs show, the OpenAPI document,
and schemathesis run against that document."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys

import httpx
import jsonschema_rs
import orjson
import pytest

from fusioncast.serve.bundle import write_meta
from fusioncast.serve.guard import TOKEN_ENV, load_tokens
from tests.serve.test_server import Server

TOKENS = ("tok-first-0123456789abcdef", "tok-second-0123456789abcdef")  # two: a rotation
TRAINING_PATHS = ("/home/trainer/runs/2024-05-01/checkpoints/epoch=3.ckpt", "/home/trainer/runs/2024-05-01")


@pytest.fixture(scope="module")
def stallion(real_bundle):
    return real_bundle("stallion")


@pytest.fixture(scope="module")
def bundle(stallion, tmp_path_factory):
    """The stallion bundle with the metrics a training run writes (their paths of the training machine)."""
    path = tmp_path_factory.mktemp("safety") / "bundle"
    shutil.copytree(stallion.path, path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["metrics"] = {"test": {"mae": 12.5}, "best_checkpoint": TRAINING_PATHS[0],
                       "ensemble": [{"seed": 0, "checkpoint": TRAINING_PATHS[0], "best_val_loss": 0.5}],
                       "run_dir": TRAINING_PATHS[1], "notes": [TRAINING_PATHS[1]]}
    write_meta(path, meta, list(meta["integrity"]["files"]))
    return path


@pytest.fixture(scope="module")
def example(stallion) -> dict:
    return json.loads((stallion.path / "example_request.json").read_text())


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    srv = Server(bundle, tmp_path_factory.mktemp("server"))
    yield srv
    assert srv.stop(), srv.log.read_text()


@pytest.fixture(scope="module")
def auth_server(bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "tokens").write_text("# current, then the one being retired\n" + "\n".join(TOKENS) + "\n")
    srv = Server(bundle, tmp, "--token-file", str(tmp / "tokens"), "--cors-origins", "https://app.example.com",
                 "--allowed-hosts", "127.0.0.1,forecast.example.com")
    yield srv
    assert srv.stop(), srv.log.read_text()


def post(url: str, body, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/forecast", content=body if isinstance(body, bytes) else orjson.dumps(body),
                      headers={"content-type": "application/json", **(headers or {})}, timeout=30)


def test_a_forecast_that_overflows_is_a_422_naming_series_and_input(server, example):
    """A series unseen in training with targets of +-3.3e38 (finite float32) is scaled by its own history:
    the forecast overflows float32. The answer names the series and the input, never a 200 with nulls."""
    req = copy.deepcopy(example)
    s = req["series"][0]
    s["id"] = {"agency": "Agency_99", "sku": "SKU_01"}
    s["history"]["volume"] = [3.3e38 if i % 2 else -3.3e38 for i in range(len(s["history"]["volume"]))]
    r = post(server.url, req)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["series"] == s["id"] and body["field"] == "history.volume"
    assert "not finite" in body["detail"] and "Agency_99" in body["detail"]
    # one bad series fails its request, not the next one
    assert post(server.url, example).status_code == 200


def test_post_bodies_must_be_json(server, example):
    body = orjson.dumps(example)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = httpx.post(f"{server.url}/v1/forecast", content=body, headers={"content-type": content_type})
        assert r.status_code == 415 and "application/json" in r.json()["detail"], (content_type, r.text)
    r = httpx.post(f"{server.url}/v1/forecast", content=body, headers={"content-type": ""})
    assert r.status_code == 415
    r = httpx.post(f"{server.url}/v1/forecast", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_only_allowed_hosts_are_served(server, example):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: its Host is refused; the probes stay open."""
    for path in ("/v1/model", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}", headers={"host": "rebind.attacker.example"}).status_code == 400, path
    assert post(server.url, example, {"host": "rebind.attacker.example"}).status_code == 400
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{server.url}{path}", headers={"host": "10.1.2.3:8000"}).status_code == 200
    for host in ("localhost", f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        assert httpx.get(f"{server.url}/v1/model", headers={"host": host}).status_code == 200, host


def test_cors_is_off_unless_configured(server, auth_server):
    preflight = {"origin": "https://app.example.com", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    r = httpx.options(f"{server.url}/v1/forecast", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in httpx.get(f"{server.url}/healthz", headers={"origin": "https://x.example"}).headers
    r = httpx.options(f"{auth_server.url}/v1/forecast", headers=preflight)  # no token needed to ask
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    r = httpx.options(f"{auth_server.url}/v1/forecast", headers={**preflight, "origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def test_bearer_token_guards_the_api_not_the_probes(auth_server, example):
    url = auth_server.url
    for path in ("/v1/model", "/metrics"):
        r = httpx.get(f"{url}{path}")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), (path, r.text)
        assert httpx.get(f"{url}{path}", headers={"authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert httpx.get(f"{url}{path}", headers={"authorization": TOKENS[0]}).status_code == 401  # no scheme
        for token in TOKENS:
            assert httpx.get(f"{url}{path}", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert post(url, example).status_code == 401
    assert post(url, example, {"authorization": f"bearer {TOKENS[1]}"}).status_code == 200
    # the token first, then the content type: an unauthenticated client learns nothing about the body
    r = httpx.post(f"{url}/v1/forecast", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 401
    r = httpx.post(f"{url}/v1/forecast", content=b"x", headers={"content-type": "text/plain",
                                                                "authorization": f"Bearer {TOKENS[0]}"})
    assert r.status_code == 415
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    assert httpx.get(f"{url}/v1/model", headers={"host": "forecast.example.com",
                                                "authorization": f"Bearer {TOKENS[0]}"}).status_code == 200
    spec = httpx.get(f"{url}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert spec["paths"]["/v1/forecast"]["post"]["security"] == [{"bearer": []}]
    model = httpx.get(f"{url}/v1/model", headers={"authorization": f"Bearer {TOKENS[0]}"}).json()
    assert model["server"]["auth"] is True and not any(t in json.dumps(model) for t in TOKENS)


def test_tokens_come_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert load_tokens(None) is None  # neither: no authentication
    monkeypatch.setenv(TOKEN_ENV, "  env-token-0123456789abcdef \n")
    assert load_tokens(None) == [b"env-token-0123456789abcdef"]
    (tmp_path / "t").write_text("file-token-0123456789abcdef\n")
    assert load_tokens(str(tmp_path / "t")) == [b"file-token-0123456789abcdef"]  # the file wins
    for text, message in [("\n# nothing\n", "holds no token"), ("short\n", "at least 16 characters")]:
        (tmp_path / "t").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_tokens(str(tmp_path / "t"))
    with pytest.raises(ValueError, match="token file"):
        load_tokens(str(tmp_path / "missing"))
    # the server refuses to start on a token file without a token: one line, exit 1
    bad = subprocess.run([sys.executable, "-m", "fusioncast.serve.cli", str(tmp_path), "--token-file",
                          str(tmp_path / "t")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("fusioncast-serve: an API token must have")


def test_model_info_shows_no_path_of_the_training_machine(server, bundle):
    text = httpx.get(f"{server.url}/v1/model").text
    model = json.loads(text)
    assert model["metrics"]["test"]["mae"] == 12.5 and model["metrics"]["ensemble"][0]["best_val_loss"] == 0.5
    for path in (*TRAINING_PATHS, str(bundle), str(server.log.parent)):
        assert path not in text, path
    assert not re.search(r'"(/|~|[A-Za-z]:\\\\)[^"]*"', text), "an absolute path in /v1/model"
    assert model["bundle_sha256"] == json.loads((bundle / "bundle.json").read_text())["integrity"]["sha256"]


def test_docs_are_served_from_the_package(server):
    """Swagger UI loads nothing from a third party: every script, style and image comes from this server."""
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
    refs += re.findall(r"""url:\s*["']([^"']+)["']""", page.text)
    assert refs and not [r for r in refs if re.match(r"(https?:)?//", r)], refs
    for ref in refs:
        asset = httpx.get(f"{server.url}{ref}")
        assert asset.status_code == 200 and asset.content, ref
    js = next(r for r in refs if r.endswith(".js"))
    assert "SwaggerUIBundle" in httpx.get(f"{server.url}{js}").text
    assert '"validatorUrl": null' in page.text  # its default would send the document to a public validator


def test_openapi_carries_this_bundles_request_schema(server, stallion, example):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    forecast = spec["paths"]["/v1/forecast"]["post"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(forecast["responses"])
    assert forecast["requestBody"]["content"]["application/json"]["example"] == example
    request = spec["components"]["schemas"]["ForecastRequest"]
    series = request["properties"]["series"]["items"]
    s = stallion.dm.schema
    history = series["properties"]["history"]
    assert set(history["required"]) == {s.time_col, s.target, *s.time_varying_known_categoricals,
                                        *s.time_varying_known_reals, *s.time_varying_unknown_reals}
    assert history["additionalProperties"] is False
    future = series["properties"]["future"]["properties"]
    assert all(future[c]["minItems"] == future[c]["maxItems"] == 6 for c in s.time_varying_known_reals)
    assert set(series["properties"]["id"]["anyOf"][0]["required"]) == {"agency", "sku"}
    # the example is valid by the document, and a body missing a column is not
    validator = jsonschema_rs.validator_for({**request, "components": spec["components"]})
    assert validator.is_valid(example)
    broken = copy.deepcopy(example)
    del broken["series"][0]["history"]["price_regular"]
    assert not validator.is_valid(broken)
    answer = spec["components"]["schemas"]["ForecastResponse"]
    answered = post(server.url, example).json()
    assert jsonschema_rs.validator_for({**answer, "components": spec["components"]}).is_valid(answered)


def _schemathesis(server, tmp_path, phases: str, max_examples: int) -> subprocess.CompletedProcess:
    config = tmp_path / "schemathesis.toml"
    # a body beyond the server's limits gets 413, also a rejection; generated bodies valid by the document
    # are mostly off the model's time grid (JSON Schema cannot say it): only the document's example must
    # be accepted
    config.write_text('[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "413", "415", "422"]\n'
                      '[phases.fuzzing.checks.positive_data_acceptance]\nenabled = false\n'
                      '[phases.coverage.checks.positive_data_acceptance]\nenabled = false\n')
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
           f"{server.url}/openapi.json", "--phases", phases, "--max-examples", str(max_examples), "--workers", "1",
           "--seed", "1", "--request-timeout", "30"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache goes there


def test_schemathesis_against_the_servers_own_document(server, tmp_path):
    """Every check schemathesis has (no 5xx, statuses, content types and bodies as documented, schema-
    violating bodies refused, the example accepted), on the example and a bounded fuzz of every operation."""
    run = _schemathesis(server, tmp_path, "examples,fuzzing", 10)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Examples" in run.stdout and "passed" in run.stdout
    assert 'status="500"' not in httpx.get(f"{server.url}/metrics").text


@pytest.mark.slow
def test_schemathesis_coverage_phase(server, tmp_path):
    """The systematic phase: boundary values and mutations of every field (~750 requests)."""
    run = _schemathesis(server, tmp_path, "coverage", 20)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
