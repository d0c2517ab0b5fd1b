"""A throwaway PostgreSQL server on loopback for the tests (and for .ci/run): initdb + pg_ctl from the
Debian `postgresql` package (or any PostgreSQL on PATH), trust authentication, a random free port.

    eval "$(python -m tests.postgres start)"   # exports FUSIONCAST_TEST_POSTGRES_URL and ..._DIR
    python -m tests.postgres stop "$FUSIONCAST_TEST_POSTGRES_DIR"
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.throwaway import Server, command_line, free_port

URL_ENV = "FUSIONCAST_TEST_POSTGRES_URL"
DIR_ENV = "FUSIONCAST_TEST_POSTGRES_DIR"
DATABASE = "fusioncast_test"


def binaries() -> Path | None:
    """The folder of initdb/pg_ctl: the newest /usr/lib/postgresql/<version>/bin (Debian), else from PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("pg_ctl")  # resolved: a link on PATH may stand alone in its folder
    return Path(found).resolve().parent if found else None


def _as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its commands as the `postgres` user then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as e:
        raise RuntimeError("running as root and there is no `postgres` user to run the server as") from e
    return ["runuser", "-u", "postgres", "--"]


def start() -> Server:
    """Create a cluster in a fresh temporary folder, start it on 127.0.0.1 and create the test database."""
    bin_dir = binaries()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    prefix = _as_server_user()
    base = Path(tempfile.mkdtemp(prefix="fusioncast-pg-"))
    if prefix:
        shutil.chown(base, user="postgres")
    run = lambda *cmd: subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, text=True)  # noqa: E731
    (base / "bin").write_text(str(bin_dir))
    try:
        run(bin_dir / "initdb", "-D", base / "data", "-A", "trust", "-U", "postgres", "--no-sync")
        port = free_port()
        # no durability needed for a test database
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        run(bin_dir / "pg_ctl", "-D", base / "data", "-o", options, "-l", base / "server.log", "-w", "start")
        run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", DATABASE)
    except subprocess.CalledProcessError as e:
        stop(base)
        raise RuntimeError(f"{' '.join(e.cmd)} failed: {e.stderr}") from e
    return Server(f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DATABASE}", base, stop)


def stop(base: Path | str) -> None:
    base = Path(base)
    bin_dir = Path((base / "bin").read_text())
    if (base / "data" / "postmaster.pid").exists():
        subprocess.run([*_as_server_user(), str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-m", "fast", "stop"],
                       capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    command_line("postgres", start, stop, URL_ENV, DIR_ENV)
