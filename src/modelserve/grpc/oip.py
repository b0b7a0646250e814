"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``, Triton's layout).

Health, metadata, config, statistics, repository index, ModelInfer and ModelStreamInfer. Input
tensors travel to the worker as raw bytes (``raw_input_contents`` unchanged; typed ``contents`` are
packed once), and outputs come back as ``raw_output_contents`` without any conversion.
Shared-memory, trace and log-settings RPCs are not implemented (UNIMPLEMENTED).
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional

import grpc
from google.protobuf import json_format

from .. import oip
from ..errors import BadRequestError, InternalError, ModelServeError
from ..service import InferenceService, new_request_id
from ..types import Result
from ._generated import grpc_service_pb2 as pb
from ._generated import grpc_service_pb2_grpc
from .server import abort, request_headers, status_of, timeout_of

_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _param(params: Any, key: str) -> Any:
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def parse_inputs(request: Any) -> list[oip.InTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequestError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    if not request.inputs:
        raise BadRequestError("the inference request has no inputs")
    out = []
    for i, inp in enumerate(request.inputs):
        try:
            dt = oip.normalize_datatype(inp.datatype)
        except ValueError as exc:
            raise BadRequestError(f"input '{inp.name}': {exc}") from None
        if raw:
            data = raw[i]
        elif inp.HasField("contents"):
            field = _CONTENTS.get(dt)
            if field is None:
                raise BadRequestError(f"input '{inp.name}': {dt} data must be sent in raw_input_contents")
            try:
                data = oip.values_to_raw(dt, getattr(inp.contents, field))
            except (OverflowError, ValueError, TypeError) as exc:
                raise BadRequestError(f"input '{inp.name}': invalid {dt} contents: {exc}") from None
        else:
            raise BadRequestError(f"input '{inp.name}' has no contents and no raw_input_contents")
        out.append(oip.InTensor(inp.name, dt, list(inp.shape), raw=bytes(data)))
    return out


def requested_outputs(request: Any) -> list[str]:
    names = []
    for o in request.outputs:
        if _param(o.parameters, "classification"):
            raise BadRequestError("the classification extension is not supported")
        names.append(o.name)
    return names


def _timeout(request: Any, context: grpc.aio.ServicerContext) -> Optional[float]:
    deadline = timeout_of(context)
    try:
        asked = oip.timeout_of({"timeout": _param(request.parameters, "timeout")})
    except BadRequestError:
        asked = None
    if asked is None:
        return deadline
    return asked if deadline is None else min(asked, deadline)


def build_response(request: Any, mv: Any, outputs: list[oip.OutTensor]) -> Any:
    resp = pb.ModelInferResponse(model_name=mv.name, model_version=mv.version, id=request.id)
    for t in outputs:
        resp.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        resp.raw_output_contents.append(t.raw)
    return resp


class OipServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.registry = service.registry

    async def _guarded(self, context: grpc.aio.ServicerContext, fn: Any, *args: Any) -> Any:
        error: Optional[BaseException] = None
        try:
            return await fn(*args) if asyncio.iscoroutinefunction(fn) else fn(*args)
        except Exception as exc:  # noqa: BLE001 - mapped to a status by abort()
            error = exc
        await abort(context, error)

    # -- health and metadata -------------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.service.healthy())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = await self._guarded(context, self.service.model_ready, request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**oip.server_metadata())

    def _metadata(self, name: str, version: str) -> Any:
        mv = self.registry.get(name, version or None)
        md = oip.model_metadata(mv, [v.version for v in self.registry.versions(name)])
        return json_format.ParseDict(md, pb.ModelMetadataResponse())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._guarded(context, self._metadata, request.name, request.version)

    def _config(self, name: str, version: str) -> Any:
        cfg = oip.model_config(self.registry.get(name, version or None))
        return json_format.ParseDict({"config": cfg}, pb.ModelConfigResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._guarded(context, self._config, request.name, request.version)

    def _statistics(self, name: str, version: str) -> Any:
        return json_format.ParseDict(oip.statistics(self.registry, name, version), pb.ModelStatisticsResponse())

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._guarded(context, self._statistics, request.name, request.version)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        models = oip.repository_index(self.registry)
        if request.ready:
            models = [m for m in models if m["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in models])

    # -- inference -----------------------------------------------------------------------------------
    async def _infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        inputs = parse_inputs(request)
        mv, outputs = await oip.infer(self.service, request.model_name, request.model_version, inputs,
                                      requested_outputs(request), request_headers(context), new_request_id(),
                                      _timeout(request, context))
        return build_response(request, mv, outputs)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._guarded(context, self._infer, request, context)

    async def ModelStreamInfer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Requests run concurrently; every response (streamed chunks included) goes out as it comes.

        An error answers its request with ``error_message`` and the stream stays open. With the
        request parameter ``triton_enable_empty_final_response``, responses carry
        ``triton_final_response`` and a request ends with an empty final response.
        """
        out: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        loop = asyncio.get_running_loop()

        async def one(request: Any) -> None:
            try:
                async for resp in self._stream_one(request, context):
                    out.put_nowait(pb.ModelStreamInferResponse(infer_response=resp))
            except Exception as exc:  # noqa: BLE001 - answers this request; the stream goes on
                out.put_nowait(pb.ModelStreamInferResponse(error_message=status_of(exc)[1]))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = loop.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                out.put_nowait(None)

        reader = loop.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        flagged = bool(_param(request.parameters, "triton_enable_empty_final_response"))
        inputs = parse_inputs(request)
        requested = requested_outputs(request)
        mv, answer, start = await oip.submit(self.service, request.model_name, request.model_version, inputs,
                                             requested, request_headers(context), new_request_id(),
                                             _timeout(request, context))
        spec = oip.model_spec(mv)
        try:
            if isinstance(answer, Result):
                yield _flag(build_response(request, mv, oip.select_outputs(oip.result_tensors(answer, spec),
                                                                           requested)), flagged, True)
            else:
                while True:
                    item = await answer.get()
                    if isinstance(item, BaseException):
                        raise item if isinstance(item, ModelServeError) else InternalError(str(item))
                    outputs = oip.result_tensors(item, spec)
                    if outputs:
                        outputs = oip.select_outputs(outputs, requested)
                    if outputs or (item.final and flagged):
                        yield _flag(build_response(request, mv, outputs), flagged, item.final)
                    if item.final:
                        break
        except Exception:
            oip.record(mv, start, False)
            raise
        oip.record(mv, start, True, inputs)


def _flag(resp: Any, flagged: bool, final: bool) -> Any:
    if flagged:
        resp.parameters["triton_final_response"].bool_param = final
    return resp
