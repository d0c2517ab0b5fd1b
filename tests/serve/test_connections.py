"""Connection limits of the real server on loopback, with real sockets: idle connections, slowloris
headers and trickled bodies are closed, the number of open connections is capped, and a normal
client is served all the while."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time

import orjson
import pytest

from tests.serve.test_server import Server


@pytest.fixture(scope="module")
def stallion(real_bundle):
    return real_bundle("stallion")


@pytest.fixture(scope="module")
def example(stallion) -> bytes:
    return orjson.dumps(json.loads((stallion.path / "example_request.json").read_text()))


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing `sock` within `within` seconds; None if it stayed open."""
    sock.settimeout(0.2)
    received, deadline = b"", time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return received
        if not chunk:
            return received
        received += chunk
    return None


def _is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Trickle(threading.Thread):
    """Sends `data` one byte every `every` seconds (until the server closes the connection)."""

    def __init__(self, sock: socket.socket, data: bytes, every: float = 0.25):
        super().__init__(daemon=True)
        self.sock, self.data, self.every = sock, data, every

    def run(self) -> None:
        for byte in self.data:
            try:
                self.sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(self.every)


def _forecast(server: Server, body: bytes) -> int:
    return server.post(body).status_code


def test_idle_and_slow_connections_are_closed_and_a_client_is_served(stallion, example, tmp_path):
    srv = Server(stallion.path, tmp_path, "--timeout-keep-alive", "1", "--timeout-headers", "1.5",
                 "--timeout-body", "1.5", "--max-connections", "60")
    try:
        idle = [_connect(srv.port) for _ in range(30)]
        slow_headers = [_connect(srv.port) for _ in range(5)]
        slow_bodies = [_connect(srv.port) for _ in range(5)]
        for sock in slow_headers:  # slowloris: headers that never end
            Trickle(sock, b"POST /v1/forecast HTTP/1.1\r\nhost: localhost\r\nx-pad: " + b"a" * 200).start()
        head = (b"POST /v1/forecast HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(example))
        for sock in slow_bodies:  # the headers at once, the body a byte at a time
            sock.sendall(head)
            Trickle(sock, example).start()
        time.sleep(0.3)
        assert _forecast(srv, example) == 200  # served while all of them are held
        # 40 more idle ones: past the cap of 60 the longest-idle are closed, and a client is still served
        idle += [_connect(srv.port) for _ in range(40)]
        assert _forecast(srv, example) == 200
        t0 = time.monotonic()
        for sock in slow_headers + slow_bodies:
            got = _closed_by_server(sock, within=6)
            assert got is not None, "a slow connection stayed open"
            assert got.startswith(b"HTTP/1.1 408"), got[:200]
        for sock in idle:
            assert _closed_by_server(sock, within=max(0.5, 6 - (time.monotonic() - t0))) is not None
        assert _forecast(srv, example) == 200
        # a keep-alive client that goes quiet is closed too, after it was answered
        sock = _connect(srv.port)
        sock.sendall(head + example)
        answer = _closed_by_server(sock, within=5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200")
        for sock in idle + slow_headers + slow_bodies:
            sock.close()
        # oversized headers: 431 at once, whatever the pace
        sock = _connect(srv.port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-big: " + b"b" * 70_000 + b"\r\n")
        assert (_closed_by_server(sock, within=5) or b"").startswith(b"HTTP/1.1 431")
        assert "Traceback" not in srv.log.read_text()
    finally:
        assert srv.stop()


def test_more_connections_than_open_files_leave_new_clients_served(stallion, example, tmp_path):
    """The process may open 256 files; 300 idle connections must not lock everyone else out."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    srv = Server(stallion.path, tmp_path, "--timeout-keep-alive", "30", preexec_fn=limit_files)
    held = []
    try:
        assert "at most 192 connections" in srv.log.read_text()
        for _ in range(300):
            held.append(_connect(srv.port))
        time.sleep(1.0)
        for _ in range(3):
            assert _forecast(srv, example) == 200
        closed = sum(_is_closed(sock) for sock in held)
        assert closed >= 300 - 192, closed  # the longest-idle made room
        assert "Traceback" not in srv.log.read_text()
    finally:
        for sock in held:
            sock.close()
        assert srv.stop()
