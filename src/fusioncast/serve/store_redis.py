"""The store (serve/store.py) on Redis, for servers on several machines: a hash per series and kind
(field: the time, value: the row) with a sorted set of its times for range reads, and a set of the
series. Writes of one call go in one MULTI/EXEC; the tracker's compare-and-set is a Lua script, so
that a worker with an older state never overwrites a newer one."""

from __future__ import annotations

import orjson

from fusioncast.serve.store import Actual, Issued, StoreError

PREFIX = "fusioncast:"
# KEYS[1]: the tracker hash; ARGV: until, state. Kept only when until moves forward.
_PUT_TRACKER = """
local old = redis.call('HGET', KEYS[1], 'until')
if old == false or tonumber(old) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'until', ARGV[1], 'state', ARGV[2])
end
return 0
"""


class RedisStore:
    def __init__(self, url: str):
        try:
            import redis
        except ImportError:
            raise StoreError("a Redis store needs the redis client (pip install 'fusioncast[redis]')") from None
        self.redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        try:
            self.redis.ping()
        except redis.RedisError as e:
            raise StoreError(f"cannot connect to the Redis store: {e}") from None
        self._put_tracker = self.redis.register_script(_PUT_TRACKER)

    def _key(self, kind: str, series: str) -> str:
        return f"{PREFIX}{kind}:{series}"

    def _series(self, kind: str, series: list[str] | None) -> list[str]:
        if series is not None:
            return list(series)
        return sorted(s.decode() for s in self.redis.smembers(f"{PREFIX}series:{kind}"))

    def _put(self, kind: str, rows: list[tuple[str, int, bytes]], keep_first: bool) -> None:
        if not rows:
            return
        pipe = self.redis.pipeline(transaction=True)
        for series, t, payload in rows:
            if keep_first:
                pipe.hsetnx(self._key(kind, series), str(t), payload)
            else:
                pipe.hset(self._key(kind, series), str(t), payload)
            pipe.zadd(self._key(kind + "-t", series), {str(t): t // 1000})  # microseconds: exact in a double
            pipe.sadd(f"{PREFIX}series:{kind}", series)
        pipe.execute()

    def _get(self, kind: str, series: list[str] | None, since: int) -> list[tuple[str, int, bytes]]:
        out = []
        for s in self._series(kind, series):
            times = [t for t in self.redis.zrangebyscore(self._key(kind + "-t", s), since // 1000, "+inf")
                     if int(t) >= since]
            if times:
                payloads = self.redis.hmget(self._key(kind, s), times)
                out += [(s, int(t), p) for t, p in zip(times, payloads) if p is not None]
        return out

    def put_actuals(self, rows: list[Actual]) -> None:
        self._put("a", [(s, t, orjson.dumps([v, None if i is None else i.decode()])) for s, t, v, i in rows], False)

    def actuals(self, series: list[str] | None, since: int) -> list[Actual]:
        out = []
        for s, t, payload in self._get("a", series, since):
            v, i = orjson.loads(payload)
            out.append((s, t, float(v), None if i is None else i.encode()))
        return out

    def put_forecasts(self, rows: list[Issued]) -> None:
        self._put("f", rows, True)

    def forecasts(self, series: list[str] | None, since: int) -> list[Issued]:
        return self._get("f", series, since)

    def put_requests(self, rows: list[tuple[str, bytes]]) -> None:
        if rows:
            self.redis.hset(f"{PREFIX}requests", mapping=dict(rows))

    def request(self, series: str) -> bytes | None:
        return self.redis.hget(f"{PREFIX}requests", series)

    def trackers(self, series: list[str]) -> dict[str, tuple[int, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for s in series:
            pipe.hmget(self._key("tracker", s), ["until", "state"])
        return {s: (int(u), b) for s, (u, b) in zip(series, pipe.execute()) if u is not None}

    def put_tracker(self, series: str, until: int, state: bytes) -> None:
        self._put_tracker(keys=[self._key("tracker", series)], args=[until, state])

    def latest(self) -> int | None:
        best = None
        for s in self._series("a", None):
            last = self.redis.zrange(self._key("a-t", s), -1, -1, withscores=True)
            if last:
                t = int(last[0][0])
                best = t if best is None else max(best, t)
        return best

    def prune(self, before: int) -> None:
        for kind in ("a", "f"):
            for s in self._series(kind, None):
                old = [t for t in self.redis.zrangebyscore(self._key(kind + "-t", s), "-inf", before // 1000 + 1)
                       if int(t) < before]
                if old:
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.hdel(self._key(kind, s), *old)
                    pipe.zrem(self._key(kind + "-t", s), *old)
                    pipe.execute()

    def close(self) -> None:
        self.redis.close()
