"""Where the server keeps what it learns after training: the actuals posted to it, the forecasts it
issued, each series' last forecast request and the online calibration's state. One small interface,
three backends: a SQLite file (the default, for the workers of one machine), PostgreSQL and Redis (for
several machines or replicas; serve/store_redis.py).

Rows are plain values: series keys as in the bundle ('|'-joined group ids), times as int64
nanoseconds, payloads as JSON bytes (orjson) that the store never looks into. Every write is an
idempotent upsert, so that two workers that race write the same rows:

    actuals    (series, t) -> value, inputs   the last one posted wins
    forecasts  (series, t0) -> record        the first forecast issued for a window start wins
    requests   series -> body                the last request wins
    tracker    series -> until, state        kept only when `until` moves forward

`open_store` takes 'none', a file path (or sqlite:///path), postgresql://... or redis://...
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol

Actual = tuple[str, int, float, bytes | None]  # series, t, value, inputs (JSON object) or None
Issued = tuple[str, int, bytes]                # series, first forecast time t0, record (JSON)


class Store(Protocol):
    def put_actuals(self, rows: list[Actual]) -> None: ...
    def actuals(self, series: list[str] | None, since: int) -> list[Actual]: ...  # t >= since, by series and t
    def put_forecasts(self, rows: list[Issued]) -> None: ...
    def forecasts(self, series: list[str] | None, since: int) -> list[Issued]: ...  # t0 >= since, by series, t0
    def put_requests(self, rows: list[tuple[str, bytes]]) -> None: ...
    def request(self, series: str) -> bytes | None: ...
    def trackers(self, series: list[str]) -> dict[str, tuple[int, bytes]]: ...
    def put_tracker(self, series: str, until: int, state: bytes) -> None: ...
    def latest(self) -> int | None: ...  # the latest actual's time
    def prune(self, before: int) -> None: ...  # actuals and forecasts older than `before`
    def close(self) -> None: ...


class StoreError(RuntimeError):
    """The store named in the configuration cannot be opened."""


class StoreUnavailable(RuntimeError):
    """A call to the store failed while serving (the database is down, a timeout): answered 503."""


_TABLES = """
CREATE TABLE IF NOT EXISTS fusioncast_actuals (series TEXT NOT NULL, t BIGINT NOT NULL, value {real} NOT NULL,
    inputs {blob}, PRIMARY KEY (series, t));
CREATE TABLE IF NOT EXISTS fusioncast_forecasts (series TEXT NOT NULL, t0 BIGINT NOT NULL, record {blob} NOT NULL,
    PRIMARY KEY (series, t0));
CREATE TABLE IF NOT EXISTS fusioncast_requests (series TEXT PRIMARY KEY, body {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS fusioncast_tracker (series TEXT PRIMARY KEY, until BIGINT NOT NULL, state {blob} NOT NULL);
"""


class SqlStore:
    """SQLite (stdlib sqlite3, WAL: readers never wait for the writer, and every worker process of a
    machine opens the same file) or PostgreSQL (psycopg 3). One connection, used under a lock: the
    server calls the store from worker threads."""

    def __init__(self, url: str):
        self.lock = threading.Lock()
        if url.startswith("postgresql+psycopg://"):  # SQLAlchemy's spelling (Optuna's storage URLs)
            url = "postgresql://" + url.removeprefix("postgresql+psycopg://")
        if url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError:
                raise StoreError("a PostgreSQL store needs psycopg (pip install 'fusioncast[postgres]')") from None
            try:
                self.db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            except psycopg.Error as e:
                raise StoreError(f"cannot connect to the PostgreSQL store: {e}") from None
            self.mark, real, blob = "%s", "DOUBLE PRECISION", "BYTEA"
            with self.lock, self.db.transaction():
                # two workers starting at once: CREATE TABLE IF NOT EXISTS races on the catalog
                self.db.execute("SELECT pg_advisory_xact_lock(7151)")
                for statement in _TABLES.format(real=real, blob=blob).split(";"):
                    if statement.strip():
                        self.db.execute(statement)
        else:
            path = Path(url.removeprefix("sqlite://"))  # sqlite:///abs/path or a plain path
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable across a process crash
                self.db.executescript(_TABLES.format(real="REAL", blob="BLOB"))
            except (OSError, sqlite3.Error) as e:
                raise StoreError(f"cannot open the SQLite store {path}: {e}") from None
            self.mark = "?"

    def _run(self, sql: str, args=(), many: bool = False) -> list:
        sql = sql.replace("?", self.mark)
        with self.lock:
            if many:
                if not args:
                    return []
                if self.mark == "?":
                    self.db.execute("BEGIN")
                    try:
                        self.db.executemany(sql, args)
                        self.db.execute("COMMIT")
                    except BaseException:
                        self.db.execute("ROLLBACK")
                        raise
                else:
                    with self.db.transaction(), self.db.cursor() as cur:
                        cur.executemany(sql, args)
                return []
            cur = self.db.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def _among(self, column: str, series: list[str] | None) -> tuple[str, list]:
        if series is None:
            return "", []
        if not series:
            return " AND 1 = 0", []
        return f" AND {column} IN ({', '.join('?' * len(series))})", list(series)

    def put_actuals(self, rows: list[Actual]) -> None:
        self._run("INSERT INTO fusioncast_actuals (series, t, value, inputs) VALUES (?, ?, ?, ?) ON CONFLICT "
                  "(series, t) DO UPDATE SET value = excluded.value, inputs = excluded.inputs", rows, many=True)

    def actuals(self, series: list[str] | None, since: int) -> list[Actual]:
        where, args = self._among("series", series)
        rows = self._run(f"SELECT series, t, value, inputs FROM fusioncast_actuals WHERE t >= ?{where} "
                         "ORDER BY series, t", [since, *args])
        return [(s, int(t), float(v), None if i is None else bytes(i)) for s, t, v, i in rows]

    def put_forecasts(self, rows: list[Issued]) -> None:
        self._run("INSERT INTO fusioncast_forecasts (series, t0, record) VALUES (?, ?, ?) ON CONFLICT (series, t0) "
                  "DO NOTHING", rows, many=True)

    def forecasts(self, series: list[str] | None, since: int) -> list[Issued]:
        where, args = self._among("series", series)
        rows = self._run(f"SELECT series, t0, record FROM fusioncast_forecasts WHERE t0 >= ?{where} "
                         "ORDER BY series, t0", [since, *args])
        return [(s, int(t), bytes(r)) for s, t, r in rows]

    def put_requests(self, rows: list[tuple[str, bytes]]) -> None:
        self._run("INSERT INTO fusioncast_requests (series, body) VALUES (?, ?) ON CONFLICT (series) DO UPDATE "
                  "SET body = excluded.body", rows, many=True)

    def request(self, series: str) -> bytes | None:
        rows = self._run("SELECT body FROM fusioncast_requests WHERE series = ?", [series])
        return bytes(rows[0][0]) if rows else None

    def trackers(self, series: list[str]) -> dict[str, tuple[int, bytes]]:
        where, args = self._among("series", series)
        rows = self._run(f"SELECT series, until, state FROM fusioncast_tracker WHERE 1 = 1{where}", args)
        return {s: (int(u), bytes(b)) for s, u, b in rows}

    def put_tracker(self, series: str, until: int, state: bytes) -> None:
        self._run("INSERT INTO fusioncast_tracker (series, until, state) VALUES (?, ?, ?) ON CONFLICT (series) DO "
                  "UPDATE SET until = excluded.until, state = excluded.state "
                  "WHERE fusioncast_tracker.until < excluded.until", [series, until, state])

    def latest(self) -> int | None:
        rows = self._run("SELECT MAX(t) FROM fusioncast_actuals")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def prune(self, before: int) -> None:
        self._run("DELETE FROM fusioncast_actuals WHERE t < ?", [before])
        self._run("DELETE FROM fusioncast_forecasts WHERE t0 < ?", [before])

    def close(self) -> None:
        with self.lock:
            self.db.close()


def open_store(url: str | None, default_path: Path) -> Store | None:
    """The store a ServeConfig names: None for 'none'; SQLite at `default_path` for 'sqlite' (or no url)."""
    url = (url or "sqlite").strip()
    if url == "none":
        return None
    if url == "sqlite":
        url = str(default_path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from fusioncast.serve.store_redis import RedisStore

        return RedisStore(url)
    return SqlStore(url)
