"""The actuals store on SQL (serve/store.py's interface): a SQLite file, the default for the workers of one
machine, or PostgreSQL through psycopg 3 for several machines."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from fusioncast.serve.store import Actual, Issued, StoreError

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
