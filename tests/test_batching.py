"""The request queue's batch collection: the oldest batch fills first, and is woken once."""
from __future__ import annotations

import asyncio
from typing import Callable

from modelserve.batching import RequestQueue
from modelserve.types import InferenceRequest


def _queue() -> tuple[RequestQueue, Callable[[int], InferenceRequest]]:
    """A queue, and a maker of requests ``r<n>`` for it (call inside the running loop)."""
    loop = asyncio.get_running_loop()
    return RequestQueue(100), lambda n: InferenceRequest(f"r{n}", [], [], 0.0, loop.create_future())


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_oldest_batch_fills_before_an_idle_worker_starts_another():
    async def main() -> None:
        q, req = _queue()
        a = asyncio.ensure_future(q.get_batch(4, 10.0))
        b = asyncio.ensure_future(q.get_batch(4, 10.0))
        await _settle()
        reqs = [req(i) for i in range(8)]
        for r in reqs:  # one at a time, letting both workers run between arrivals
            q.put(r)
            await _settle()
        assert a.done() and b.done()
        assert a.result() == (reqs[:4], "full")  # not r0, r2, r4, r6: the batches are not interleaved
        assert b.result() == (reqs[4:], "full")

    asyncio.run(main())


def test_a_collecting_batch_is_woken_once_when_it_can_fill():
    async def main() -> None:
        q, req = _queue()
        a = asyncio.ensure_future(q.get_batch(4, 10.0))
        await _settle()
        q.put(req(0))
        await _settle()  # a holds r0 and waits for 3 more
        waiter = q._collectors[0]
        for n in (1, 2):
            q.put(req(n))
            await _settle()
            assert not a.done() and q._collectors and q._collectors[0] is waiter  # not woken per request
            assert not q.has_unclaimed()  # reserved for the collecting batch: no spare takes them
        q.put(req(3))
        await _settle()
        batch, reason = a.result()
        assert [r.request_id for r in batch] == ["r0", "r1", "r2", "r3"] and reason == "full"
        assert q._reserved == 0 and q._claimed == 0

    asyncio.run(main())


def test_a_batch_that_cannot_fill_leaves_when_its_delay_runs_out():
    async def main() -> None:
        q, req = _queue()
        a = asyncio.ensure_future(q.get_batch(4, 0.05))
        idle = asyncio.ensure_future(q.get_batch(4, 10.0))
        await _settle()
        q.put(req(0))
        q.put(req(1))
        batch, reason = await asyncio.wait_for(a, 2.0)
        assert [r.request_id for r in batch] == ["r0", "r1"] and reason == "delay_expired"
        assert not idle.done() and q._reserved == 0  # the idle worker was never handed the reserved two
        q.put(req(2))  # now it is the next batch's first request
        await _settle()
        assert not idle.done() and [c.want for c in q._collectors] == [3]
        idle.cancel()
        await _settle()
        assert len(q) == 1 and q._reserved == 0 and not q._collectors  # a stopped collector hands back

    asyncio.run(main())


def test_requests_beyond_what_the_collecting_batch_needs_go_to_an_idle_worker_then_a_spare():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        q, req = _queue()
        a = asyncio.ensure_future(q.get_batch(2, 10.0))
        b = asyncio.ensure_future(q.get_batch(2, 10.0))
        await _settle()
        spare = loop.create_future()
        q.add_spare(spare)
        for n in range(4):  # all at once, before any worker runs
            q.put(req(n))
        assert not spare.done()  # the two idle workers take all four
        q.put(req(4))
        assert spare.done()  # nobody else will: a busy worker may
        await _settle()
        assert [r.request_id for r in a.result()[0]] == ["r0", "r1"]
        assert [r.request_id for r in b.result()[0]] == ["r2", "r3"]
        assert q.has_unclaimed() and len(q) == 1

    asyncio.run(main())
