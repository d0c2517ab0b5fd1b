"""Where the server keeps what it learns after training: the actuals posted to it, the forecasts it
issued, each series' last forecast request and the online calibration's state. One small interface,
three backends: a SQLite file (the default, for the workers of one machine), PostgreSQL and Redis (for
several machines or replicas): serve/store_sql.py, serve/store_redis.py, opened by serve/store_open.py.

Rows are plain values: series keys as in the bundle ('|'-joined group ids), times as int64
nanoseconds, payloads as JSON bytes (orjson) that the store never looks into. Every write is an
idempotent upsert, so that two workers that race write the same rows:

    actuals    (series, t) -> value, inputs   the last one posted wins
    forecasts  (series, t0) -> record        the first forecast issued for a window start wins
    requests   series -> body                the last request wins
    tracker    series -> until, state        kept only when `until` moves forward

"""

from __future__ import annotations

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
