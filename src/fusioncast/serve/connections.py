"""Connection limits of the HTTP server: uvicorn's httptools protocol with the timeouts and the cap it
lacks (it times out only keep-alive connections after a response; a connection that never sends a
request, or sends its headers or body a byte at a time, stays open as long as the client likes).

- idle: a connection with no request in progress (just opened, or answered) is closed after
  `idle_timeout_s` (uvicorn's keep-alive timeout, applied from the connection's start too);
- headers: a request's headers must arrive within `header_timeout_s` of its first byte, and within
  `max_header_bytes` (slowloris); a late one gets 408, an oversized one 431, and is closed;
- body: its body within `body_timeout_s` of the end of its headers (trickled bodies): 408 and closed;
- cap: at most `max_connections` open connections (an open file each: past the process' file limit
  every new client would be refused by the kernel); one more closes the longest-idle connection, as
  nginx reuses its keep-alive ones, else the one slowest to send its headers, else itself.

One sweep a fraction of a second does the timing for all connections: a request costs a few
attribute writes, no timer.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("fusioncast.serve")

FD_RESERVE = 64  # open files kept for everything but connections (the model, logs, metrics, sockets)
_HEADERS, _BODY = 1, 2


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024
    idle_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 << 10

    def __post_init__(self):
        if self.max_connections < 1 or min(self.idle_timeout_s, self.header_timeout_s, self.body_timeout_s) <= 0:
            raise ValueError("max_connections must be >= 1 and every timeout > 0")

    @property
    def sweep_s(self) -> float:
        return max(0.05, min(1.0, self.idle_timeout_s / 4, self.header_timeout_s / 4, self.body_timeout_s / 4))


def raise_open_file_limit() -> int:
    """Raise this process' soft limit of open files to its hard limit; the soft limit now."""
    try:
        import resource
    except ImportError:  # not on Windows, which has no such per-process limit to raise
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def _timeout_response(status: bytes, detail: bytes) -> bytes:
    body = b'{"detail": "' + detail + b'", "series": null, "field": null}'
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: " +
            str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


_LATE_HEADERS = _timeout_response(b"408 Request Timeout", b"the request headers took too long to arrive")
_LATE_BODY = _timeout_response(b"408 Request Timeout", b"the request body took too long to arrive")
_BIG_HEADERS = _timeout_response(b"431 Request Header Fields Too Large", b"the request headers are too large")

_sweepers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ServerState -> its sweep task


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ConnectionLimits (pass `limits=`: uvicorn's `http` takes a
    functools.partial of this class)."""

    def __init__(self, *args, limits: ConnectionLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.request_phase = 0          # 0: no request being read, else _HEADERS or _BODY
        self.request_since = 0.0        # when that phase began
        self.header_bytes = 0
        self.idle_since = 0.0

    # ---- state, as the parser sees the request ----------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.idle_since = self.loop.time()
        if self.server_state not in _sweepers:
            _sweepers[self.server_state] = self.loop.create_task(_sweep(self.server_state, self.limits))
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.request_phase == 0:
            self.request_phase, self.request_since, self.header_bytes = _HEADERS, self.loop.time(), 0
        if self.request_phase == _HEADERS:
            self.header_bytes += len(data)  # may hold body bytes too: judged once the parser has seen them
        super().data_received(data)
        if self.request_phase == _HEADERS and self.header_bytes > self.limits.max_header_bytes:
            self._refuse(_BIG_HEADERS)

    def on_headers_complete(self) -> None:
        self.request_phase, self.request_since = _BODY, self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.request_phase = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.idle_since = self.loop.time()

    @property
    def idle(self) -> bool:
        """No request being read, none being answered."""
        return self.request_phase == 0 and (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    # ---- what the sweep and the cap do -------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Close this connection if it has been idle, or reading one request, for too long."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.request_phase == _HEADERS and now - self.request_since > self.limits.header_timeout_s:
            self._refuse(_LATE_HEADERS)
        elif self.request_phase == _BODY and now - self.request_since > self.limits.body_timeout_s:
            self._refuse(_LATE_BODY)
        elif self.idle and now - self.idle_since > self.limits.idle_timeout_s:
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete and self.request_phase != _BODY:
            self.transport.close()  # an answer is on its way: no second one on this connection
            return
        self.transport.write(response)
        self.transport.close()

    def _make_room(self) -> None:
        """One connection too many: close the longest-idle other one, else the one reading its headers the
        longest, else this one."""
        others = [c for c in self.connections if c is not self and isinstance(c, LimitedHttpToolsProtocol)
                  and c.transport is not None and not c.transport.is_closing()]
        idle = [c for c in others if c.idle]
        slow = [c for c in others if c.request_phase == _HEADERS]
        if idle:
            min(idle, key=lambda c: c.idle_since).transport.close()
        elif slow:
            min(slow, key=lambda c: c.request_since).transport.close()
        else:
            log.warning("%d connections open (the limit is %d), none idle: refusing a new one", len(self.connections),
                        self.limits.max_connections)
            self.transport.close()


async def _sweep(server_state, limits: ConnectionLimits) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(limits.sweep_s)
        now = loop.time()
        for connection in list(server_state.connections):
            if isinstance(connection, LimitedHttpToolsProtocol):
                connection.expire(now)
