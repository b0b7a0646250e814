"""Transport-agnostic inference and management operations, called by the REST and gRPC adapters."""
from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any, Optional, Sequence, Union

from .errors import BadRequestError, InternalError, ModelServeError
from .metrics import ServerMetrics
from .registry import ModelRegistry, ModelVersion, RegisterOptions
from .types import InferenceRequest, Param, Result

_PREFIX = uuid.uuid4().hex[:20]
_counter = itertools.count(1)


def new_request_id() -> str:
    """A unique id per request, cheaper than uuid4 on the hot path (process prefix + counter)."""
    n = next(_counter)
    return f"{_PREFIX[:8]}-{_PREFIX[8:12]}-{_PREFIX[12:16]}-{_PREFIX[16:20]}-{n:012x}"


class InferenceService:
    def __init__(self, registry: ModelRegistry, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self.started = False  # set once the startup models are loaded
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def record_error(self, exc: ModelServeError) -> None:
        """Count an error answered to a client (adapters call this for errors raised before predict)."""
        self.metrics.count_status(exc.status)
        if exc.reject_reason is not None:
            self.metrics.reject(exc.reject_reason)

    def submit(self, model: str, version: Optional[str], params: list[Param], headers: Sequence[str],
               request_id: str, timeout: Optional[float] = None) -> tuple[ModelVersion, InferenceRequest]:
        """Queue one request; its future resolves to the answer (see ``outcome``).

        Raises (and counts) ``ModelServeError`` when the request cannot be queued.
        """
        mv: Optional[ModelVersion] = None
        now = time.monotonic()
        try:
            mv = self.registry.get(model, version)
            if timeout is None and mv.config.client_timeout_ms:
                timeout = mv.config.client_timeout_ms / 1000.0
            loop = self._loop
            if loop is None or loop.is_closed():  # cached: on Python 3.11 get_running_loop() is a syscall
                loop = self._loop = asyncio.get_running_loop()
            req = InferenceRequest(
                request_id, params, headers, now, loop.create_future(),
                deadline=now + timeout if timeout else None, size=sum(len(p.data) for p in params),
            )
            mv.submit(req)
        except ModelServeError as exc:
            self._failed(mv, exc, now)
            raise
        return mv, req

    def outcome(self, mv: ModelVersion, req: InferenceRequest) -> Union[Result, asyncio.Queue]:
        """The answer of a submitted request whose future is done; raises (and counts) its error."""
        exc = req.future.exception()  # raises CancelledError if it was cancelled
        if exc is not None:
            if isinstance(exc, ModelServeError):
                self._failed(mv, exc, req.arrival)
            raise exc
        answer = req.future.result()
        mv.stats.observe_request(True, time.monotonic() - req.arrival)
        self.metrics.count_status(answer.status if isinstance(answer, Result) else 200)
        return answer

    @staticmethod
    def abandon(mv: ModelVersion, req: InferenceRequest) -> None:
        """The client went away: drop the request from the queue, or tell its worker to skip it."""
        if not mv.queue.discard(req):
            mv.pool.cancel(req)  # sent to a worker: it skips the request unless already running it

    def _failed(self, mv: Optional[ModelVersion], exc: ModelServeError, since: float) -> None:
        self.record_error(exc)
        if mv is not None and exc.reject_reason is None and exc.status != 404:
            mv.stats.observe_request(False, time.monotonic() - since)

    async def predict(self, model: str, version: Optional[str], params: list[Param], headers: Sequence[str],
                      request_id: str, timeout: Optional[float] = None) -> Union[Result, asyncio.Queue]:
        """Queue one request and wait for its answer.

        Returns the final ``Result``, or a queue of streamed Results (the last one ``final``, or an
        exception) when the handler streams.
        """
        mv, req = self.submit(model, version, params, headers, request_id, timeout)
        try:
            await req.future
        except asyncio.CancelledError:
            self.abandon(mv, req)
            raise
        except Exception:  # noqa: BLE001 - outcome() counts and raises it
            pass
        return self.outcome(mv, req)

    def healthy(self) -> bool:
        return self.started and all(mv.healthy for mv in self.registry.all_versions())

    def model_ready(self, model: str, version: Optional[str] = None) -> bool:
        return self.registry.get(model, version).pool.live_workers() > 0


class ManagementService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def list_models(self, limit: Optional[int] = None, next_page_token: Optional[int] = None) -> dict[str, Any]:
        """Default versions sorted by name, TorchServe's paging: limit 1..100 (default 100)."""
        limit = 100 if limit is None or limit > 100 or limit < 0 else limit
        start = max(next_page_token or 0, 0)
        names = sorted(self.registry.models)
        page = names[start:start + limit]
        out: dict[str, Any] = {"models": [
            {"modelName": n, "modelUrl": self.registry.get(n).url} for n in page
        ]}
        if start + limit <= len(names) and limit > 0 and page:
            out["nextPageToken"] = str(start + limit)
        return out

    def describe(self, name: str, version: Optional[str] = None) -> list[dict[str, Any]]:
        if version == "all":
            return [mv.describe() for mv in self.registry.versions(name)]
        return [self.registry.get(name, version).describe()]

    async def describe_custom(self, name: str, version: Optional[str] = None) -> list[dict[str, Any]]:
        from .wire import Kind

        mvs = self.registry.versions(name) if version == "all" else [self.registry.get(name, version)]
        out = []
        for mv in mvs:
            d = mv.describe()
            workers = [w for w in mv.pool.workers() if w.status == "READY"]
            if workers:
                reply = await workers[0].request(Kind.DESCRIBE, Kind.DESCRIBED, 30.0)
                if not reply.get("ok"):
                    raise BadRequestError(f"describe_handle failed: {reply.get('error', '')}")
                d["customizedMetadata"] = reply.get("data")
            out.append(d)
        return out

    async def register(self, url: str, opts: RegisterOptions, wait: bool = True) -> ModelVersion:
        return await self.registry.register(url, opts, wait=wait)

    @staticmethod
    def scale_bounds(min_worker: Optional[int], max_worker: Optional[int]) -> tuple[int, int]:
        """TorchServe's scale defaults and checks: min 1, max = min; max < min is 400, min < 0 is 500."""
        lo = 1 if min_worker is None else min_worker
        hi = lo if max_worker is None else max_worker
        if hi < lo:
            raise BadRequestError("max_worker cannot be less than min_worker.")
        if lo < 0:
            raise InternalError(f"Invalid worker count: min_worker={lo}")
        return lo, hi

    async def scale(self, name: str, version: Optional[str], min_worker: int, max_worker: int) -> ModelVersion:
        return await self.registry.scale(name, version, *self.scale_bounds(min_worker, max_worker))

    def set_default(self, name: str, version: str) -> None:
        self.registry.set_default(name, version)

    async def unregister(self, name: str, version: Optional[str]) -> ModelVersion:
        return await self.registry.unregister(name, version)


# The status texts of the management operations, shared by REST and gRPC (TorchServe's wording).
PROCESSING = "Processing worker updates..."


def registered_status(mv: ModelVersion, synchronous: bool) -> Optional[str]:
    """The register answer, or None for an asynchronous register (the caller answers 202 PROCESSING)."""
    if mv.min_workers == 0:
        return (f'Model "{mv.name}" Version: {mv.version} registered with 0 initial workers. '
                "Use scale workers API to add workers for the model.")
    if synchronous:
        return f'Model "{mv.name}" Version: {mv.version} registered with {len(mv.pool)} initial workers'
    return None


def scaled_status(mv: ModelVersion, workers: int, version: Optional[str]) -> str:
    return f"Workers scaled to {workers} for model: {mv.name}" + (f", version: {version}" if version else "")


def unregistered_status(mv: ModelVersion) -> str:
    return f'Model "{mv.name}" unregistered'


def default_status(name: str, version: str) -> str:
    return f'Default version successfully updated for model "{name}" to "{version}"'
