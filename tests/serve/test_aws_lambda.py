"""The Lambda handler, invoked in-process with API Gateway HTTP API and function URL events (payload format
2.0, deploy/aws/events/), answers exactly as the real HTTP server (uvicorn on loopback) with the same
bundle and settings: forecasts, 4xx for bad input, every other route."""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest

# the Lambda adapter comes with the `lambda` extra (.ci/run installs it)
pytest.importorskip("mangum")

from fusioncast.serve.app import ServeConfig  # noqa: E402
from fusioncast.serve.aws_lambda import (  # noqa: E402
    LAMBDA_DEFAULTS,
    RESPONSE_LIMIT,
    config_from_env,
    http_event,
)
from tests.conftest import ROOT, needs_shared  # noqa: E402
from tests.serve.cases import bodies, random_bodies  # noqa: E402
from tests.serve.test_requests import STALLION, forecast_table, requests_for  # noqa: E402
from tests.serve.test_server import Server  # noqa: E402

EVENTS = {name: json.loads((ROOT / "deploy" / "aws" / "events" / f"{name}.json").read_text())
          for name in ("http-api", "function-url")}
# (event source, body base64-encoded): AWS sends JSON bodies as text, and base64 when it takes them for binary
SHAPES = [("http-api", False), ("http-api", True), ("function-url", False), ("function-url", True)]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def stallion(real_bundle):
    return real_bundle("stallion")


@pytest.fixture(scope="module")
def handler(stallion, tmp_path_factory):
    """The module Lambda imports (fusioncast.serve.lambda_entry), its init run here in this process."""
    env = {"FUSIONCAST_BUNDLE": str(stallion.path),
           "FUSIONCAST_SERVE_CONFIG": json.dumps({"cache_dir": str(tmp_path_factory.mktemp("lambda-ort"))})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        sys.modules.pop("fusioncast.serve.lambda_entry", None)
        entry = importlib.import_module("fusioncast.serve.lambda_entry")
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    yield entry.handler
    entry.handler.close()


@pytest.fixture(scope="module")
def server(stallion, handler, tmp_path_factory):
    """fusioncast-serve with the settings the Lambda handler runs with."""
    c = handler.config
    srv = Server(stallion.path, tmp_path_factory.mktemp("lambda-server"), "--max-wait-ms", str(c.max_wait_ms),
                 "--inline-max-series", str(c.inline_max_series), "--max-batch-size", str(c.max_batch_size),
                 "--max-series", str(c.max_series), "--max-body-bytes", str(c.max_body_bytes))
    yield srv
    assert srv.stop(), srv.log.read_text()


@pytest.fixture(scope="module")
def example(stallion) -> dict:
    return json.loads((stallion.path / "example_request.json").read_text())


def invoke(handler, shape: tuple[str, bool], method: str, path: str, body: bytes | None = None, query: str = "",
           headers: dict | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of the handler's answer to this request, checked to be a valid
    payload-2.0 response (what API Gateway and function URLs turn into the HTTP response)."""
    source, encoded = shape
    event = http_event(EVENTS[source], method, path, body, encoded=encoded, query=query, headers=headers)
    r = json.loads(json.dumps(handler(event, None)))  # as the Lambda runtime sends it on
    assert isinstance(r["statusCode"], int) and isinstance(r["body"], str) and isinstance(r["isBase64Encoded"], bool)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in r["headers"].items())
    content = base64.b64decode(r["body"]) if r["isBase64Encoded"] else r["body"].encode()
    return r["statusCode"], r["headers"].get("content-type", ""), content


def over_http(server, method: str, path: str, body: bytes | None = None, query: str = "",
              headers: dict | None = None) -> tuple[int, str, bytes]:
    r = httpx.request(method, f"{server.url}{path}" + (f"?{query}" if query else ""), content=body,
                      headers=headers, timeout=30)
    return r.status_code, r.headers.get("content-type", ""), r.content


def test_forecasts_equal_the_http_servers(handler, server, example):
    df = pd.read_parquet(needs_shared("stallion.parquet"))
    keys = df[["agency", "sku"]].drop_duplicates().iloc[::70]
    table = forecast_table(df.merge(keys, on=["agency", "sku"]), STALLION, "2017-06-01")
    series = requests_for(table, STALLION, STALLION.max_encoder_length)
    requests = [example, {**example, "interpretation": True}, {"series": series}, {"series": series[:1]}]
    for i, request in enumerate(requests):
        body = orjson.dumps(request)
        expected = over_http(server, "POST", "/v1/forecast", body, headers=JSON)
        assert expected[0] == 200, expected
        for shape in SHAPES:
            got = invoke(handler, shape, "POST", "/v1/forecast", body, headers=JSON)
            assert got == expected, (i, shape, got[:2])
    answer = orjson.loads(expected[2])
    assert [f["id"] for f in answer["forecasts"]] == [s["id"] for s in series[:1]]


def test_bad_input_gets_the_same_4xx(handler, server, example):
    cases = [(name, body) for name, body, _, _ in bodies(example, STALLION)]
    cases += [(f"random {i}", body) for i, body in enumerate(random_bodies(example, 40, seed=3))]
    cases += [("not UTF-8", b'{"series": "\xff\xfe"}'), ("empty body", b"")]
    statuses = set()
    for i, (name, body) in enumerate(cases):
        expected = over_http(server, "POST", "/v1/forecast", body, headers=JSON)
        got = invoke(handler, SHAPES[i % len(SHAPES)], "POST", "/v1/forecast", body, headers=JSON)
        assert got == expected, (name, got, expected)
        statuses.add(got[0])
    assert statuses <= {200, 400, 413, 422} and {400, 422} <= statuses, statuses
    # a body past --max-body-bytes
    big = b'{"series": [' + b" " * handler.config.max_body_bytes + b"]}"
    got = invoke(handler, ("function-url", True), "POST", "/v1/forecast", big, headers=JSON)
    assert got == over_http(server, "POST", "/v1/forecast", big, headers=JSON) and got[0] == 413


def test_every_other_route_answers_alike(handler, server):
    requests = [("GET", "/healthz", ""), ("GET", "/readyz", ""), ("GET", "/v1/model", ""),
                ("GET", "/v1/model", "verbose=1&x=%20y"), ("GET", "/openapi.json", ""), ("GET", "/docs", ""),
                ("GET", "/no/such/route", ""), ("POST", "/v1/model", ""), ("GET", "/v1/forecast", ""),
                ("DELETE", "/healthz", "")]
    for method, path, query in requests:
        expected = over_http(server, method, path, query=query)
        for shape in SHAPES[::2]:
            assert invoke(handler, shape, method, path, query=query) == expected, (method, path, shape)
    assert over_http(server, "GET", "/no/such/route")[0] == 404
    assert over_http(server, "GET", "/v1/forecast")[0] == 405
    # /metrics: this instance's own counters, in the same format
    status, ctype, text = invoke(handler, SHAPES[0], "GET", "/metrics")
    assert (status, ctype) == over_http(server, "GET", "/metrics")[:2]
    assert b'fusioncast_requests_total{status="200"}' in text and b'status="500"' not in text


def test_an_answer_past_lambdas_limit_is_a_413(handler, example):
    body = orjson.dumps({"series": example["series"] * 20, "interpretation": True})
    status, _, content = invoke(handler, SHAPES[2], "POST", "/v1/forecast", body, headers=JSON)
    assert status == 200
    handler.response_limit = len(content) - 1
    try:
        status, _, content = invoke(handler, SHAPES[2], "POST", "/v1/forecast", body, headers=JSON)
    finally:
        handler.response_limit = RESPONSE_LIMIT
    assert status == 413 and "fewer series" in orjson.loads(content)["detail"]


def test_the_api_token_is_required_on_lambda_too(stallion, example, tmp_path, monkeypatch):
    """With $FUSIONCAST_API_TOKEN set, the handler applies the server's token auth: 401 without the bearer
    token (and with a wrong one), 200 with it; the probes need none."""
    from fusioncast.serve.aws_lambda import LambdaHandler

    token = "lambda-test-token-0123456789"
    monkeypatch.setenv("FUSIONCAST_API_TOKEN", token)
    monkeypatch.setenv("FUSIONCAST_BUNDLE", str(stallion.path))
    monkeypatch.setenv("FUSIONCAST_SERVE_CONFIG", json.dumps({"cache_dir": str(tmp_path / "ort")}))
    guarded = LambdaHandler(config_from_env())
    try:
        body = orjson.dumps(example)
        for shape in SHAPES[::2]:
            status, _, answer = invoke(guarded, shape, "POST", "/v1/forecast", body, headers=JSON)
            assert status == 401 and b"Bearer" in answer
            wrong = {**JSON, "authorization": "Bearer " + "x" * len(token)}
            assert invoke(guarded, shape, "POST", "/v1/forecast", body, headers=wrong)[0] == 401
            assert invoke(guarded, shape, "GET", "/v1/model")[0] == 401
            good = {**JSON, "authorization": f"Bearer {token}"}
            status, _, answer = invoke(guarded, shape, "POST", "/v1/forecast", body, headers=good)
            assert status == 200 and orjson.loads(answer)["forecasts"]
            assert invoke(guarded, shape, "GET", "/healthz")[0] == 200
    finally:
        guarded.close()


def test_config_from_env():
    c = config_from_env({"LAMBDA_TASK_ROOT": "/var/task"})
    defaults = ServeConfig(bundle="/var/task/bundle")
    # every batch inline, no wait: one request at a time per execution environment
    lambda_defaults = {k: v for k, v in LAMBDA_DEFAULTS.items() if k in asdict(defaults)}
    assert asdict(c) == {**asdict(defaults), **lambda_defaults, "inline_max_series": defaults.max_series}
    assert c.max_wait_ms == 0
    c = config_from_env({"FUSIONCAST_BUNDLE": "/b", "FUSIONCAST_SERVE_CONFIG": '{"max_series": 50, "threads": 2}'})
    assert (c.bundle, c.max_series, c.inline_max_series, c.threads) == ("/b", 50, 50, 2)
    c = config_from_env({"FUSIONCAST_SERVE_CONFIG": '{"inline_max_series": 1, "max_wait_ms": 2}'})
    assert (c.inline_max_series, c.max_wait_ms) == (1, 2)
    with pytest.raises(ValueError, match="FUSIONCAST_SERVE_CONFIG is not JSON"):
        config_from_env({"FUSIONCAST_SERVE_CONFIG": "{threads: 2}"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        config_from_env({"FUSIONCAST_SERVE_CONFIG": "[2]"})
    with pytest.raises(ValueError, match="horizon"):
        config_from_env({"FUSIONCAST_SERVE_CONFIG": '{"horizon": 3}'})


def test_sam_template_lints_and_wires_the_image_to_the_handler():
    from cfnlint.api import lint_file
    from cfnlint.decode import decode

    path = ROOT / "deploy" / "aws" / "template.yaml"
    assert [str(m) for m in lint_file(path)] == []
    template, errors = decode(str(path))
    assert not errors, errors
    fn = template["Resources"]["ForecastFunction"]["Properties"]
    dockerfile = (ROOT / "Dockerfile.lambda").read_text()
    # the function runs the image's handler, which exists (not imported here: its import is the cold start)
    (command,) = fn["ImageConfig"]["Command"]
    assert f'CMD ["{command}"]' in dockerfile and command.endswith(".handler")
    assert importlib.util.find_spec(command.rsplit(".", 1)[0]) is not None
    assert "FROM public.ecr.aws/lambda/python:3.12" in dockerfile and '".[lambda]"' in dockerfile
    assert fn["PackageType"] == "Image" and fn["FunctionUrlConfig"]["AuthType"] == {"Ref": "UrlAuthType"}
    params = template["Parameters"]
    assert params["UrlAuthType"]["Default"] == "AWS_IAM" and params["ApiToken"]["NoEcho"] is True
    # the environment the handler reads: the default settings parse
    env = fn["Environment"]["Variables"]
    assert env["FUSIONCAST_SERVE_CONFIG"] == {"Ref": "ServeConfig"}
    config_from_env({"FUSIONCAST_SERVE_CONFIG": params["ServeConfig"]["Default"]})
    assert "FUSIONCAST_API_TOKEN" in env


def test_a_fresh_process_answers_alike_without_torch_or_pyarrow(handler, stallion, example, tmp_path):
    """The cold-start benchmark's own run (module-level init in a new interpreter), with pyarrow made
    unimportable as the Lambda image has it: forecasts, 4xx and routes answered as by this process."""
    spec = importlib.util.spec_from_file_location("bench_lambda", ROOT / "scripts" / "bench_lambda_cold_start.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    requests = [("POST", "/v1/forecast", orjson.dumps(example)),
                ("POST", "/v1/forecast", orjson.dumps({**example, "interpretation": True})),
                *[("POST", "/v1/forecast", body) for _, body, _, _ in bodies(example, STALLION)],
                ("GET", "/v1/model", None), ("GET", "/readyz", None), ("GET", "/nope", None)]
    events = []
    for i, (method, path, body) in enumerate(requests):
        events.append(http_event(EVENTS["function-url"], method, path, body, encoded=i % 2 == 1, headers=JSON))
        (tmp_path / f"event{i}.json").write_text(json.dumps(events[-1]))
    files = [tmp_path / f"event{i}.json" for i in range(len(events))]
    r = bench.cold_start(Path(sys.executable), stallion.path, files[0], tmp_path / "cache", block=("pyarrow",),
                         more_events=tuple(files))
    assert not {"torch", "lightning", "hydra", "pyarrow", "uvicorn"} & set(r["modules"]), r["modules"]
    assert all(r[phase] > 0 for phase in ("import", "ort", "init", "first")) and r["maxrss_mb"] > 0
    for (method, path, _), event, got in zip(requests, events, r["answers"]):
        assert got == json.loads(json.dumps(handler(event, None))), (method, path, got["statusCode"])
    assert {a["statusCode"] for a in r["answers"]} >= {200, 400, 404, 422}
