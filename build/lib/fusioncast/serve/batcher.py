"""Dynamic micro-batching: concurrent requests share one onnxruntime call.

Requests queue in the event loop; one model call runs at a time in a worker thread (onnxruntime
releases the GIL, so the loop keeps reading and validating requests meanwhile). Whatever queued up
during a call forms the next batch, up to `max_batch_size` series: at low load a request runs at
once, alone; under load batches grow by themselves, which is what makes throughput grow with load.
A batch of at most `inline_max_series` series (a lone request at low load) runs in the event loop
itself: handing it to the thread and back costs two thread wake-ups, which on a busy machine
cost more than the model does.
`max_wait_ms` > 0 additionally holds a batch that is not full for up to that long after its oldest
request arrived. The queue is bounded in series: past `max_queue` a request is refused at once
(QueueFull → 503 with Retry-After) instead of waiting without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(RuntimeError):
    """The queue holds `max_queue` series already (or the server is shutting down)."""


@dataclass
class _Item:
    inputs: dict[str, np.ndarray]
    n: int
    interpretation: bool
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


Run = Callable[[dict[str, np.ndarray], bool], list[np.ndarray]]  # (inputs, interpretation) -> outputs


class MicroBatcher:
    """Queues requests of n series each and runs them through `run` in batches."""

    def __init__(self, run: Run, max_batch_size: int = 64, max_wait_ms: float = 0.0, max_queue: int = 1024,
                 inline_max_series: int = 1, on_batch: Callable[[int, float], None] | None = None,
                 on_queue: Callable[[int], None] | None = None):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.run, self.max_batch_size, self.max_queue = run, max_batch_size, max_queue
        self.max_wait = max_wait_ms / 1e3
        self.inline_max_series = inline_max_series
        self.on_batch, self.on_queue = on_batch, on_queue
        self._pending: deque[_Item] = deque()
        self._queued = 0  # series waiting (not yet in a model call)
        self._closing = False
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return self._queued

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fusioncast-model")
        self._task = asyncio.create_task(self._loop(), name="fusioncast-batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop (graceful shutdown)."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: dict[str, np.ndarray], n: int, interpretation: bool = False) -> list[np.ndarray]:
        """Outputs for these n series; raises QueueFull when the queue is full. A request larger than the
        whole queue is still taken when the queue is empty (it is bounded by the per-request series limit)."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        if self._queued and self._queued + n > self.max_queue:
            raise QueueFull(f"{self._queued} series are queued (limit {self.max_queue})")
        item = _Item(inputs, n, interpretation, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._set_queued(self._queued + n)
        self._wake.set()
        return await item.future

    def _set_queued(self, n: int) -> None:
        self._queued = n
        if self.on_queue is not None:
            self.on_queue(n)

    def _take(self) -> list[_Item]:
        """Pending requests in arrival order up to max_batch_size series (at least one request)."""
        batch = [self._pending.popleft()]
        n = batch[0].n
        while self._pending and n + self._pending[0].n <= self.max_batch_size:
            item = self._pending.popleft()
            batch.append(item)
            n += item.n
        self._set_queued(self._queued - n)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.max_wait and self._queued < self.max_batch_size and not self._closing:
                delay = self._pending[0].arrived + self.max_wait - time.perf_counter()
                if delay > 0:  # hold a batch that is not full, until its oldest request has waited max_wait
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                    continue
            batch = self._take()
            live = [item for item in batch if not item.future.done()]  # a client that went away is skipped
            if not live:
                continue
            inputs = live[0].inputs if len(live) == 1 else {
                k: np.concatenate([item.inputs[k] for item in live]) for k in live[0].inputs}
            interpretation = any(item.interpretation for item in live)
            start = time.perf_counter()
            try:
                if sum(item.n for item in live) <= self.inline_max_series:
                    outputs = self.run(inputs, interpretation)
                else:
                    outputs = await loop.run_in_executor(self._executor, self.run, inputs, interpretation)
            except Exception as e:  # a model failure fails this batch's requests, not the server
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(item.n for item in live), time.perf_counter() - start)
            offset = 0
            for item in live:
                if not item.future.done():
                    item.future.set_result([out[offset : offset + item.n] for out in outputs])
                offset += item.n
            await asyncio.sleep(0)  # after an inline call: let the answers go out before the next batch
