"""What the server does with its store (serve/store.py): actuals in (POST /v1/actuals), issued forecasts
recorded, histories filled in for requests that leave them out, online calibration (serve/online_calibration.py),
monitoring (serve/monitoring.py) and the dashboard's per-series views.

Issued forecasts are recorded off the request's path: a forecast appends its rows to a list that a
background task writes every FLUSH_S (one transaction), so a forecast costs no store round trip
unless it leaves out its history or its bundle tracks calibration. Whatever reads the store (actuals,
monitoring, the series views) writes this worker's pending rows first. The store's calls block: they
run in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import orjson

from fusioncast.postfit.calibration import window_scale
from fusioncast.serve.actuals import ActualsParser
from fusioncast.serve.fields import RequestError, shown
from fusioncast.serve.history import forecast_times, history_from, steps_back
from fusioncast.serve.monitoring import iso, monitoring
from fusioncast.serve.online_calibration import NEVER, OnlineCalibration
from fusioncast.serve.store import Store, StoreUnavailable

log = logging.getLogger("fusioncast.serve")


async def _call(fn, *args):
    """fn(*args) in a thread; a failure of the store becomes StoreUnavailable (503), never a 500 or a 4xx."""
    try:
        return await asyncio.to_thread(fn, *args)
    except RequestError:
        raise
    except Exception as e:
        log.exception("the actuals store failed")
        raise StoreUnavailable(f"{type(e).__name__}: {e}") from e

FLUSH_S = 0.05
PRUNE_EVERY = 64  # actuals requests between two prunes of what is older than the store keeps
MONITOR_CACHE_S = 1.0  # /metrics scrapes reuse a monitoring document this young
# a worker reuses a series' tracked calibration state this long (a forecast would otherwise cost a store
# round trip); the worker that takes a series' actuals drops its copy at once
TRACKER_CACHE_S = 1.0


class Feedback:
    def __init__(self, store: Store, parser, calibration, quantiles: list[float], *, monitor_hours: float, max_actuals: int):
        self.store, self.parser = store, parser
        self.actuals_parser = ActualsParser(parser.schema, max_actuals)
        self.tracking = OnlineCalibration(calibration, parser) if calibration is not None and \
            calibration.step is not None else None
        self.monitor_hours, self.quantiles = monitor_hours, list(quantiles)
        self.median = int(np.argmin(np.abs(np.asarray(quantiles, np.float64) - 0.5)))
        self.pending: list = []            # (series, t0, record) of issued forecasts
        self.requests: dict = {}           # series -> its last request's series object
        self.lock = asyncio.Lock()
        self.task = None
        self.posts = 0
        self._monitor = (0.0, None)
        self.states: dict = {}             # series -> (monotonic time read, its TrackState)
        step = parser.step
        hours_steps = int(np.ceil(monitor_hours * 3600e9 / step)) if step else int(monitor_hours)
        self.keep_steps = max(parser.L, hours_steps) + parser.H  # history for a forecast, and the window

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.task = asyncio.create_task(self._flusher())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        try:  # what is pending, then the connection; a store that is away loses them, not the shutdown
            await self.flush()
            await asyncio.to_thread(self.store.close)
        except Exception:
            log.exception("closing the actuals store")

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:  # a store that is down: keep serving forecasts, log, try again later
                log.exception("writing issued forecasts to the store failed")

    async def flush(self) -> None:
        async with self.lock:
            rows, requests = self.pending, self.requests
            self.pending, self.requests = [], {}
            if rows or requests:
                await asyncio.to_thread(self._write, rows, requests)

    def _write(self, rows: list, requests: dict) -> None:
        self.store.put_forecasts([(s, t0, orjson.dumps({"base": base, "served": served, "scale": scale},
                                                       option=orjson.OPT_SERIALIZE_NUMPY))
                                  for s, t0, base, served, scale in rows])
        self.store.put_requests([(s, orjson.dumps(obj)) for s, obj in requests.items()])

    # ---- forecasts --------------------------------------------------------------------------------
    async def fill(self, obj) -> None:
        """Give the series of a forecast request that have no history the one the store holds (in place)."""
        series = obj.get("series") if type(obj) is dict else None
        if type(series) is not list:
            return
        wanted = [(i, s) for i, s in enumerate(series) if type(s) is dict and "history" not in s]
        if not wanted:
            return
        keys = [self.parser.key(i, s.get("id"))[0] for i, s in wanted]
        rows = await _call(self.store.actuals, sorted(set(keys)), NEVER)  # pruned to what is kept
        by_series: dict = {}
        for row in rows:
            by_series.setdefault(row[0], []).append(row)
        for (i, s), key in zip(wanted, keys):
            name = s.get("id") if s.get("id") is not None else i
            if key not in by_series:
                raise RequestError(f"series {shown(name)}: no history was sent and the server holds no actuals of it "
                                   "(POST /v1/actuals first, or send the history)", series=name, field="history")
            s["history"] = history_from(self.parser, name, by_series[key])

    def keys(self, ids: list) -> list[str]:
        return [self.parser.key(i, sid)[0] for i, sid in enumerate(ids)]

    async def serve(self, keys: list[str], base: np.ndarray, target_scale: np.ndarray) -> np.ndarray:
        """The quantiles to answer with: the model's (calibrated) `base` (N, H, Q), tracked online when
        the bundle's calibration is adaptive."""
        if self.tracking is None:
            return base
        now = time.monotonic()
        stale = sorted({k for k in keys if now - self.states.get(k, (-1e9, None))[0] > TRACKER_CACHE_S})
        if stale:
            try:
                saved = await _call(self.store.trackers, stale)
            except StoreUnavailable:  # forecasts go on, with the fitted offsets, while the store is away
                return base
            for k in stale:
                self.states[k] = (now, self.tracking.state(saved.get(k)))
        scale = window_scale(target_scale)
        return np.stack([self.tracking.serve(base[i], scale[i], self.states[k][1])
                         for i, k in enumerate(keys)])

    def record(self, keys: list[str], times: list[list[str]], series: list, base: np.ndarray, served: np.ndarray,
               target_scale: np.ndarray) -> None:
        scale = window_scale(target_scale)
        for i, key in enumerate(keys):
            t0 = int(np.datetime64(times[i][0], "ns").astype(np.int64))
            self.pending.append((key, t0, base[i], served[i], float(scale[i])))
            self.requests[key] = series[i]

    # ---- actuals ----------------------------------------------------------------------------------
    async def post_actuals(self, body: bytes) -> dict:
        rows = self.actuals_parser.parse(body)  # RequestError: 4xx naming the item and field
        await self.flush()  # forecasts this worker issued before these actuals: on record first
        touched = {r[0] for r in rows}
        try:
            await asyncio.to_thread(self._store_actuals, rows)
        finally:
            for key in touched:  # learned from: read again before the next forecast
                self.states.pop(key, None)
        return {"stored": len(rows), "series": len(touched)}

    def _store_actuals(self, rows: list) -> None:
        self.store.put_actuals(rows)
        if self.tracking is not None:
            for series in sorted({r[0] for r in rows}):
                self.tracking.advance(self.store, series)
        self.posts += 1
        if self.posts % PRUNE_EVERY == 1:
            latest = self.store.latest()
            if latest is not None:
                self.store.prune(steps_back(self.parser, latest, self.keep_steps))

    # ---- reading ----------------------------------------------------------------------------------
    async def monitoring(self, cached: bool = False) -> dict:
        at, doc = self._monitor
        if cached and doc is not None and time.monotonic() - at < MONITOR_CACHE_S:
            return doc
        await self.flush()
        doc = await asyncio.to_thread(self._monitoring)
        self._monitor = (time.monotonic(), doc)
        return doc

    def _monitoring(self) -> dict:
        latest = self.store.latest()
        if latest is None:
            return monitoring([], [], self.quantiles, None, self.monitor_hours)
        since = latest - int(self.monitor_hours * 3600e9)
        actuals = self.store.actuals(None, since)
        issued = self.store.forecasts(None, steps_back(self.parser, since, self.parser.H))
        return monitoring(actuals, issued, self.quantiles, lambda t0: forecast_times(self.parser, t0), self.monitor_hours)

    async def overview(self) -> dict:
        """Each series the store knows: its latest actual and its latest issued forecast's median (the grid)."""
        await self.flush()
        return await asyncio.to_thread(self._overview)

    def _overview(self) -> dict:
        latest = self.store.latest()
        since = NEVER if latest is None else steps_back(self.parser, latest, self.keep_steps)
        out: dict = {}
        for s, t, v, _ in self.store.actuals(None, since):
            out.setdefault(s, {})["last_actual"] = {"time": iso(t), "value": v}
        for s, t0, record in self.store.forecasts(None, since):  # by t0: the last one stays
            served = np.asarray(orjson.loads(record)["served"])
            median = served[:, self.median]
            out.setdefault(s, {})["forecast"] = {"start": iso(t0), "mean_median": float(median.mean())}
        return out

    async def series(self, key: str) -> dict:
        """One series: its stored actuals (time, value), its last request's series object, its latest issued
        forecast."""
        await self.flush()
        return await asyncio.to_thread(self._series, key)

    def _series(self, key: str) -> dict:
        rows = self.store.actuals([key], NEVER)
        issued = self.store.forecasts([key], NEVER)
        request = self.store.request(key)
        out = {"series": key, "actuals": {"time": [iso(t) for _, t, _, _ in rows], "value": [v for _, _, v, _ in rows]},
               "request": orjson.loads(request) if request else None, "forecast": None}
        if issued:
            _, t0, record = issued[-1]
            r = orjson.loads(record)
            times = forecast_times(self.parser, t0)
            out["forecast"] = {"time": [iso(int(t)) for t in times], "quantiles": r["served"]}
        return out

