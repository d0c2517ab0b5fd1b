"""The HTTP server: a FastAPI app around one bundle. No torch.

    POST /v1/forecast   one or many series → quantile forecasts (docs/reference/http-api.md)
    GET  /v1/model      the model's schema, vocabularies, metrics
    POST /v1/actuals    observed values, kept in the store (serve/feedback.py): monitoring, online
                        calibration, and forecasts of series whose history the server holds
    GET  /v1/monitoring error and interval coverage by hour, worst and busiest series
    GET  /v1/series     what the store knows of each series  GET /v1/series/{id}  one series
    GET  /              the dashboard (static files of serve/static/, no CDN)
    GET  /healthz       the process is up          GET /readyz   model loaded, not shutting down
    GET  /metrics       Prometheus text            GET /docs     Swagger UI of /openapi.json (served offline)

Client mistakes get 4xx with a message naming series and field (400 bad JSON, 401 no valid token,
413 too large, 415 not JSON, 422 invalid content or a forecast that is not finite); a full queue
gets 503 with Retry-After. Every route sits behind serve/guard.py's middleware (hosts, token,
content type, CORS); connection limits are the HTTP server's (serve/connections.py).
"""

from __future__ import annotations

import gc
import json
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse

from fusioncast.data.inference import empty_inputs
from fusioncast.serve import openapi
from fusioncast.serve.bundle import Bundle, BundleError, Model
from fusioncast.serve.dashboard import add_dashboard
from fusioncast.serve.feedback import Feedback
from fusioncast.serve.fields import RequestError
from fusioncast.serve.forecast import ForecastFastPath, ForecastService, dumps, read_body
from fusioncast.serve.guard import LOOPBACK_HOSTS, load_tokens, secure
from fusioncast.serve.monitoring import gauges
from fusioncast.serve.store import StoreError
from fusioncast.serve.store_open import open_store

log = logging.getLogger("fusioncast.serve")
ENV_CONFIG = "FUSIONCAST_SERVE_CONFIG"  # the config, as JSON, of the app each worker process builds
# the settings /v1/model reports (not the files: paths of this machine are nobody's business)
PUBLIC_SETTINGS = ("threads", "max_batch_size", "max_wait_ms", "inline_max_series", "max_queue", "max_series",
                   "max_body_bytes", "retry_after_s")


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
    bundle_sha256: str | None = None  # refuse to serve a bundle with another digest
    token_file: str | None = None    # bearer tokens, one per line; else $FUSIONCAST_API_TOKEN; neither: no auth
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_HOSTS))  # Host headers served ("*": any)
    cors_origins: list[str] = field(default_factory=list)  # origins browsers may call from (none: CORS off)
    docs: bool = True                # /docs and /openapi.json
    # where actuals and issued forecasts are kept: 'sqlite' (a file in the cache directory, one per bundle),
    # a SQLite file path, postgresql://..., redis://..., or 'none' (no /v1/actuals, no monitoring)
    store: str = "sqlite"
    monitor_hours: float = 168.0     # the monitoring window, back from the latest actual
    max_actuals: int = 100_000       # actuals per POST /v1/actuals (413 beyond)
    dashboard: bool = True           # the page at /


def _new_app(bundle: Bundle, config: ServeConfig, lifespan) -> FastAPI:
    """The FastAPI app, its Swagger UI (and ReDoc) served from files shipped in fastapi-offline, no CDN."""
    kwargs = dict(title="fusioncast", version=str(bundle.meta.get("version")), lifespan=lifespan,
                  description=f"Quantile forecasts of the '{bundle.meta.get('name')}' TFT bundle "
                  f"(freq {bundle.pp.freq}, {bundle.pp.schema.max_prediction_length} steps ahead).",
                  swagger_ui_parameters={"validatorUrl": None})  # its default sends the document to a public site
    if not config.docs:
        return FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **kwargs)
    from fastapi_offline import FastAPIOffline

    return FastAPIOffline(**kwargs)


def _lifespan(service: ForecastService, config: ServeConfig, state: dict):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for n in (1, config.max_batch_size):  # first calls allocate: pay for them before taking traffic
            service.model(empty_inputs(service.bundle.pp, n))
        # The start-up objects (FastAPI, numpy, pandas, the bundle) never die: move them out of the
        # collector's reach, so that a full collection between requests scans only what requests made.
        gc.collect()
        gc.freeze()
        await service.batcher.start()
        if service.feedback is not None:
            await service.feedback.start()
        state["ready"] = True
        log.info("serving %s (%s, bundle sha256 %s) with max batch %d, max wait %.1f ms, queue %d, auth %s",
                 service.bundle.path, config.variant, str(service.bundle.digest)[:12], config.max_batch_size,
                 config.max_wait_ms, config.max_queue, "on" if state["auth"] else "off")
        yield
        state["ready"] = False  # /readyz says so while queued requests finish
        await service.batcher.stop()
        if service.feedback is not None:
            await service.feedback.stop()

    return lifespan


def _json(obj, status: int = 200) -> Response:
    return Response(dumps(obj), status, media_type="application/json")


def _routes(app: FastAPI, service: ForecastService, summary: dict, state: dict) -> None:
    @app.post("/v1/forecast", response_model=None)
    async def forecast(request: Request) -> Response:
        """Quantile forecasts for one or many series (see the request schema)."""
        # ForecastFastPath answers these requests before routing; this is the same answer through FastAPI
        result = await service.handle(request.receive, request.scope["headers"])
        if result is None:
            return Response(status_code=400)
        status, payload, extra = result
        return Response(payload, status, {k.decode(): v.decode() for k, v in extra}, media_type="application/json")

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
        return _json({"status": "ready" if ready else "not ready", "queued_series": service.batcher.queued},
                     200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        text = service.metrics.render()
        if service.feedback is not None:
            try:
                text += gauges(await service.feedback.monitoring(cached=True))
            except Exception:  # a store that is down takes the monitoring gauges, not the server's own
                log.exception("monitoring gauges")
        return Response(text, media_type=service.metrics.content_type)

    feedback = service.feedback

    async def answer(work) -> Response:
        if feedback is None:
            return _json({"detail": "this server keeps no actuals (started with store 'none')", "series": None,
                          "field": None}, 404)
        try:
            return _json(await work())
        except RequestError as e:
            return _json(e.body(), e.status)
        except Exception:  # the store failed: the server's trouble, said as such, never a bare 500
            log.exception("store")
            return _json({"detail": "the actuals store is unavailable; retry later", "series": None, "field": None},
                         503)

    @app.post("/v1/actuals")
    async def actuals(request: Request) -> Response:
        """Observed values: {"actuals": [{"series", "time", "value", "inputs"?}]} (docs/reference/http-api.md)."""
        async def work():
            body = await read_body(request.receive, request.scope["headers"], service.max_body_bytes)
            if body is None:
                raise RequestError("the client left before sending the body", status=400)
            return await feedback.post_actuals(body)
        return await answer(work)

    @app.get("/v1/monitoring")
    async def monitoring() -> Response:
        """Error and interval coverage by hour over the actuals received; the worst and busiest series."""
        return await answer(feedback.monitoring if feedback is not None else None)

    @app.get("/v1/series")
    async def series_overview() -> Response:
        """Each series the store knows: its latest actual and the mean median of its latest forecast."""
        return await answer(feedback.overview if feedback is not None else None)

    @app.get("/v1/series/{key:path}")
    async def series_detail(key: str) -> Response:
        """One series: its stored actuals, its last forecast request, its latest issued forecast."""
        return await answer(lambda: feedback.series(key))


def _example(bundle: Bundle) -> dict | None:
    path = bundle.example_path  # covered by the integrity record, or not used
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: not a JSON request ({e})") from None


def _feedback(bundle: Bundle, model: Model, config: ServeConfig):
    """The store of ServeConfig.store (None for 'none'); the default SQLite file is one per bundle digest, and
    where it cannot be made the server runs without a store (a store that was named must open)."""
    root = Path(os.environ.get("FUSIONCAST_CACHE", Path.home() / ".cache" / "fusioncast"))
    default = root / "actuals" / f"{bundle.meta.get('name') or 'bundle'}-{str(bundle.digest)[:16]}.sqlite3"
    try:
        return open_store(config.store, default)
    except StoreError as e:
        if (config.store or "sqlite") == "sqlite":  # the default, where it cannot be (a read-only home): go without
            log.warning("%s: serving without an actuals store (--store names another)", e)
            return None
        raise ValueError(str(e)) from None


def create_app(config: ServeConfig) -> FastAPI:
    """The app for one bundle: the bundle is checked whole and the model loaded (and warmed up) before the
    first request is taken. Raises BundleError for a bundle that cannot be served, ValueError for a
    token file that gives no token."""
    bundle = Bundle.load(config.bundle, expect_sha256=config.bundle_sha256)
    model = Model(bundle, variant=config.variant, threads=config.threads, cache_dir=config.cache_dir)
    tokens = load_tokens(config.token_file)
    feedback = _feedback(bundle, model, config)
    service = ForecastService(bundle, model, max_series=config.max_series, max_body_bytes=config.max_body_bytes,
                              max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                              max_queue=config.max_queue, inline_max_series=config.inline_max_series,
                              retry_after_s=config.retry_after_s, variant=config.variant)
    if feedback is not None:
        service.feedback = Feedback(feedback, service.parser, model.calibration, bundle.quantiles,
                                    monitor_hours=config.monitor_hours, max_actuals=config.max_actuals)
    state = {"ready": False, "auth": tokens is not None}
    app = _new_app(bundle, config, _lifespan(service, config, state))
    app.state.batcher, app.state.bundle, app.state.config = service.batcher, bundle, config
    settings = asdict(config)
    summary = {**bundle.summary(), "variant": config.variant,
               "server": {k: settings[k] for k in PUBLIC_SETTINGS} | {"auth": tokens is not None}}
    _routes(app, service, summary, state)
    if config.dashboard:
        add_dashboard(app)
    example = _example(bundle)

    def document() -> dict:
        if app.openapi_schema is None:
            base = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = openapi.document(base, bundle, max_series=config.max_series, example=example,
                                                  auth=tokens is not None, max_actuals=config.max_actuals)
        return app.openapi_schema

    app.openapi = document
    app.add_middleware(ForecastFastPath, handle=service.handle)
    secure(app, tokens=tokens, allowed_hosts=config.allowed_hosts, cors_origins=config.cors_origins)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the config comes in FUSIONCAST_SERVE_CONFIG (set by the CLI)."""
    return create_app(ServeConfig(**json.loads(os.environ[ENV_CONFIG])))
