"""AWS Lambda: the same app as `fusioncast-serve`, behind API Gateway (HTTP API) or a Lambda function URL.

Mangum turns each event (payload format 2.0, or 1.0 from a REST API or an ALB) into one ASGI request to
the app of `create_app` and its answer back into the response Lambda returns, so every route the app
has is answered exactly as over HTTP. Two things differ from Mangum's defaults:

- **The lifespan runs once per execution environment**, here, at init: Mangum's `lifespan="auto"`
  would start and stop the app around every invocation (a model warm-up and a batcher restart per
  request). The app's lifespan is entered in a private event loop that every invocation reuses, so
  the batcher's task survives between invocations.
- **The batcher runs every batch inline.** Lambda hands an execution environment one request at a
  time, so nothing ever queues behind a call: the model thread would only add two thread wake-ups.

Lambda's own limits: a synchronous invocation's response is at most 6 MB, so a larger answer becomes a
413 here (fewer series, or no interpretation) rather than an invocation error from AWS.

The entry point is `fusioncast.serve.lambda_entry.handler`; configuration from the environment
(`config_from_env`).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs

import orjson
from mangum import Mangum
from mangum.protocols import LifespanCycle

from fusioncast.serve.app import ENV_CONFIG, ServeConfig, create_app

log = logging.getLogger("fusioncast.serve")

ENV_BUNDLE = "FUSIONCAST_BUNDLE"  # the bundle directory; default: `bundle` in the function's code directory
# what a synchronous invocation may return (AWS's documented quota, 6 MB)
RESPONSE_LIMIT = 6 * 1024 * 1024
# ServeConfig fields that default otherwise on Lambda (inline_max_series: max_series, below): one request
# at a time per environment, so no wait for a batch to fill; and any Host, as requests only reach the
# function through AWS's endpoints (function URL, API Gateway, a custom domain), whatever their name; and no
# actuals store unless one is named (a SQLite file would live and die with one execution environment:
# name a postgresql:// or redis:// store shared by all of them)
LAMBDA_DEFAULTS = {"max_wait_ms": 0.0, "allowed_hosts": ["*"], "store": "none"}


def config_from_env(environ: dict[str, str] | None = None) -> ServeConfig:
    """The app's config on Lambda: the bundle from $FUSIONCAST_BUNDLE (default $LAMBDA_TASK_ROOT/bundle),
    every other ServeConfig field from $FUSIONCAST_SERVE_CONFIG (JSON, as for the CLI's workers), over
    the Lambda defaults (LAMBDA_DEFAULTS; every batch inline)."""
    environ = os.environ if environ is None else environ
    try:
        given = json.loads(environ.get(ENV_CONFIG) or "{}")
    except ValueError as e:
        raise ValueError(f"${ENV_CONFIG} is not JSON: {e}") from None
    if not isinstance(given, dict):
        raise ValueError(f"${ENV_CONFIG} must be a JSON object of ServeConfig fields, not {given!r}")
    settings = asdict(ServeConfig(bundle=os.path.join(environ.get("LAMBDA_TASK_ROOT", "."), "bundle")))
    del settings["inline_max_series"]  # default: max_series, whatever that is set to
    settings.update(LAMBDA_DEFAULTS)
    settings.update(given)
    settings.setdefault("inline_max_series", settings["max_series"])
    if environ.get(ENV_BUNDLE):
        settings["bundle"] = environ[ENV_BUNDLE]
    try:
        config = ServeConfig(**settings)
    except TypeError as e:  # an unknown key: say which
        raise ValueError(f"${ENV_CONFIG}: {e}") from None
    return config


class LambdaHandler:
    """`handler(event, context) -> response` for one app; the model is loaded and warmed up here, once."""

    def __init__(self, config: ServeConfig, response_limit: int = RESPONSE_LIMIT):
        self.config, self.response_limit = config, response_limit
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # Mangum runs each request in the current loop: this one
        self.app = create_app(config)
        self._lifespan = LifespanCycle(self.app, "on")
        self._lifespan.__enter__()  # the app's startup: warm-up, batcher; a failure fails the init
        self._mangum = Mangum(self.app, lifespan="off")

    @classmethod
    def from_env(cls) -> "LambdaHandler":
        return cls(config_from_env())

    def __call__(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        asyncio.set_event_loop(self.loop)
        response = self._mangum(event, context)
        size = len(response.get("body") or "")
        if size > self.response_limit:
            log.warning("answer of %d bytes refused: Lambda returns at most %d", size, self.response_limit)
            body = {"detail": f"the answer has {size} bytes; AWS Lambda returns at most {self.response_limit}: "
                              "ask for fewer series per request, or leave out the interpretation",
                    "series": None, "field": None}
            response = {"statusCode": 413, "headers": {"content-type": "application/json"},
                        "body": orjson.dumps(body).decode(), "isBase64Encoded": False}
        return response

    def close(self) -> None:
        """The app's shutdown (the batcher finishes), then the loop; Lambda itself just freezes the process."""
        asyncio.set_event_loop(self.loop)
        self._lifespan.__exit__(None, None, None)
        self.loop.close()


def http_event(template: dict, method: str, path: str, body: bytes | None = None, *, encoded: bool = False,
               query: str = "", headers: dict[str, str] | None = None) -> dict:
    """The payload-2.0 event (HTTP API or function URL) that AWS sends for one HTTP request, from one of
    deploy/aws/events/*.json: method, raw path and query, headers (lower-cased, as AWS gives them; the
    body's length set) and the body, base64-encoded as AWS does for a binary or non-UTF-8 one."""
    event = copy.deepcopy(template)
    event["rawPath"], event["rawQueryString"] = path, query
    event["requestContext"]["http"].update(method=method, path=path)
    event["headers"] = {**event["headers"], **{k.lower(): v for k, v in (headers or {}).items()},
                        "content-length": str(len(body or b""))}
    event.pop("body", None)
    if query:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in parse_qs(query).items()}
    if body:
        try:
            text = None if encoded else body.decode()
        except UnicodeDecodeError:
            text = None
        event["body"] = base64.b64encode(body).decode() if text is None else text
        event["isBase64Encoded"] = text is None
    else:
        event["isBase64Encoded"] = False
    return event
