"""The micro-batcher: concurrent requests share model calls, answers go back to their own request,
the queue is bounded, a failing call fails only its batch, shutdown finishes what is queued."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from fusioncast.serve.batcher import MicroBatcher, QueueFull


class FakeModel:
    """Doubles its input; records batch sizes and threads; sleeps to let requests pile up."""

    def __init__(self, seconds: float = 0.01, fail_on: int | None = None):
        self.calls: list[int] = []
        self.threads: list[str] = []
        self.seconds, self.fail_on = seconds, fail_on

    def __call__(self, inputs: dict[str, np.ndarray], interpretation: bool) -> list[np.ndarray]:
        x = inputs["x"]
        self.calls.append(len(x))
        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in x:
            raise RuntimeError("model failed")
        return [2 * x]


def request(i: int, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full(n, i, np.float32)}


async def run_all(batcher: MicroBatcher, requests: list[tuple[int, int]]):
    await batcher.start()
    try:
        return await asyncio.gather(*[batcher.submit(request(i, n), n) for i, n in requests], return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_calls_and_get_their_own_answers():
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=8, inline_max_series=0)
    answers = asyncio.run(run_all(batcher, [(i, 1 + i % 3) for i in range(20)]))
    for i, out in enumerate(answers):
        np.testing.assert_array_equal(out[0], np.full(1 + i % 3, 2 * i))
    assert sum(model.calls) == sum(1 + i % 3 for i in range(20))
    assert max(model.calls) <= 8 and len(model.calls) < 20  # batched, never above the limit
    assert all(t.startswith("fusioncast-model") for t in model.threads)


def test_lone_small_batches_run_inline():
    model = FakeModel(seconds=0)

    async def one_at_a_time():
        await batcher.start()
        out = [await batcher.submit(request(i), 1) for i in range(3)]
        out.append(await batcher.submit(request(9, 4), 4))  # more than inline_max_series: the thread
        await batcher.stop()
        return out

    batcher = MicroBatcher(model, inline_max_series=1)
    out = asyncio.run(one_at_a_time())
    assert [o[0].tolist() for o in out] == [[0.0], [2.0], [4.0], [18.0] * 4]
    assert model.threads[:3] == [threading.main_thread().name] * 3 and model.threads[3].startswith("fusioncast-model")


def test_max_wait_holds_a_batch_to_fill():
    model = FakeModel(seconds=0)

    async def staggered():
        await batcher.start()
        tasks = []
        for i in range(4):
            tasks.append(asyncio.ensure_future(batcher.submit(request(i), 1)))
            await asyncio.sleep(0.01)
        out = await asyncio.gather(*tasks)
        await batcher.stop()
        return out

    batcher = MicroBatcher(model, max_batch_size=4, max_wait_ms=200)
    asyncio.run(staggered())
    assert model.calls == [4]


def test_queue_is_bounded():
    model = FakeModel(seconds=0.05)
    batcher = MicroBatcher(model, max_batch_size=2, max_queue=3, inline_max_series=0)
    answers = asyncio.run(run_all(batcher, [(i, 1) for i in range(12)]))
    refused = [a for a in answers if isinstance(a, QueueFull)]
    assert refused and len(refused) < 12
    assert all(isinstance(a, (list, QueueFull)) for a in answers)


def test_a_failing_call_fails_only_its_batch():
    model = FakeModel(fail_on=3)
    batcher = MicroBatcher(model, max_batch_size=1, inline_max_series=0)
    answers = asyncio.run(run_all(batcher, [(i, 1) for i in range(6)]))
    assert isinstance(answers[3], RuntimeError)
    assert all(isinstance(a, list) for i, a in enumerate(answers) if i != 3)


def test_stop_finishes_queued_requests_then_refuses():
    model = FakeModel(seconds=0.01)

    async def scenario():
        await batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit(request(i), 1)) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        done = await asyncio.gather(*tasks)
        with pytest.raises(QueueFull):
            await batcher.submit(request(0), 1)
        return done

    batcher = MicroBatcher(model, max_batch_size=2, max_wait_ms=1000)
    assert len(asyncio.run(scenario())) == 5
