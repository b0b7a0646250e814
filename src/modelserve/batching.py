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

    Who gets an arriving request, in this order:

    1. the oldest batch being collected. It is woken once, when the queue holds all it still needs
       (or when its delay runs out), not once per request; the requests it waits for are reserved
       for it. Filling one batch before starting another sends the first batch as early as possible,
       so with two workers one computes while the other's batch fills;
    2. an idle worker waiting for a first request;
    3. a worker already running a batch (pipelining), but only for work that no idle worker or
       collecting batch is about to take: it waits as a *spare* (``add_spare``), and checks
       ``has_unclaimed``.
    """

    def __init__(self, maxsize: int, max_bytes: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.clock = clock
        self._items: deque[InferenceRequest] = deque()
        self._bytes = 0
        self._idle: deque[_Waiter] = deque()  # idle workers waiting for a first request
        self._collectors: deque[_Waiter] = deque()  # batches waiting for more, oldest first
        self._reserved = 0  # requests the waiting collectors still need
        self._woken: list[_Waiter] = []  # resolved, not yet running: they take what they claim
        self._spares: deque[asyncio.Future] = deque()  # busy workers with room for one more batch
        self._claimed = 0  # requests that woken waiters will take when they run
        self.closed = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None

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
            self._wake()

    def discard(self, req: InferenceRequest) -> bool:
        """Drop a request that has not been taken yet (its client went away)."""
        try:
            self._items.remove(req)
        except ValueError:
            return False
        self._bytes -= req.size
        return True

    def has_unclaimed(self) -> bool:
        """Whether requests wait that no woken worker and no collecting batch is about to take."""
        return len(self._items) - self._claimed - self._reserved > 0

    def add_spare(self, fut: asyncio.Future) -> None:
        """Resolve ``fut`` when work arrives that no idle worker waits for (see ``remove_spare``)."""
        self._spares.append(fut)

    def remove_spare(self, fut: asyncio.Future) -> None:
        try:
            self._spares.remove(fut)
        except ValueError:
            pass

    def _wake(self) -> None:
        """Hand the requests nobody has claimed yet to collectors, then idle workers, then a spare."""
        avail = len(self._items) - self._claimed
        for w in self._woken:  # about to run: each takes up to what it wants, whatever woke it
            if avail <= 0:
                return
            extra = min(avail, w.want - w.claim)
            w.claim += extra
            self._claimed += extra
            avail -= extra
        collectors = self._collectors
        while collectors and avail > 0:
            w = collectors[0]
            if avail < w.want:
                return  # all of it is for the oldest collecting batch: it fills first
            collectors.popleft()
            self._reserved -= w.want
            avail -= self._resolve(w, w.want)
        idle = self._idle
        while idle and avail > 0:
            w = idle.popleft()
            avail -= self._resolve(w, min(avail, w.want))
        if avail <= 0:
            return
        spares = self._spares
        while spares:
            fut = spares.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _resolve(self, w: _Waiter, claim: int) -> int:
        if w.fut.done():
            return 0
        w.fut.set_result(None)
        w.claim = claim
        self._claimed += claim
        self._woken.append(w)
        return claim

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

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():  # cached: on Python 3.11 get_running_loop() is a syscall
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def _wait(self, want: int, collecting: bool, timeout: Optional[float] = None) -> None:
        """Wait as an idle worker that takes up to ``want`` requests, or as a batch that needs ``want`` more."""
        loop = self._get_loop()
        w = _Waiter(loop.create_future(), want)
        if collecting:
            self._collectors.append(w)
            self._reserved += want
        else:
            self._idle.append(w)
        handle = loop.call_later(timeout, self._expire, w) if timeout is not None else None
        stopped = False
        try:
            await w.fut
        except BaseException:
            stopped = True
            raise
        finally:
            if handle is not None:
                handle.cancel()
            if not w.fut.done():
                w.fut.cancel()
            self._unlist(w)
            if w.claim:
                self._claimed -= w.claim
            if stopped and len(self._items) > self._claimed:
                self._wake()  # what it had reserved, or was woken for, goes to the next waiter

    def _expire(self, w: _Waiter) -> None:
        """A collecting batch's delay ran out: it leaves with what the queue holds."""
        if self._unlist(w):
            self._woken.append(w)
        if not w.fut.done():
            w.fut.set_result(None)

    def _unlist(self, w: _Waiter) -> bool:
        """Take ``w`` out of whichever list holds it; True if it was woken (it runs now)."""
        if w in self._woken:
            self._woken.remove(w)
            return True
        try:
            self._collectors.remove(w)
            self._reserved -= w.want
            return False
        except ValueError:
            pass
        try:
            self._idle.remove(w)
        except ValueError:
            pass
        return False

    async def get_batch(self, batch_size: int, max_delay: float,
                        wait: bool = True) -> tuple[list[InferenceRequest], str]:
        """Up to ``batch_size`` live requests and why the batch was closed (``full``/``delay_expired``).

        With ``wait=False`` (a busy worker taking one more batch) it starts only on unclaimed
        requests, and an empty batch comes back at once when there is none.
        """
        first = self._pop_live() if wait or self.has_unclaimed() else None
        while first is None:
            if not wait:
                return [], ""
            await self._wait(batch_size, False)
            first = self._pop_live()
        batch = [first]
        if batch_size == 1:
            if len(self._items) > self._claimed:
                self._wake()  # more work is queued: let another worker start on it
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
                await self._wait(batch_size - len(batch), True, remaining)
        except asyncio.CancelledError:
            self.requeue(batch)  # the collector was stopped: hand back what it took
            raise
        if len(self._items) > self._claimed:
            self._wake()  # more work is queued: let another idle worker start on it
        return batch, FULL

    def requeue(self, batch: list[InferenceRequest]) -> None:
        """Put taken requests back at the head of the queue, in order (their worker went away)."""
        for req in reversed(batch):
            if not req.future.done():
                self._items.appendleft(req)
                self._bytes += req.size
        if len(self._items) > self._claimed:
            self._wake()

    def drain_all(self) -> list[InferenceRequest]:
        out = [r for r in self._items if not r.future.done()]
        self._items.clear()
        self._bytes = 0
        return out

    def wake_all(self) -> None:
        for waiters in (self._collectors, self._idle):
            while waiters:
                w = waiters.popleft()
                if waiters is self._collectors:
                    self._reserved -= w.want
                self._woken.append(w)
                if not w.fut.done():
                    w.fut.set_result(None)
        spares = self._spares
        while spares:
            fut = spares.popleft()
            if not fut.done():
                fut.set_result(None)


class _Waiter:
    """A worker waiting in the queue: idle (takes up to ``want``) or collecting (needs ``want`` more)."""

    __slots__ = ("fut", "want", "claim")

    def __init__(self, fut: asyncio.Future, want: int) -> None:
        self.fut = fut
        self.want = want
        self.claim = 0  # requests claimed for it since it was woken
