"""A throwaway Redis server on loopback for the tests (and for .ci/run): Debian's `redis-server` on a free
port, no persistence to disk, in a fresh temporary folder.

    eval "$(python -m tests.redis_server start)"   # exports FUSIONCAST_TEST_REDIS_URL and ..._DIR
    python -m tests.redis_server stop "$FUSIONCAST_TEST_REDIS_DIR"
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.throwaway import Server, command_line, free_port

URL_ENV = "FUSIONCAST_TEST_REDIS_URL"
DIR_ENV = "FUSIONCAST_TEST_REDIS_DIR"


def start() -> Server:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("no redis-server: apt-get install redis-server")
    base = Path(tempfile.mkdtemp(prefix="fusioncast-redis-"))
    port = free_port()
    subprocess.run([binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes", "--dir", str(base),
                    "--pidfile", str(base / "redis.pid"), "--logfile", str(base / "redis.log"), "--save", "",
                    "--appendonly", "no"], check=True, capture_output=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return Server(f"redis://127.0.0.1:{port}/0", base, stop)
        except OSError:
            pass
        time.sleep(0.1)
    stop(base)
    raise RuntimeError(f"redis-server did not start on port {port}")


def stop(base: Path | str) -> None:
    base = Path(base)
    pid_file = base / "redis.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().strip())
        subprocess.run(["kill", str(pid)], capture_output=True, check=False)
        for _ in range(100):
            if subprocess.run(["kill", "-0", str(pid)], capture_output=True, check=False).returncode != 0:
                break
            time.sleep(0.05)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    command_line("redis_server", start, stop, URL_ENV, DIR_ENV)
