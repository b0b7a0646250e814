"""The frontend's handle on worker processes: spawn, connect, run batches, ping, restart, scale.

``worker/`` is the child process itself; this module is the parent's side of it.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import orjson

from .batching import RequestQueue
from .errors import (GatewayTimeoutError, ModelLoadError, ModelServeError,
                     ServiceUnavailableError, WorkerError, error_for_status)
from .log import MODEL_LOGGER, get_logger
from .spawn import output_lines, spawn_worker
from .types import InferenceRequest, Result
from .wire import FrameDecoder, Kind, encode, split_blobs

log = get_logger()
model_log = logging.getLogger(MODEL_LOGGER)

# TorchServe's restart backoff, in seconds; reset once a worker has stayed up for a while.
BACKOFF = (0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
HEALTHY_AFTER = 30.0
STOP_TIMEOUT = 5.0
# Batches a worker may hold at once: the one it runs and the next, already in its socket, so it
# starts on that one without waiting for the frontend (pipelining).
PIPELINE_DEPTH = 2
_worker_ids = itertools.count(9000)

MetricsSink = Callable[[list[list[Any]]], None]
# Called after each batch: its requests, why it closed, when it started running in the worker, how
# long it took (s), and whether it was pipelined (sent while the worker still ran another batch).
BatchObserver = Callable[[list[InferenceRequest], str, float, float, bool], None]
# Takes back the requests of batches a dead worker never started.
Requeue = Callable[[list[InferenceRequest]], None]


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _deliver(req: InferenceRequest, outcome: Any) -> None:
    """Answer a request: its future, or its stream once it has started streaming."""
    if req.stream is not None:
        req.stream.put_nowait(outcome)
    elif not req.future.done():
        if isinstance(outcome, BaseException):
            req.future.set_exception(outcome)
        else:
            req.future.set_result(outcome)


class _InFlight:
    """A batch sent to a worker and not answered yet; the first one in the list is running."""

    __slots__ = ("reqs", "reason", "pipelined", "started", "timer")

    def __init__(self, reqs: list[InferenceRequest], reason: str, pipelined: bool) -> None:
        self.reqs = reqs
        self.reason = reason
        self.pipelined = pipelined
        self.started = 0.0  # when it became the head: the worker started on it
        self.timer: Optional[asyncio.TimerHandle] = None


class _WorkerProtocol(asyncio.Protocol):
    __slots__ = ("owner", "decoder")

    def __init__(self, owner: "WorkerProcess") -> None:
        self.owner = owner
        self.decoder = FrameDecoder()

    def data_received(self, data: bytes) -> None:
        for kind, header, payload in self.decoder.feed(data):
            self.owner._on_frame(kind, header, payload)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.owner._on_connection_lost()


@dataclass
class WorkerSpec:
    """What a worker needs to load its model (sent as JSON in its environment)."""

    model_name: str
    model_version: str
    model_dir: str
    manifest: dict[str, Any]
    handler: str
    batch_size: int
    model_yaml_config: dict[str, Any]
    max_response_size: int
    threads: int
    startup_timeout: float
    response_timeout: float
    ping_interval: float = 10.0  # 0: no pings
    ping_timeout: float = 10.0
    limit_max_image_pixels: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)


class WorkerProcess:
    """One live worker process and the Unix socket to it."""

    def __init__(self, spec: WorkerSpec, worker_id: int, gpu: Optional[int],
                 on_metrics: Optional[MetricsSink] = None, on_batch: Optional[BatchObserver] = None,
                 requeue: Optional[Requeue] = None) -> None:
        self.spec = spec
        self.id = worker_id
        self.gpu = gpu
        self.on_metrics = on_metrics
        self.proc: Optional[Any] = None  # asyncio.subprocess.Process or spawn.ForkedWorker
        self.pid: Optional[int] = None
        self.start_time = time.time()
        self.status = "STARTING"
        self.transport: Optional[asyncio.Transport] = None
        self.loop = asyncio.get_running_loop()  # kept: on Python 3.11 get_running_loop() is a syscall
        self.exited: asyncio.Future = self.loop.create_future()
        self.exit_reason = ""
        self._loaded: asyncio.Future = self.loop.create_future()
        self.on_batch = on_batch
        self.requeue = requeue
        # Batches sent and not answered, oldest (running) first; at most PIPELINE_DEPTH.
        self._inflight: deque[_InFlight] = deque()
        self._head_failed = False  # the running batch was answered with an error: ignore the worker now
        self._progress: Optional[asyncio.Future] = None  # the serving loop waits here for a batch to end
        self._batch_ids = itertools.count()
        self._replies: dict[Kind, asyncio.Future] = {}
        self._log_task: Optional[asyncio.Task] = None
        self._tail: list[str] = []
        self.pipelined = 0  # batches sent while the worker was still running another

    @property
    def busy(self) -> bool:
        """Whether a batch is running or waiting in the worker's socket."""
        return bool(self._inflight)

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    @property
    def tag(self) -> str:
        return f"{self.spec.model_name}:{self.spec.model_version} worker {self.id}"

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the process and wait for its model to load; raise ModelLoadError with its traceback."""
        from .worker.main import FD_ENV, SPEC_ENV

        spec = self.spec
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env.update(spec.extra_env)
        env[SPEC_ENV] = orjson.dumps({
            "model_name": spec.model_name, "model_version": spec.model_version, "model_dir": spec.model_dir,
            "manifest": spec.manifest, "handler": spec.handler, "batch_size": spec.batch_size,
            "model_yaml_config": spec.model_yaml_config, "max_response_size": spec.max_response_size,
            "threads": spec.threads, "gpu_id": self.gpu, "worker_id": self.id,
            "limit_max_image_pixels": spec.limit_max_image_pixels,
        }).decode()
        env[FD_ENV] = str(child.fileno())
        env["PYTHONUNBUFFERED"] = "1"
        if spec.threads > 0:
            env.setdefault("OMP_NUM_THREADS", str(spec.threads))
        try:  # forked from the worker template when there is one, else a new process (see spawn.py)
            self.proc = await spawn_worker(env, spec.model_dir, child, spec.startup_timeout)
        finally:
            child.close()
        self.pid = self.proc.pid
        self._log_task = asyncio.get_running_loop().create_task(self._pump_output())
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_unix_connection(lambda: _WorkerProtocol(self), sock=parent)
        waiter = asyncio.ensure_future(asyncio.wait([self._loaded, self.exited], return_when=asyncio.FIRST_COMPLETED))
        try:
            await asyncio.wait_for(waiter, spec.startup_timeout)
        except asyncio.TimeoutError:
            self.kill()
            raise ModelLoadError(f"{self.tag} did not load its model within startup_timeout "
                                 f"({spec.startup_timeout:g} s)") from None
        if not self._loaded.done():
            await self.exited
            tail = "\n".join(self._tail[-20:])
            raise ModelLoadError(f"{self.tag} exited while loading ({self.exit_reason})\n{tail}")
        ok, detail = self._loaded.result()
        if not ok:
            await asyncio.wait([self.exited], timeout=STOP_TIMEOUT)
            self.kill()
            raise ModelLoadError(f"{self.tag} failed to load the model: {detail.rstrip()}")
        self.status = "READY"
        self.start_time = time.time()

    async def _pump_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        prefix = f"[{self.spec.model_name}:{self.spec.model_version} worker {self.id} pid {self.pid}] "
        async for text in output_lines(self.proc.stdout):
            model_log.info("%s%s", prefix, text)
            self._tail.append(text)
            if len(self._tail) > 50:
                del self._tail[:25]

    def _on_connection_lost(self) -> None:
        if self.exited.done():
            return
        asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        code: Optional[int] = None
        if self.proc is not None:
            try:
                code = await asyncio.wait_for(self.proc.wait(), 2.0)
            except asyncio.TimeoutError:
                self.kill()
                code = await self.proc.wait()
        if self._log_task is not None:
            try:
                await asyncio.wait_for(self._log_task, 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        self.exit_reason = self.exit_reason or describe_exit(code)
        stopping = self.status == "STOPPING"
        self.status = "STOPPED" if stopping else "DEAD"
        if not stopping:
            log.warning("%s (pid %s) died: %s", self.tag, self.pid, self.exit_reason)
        self._fail_batch(WorkerError(f"Worker died ({self.exit_reason}) while running this request's batch"))
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(WorkerError(f"Worker died ({self.exit_reason})"))
        if not self.exited.done():
            self.exited.set_result(self.exit_reason)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the worker to exit after the batches it holds; kill it if it does not."""
        self.status = "STOPPING"
        if self.proc is None:  # its start was abandoned before a process existed (a fork still queued)
            if not self.exited.done():
                self.exited.set_result(self.exit_reason or "stopped while starting")
            self.status = "STOPPED"
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(Kind.STOP, {}))
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            return
        except asyncio.TimeoutError:
            self.kill()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                log.error("%s (pid %s) did not exit after SIGKILL", self.tag, self.pid)
        try:  # connected workers resolve ``exited`` when their socket closes
            await asyncio.wait_for(asyncio.shield(self.exited), 1.0 if self.transport is not None else 0)
        except asyncio.TimeoutError:
            if not self.exited.done():  # stopped before it ever connected
                self.exited.set_result(self.exit_reason or "stopped while starting")

    # -- frames -----------------------------------------------------------------------------------
    def _on_frame(self, kind: Kind, header: dict[str, Any], payload: memoryview) -> None:
        if kind is Kind.RESULT:
            self._on_result(header, payload)
        elif kind is Kind.PARTIAL:
            self._on_partial(header, payload)
        elif kind is Kind.LOADED:
            if not self._loaded.done():
                self._loaded.set_result((bool(header.get("ok")), header.get("error", "")))
        elif kind in (Kind.PONG, Kind.DESCRIBED):
            fut = self._replies.pop(kind, None)
            if fut is not None and not fut.done():
                fut.set_result(header)

    def _on_result(self, header: dict[str, Any], payload: memoryview) -> None:
        inflight = self._inflight
        if not inflight or self._head_failed:
            return
        entry = inflight.popleft()  # the worker answers its batches in order: this is the head's
        if entry.timer is not None:
            entry.timer.cancel()
        if inflight:
            self._start_head(inflight[0])  # the worker goes straight on to the next one
        took = time.monotonic() - entry.started
        records = header.get("m")
        if records and self.on_metrics is not None:
            self.on_metrics(records)
        blobs = split_blobs(header, payload)
        expired = header.get("x") or ()  # expired in the worker's socket: the handler never ran them
        for i, (req, (status, ct, hdrs, msg), blob) in enumerate(zip(entry.reqs, header["r"], blobs)):
            if status >= 400:
                if req.future.done() and req.stream is None:
                    continue  # cancelled: its client is gone
                error = error_for_status(status, msg or "request failed")
                if i in expired:
                    error.reject_reason = "timeout"
                _deliver(req, error)
            else:
                _deliver(req, Result(status, ct, bytes(blob), hdrs))
        if self.on_batch is not None:
            self.on_batch(entry.reqs, entry.reason, entry.started, took, entry.pipelined)
        self._wake_progress()

    def _on_partial(self, header: dict[str, Any], payload: memoryview) -> None:
        if not self._inflight or self._head_failed:
            return
        batch = self._inflight[0].reqs  # partials come from the running batch
        by_id = {r.request_id: r for r in batch}
        for (rid, status, ct, msg), blob in zip(header["r"], split_blobs(header, payload)):
            req = by_id.get(rid)
            if req is None:
                continue
            chunk = Result(status, ct, bytes(blob), None, msg or "", final=False)
            if req.stream is None:
                if req.future.done():
                    continue
                req.stream = asyncio.Queue()
                req.future.set_result(req.stream)  # the adapter switches to streaming
            req.stream.put_nowait(chunk)

    def _start_head(self, entry: _InFlight) -> None:
        """``entry`` is now the batch the worker runs: response_timeout counts from here."""
        entry.started = time.monotonic()
        entry.timer = self.loop.call_later(self.spec.response_timeout, self._on_timeout, entry)

    def _wake_progress(self) -> None:
        fut = self._progress
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _fail_head(self, error: Exception) -> None:
        """Answer the running batch with ``error``; later frames of this worker are ignored."""
        entry = self._inflight.popleft()
        if entry.timer is not None:
            entry.timer.cancel()
        self._head_failed = True
        for req in entry.reqs:
            _deliver(req, error)
        if self.on_batch is not None:
            self.on_batch(entry.reqs, entry.reason, entry.started, time.monotonic() - entry.started, entry.pipelined)

    def _fail_batch(self, error: Exception) -> None:
        """The worker is gone: fail the batch it ran (unless already failed), requeue the ones it never started."""
        inflight = self._inflight
        if inflight and not self._head_failed:
            self._fail_head(error)
        waiting = [r for entry in inflight for r in entry.reqs]
        inflight.clear()
        if waiting:
            if self.requeue is not None:
                self.requeue(waiting)
            else:
                for req in waiting:
                    _deliver(req, error)
        self._wake_progress()

    # -- requests ---------------------------------------------------------------------------------
    def send_batch(self, batch: list[InferenceRequest], reason: str) -> None:
        """Write one batch to the worker; it runs after the ones already in flight (see ``_on_result``)."""
        assert self.transport is not None
        reqs = []
        blobs: list[bytes] = []
        for r in batch:
            reqs.append([r.request_id, [[p.name, p.content_type] for p in r.params], r.headers, r.deadline])
            blobs.extend(p.data for p in r.params)
        inflight = self._inflight
        entry = _InFlight(batch, reason, bool(inflight))
        self.transport.write(encode(Kind.BATCH, {"id": next(self._batch_ids), "r": reqs}, blobs))
        inflight.append(entry)
        if len(inflight) == 1:
            self._start_head(entry)
        else:
            self.pipelined += 1

    @property
    def usable(self) -> bool:
        """Whether batches may still be sent: connected, and not abandoned after a response timeout."""
        return not self._head_failed and not self.closing and not self.exited.done()

    def cancel(self, req: InferenceRequest) -> bool:
        """Tell the worker not to run ``req`` if it has not started its batch yet; False if not held here."""
        for entry in self._inflight:
            if req in entry.reqs:
                if not self.closing and not self._head_failed:
                    assert self.transport is not None
                    self.transport.write(encode(Kind.CANCEL, {"ids": [req.request_id]}))
                return True
        return False

    def _on_timeout(self, entry: _InFlight) -> None:
        if not self._inflight or self._inflight[0] is not entry or self._head_failed:
            return
        log.error("%s exceeded response_timeout (%g s); restarting it", self.tag, self.spec.response_timeout)
        self._fail_head(GatewayTimeoutError(
            f"Model {self.spec.model_name} version {self.spec.model_version} did not answer within "
            f"response_timeout ({self.spec.response_timeout:g} s)"))
        self._wake_progress()
        self.exit_reason = "killed after response_timeout"
        self.kill()  # the batches behind it are requeued when its socket closes

    async def request(self, kind: Kind, reply: Kind, timeout: float, header: Optional[dict] = None) -> dict:
        """Send a control frame (ping, describe) and wait for its reply."""
        if self.transport is None or self.exited.done():
            raise ServiceUnavailableError(f"{self.tag} is not running")
        fut = self._replies.get(reply)
        if fut is None or fut.done():
            fut = self._replies[reply] = asyncio.get_running_loop().create_future()
            self.transport.write(encode(kind, header or {}))
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    def info(self) -> dict[str, Any]:
        return {"id": str(self.id), "pid": self.pid, "status": self.status, "gpu": self.gpu is not None,
                "startTime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.start_time)) + "Z",
                "busy": self.busy}


class _Slot:
    """One place in a pool: keeps a worker alive, restarting it with backoff."""

    def __init__(self, pool: "WorkerPool", gpu: Optional[int]) -> None:
        self.pool = pool
        self.gpu = gpu
        self.worker: Optional[WorkerProcess] = None
        self.stopping = False
        self.task: Optional[asyncio.Task] = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.restarts = 0
        self.last_error = ""

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if not self.ready.done():
                self.ready.set_exception(ServiceUnavailableError("worker stopped before it was ready"))
                self.ready.exception()  # retrieved: nobody may be waiting for it

    async def _run(self) -> None:
        pool = self.pool
        attempt = 0
        while not self.stopping:
            worker = WorkerProcess(pool.spec, next(_worker_ids), self.gpu, pool.on_metrics, pool.on_batch,
                                   pool._requeue)
            self.worker = worker
            try:
                await worker.start()
            except ModelLoadError as exc:
                self.last_error = exc.message
                if not self.ready.done():
                    self.ready.set_exception(exc)
                    return
                log.error("%s failed to restart: %s", worker.tag, exc.message.splitlines()[0])
            except Exception:  # noqa: BLE001 - a slot must never die silently: log it and restart
                log.exception("%s failed to start", worker.tag)
                worker.kill()
            else:
                if not self.ready.done():
                    self.ready.set_result(worker)
                elif self.restarts:
                    log.info("%s restarted (pid %s)", worker.tag, worker.pid)
                try:
                    await self._serve(worker)
                except Exception:  # noqa: BLE001
                    log.exception("%s: serving loop failed; replacing the worker", worker.tag)
                    worker.kill()
                if worker.exit_reason and not self.stopping:
                    self.last_error = worker.exit_reason
            if self.stopping:
                break
            alive_for = time.time() - worker.start_time
            attempt = 0 if alive_for > HEALTHY_AFTER else attempt
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            attempt += 1
            self.restarts += 1
            pool.restarts += 1
            log.info("restarting %s in %d s (restart %d)", worker.tag, delay, self.restarts)
            if delay:
                await asyncio.sleep(delay)

    async def _serve(self, worker: WorkerProcess) -> None:
        pool = self.pool
        queue = pool.queue
        batch_size = pool.spec.batch_size
        delay = pool.max_batch_delay
        loop = asyncio.get_running_loop()
        serve = loop.create_task(self._serve_loop(worker, queue, batch_size, delay))
        pinger = loop.create_task(self._ping_loop(worker)) if pool.spec.ping_interval > 0 else None
        try:
            await asyncio.wait([serve, worker.exited], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if pinger is not None:
                pinger.cancel()
            if not serve.done():
                serve.cancel()
            try:
                await serve
            except asyncio.CancelledError:
                pass
        if not worker.exited.done():
            await worker.stop()

    async def _ping_loop(self, worker: WorkerProcess) -> None:
        """Ping the worker while it is idle; one that does not answer is hung and is replaced.

        A busy worker is not pinged: its batch is bounded by response_timeout instead.
        """
        spec = self.pool.spec
        while not worker.exited.done():
            await asyncio.sleep(spec.ping_interval)
            if worker.busy or worker.exited.done():
                continue
            try:
                await worker.request(Kind.PING, Kind.PONG, spec.ping_timeout, {"t": time.time()})
            except asyncio.TimeoutError:
                log.error("%s did not answer a ping within %g s; replacing it", worker.tag, spec.ping_timeout)
                worker.exit_reason = f"did not answer a ping within {spec.ping_timeout:g} s"
                worker.kill()
                return
            except ModelServeError:
                return

    async def _serve_loop(self, worker: WorkerProcess, queue: RequestQueue, batch_size: int, delay: float) -> None:
        """Feed the worker: a batch when it is idle, and one more while it runs one (pipelining).

        A busy worker only takes work that no idle worker of the pool is about to take, so light
        load still spreads over the workers.
        """
        inflight = worker._inflight
        while not self.stopping and worker.usable:
            if not inflight:
                batch, reason = await queue.get_batch(batch_size, delay)
            elif len(inflight) < PIPELINE_DEPTH and queue.has_unclaimed():
                batch, reason = await queue.get_batch(batch_size, delay, wait=False)
            else:
                await self._await_progress(worker, queue, len(inflight) < PIPELINE_DEPTH)
                continue
            if not worker.usable or self.stopping:
                queue.requeue(batch)  # its socket is gone: the next live worker takes the batch
                break
            if batch:
                batch = [r for r in batch if not r.future.done()]  # a client left while the batch filled
                if batch:
                    worker.send_batch(batch, reason)
        while inflight and worker.usable:  # stopping: the batches already sent finish first
            await self._await_progress(worker, queue, False)
        if not worker.usable and not self.stopping:
            await asyncio.shield(worker.exited)  # dying (killed after response_timeout): _serve sees it exit

    @staticmethod
    async def _await_progress(worker: WorkerProcess, queue: RequestQueue, room: bool) -> None:
        """Wait until a batch in flight ends or, with ``room``, work arrives that no idle worker takes."""
        fut = worker._progress = worker.loop.create_future()
        if room:
            queue.add_spare(fut)
        try:
            await fut
        finally:
            if room:
                queue.remove_spare(fut)
            if worker._progress is fut:
                worker._progress = None


class WorkerPool:
    """The workers of one model version, fed from its request queue."""

    def __init__(self, spec: WorkerSpec, queue: RequestQueue, max_batch_delay_ms: int,
                 next_gpu: Callable[[], Optional[int]] = lambda: None,
                 on_metrics: Optional[MetricsSink] = None, on_batch: Optional[BatchObserver] = None) -> None:
        self.spec = spec
        self.queue = queue
        self.max_batch_delay = max_batch_delay_ms / 1000.0
        self.next_gpu = next_gpu
        self.on_metrics = on_metrics
        self.on_batch = on_batch
        self.slots: list[_Slot] = []
        self._retiring: list[_Slot] = []
        self.restarts = 0

    def __len__(self) -> int:
        return len(self.slots)

    def serviceable(self) -> bool:
        """Whether a request queued now will be served: a worker is ready or (re)starting."""
        return any(s.worker is not None and s.worker.status in ("READY", "STARTING") for s in self.slots)

    def last_error(self) -> str:
        errors = [s.last_error for s in self.slots if s.last_error]
        return errors[-1].splitlines()[0][:300] if errors else ""

    def cancel(self, req: InferenceRequest) -> bool:
        """A request's client gave up after a worker got it: the worker skips it unless already running."""
        for slot in (*self.slots, *self._retiring):
            worker = slot.worker
            if worker is not None and worker.cancel(req):
                return True
        return False

    def _requeue(self, reqs: list[InferenceRequest]) -> None:
        """Requests a dead worker never started: queued again while the pool has workers to run them."""
        if self.slots:
            self.queue.requeue(reqs)
            return
        error = ServiceUnavailableError(f"Model {self.spec.model_name} version {self.spec.model_version} "
                                        "was stopped before this request ran")
        for req in reqs:
            _deliver(req, error)

    def live_workers(self) -> int:
        return sum(1 for s in self.slots if s.worker is not None and s.worker.status == "READY")

    async def scale(self, n: int) -> None:
        """Grow or shrink to ``n`` workers; when growing, wait for the new ones to load.

        Raises ModelLoadError (with the worker's own error) if a new worker fails to load.
        """
        if n > len(self.slots):
            loop = asyncio.get_running_loop()
            new = [_Slot(self, self.next_gpu()) for _ in range(n - len(self.slots))]
            for slot in new:
                slot.task = loop.create_task(slot.run())
            self.slots.extend(new)
            results = await asyncio.gather(*(s.ready for s in new), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                for slot in new:
                    if slot in self.slots:
                        self.slots.remove(slot)
                await self._retire(new)
                raise failed[0]
        elif n < len(self.slots):
            retiring = self.slots[n:]
            del self.slots[n:]
            await self._retire(retiring)

    async def _retire(self, slots: list[_Slot]) -> None:
        """Stop slots: busy workers finish the batches they hold first; idle ones stop waiting at once."""
        self._retiring.extend(slots)
        try:
            await self._stop_slots(slots)
        finally:
            for slot in slots:
                self._retiring.remove(slot)

    async def _stop_slots(self, slots: list[_Slot]) -> None:
        for slot in slots:
            slot.stopping = True
            worker = slot.worker
            if slot.task is not None and (worker is None or not worker.busy):
                slot.task.cancel()
            elif worker is not None:
                worker._wake_progress()  # its serving loop stops taking work
        for slot in slots:
            if slot.task is not None:
                try:
                    await slot.task
                except (asyncio.CancelledError, Exception):
                    pass
            worker = slot.worker
            if worker is not None and not worker.exited.done():
                if worker.status == "STARTING":
                    worker.kill()
                await worker.stop()

    async def stop(self) -> None:
        await self.scale(0)

    def workers_info(self) -> list[dict[str, Any]]:
        out = []
        for slot in self.slots:
            if slot.worker is not None:
                info = slot.worker.info()
                info["restarts"] = slot.restarts
                if slot.worker.status != "READY" and slot.last_error:
                    info["lastError"] = slot.last_error.splitlines()[0][:500]
                out.append(info)
        return out

    def workers(self) -> list[WorkerProcess]:
        return [s.worker for s in self.slots if s.worker is not None]
