"""TorchServe's gRPC inference API (``org.pytorch.serve.grpc.inference.InferenceAPIsService``).

``PredictionsRequest.input`` entries become request params by name, as ``application/octet-stream``:
like TorchServe, a gRPC input reaches the handler as raw bytes, whatever it holds. gRPC metadata
becomes request headers; ``sequence_id`` is also passed as the ``ts_request_sequence_id`` header.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional

import grpc
import orjson

from ..errors import InternalError, ModelServeError
from ..service import InferenceService, new_request_id
from ..types import Param, Result
from ._generated import inference_pb2, inference_pb2_grpc, rpc_status_pb2
from .server import abort, request_headers, status_of, timeout_of

OCTET = "application/octet-stream"


def _params(request: Any) -> list[Param]:
    return [Param(name, OCTET, bytes(value)) for name, value in request.input.items()]


def _error(item: BaseException) -> ModelServeError:
    return item if isinstance(item, ModelServeError) else InternalError(str(item))


class InferenceServicer(inference_pb2_grpc.InferenceAPIsServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def _predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        extra = {"ts_request_sequence_id": request.sequence_id} if request.HasField("sequence_id") else None
        return await self.service.predict(
            request.model_name, request.model_version or None, _params(request),
            request_headers(context, extra), new_request_id(), timeout_of(context))

    async def Ping(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = "Healthy" if self.service.healthy() else "Unhealthy"
        return inference_pb2.TorchServeHealthResponse(health=orjson.dumps({"status": status}).decode())

    async def Predictions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One response; a streaming handler's chunks are joined (what a REST client reads)."""
        error: Optional[BaseException] = None
        body = b""
        try:
            answer = await self._predict(request, context)
            if isinstance(answer, Result):
                body = answer.body
            else:
                parts = []
                async for chunk in _chunks(answer):
                    parts.append(chunk.body)
                body = b"".join(parts)
        except Exception as exc:  # noqa: BLE001 - mapped to a status by abort()
            error = exc
        if error is not None:
            await abort(context, error)
        return inference_pb2.PredictionResponse(prediction=body)

    async def StreamPredictions(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """One message per intermediate response as soon as the handler sends it, then the final one."""
        error: Optional[BaseException] = None
        try:
            answer = await self._predict(request, context)
            if isinstance(answer, Result):
                yield inference_pb2.PredictionResponse(prediction=answer.body)
            else:
                async for chunk in _chunks(answer):
                    if chunk.body or not chunk.final:
                        yield inference_pb2.PredictionResponse(prediction=chunk.body)
        except Exception as exc:  # noqa: BLE001 - mapped to a status by abort()
            error = exc
        if error is not None:
            await abort(context, error)

    async def StreamPredictions2(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Requests are answered in order; an error answers its request and keeps the stream open."""
        async for request in request_iterator:
            seq = request.sequence_id if request.HasField("sequence_id") else None
            try:
                answer = await self._predict(request, context)
                if isinstance(answer, Result):
                    yield _response(answer.body, seq)
                else:
                    async for chunk in _chunks(answer):
                        if chunk.body or not chunk.final:
                            yield _response(chunk.body, seq)
            except Exception as exc:  # noqa: BLE001 - answers this request; the stream goes on
                code, message = status_of(exc)
                yield inference_pb2.PredictionResponse(
                    sequence_id=seq, status=rpc_status_pb2.Status(code=code.value[0], message=message))


def _response(body: bytes, seq: Optional[str]) -> Any:
    return inference_pb2.PredictionResponse(prediction=body, sequence_id=seq)


async def _chunks(queue: asyncio.Queue) -> AsyncIterator[Result]:
    """The Results of a streamed answer, ending with the final one; a streamed error is raised."""
    while True:
        item = await queue.get()
        if isinstance(item, BaseException):
            raise _error(item)
        yield item
        if item.final:
            return
