"""The per-model-version request queue and the batch collector; pure asyncio, clock injectable."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable, Optional

from .errors import QUEUE_TIMEOUT_MESSAGE, GatewayTimeoutError, ServiceUnavailableError
from .types import InferenceRequest

FULL, DELAY, ALONE = "full", "delay_expired", "no_wait"


class RequestQueue:
    """A bounded FIFO of requests that idle workers take batches from.

    ``put`` never blocks: a full queue raises ``ServiceUnavailableError`` at once. ``get_batch``
    waits for a first request, then up to ``max_delay`` for more, and returns as soon as the batch
    is full. Requests whose client is gone, or whose deadline passed, are dropped when taken.

    Idle workers wait in ``get_batch``; a worker already running a batch may take one more
    (pipelining) but only work that no idle worker is about to take: it waits as a *spare*
    (``add_spare``), woken only when a request arrives and no idle worker waits, and checks
    ``has_unclaimed`` (requests beyond those that woken idle workers will take).
    """

    def __init__(self, maxsize: int, max_bytes: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.clock = clock
        self._items: deque[InferenceRequest] = deque()
        self._bytes = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._spares: deque[asyncio.Future] = deque()  # busy workers with room for one more batch
        self._claimed = 0  # idle waiters woken that have not run yet: each takes what woke it
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def remaining_capacity(self) -> int:
        return max(0, self.maxsize - len(self._items))

    def put(self, req: InferenceRequest) -> None:
        if self.closed:
            raise ServiceUnavailableError("Model is being unregistered; not accepting requests")
        if len(self._items) >= self.maxsize:
            raise ServiceUnavailableError("Model queue is full; retry later", reject_reason="queue_full")
        if self.max_bytes is not None and self._bytes + req.size > self.max_bytes and self._items:
            raise ServiceUnavailableError("Model queue byte budget is exhausted; retry later",
                                          reject_reason="queue_full")
        self._items.append(req)
        self._bytes += req.size
        if len(self._items) > self._claimed:
            self._wake_one()

    def discard(self, req: InferenceRequest) -> bool:
        """Drop a request that has not been taken yet (its client went away)."""
        try:
            self._items.remove(req)
        except ValueError:
            return False
        self._bytes -= req.size
        return True

    def has_unclaimed(self) -> bool:
        """Whether requests wait that no woken idle worker is about to take."""
        return len(self._items) > self._claimed

    def add_spare(self, fut: asyncio.Future) -> None:
        """Resolve ``fut`` when work arrives that no idle worker waits for (see ``remove_spare``)."""
        self._spares.append(fut)

    def remove_spare(self, fut: asyncio.Future) -> None:
        try:
            self._spares.remove(fut)
        except ValueError:
            pass

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(True)  # True: woken for work (a timer resolves None)
                self._claimed += 1
                return
        spares = self._spares
        while spares:
            fut = spares.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _pop_live(self) -> Optional[InferenceRequest]:
        items = self._items
        now: Optional[float] = None
        while items:
            req = items.popleft()
            self._bytes -= req.size
            if req.future.done():
                continue
            if req.deadline is not None:
                now = now if now is not None else self.clock()
                if now > req.deadline:
                    req.future.set_exception(GatewayTimeoutError(QUEUE_TIMEOUT_MESSAGE, reject_reason="timeout"))
                    continue
            return req
        return None

    async def _wait(self, timeout: Optional[float]) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiters.append(fut)
        handle = loop.call_later(timeout, _resolve, fut) if timeout is not None else None
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result() is True:
                self._claimed -= 1
                if len(self._items) > self._claimed:
                    self._wake_one()  # woken for work but stopped: pass the wake on
                raise
        finally:
            if handle is not None:
                handle.cancel()
            if not fut.done():
                fut.cancel()
        if fut.result() is True:
            self._claimed -= 1

    async def get_batch(self, batch_size: int, max_delay: float,
                        wait: bool = True) -> tuple[list[InferenceRequest], str]:
        """Up to ``batch_size`` live requests and why the batch was closed (``full``/``delay_expired``).

        With ``wait=False`` (a busy worker taking one more batch) it takes only unclaimed requests,
        and an empty batch comes back at once when there is none.
        """
        first = self._pop_live() if wait or len(self._items) > self._claimed else None
        while first is None:
            if not wait:
                return [], ""
            await self._wait(None)
            first = self._pop_live()
        batch = [first]
        if batch_size == 1:
            if len(self._items) > self._claimed:
                self._wake_one()  # more work is queued: let another worker start on it
            return batch, FULL
        deadline = self.clock() + max_delay
        try:
            while len(batch) < batch_size:
                req = self._pop_live() if wait or len(self._items) > self._claimed else None
                if req is not None:
                    batch.append(req)
                    continue
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return batch, DELAY
                await self._wait(remaining)
        except asyncio.CancelledError:
            self.requeue(batch)  # the collector was stopped: hand back what it took
            raise
        if len(self._items) > self._claimed:
            self._wake_one()  # more work is queued: let another idle worker start on it
        return batch, FULL

    def requeue(self, batch: list[InferenceRequest]) -> None:
        """Put taken requests back at the head of the queue, in order (their worker went away)."""
        for req in reversed(batch):
            if not req.future.done():
                self._items.appendleft(req)
                self._bytes += req.size
        if len(self._items) > self._claimed:
            self._wake_one()

    def drain_all(self) -> list[InferenceRequest]:
        out = [r for r in self._items if not r.future.done()]
        self._items.clear()
        self._bytes = 0
        return out

    def wake_all(self) -> None:
        for waiters in (self._waiters, self._spares):
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(None)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
