"""The HTTP server: FastAPI app around a bundle, its request parser and the micro-batcher. No torch.

    POST /v1/forecast   one or many series → quantile forecasts (docs/reference/http-api.md)
    GET  /v1/model      the model's schema, vocabularies, metrics
    GET  /healthz       the process is up          GET /readyz   model loaded, not shutting down
    GET  /metrics       Prometheus                 GET /docs     OpenAPI

Client mistakes get 4xx with a message naming series and field (400 bad JSON, 413 too large,
422 invalid content); a full queue gets 503 with Retry-After. Bodies are read and written with
orjson rather than through pydantic, which would cost more than the model itself.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi

from fusioncast.data.inference import empty_inputs
from fusioncast.serve.api import ErrorResponse, ForecastRequest, ForecastResponse
from fusioncast.serve.batcher import MicroBatcher, QueueFull
from fusioncast.serve.bundle import EXAMPLE_FILE, Bundle, Model
from fusioncast.serve.metrics import ServerMetrics
from fusioncast.serve.requests import ParsedRequest, RequestError, RequestParser

log = logging.getLogger("fusioncast.serve")
ENV_CONFIG = "FUSIONCAST_SERVE_CONFIG"  # the config, as JSON, of the app each worker process builds


@dataclass
class ServeConfig:
    bundle: str
    variant: str = "fp32"            # or int8 when the bundle kept a quantised model
    threads: int = 1                 # onnxruntime intra-op threads per worker
    max_batch_size: int = 64         # series per model call
    max_wait_ms: float = 0.0         # extra wait for a batch to fill (0: only what queued during the last call)
    inline_max_series: int = 1       # batches this small run in the event loop, not the model thread
    max_queue: int = 1024            # series waiting before 503
    max_series: int = 1000           # series per request (413 beyond)
    max_body_bytes: int = 8 << 20    # request body size (413 beyond)
    retry_after_s: int = 1
    cache_dir: str | None = None     # the optimised graph's cache (default ~/.cache/fusioncast/ort)


def _dumps(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(_dumps(obj), status, headers, media_type="application/json")


async def _read_body(receive, headers: list[tuple[bytes, bytes]], limit: int) -> bytes | None:
    """The request body from the ASGI `receive` channel within `limit` bytes (413 beyond); None if the
    client went away before sending it."""
    length = next((v for k, v in headers if k == b"content-length"), None)
    if length is not None:
        if not length.isdigit():
            raise RequestError("Content-Length is not a number", status=400)
        if int(length) > limit:
            raise RequestError(f"the body has {int(length)} bytes; this server takes at most {limit}", status=413)
    chunks, size = [], 0
    while True:  # chunked transfer too: count as it comes
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the body exceeds {limit} bytes", status=413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class ForecastFastPath:
    """Pure ASGI middleware: POST /v1/forecast goes straight to `handle` (receive, headers → status, JSON
    bytes, extra headers; None when the client left), past Starlette's routing, request and response
    objects and FastAPI's dependency solving, which cost ~10 % of a single-series request's server CPU.
    Every other request, and the lifespan, goes through the app; the route stays declared there (for
    the OpenAPI docs) and calls the same `handle`."""

    def __init__(self, app, handle):
        self.app, self.handle = app, handle

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/forecast" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        result = await self.handle(receive, scope["headers"])
        if result is None:  # nobody is left to answer
            return
        status, payload, headers = result
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                *headers]})
        await send({"type": "http.response.body", "body": payload})


def _interpretation(outputs: list[np.ndarray], i: int, variables: dict) -> dict:
    static, encoder, decoder, attention = (o[i] for o in outputs[1:5])
    return {
        "static_weights": dict(zip(variables["static"], static.tolist())),
        "encoder_weights": dict(zip(variables["encoder"], encoder.mean(0).tolist())),
        "decoder_weights": dict(zip(variables["decoder"], decoder.mean(0).tolist())),
        "attention": attention.tolist(),
    }


def create_app(config: ServeConfig) -> FastAPI:
    """The app for one bundle: the model loads (and is warmed up) before the first request is taken."""
    bundle = Bundle.load(config.bundle)
    model = Model(bundle, variant=config.variant, threads=config.threads, cache_dir=config.cache_dir)
    parser = RequestParser(bundle.pp, max_series=config.max_series)
    metrics = ServerMetrics()
    batcher = MicroBatcher(model, config.max_batch_size, config.max_wait_ms, config.max_queue,
                           inline_max_series=config.inline_max_series, on_batch=metrics.batch,
                           on_queue=metrics.queued.set)
    time_col, quantile_keys = bundle.pp.schema.time_col, [f"{q:g}" for q in bundle.quantiles]
    variables = bundle.meta.get("variables") or {}
    model_block = {"name": bundle.meta.get("name"), "version": bundle.meta.get("version"),
                   "sha256": bundle.meta["model"]["sha256"], "variant": config.variant}
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for n in (1, config.max_batch_size):  # first calls allocate: pay for them before taking traffic
            model(empty_inputs(bundle.pp, n))
        # The start-up objects (FastAPI, numpy, pandas, the bundle) never die: move them out of the
        # collector's reach, so that a full collection between requests scans only what requests made.
        gc.collect()
        gc.freeze()
        await batcher.start()
        state["ready"] = True
        log.info("serving %s (%s, sha256 %s) with max batch %d, max wait %.1f ms, queue %d", bundle.path,
                 config.variant, model_block["sha256"][:12], config.max_batch_size, config.max_wait_ms,
                 config.max_queue)
        yield
        state["ready"] = False  # /readyz says so while queued requests finish
        await batcher.stop()

    app = FastAPI(title="fusioncast", version=str(bundle.meta.get("version")), lifespan=lifespan,
                  description=f"Quantile forecasts of the '{bundle.meta.get('name')}' TFT bundle "
                  f"(freq {bundle.pp.freq}, {bundle.pp.schema.max_prediction_length} steps ahead).")
    app.state.batcher, app.state.bundle, app.state.config = batcher, bundle, config

    def answer(parsed: ParsedRequest, outputs: list[np.ndarray]) -> Response:
        q = np.ascontiguousarray(outputs[0].transpose(0, 2, 1))  # (series, quantile, step): contiguous rows
        forecasts = []
        for i, sid in enumerate(parsed.ids):
            f = {"id": sid, time_col: parsed.times[i], "quantiles": dict(zip(quantile_keys, q[i]))}
            if parsed.warnings[i]:
                f["warnings"] = parsed.warnings[i]
            if parsed.interpretation and len(outputs) == 5:
                f["interpretation"] = _interpretation(outputs, i, variables)
            forecasts.append(f)
        return _dumps({"model": model_block, "forecasts": forecasts})

    async def handle(receive, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, list] | None:
        """POST /v1/forecast: (status, JSON body, extra headers) for the request body read from `receive`;
        None when the client went away before sending it."""
        start = time.perf_counter()
        extra: list = []
        try:
            body = await _read_body(receive, headers, config.max_body_bytes)
            if body is None:
                return None
            try:
                parsed = parser.parse(body)
            except RequestError:
                raise
            except Exception as e:  # input no rule foresaw: still the client's request, never a 500
                log.exception("unreadable request")
                raise RequestError(f"could not read the request ({type(e).__name__}: {e})") from e
            outputs = await batcher.submit(parsed.inputs, len(parsed.ids), parsed.interpretation)
            status, payload = 200, answer(parsed, outputs)
            metrics.forecasts.inc(len(parsed.ids))
        except RequestError as e:
            status, payload = e.status, _dumps(e.body())
        except QueueFull as e:
            status, payload = 503, _dumps({"detail": f"overloaded: {e}; retry later", "series": None, "field": None})
            extra = [(b"retry-after", str(config.retry_after_s).encode())]
        metrics.requests.labels(str(status)).inc()
        metrics.latency.observe(time.perf_counter() - start)
        return status, payload, extra

    @app.post("/v1/forecast", response_model=None, responses={
        200: {"model": ForecastResponse}, 400: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
        422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def forecast(request: Request) -> Response:
        """Quantile forecasts for one or many series (see the request schema)."""
        # ForecastFastPath answers these requests before routing; this is the same answer through FastAPI
        result = await handle(request.receive, request.scope["headers"])
        if result is None:
            return Response(status_code=400)
        status, payload, extra = result
        return Response(payload, status, {k.decode(): v.decode() for k, v in extra}, media_type="application/json")

    summary = {**bundle.summary(), "variant": config.variant,
               "server": {k: v for k, v in asdict(config).items() if k not in ("bundle", "cache_dir")}}

    @app.get("/v1/model")
    async def model_info() -> Response:
        """The model's schema, vocabularies, lengths, quantiles, training metrics and parity check."""
        return _json(summary)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = state["ready"]
        return _json({"status": "ready" if ready else "not ready", "queued_series": batcher.queued},
                     200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    example_file = bundle.path / EXAMPLE_FILE
    example = json.loads(example_file.read_text()) if example_file.is_file() else None

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            request_schema = ForecastRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["ForecastRequest"] = request_schema
            content = {"schema": {"$ref": "#/components/schemas/ForecastRequest"}}
            if example:
                content["example"] = example
            schema["paths"]["/v1/forecast"]["post"]["requestBody"] = {"required": True,
                                                                      "content": {"application/json": content}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(ForecastFastPath, handle=handle)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the config comes in FUSIONCAST_SERVE_CONFIG (set by the CLI)."""
    return create_app(ServeConfig(**json.loads(os.environ[ENV_CONFIG])))
