"""The gRPC servers (grpc.aio, on the frontend's event loop) and the one error -> status mapping.

* inference (``grpc_inference_address:grpc_inference_port``, 7070): TorchServe's
  ``InferenceAPIsService`` and the Open Inference Protocol's ``GRPCInferenceService``;
* management (``grpc_management_address:grpc_management_port``, 7071): ``ManagementAPIsService``.

Both call the same service layer as REST, so gRPC and REST requests share queues and batches.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import grpc

from ..errors import ConfigError, ModelServeError
from ..log import access_log, get_logger

if TYPE_CHECKING:
    from ..config import ServerConfig
    from ..service import InferenceService, ManagementService

log = get_logger()

# Status details travel in a trailer; gRPC clients refuse trailers over 8 KiB by default.
MAX_DETAILS = 4000
# A gRPC answer carries framing around the handler's bytes, which max_response_size already bounds.
SEND_HEADROOM = 64 * 1024


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping of errors to gRPC status codes (errors name their code; REST's message text)."""
    if isinstance(exc, ModelServeError):
        code = getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)
        message = exc.message
    else:  # a bug of the server, not of the request: answered INTERNAL, logged with its traceback
        log.error("gRPC call failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
    if len(message) > MAX_DETAILS:
        message = message[:MAX_DETAILS] + "\n... (truncated)"
    return code, message


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    code, message = status_of(exc)
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises


def request_headers(context: grpc.aio.ServicerContext, extra: Optional[dict[str, str]] = None) -> list[str]:
    """The call's metadata as the service layer's flat ``[name, value, ...]`` header list."""
    out: list[str] = []
    for key, value in context.invocation_metadata() or ():
        if key.endswith("-bin") or not isinstance(value, str):
            continue
        out.append(key.lower())
        out.append(value)
    for key, value in (extra or {}).items():
        out.append(key)
        out.append(value)
    return out


def timeout_of(context: grpc.aio.ServicerContext) -> Optional[float]:
    """The call's deadline as predict's timeout (a request still queued past it is dropped)."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining > 0 else None


# RPCs that answer without a key when ``auth_exempt_health`` is on (as /ping and /v2/health/* do).
HEALTH_METHODS = frozenset({
    "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
})


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Token authorization over gRPC: metadata ``authorization: Bearer <key>`` (inference or management)."""

    def __init__(self, auth: Any, kind: str, exempt: frozenset[str], on_reject: Optional[Any] = None) -> None:
        self.auth = auth
        self.kind = kind
        self.exempt = exempt
        self.on_reject = on_reject

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method in self.exempt:
            return handler
        token = None
        for key, value in details.invocation_metadata or ():
            if key.lower() == "authorization":
                token = value
        try:
            self.auth.check(self.kind, token)
        except ModelServeError as exc:
            if self.on_reject is not None:
                self.on_reject(exc)
            return _denied(handler, exc)
        return handler


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """One access-log line per gRPC call: ``<ip> "gRPC <method>" <status code> <ms>``."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        out = access_log()
        if handler is None or out is None:
            return handler
        method = details.method

        def done(context: grpc.aio.ServicerContext, start: float, failed: bool) -> None:
            code = context.code() if hasattr(context, "code") else None
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            peer = context.peer() or "-"
            ip = peer.split(":", 1)[1].rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
            out.line(ip, f"gRPC {method}", name, (time.perf_counter() - start) * 1000)

        def unary(behavior: Any) -> Any:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start, failed = time.perf_counter(), True
                try:
                    result = await behavior(request, context)
                    failed = False
                    return result
                finally:
                    done(context, start, failed)
            return call

        def streaming(behavior: Any) -> Any:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start, failed = time.perf_counter(), True
                try:
                    if inspect.isasyncgenfunction(behavior):
                        async for item in behavior(request, context):
                            yield item
                    else:
                        await behavior(request, context)
                    failed = False
                finally:
                    done(context, start, failed)
            return call

        de, ser = handler.request_deserializer, handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), de, ser)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), de, ser)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), de, ser)
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), de, ser)


def _denied(handler: Any, exc: ModelServeError) -> Any:
    """A handler of the same shape as ``handler`` that answers ``exc``'s status."""
    code, message = status_of(exc)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    de, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, de, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, de, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, de, ser)
    return grpc.unary_unary_rpc_method_handler(unary, de, ser)


def _options(config: "ServerConfig") -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", int(config.max_request_size)),
        ("grpc.max_send_message_length", int(config.max_response_size) + SEND_HEADROOM),
        ("grpc.so_reuseport", 0),
    ]


class GrpcServers:
    """Both gRPC servers of a ModelServer: built and bound by ``start``, stopped in two stages."""

    def __init__(self, config: "ServerConfig", inference: "InferenceService", management: "ManagementService",
                 auth: Any = None) -> None:
        self.config = config
        self.inference = inference
        self.management = management
        self.auth = auth  # TokenAuth, or None when token authorization is off
        self.servers: list[grpc.aio.Server] = []
        self._stopping: list[asyncio.Task] = []

    async def start(self) -> list[str]:
        """Bind and start both servers; return the lines to log. Raise ConfigError if a port is taken."""
        from ._generated import grpc_service_pb2_grpc, inference_pb2_grpc, management_pb2_grpc
        from .inference import InferenceServicer
        from .management import ManagementServicer
        from .oip import OipServicer

        cfg = self.config
        opts = _options(cfg)
        inference_icpt: list[Any] = [AccessLogInterceptor()]
        management_icpt: list[Any] = [AccessLogInterceptor()]
        if self.auth is not None:
            exempt = HEALTH_METHODS if getattr(cfg, "auth_exempt_health", True) else frozenset()
            inference_icpt.append(TokenInterceptor(self.auth, "inference", exempt,
                                                   getattr(self.inference, "record_error", None)))
            management_icpt.append(TokenInterceptor(self.auth, "management", frozenset()))
        inference = grpc.aio.server(options=opts, interceptors=inference_icpt)
        inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(InferenceServicer(self.inference), inference)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(OipServicer(self.inference), inference)
        management = grpc.aio.server(options=opts, interceptors=management_icpt)
        management_pb2_grpc.add_ManagementAPIsServiceServicer_to_server(
            ManagementServicer(self.management, cfg.enable_model_api), management)
        lines = []
        for label, server, host, port in (
                ("gRPC Inference API", inference, cfg.grpc_inference_address, cfg.grpc_inference_port),
                ("gRPC Management API", management, cfg.grpc_management_address, cfg.grpc_management_port)):
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                bound = server.add_insecure_port(address)
            except RuntimeError:
                bound = 0
            if not bound:
                raise ConfigError(f"cannot listen on {address} for the {label}")
            self.servers.append(server)
            await server.start()
            lines.append(f"{label} bound to {host}:{bound}")
            log.info("%s bound to %s:%d", label, host, bound)
        return lines

    def begin_stop(self, grace: Optional[float]) -> None:
        """Refuse new RPCs now; in-flight ones get ``grace`` seconds (the queues drain meanwhile)."""
        loop = asyncio.get_running_loop()
        self._stopping = [loop.create_task(s.stop(grace)) for s in self.servers]
        self.servers = []

    async def wait_stopped(self) -> None:
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        self._stopping = []
