"""What the throwaway database servers of the tests share (tests/postgres.py, tests/redis_server.py): a free
loopback port, the started server, and the `start` / `stop DIR` command line that .ci/run calls."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    base: Path
    stopper: Callable[[Path], None]

    def stop(self) -> None:
        self.stopper(self.base)


def command_line(module: str, start: Callable[[], Server], stop: Callable[[Path | str], None], url_env: str,
                 dir_env: str) -> None:
    """`python -m tests.<module> start` prints the exports of the started server; `stop DIR` stops it."""
    if sys.argv[1:2] == ["start"]:
        server = start()
        print(f"export {url_env}={server.url} {dir_env}={server.base}")
    elif sys.argv[1:2] == ["stop"] and len(sys.argv) == 3:
        stop(sys.argv[2])
    else:
        sys.exit(f"usage: python -m tests.{module} start | stop DIR")
