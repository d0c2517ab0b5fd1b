"""POST /v1/forecast: the request body read within its limit, parsed, queued for the micro-batcher, and
the model's outputs turned into the answer (or the 4xx/503 that tells why there is none). No torch.

`ForecastFastPath` answers these requests as pure ASGI, past Starlette's routing, request and response
objects and FastAPI's dependency solving, a noticeable share of a single-series request's CPU.
Bodies are read and written with orjson rather than through pydantic, which would cost more than the
model itself.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import orjson

from fusioncast.data.inference import nonfinite_windows, overflow_message
from fusioncast.serve.batcher import MicroBatcher, QueueFull
from fusioncast.serve.bundle import Bundle, Model
from fusioncast.serve.fields import RequestError, shown
from fusioncast.serve.prometheus import ServerMetrics
from fusioncast.serve.requests import ParsedRequest, RequestParser
from fusioncast.serve.store import StoreUnavailable

log = logging.getLogger("fusioncast.serve")

Answer = tuple[int, bytes, list]  # status, JSON body, extra headers


def dumps(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(detail: str) -> bytes:
    """The body of an error that names no series or field (the ErrorResponse shape)."""
    return dumps({"detail": detail, "series": None, "field": None})


async def read_body(receive, headers: list[tuple[bytes, bytes]], limit: int) -> bytes | None:
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


def _interpretation(outputs: list[np.ndarray], i: int, variables: dict) -> dict:
    static, encoder, decoder, attention = (o[i] for o in outputs[1:5])
    return {
        "static_weights": dict(zip(variables["static"], static.tolist())),
        "encoder_weights": dict(zip(variables["encoder"], encoder.mean(0).tolist())),
        "decoder_weights": dict(zip(variables["decoder"], decoder.mean(0).tolist())),
        "attention": attention.tolist(),
    }


class ForecastService:
    """The model, its request parser, the micro-batcher and the metrics of one bundle; `handle` answers a
    forecast request."""

    def __init__(self, bundle: Bundle, model: Model, *, max_series: int, max_body_bytes: int, max_batch_size: int,
                 max_wait_ms: float, max_queue: int, inline_max_series: int, retry_after_s: int, variant: str,
                 feedback=None):
        self.bundle, self.model, self.feedback = bundle, model, feedback  # feedback: serve/feedback.py, or None
        self.parser = RequestParser(bundle.pp, max_series=max_series)
        self.metrics = ServerMetrics()
        self.batcher = MicroBatcher(model, max_batch_size, max_wait_ms, max_queue,
                                    inline_max_series=inline_max_series, on_batch=self.metrics.batch,
                                    on_queue=self.metrics.queued.set)
        self.max_body_bytes, self.retry_after = max_body_bytes, [(b"retry-after", str(retry_after_s).encode())]
        self.time_col, self.quantile_keys = bundle.pp.schema.time_col, [f"{q:g}" for q in bundle.quantiles]
        self.variables = bundle.meta.get("variables") or {}
        self.model_block = {"name": bundle.meta.get("name"), "version": bundle.meta.get("version"),
                            "sha256": bundle.meta["model"]["sha256"], "bundle_sha256": bundle.digest,
                            "variant": variant}

    def answer(self, parsed: ParsedRequest, outputs: list[np.ndarray]) -> bytes:
        """The 200 body; a RequestError (422) naming the first series whose forecast is not finite."""
        bad = nonfinite_windows(outputs)
        if len(bad):
            i = int(bad[0])
            name = parsed.ids[i] if parsed.ids[i] is not None else i
            part, col, why = overflow_message(self.bundle.pp, parsed.inputs, i, "{part}.{col}")
            raise RequestError(f"series {shown(name)}: {why}", series=name, field=f"{part}.{col}")
        q = np.ascontiguousarray(outputs[0].transpose(0, 2, 1))  # (series, quantile, step): contiguous rows
        forecasts = []
        for i, sid in enumerate(parsed.ids):
            f = {"id": sid, self.time_col: parsed.times[i], "quantiles": dict(zip(self.quantile_keys, q[i]))}
            if parsed.warnings[i]:
                f["warnings"] = parsed.warnings[i]
            if parsed.interpretation and len(outputs) == 5:
                f["interpretation"] = _interpretation(outputs, i, self.variables)
            forecasts.append(f)
        return dumps({"model": self.model_block, "forecasts": forecasts})

    async def handle(self, receive, headers: list[tuple[bytes, bytes]]) -> Answer | None:
        """POST /v1/forecast: (status, JSON body, extra headers) for the request body read from `receive`;
        None when the client went away before sending it."""
        start = time.perf_counter()
        extra: list = []
        try:
            body = await read_body(receive, headers, self.max_body_bytes)
            if body is None:
                return None
            feedback = self.feedback
            try:
                obj = self.parser.load(body)
                if feedback is not None:
                    await feedback.fill(obj)  # the stored history of series that come without one
                parsed = self.parser.parse_obj(obj)
                keys = feedback.keys(parsed.ids) if feedback is not None else None
            except (RequestError, StoreUnavailable):
                raise
            except Exception as e:  # input no rule foresaw: still the client's request, never a 500
                log.exception("unreadable request")
                raise RequestError(f"could not read the request ({type(e).__name__}: {e})") from e
            outputs = await self.batcher.submit(parsed.inputs, len(parsed.ids), parsed.interpretation)
            if feedback is not None:
                base = outputs[0]
                outputs = [await feedback.serve(keys, base, parsed.inputs["target_scale"]), *outputs[1:]]
            status, payload = 200, self.answer(parsed, outputs)
            if feedback is not None:
                feedback.record(keys, parsed.times, obj["series"], base, outputs[0], parsed.inputs["target_scale"])
            self.metrics.forecasts.inc(len(parsed.ids))
        except RequestError as e:
            status, payload = e.status, dumps(e.body())
        except QueueFull as e:
            status, payload, extra = 503, error_body(f"overloaded: {e}; retry later"), self.retry_after
        except StoreUnavailable:  # the server's trouble, not the client's: retry later
            status, payload, extra = 503, error_body("the actuals store is unavailable; retry later"), self.retry_after
        self.metrics.requests.labels(str(status)).inc()
        self.metrics.latency.observe(time.perf_counter() - start)
        return status, payload, extra


class ForecastFastPath:
    """Pure ASGI middleware: POST /v1/forecast goes straight to `handle` (receive, headers → status, JSON
    bytes, extra headers; None when the client left). Every other request, and the lifespan, goes
    through the app; the route stays declared there (for the OpenAPI document) and calls the same
    `handle`."""

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
