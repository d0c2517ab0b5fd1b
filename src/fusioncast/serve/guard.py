"""Who may talk to the server: middleware around the whole app, so that every route, today's and any
added later, is behind it.

- Host allow-list: a browser page that rebinds its own DNS name to 127.0.0.1 sends its own name as
  Host, and is refused (400). Checked here in the same pass over the raw headers as the rest, not by
  Starlette's TrustedHostMiddleware, which builds a Headers object per request (~15 us of a ~1 ms
  forecast request's server CPU).
- Bearer token (optional): with tokens configured, /v1/* and /metrics need `Authorization: Bearer
  <token>` (401 otherwise), compared in constant time.
- A POST with a body must say `Content-Type: application/json` (415 otherwise): a web page can make
  a browser send a text/plain POST to any address without asking (a "simple" cross-origin request),
  never an application/json one.
- CORS: off (no Access-Control headers, so browsers keep other origins out) unless origins are given.

The probes (/healthz, /readyz) pass every check: an orchestrator calls them by IP, without a token.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

import orjson
from starlette.middleware.cors import CORSMiddleware

from fusioncast.serve.fields import shown

log = logging.getLogger("fusioncast.serve")

TOKEN_ENV = "FUSIONCAST_API_TOKEN"
PROBES = frozenset(("/healthz", "/readyz"))
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # as Host headers write them (IPv6 in brackets)
LOOPBACK_ADDRESSES = ("localhost", "127.0.0.1", "::1")


def _protected(path: str) -> bool:
    return path.startswith("/v1/") or path == "/metrics"


def load_tokens(token_file: str | None) -> list[bytes] | None:
    """The accepted tokens: one per line of `token_file` (several allow a rotation), else $FUSIONCAST_API_TOKEN;
    None when neither is set (no authentication). A file that gives no token is an error, not 'no auth'."""
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"token file {token_file}: {e}") from None
        tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not tokens:
            raise ValueError(f"token file {token_file} holds no token")
    elif os.environ.get(TOKEN_ENV, "").strip():
        tokens = [os.environ[TOKEN_ENV].strip()]
    else:
        return None
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise ValueError("an API token must have at least 16 characters (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    return [t.encode() for t in tokens]


def _error(status: int, detail: str, headers: list | None = None) -> tuple[dict, dict]:
    body = orjson.dumps({"detail": detail, "series": None, "field": None})
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *(headers or [])]}
    return start, {"type": "http.response.body", "body": body}


_UNAUTHORIZED = _error(401, "this endpoint needs 'Authorization: Bearer <token>' with a valid token",
                       [(b"www-authenticate", b'Bearer realm="fusioncast"')])


def _host(value: bytes) -> bytes:
    """The host of a Host header, lower-case, without its port ('[::1]:8000' -> '[::1]')."""
    if value.startswith(b"["):
        return value[:value.find(b"]") + 1].lower()
    return value.split(b":", 1)[0].lower()


class Guard:
    """Pure ASGI middleware: the Host allow-list (all but the probes; `allowed_hosts` None or with '*':
    any), the bearer token on /v1/* and /metrics (when `tokens` is not None) and the JSON content type of
    a POST with a body. One pass over the raw headers; nothing else on the hot path."""

    def __init__(self, app, tokens: list[bytes] | None, allowed_hosts: list[str] | None = None):
        self.app, self.tokens = app, tokens
        any_host = allowed_hosts is None or "*" in allowed_hosts
        names = [h.strip().lower().encode() for h in allowed_hosts or []]
        for name in names:
            if name == b"*":  # any host (AWS Lambda's default: only AWS's endpoints reach it)
                continue
            if b"*" in name[1:] or (name.startswith(b"*") and not name.startswith(b"*.")):
                raise ValueError(f"allowed host {name.decode()!r}: a pattern must look like '*.example.com'")
        self.hosts = None if any_host else frozenset(n for n in names if not n.startswith(b"*"))
        self.host_suffixes = tuple(n[1:] for n in names if n.startswith(b"*."))

    def authorized(self, value: bytes | None) -> bool:
        if value is None or value[:7].lower() != b"bearer ":
            return False
        given = value[7:].strip()
        ok = False
        for token in self.tokens:  # every token compared: the time does not tell which one matched
            ok |= hmac.compare_digest(given, token)
        return ok

    def host_allowed(self, value: bytes | None) -> bool:
        if value is None:
            return False
        host = _host(value)
        return host in self.hosts or (bool(self.host_suffixes) and host.endswith(self.host_suffixes))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, post = scope["path"], scope["method"] == "POST"
        check_host = self.hosts is not None and path not in PROBES
        check_token = self.tokens is not None and _protected(path)
        if post or check_host or check_token:
            host = authorization = content_type = None
            body = False
            for k, v in scope["headers"]:
                if k == b"host":
                    host = v
                elif k == b"authorization":
                    authorization = v
                elif k == b"content-type":
                    content_type = v
                elif k == b"content-length":
                    body = body or v != b"0"
                elif k == b"transfer-encoding":
                    body = True
            if check_host and not self.host_allowed(host):
                got = "none" if host is None else shown(host.decode("latin-1"))
                return await _send(send, _error(400, f"this server does not answer to the Host {got} "
                                                     "(fusioncast-serve --allowed-hosts)"))
            if check_token and not self.authorized(authorization):
                return await _send(send, _UNAUTHORIZED)
            # a POST without a body carries no content (and a route that takes no POST answers 405)
            if post and body and (content_type is None or
                                  content_type.split(b";")[0].strip().lower() != b"application/json"):
                got = "none" if content_type is None else shown(content_type.decode("latin-1"))
                return await _send(send, _error(415, "a POST body must be sent with Content-Type: application/json "
                                                     f"(this one has {got})"))
        await self.app(scope, receive, send)


async def _send(send, messages) -> None:
    for message in messages:
        await send(message)


def default_allowed_hosts(bind_host: str) -> list[str]:
    """The loopback names, plus the address the server binds when it is a specific one (not 0.0.0.0/::)."""
    hosts = list(LOOPBACK_HOSTS)
    if bind_host not in ("", "0.0.0.0", "::", *LOOPBACK_ADDRESSES):
        hosts.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    return hosts


def secure(app, *, tokens: list[bytes] | None, allowed_hosts: list[str], cors_origins: list[str]) -> None:
    """Add the guard middleware to a Starlette/FastAPI app (after every other middleware, so it runs first;
    CORS outside it, so that a browser's preflight is answered without a token)."""
    app.add_middleware(Guard, tokens=tokens, allowed_hosts=allowed_hosts)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"], max_age=600)
