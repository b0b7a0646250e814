"""TorchServe's gRPC management API (``org.pytorch.serve.grpc.management.ManagementAPIsService``).

Same operations and texts as the REST management API: ``ManagementResponse.msg`` holds the JSON
that REST returns for DescribeModel and ListModels, and REST's ``status`` text for the others.
As in TorchServe, proto3 zeros mean "not set" (``initial_workers=0`` takes the default; a scale
request's ``min_worker`` defaults to 1 and ``max_worker`` to ``min_worker``), and ``synchronous``
defaults to false: register/scale answer "Processing worker updates..." while the workers start.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

import grpc
import orjson

from ..errors import BadRequestError, MethodNotAllowedError, ModelServeError
from ..log import get_logger
from ..registry import RegisterOptions
from ..service import (PROCESSING, ManagementService, default_status, registered_status, scaled_status,
                       unregistered_status)
from ._generated import management_pb2, management_pb2_grpc
from .server import abort

log = get_logger()


def _opt(value: int) -> Optional[int]:
    return value if value else None


def _guard(fn: Callable[..., Awaitable[str]]) -> Callable[..., Awaitable[Any]]:
    """Run an RPC body that returns the message text; map its error to a status in one place."""

    async def rpc(self: "ManagementServicer", request: Any, context: grpc.aio.ServicerContext) -> Any:
        error: Optional[BaseException] = None
        try:
            msg = await fn(self, request)
        except Exception as exc:  # noqa: BLE001 - mapped to a status by abort()
            error = exc
        if error is not None:
            await abort(context, error)
        return management_pb2.ManagementResponse(msg=msg)

    rpc.__name__ = fn.__name__
    return rpc


def _json(data: Any) -> str:
    return orjson.dumps(data).decode()  # byte for byte what REST answers


class ManagementServicer(management_pb2_grpc.ManagementAPIsServiceServicer):
    def __init__(self, service: ManagementService, enable_model_api: bool) -> None:
        self.service = service
        self.enable_model_api = enable_model_api
        self._tasks: set[asyncio.Task] = set()

    def _background(self, coro: Any, what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except ModelServeError as exc:
                log.error("Asynchronous %s failed: %s", what, exc.message)
            except Exception:  # noqa: BLE001
                log.exception("Asynchronous %s failed", what)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _require_model_api(self) -> None:
        if not self.enable_model_api:
            raise MethodNotAllowedError("Model API is disabled; start with --enable-model-api to allow it")

    @_guard
    async def DescribeModel(self, request: Any) -> str:
        if not request.model_name:
            raise BadRequestError("Parameter model_name is required.")
        version = request.model_version or None
        if request.customized:
            return _json(await self.service.describe_custom(request.model_name, version))
        return _json(self.service.describe(request.model_name, version))

    @_guard
    async def ListModels(self, request: Any) -> str:
        return _json(self.service.list_models(request.limit or None, request.next_page_token or None))

    @_guard
    async def RegisterModel(self, request: Any) -> str:
        self._require_model_api()
        if not request.url:
            raise BadRequestError("Parameter url is required.")
        opts = RegisterOptions(
            model_name=request.model_name or None, handler=request.handler or None, runtime=request.runtime or None,
            batch_size=_opt(request.batch_size), max_batch_delay=_opt(request.max_batch_delay),
            initial_workers=_opt(request.initial_workers), response_timeout=_opt(request.response_timeout),
            startup_timeout=_opt(request.startup_timeout),
        )
        mv = await self.service.register(request.url, opts, wait=request.synchronous)
        return registered_status(mv, request.synchronous) or PROCESSING

    @_guard
    async def ScaleWorker(self, request: Any) -> str:
        if not request.model_name:
            raise BadRequestError("Parameter model_name is required.")
        name, version = request.model_name, request.model_version or None
        mv = self.service.registry.get(name, version)
        # proto3 zeros mean "not set"
        lo, hi = self.service.scale_bounds(request.min_worker or None, request.max_worker or None)
        if request.synchronous:
            await self.service.scale(name, version, lo, hi)
            return scaled_status(mv, lo, version)
        self._background(self.service.scale(name, version, lo, hi), f"scaling of {name}")
        return PROCESSING

    @_guard
    async def SetDefault(self, request: Any) -> str:
        if not request.model_name or not request.model_version:
            raise BadRequestError("Parameters model_name and model_version are required.")
        self.service.set_default(request.model_name, request.model_version)
        return default_status(request.model_name, request.model_version)

    @_guard
    async def UnregisterModel(self, request: Any) -> str:
        self._require_model_api()
        if not request.model_name:
            raise BadRequestError("Parameter model_name is required.")
        mv = await self.service.unregister(request.model_name, request.model_version or None)
        return unregistered_status(mv)
