"""The OpenAPI document of a server (/openapi.json, shown by /docs): THIS bundle's request and answer,
its columns by role, its lengths, its quantiles, and its example request, so that a body valid by the
document has the shape the parser takes. What JSON Schema cannot say (timestamps on the model's
grid, equal history lengths, an observed target) is in the descriptions and answered 422.
"""

from __future__ import annotations

from fusioncast.serve.bundle import Bundle

FLOAT32_MAX = 3.4028234663852886e38
# ISO 8601 dates and times as the parser reads them (numpy's, then pandas' parser)
TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"

NUMBER = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
SCALAR = {"anyOf": [{"type": "string"}, NUMBER]}
TIME = {"type": "string", "pattern": TIMESTAMP}
ERROR = {
    "type": "object", "required": ["detail"],
    "properties": {"detail": {"type": "string", "description": "What is wrong, naming the series and the field."},
                   "series": {"description": "The series (its id, or its index in the request), when one is at fault."},
                   "field": {"type": ["string", "null"], "description": "The field at fault, e.g. history.price."}},
}
ERROR_STATUSES = {400: "not JSON, or a bad Content-Length", 401: "no valid bearer token (with authentication on)",
                  413: "a body or a number of series beyond the server's limits",
                  415: "a POST without Content-Type: application/json",
                  422: "a request the model cannot answer: a missing or unknown column, a wrong length, a value "
                       "that is not a finite number, a timestamp off the grid or out of range, a forecast that "
                       "is not finite", 503: "overloaded or shutting down: retry after Retry-After seconds"}
STORE_STATUSES = {404: "this server keeps no actuals (started with --store none)",
                  503: "the actuals store is unavailable: retry later"}


def _array(items: dict, n: int | None = None, description: str | None = None) -> dict:
    a = {"type": "array", "items": items, "minItems": n or 1}
    if n:
        a["maxItems"] = n
    if description:
        a["description"] = description
    return a


def _object(properties: dict, required: list[str], description: str | None = None) -> dict:
    o = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    if description:
        o["description"] = description
    return o


def request_schema(bundle: Bundle, max_series: int) -> dict:
    """JSON Schema of a forecast request for this bundle."""
    s, H, L = bundle.pp.schema, bundle.pp.schema.max_prediction_length, bundle.pp.schema.max_encoder_length
    if s.group_ids:
        by_name = _object({c: SCALAR for c in s.group_ids}, list(s.group_ids))
        ids = [by_name, {"type": "string", "description": "the group ids joined by '|'"}]
        if len(s.group_ids) == 1:
            ids.append(NUMBER)
        sid = {"anyOf": ids, "description": f"the series: its {s.group_ids} as an object or joined by '|'. A series "
                                            "unseen in training is scaled by its own history (with a warning)."}
    else:
        sid = {"description": "any value: echoed in the answer (the model has one series)"}
    static_props = {c: SCALAR for c in s.static_categoricals} | {c: NUMBER for c in s.static_reals}
    static_required = [c for c in s.static_categoricals if c not in s.group_ids] + list(s.static_reals)
    cats = s.time_varying_known_categoricals + s.time_varying_unknown_categoricals
    reals = s.time_varying_known_reals + s.time_varying_unknown_reals
    history = {s.time_col: _array(TIME, description=f"on the model's '{bundle.pp.freq}' grid, without gaps"),
               s.target: _array({"anyOf": [NUMBER, {"type": "null"}]}, description="null: not observed")}
    history |= {c: _array(SCALAR) for c in cats} | {c: _array(NUMBER) for c in reals}
    known = s.time_varying_known_categoricals + s.time_varying_known_reals
    future = {s.time_col: _array(TIME, H, "optional: checked when given")}
    future |= {c: _array(SCALAR, H) for c in s.time_varying_known_categoricals}
    future |= {c: _array(NUMBER, H) for c in s.time_varying_known_reals}
    series_props = {
        "id": sid,
        "static": _object(static_props, static_required, "static columns (group-id ones come from id)"),
        "history": _object(history, list(history), f"columns of the past, all of one length: the last {L} steps "
                                                   "are read (fewer are padded, with a warning)"),
        "future": _object(future, known, f"the known inputs of the {H} steps to forecast"),
    }
    required = ["history"] + (["id"] if s.group_ids else []) + (["static"] if static_required else [])
    required += ["future"] if known else []
    return {
        "type": "object", "required": ["series"], "additionalProperties": False,
        "properties": {
            "series": _array(_object(series_props, required), None, f"one to {max_series} series") | {
                "maxItems": max_series},
            "interpretation": {"type": "boolean", "default": False,
                               "description": "also return variable selection weights and attention"},
        },
    }


def response_schema(bundle: Bundle) -> dict:
    """JSON Schema of a 200 answer of this bundle."""
    s, H = bundle.pp.schema, bundle.pp.schema.max_prediction_length
    number = {"type": "number"}
    quantiles = _object({f"{q:g}": _array(number, H) for q in bundle.quantiles}, [f"{q:g}" for q in bundle.quantiles],
                        "forecasts in target units per quantile")
    forecast = {"type": "object", "required": ["id", s.time_col, "quantiles"], "additionalProperties": False,
                "properties": {"id": {"description": "the id as sent"},
                               s.time_col: _array({"type": "string"}, H, "the forecast's timestamps"),
                               "quantiles": quantiles,
                               "warnings": {"type": "array", "items": {"type": "string"},
                                            "description": "unknown categories, unseen series, padded history"},
                               "interpretation": {"type": "object", "description": (
                                   "static_weights {var: w}, encoder_weights and decoder_weights {var: mean weight "
                                   "over steps}, attention [horizon][encoder + horizon steps]")}}}
    model = {"type": "object", "description": "the model that answered: name, version, sha256 of its graph, "
                                              "bundle_sha256 of the whole bundle, variant"}
    return _object({"model": model, "forecasts": {"type": "array", "items": forecast}}, ["model", "forecasts"])


def _json(schema: dict, description: str, example=None) -> dict:
    content = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"description": description, "content": {"application/json": content}}


def _errors(*statuses: int, texts: dict | None = None) -> dict:
    texts = {**ERROR_STATUSES, **(texts or {})}
    return {str(code): _json({"$ref": "#/components/schemas/Error"}, texts[code]) for code in statuses}


def actuals_schema(bundle: Bundle, max_actuals: int) -> dict:
    """POST /v1/actuals' body for this bundle: the series id, the time, the value, the other history columns."""
    s = bundle.pp.schema
    ids = list(s.group_ids)
    scalar = {"type": ["string", "number"]}
    series = {"anyOf": [scalar, _object({c: scalar for c in ids}, ids)]} if ids else scalar
    inputs = {c: scalar for c in [*s.time_varying_known_categoricals, *s.time_varying_unknown_categoricals]}
    inputs |= {c: {"type": "number"} for c in [*s.time_varying_known_reals, *s.time_varying_unknown_reals]}
    item = _object({"series": series, "time": TIME, "value": {"type": "number", "description": "the target's value"},
                    "inputs": {**_object(inputs, []), "description": "the series' other history columns at that "
                               "time: what a forecast request that leaves out its history needs"}},
                   ["series", "time", "value"])
    return _object({"actuals": {"type": "array", "items": item, "minItems": 1, "maxItems": max_actuals}}, ["actuals"])


def document(base: dict, bundle: Bundle, *, max_series: int, example: dict | None, auth: bool,
             max_actuals: int = 100_000) -> dict:
    """FastAPI's document of the app's routes (`base`) with this bundle's schemas and every answer each
    path can give."""
    doc = dict(base)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components["ForecastRequest"] = request_schema(bundle, max_series)
    components["ForecastResponse"] = response_schema(bundle)
    components["Error"] = ERROR
    paths = doc["paths"]
    guarded = [401] if auth else []
    forecast = paths["/v1/forecast"]["post"]
    body = {"schema": {"$ref": "#/components/schemas/ForecastRequest"}}
    if example is not None:
        body["example"] = example
    forecast["requestBody"] = {"required": True, "content": {"application/json": body}}
    forecast["responses"] = {"200": _json({"$ref": "#/components/schemas/ForecastResponse"}, "the forecasts"),
                             **_errors(400, *guarded, 413, 415, 422, 503)}
    paths["/v1/model"]["get"]["responses"] = {"200": _json({"type": "object"}, (
        "the model's schema, vocabularies, lengths, quantiles, training metrics and parity check")), **_errors(*guarded)}
    paths["/metrics"]["get"]["responses"] = {
        "200": {"description": "Prometheus metrics, in its text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(*guarded)}
    components["ActualsRequest"] = actuals_schema(bundle, max_actuals)
    actuals = paths["/v1/actuals"]["post"]
    actuals["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ActualsRequest"}}}}
    stored = _object({"stored": {"type": "integer"}, "series": {"type": "integer"}}, ["stored", "series"])
    actuals["responses"] = {"200": _json(stored, "the actuals kept"),
                            **_errors(400, *guarded, 404, 413, 415, 422, 503, texts=STORE_STATUSES)}
    for path, what in (("/v1/monitoring", "error and interval coverage by hour, the worst and busiest series"),
                       ("/v1/series", "the latest actual and forecast of each series the store knows"),
                       ("/v1/series/{key}", "one series' stored actuals, last request and latest forecast")):
        paths[path]["get"]["responses"] = {"200": _json({"type": "object"}, what),
                                           **_errors(*guarded, 404, 503, texts=STORE_STATUSES)}
    paths["/healthz"]["get"]["responses"] = {"200": _json(_object({"status": {"type": "string"}}, ["status"]),
                                                          "the process is up")}
    ready = _object({"status": {"type": "string"}, "queued_series": {"type": "integer"}}, ["status", "queued_series"])
    paths["/readyz"]["get"]["responses"] = {"200": _json(ready, "the model is loaded and the server takes requests"),
                                            "503": _json(ready, "starting or shutting down")}
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, item in paths.items():
            if path.startswith("/v1/") or path == "/metrics":
                for operation in item.values():
                    operation["security"] = [{"bearer": []}]
    return doc
