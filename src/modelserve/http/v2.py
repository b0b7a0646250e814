"""Open Inference Protocol (KServe v2) REST routes and KServe v1 routes, on the inference port.

v2: ``/v2/health/{live,ready}``, ``/v2``, ``/v2/models/{m}[/versions/{v}]`` with ``/ready``,
``/config``, ``/stats`` and ``/infer`` (JSON tensors and the binary tensor data extension),
``/v2/models/stats`` and ``/v2/repository/index``. Errors are ``{"error": "..."}``.

v1: ``GET /v1/models``, ``GET /v1/models/{m}`` (readiness) and ``POST /v1/models/{m}:predict``
with ``{"instances": [...]}`` -> ``{"predictions": [...]}``. As with TorchServe's KServe envelope,
each instance is one item of the handler's batch: modelserve queues it as one request (so instances
of one call, and of concurrent calls, batch together) and answers the predictions in order. A dict
instance reaches the handler as that dict (each key a JSON param), anything else as
``{"data": instance}``; ``{"b64": "..."}`` arrives as bytes.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import time
from typing import Any, Awaitable, Callable, Optional

import orjson
from aiohttp import web

from .. import oip
from ..errors import BadRequestError, InternalError, ModelServeError, NotFoundError, \
    ServiceUnavailableError
from ..log import get_logger
from ..service import InferenceService, new_request_id
from ..types import Param, Result
from .common import flat_headers, methods, read_body

log = get_logger()
JSON_CT = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: ModelServeError) -> web.Response:
    """The one place OIP/KServe REST errors take their shape: ``{"error": message}`` with its status."""
    resp = web.Response(body=orjson.dumps({"error": exc.message}), status=exc.status,
                        headers={"Content-Type": JSON_CT})
    if exc.status == 503:
        resp.headers["Retry-After"] = "1"
    return resp


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers={"Content-Type": JSON_CT})


def _guard(fn: Callable[..., Awaitable[web.StreamResponse]]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @functools.wraps(fn)
    async def wrapped(self: "OipRoutes", request: web.Request) -> web.StreamResponse:
        try:
            return await fn(self, request)
        except ModelServeError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - a server bug: 500 with its name, traceback in the log
            log.exception("%s %s failed", request.method, request.path)
            return error_response(InternalError(f"{type(exc).__name__}: {exc}"))
    return wrapped


def _methods(allowed: dict[str, Handler], guard: Optional[Callable[[web.Request], None]] = None) -> Handler:
    return methods(allowed, guard, render=error_response)


class OipRoutes:
    def __init__(self, service: InferenceService, max_request_size: int) -> None:
        self.service = service
        self.registry = service.registry
        self.max_request_size = max_request_size

    def _mv(self, request: web.Request) -> Any:
        info = request.match_info
        return self.registry.get(info["model_name"], info.get("model_version"))

    # -- v2 health and metadata ----------------------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.service.healthy()
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(oip.server_metadata())

    @_guard
    async def model_metadata(self, request: web.Request) -> web.Response:
        mv = self._mv(request)
        return _json(oip.model_metadata(mv, [v.version for v in self.registry.versions(mv.name)]))

    @_guard
    async def model_ready(self, request: web.Request) -> web.Response:
        mv = self._mv(request)
        ready = mv.pool.live_workers() > 0
        return _json({"name": mv.name, "version": mv.version, "ready": ready}, 200 if ready else 503)

    @_guard
    async def model_config(self, request: web.Request) -> web.Response:
        return _json(oip.model_config(self._mv(request)))

    @_guard
    async def model_stats(self, request: web.Request) -> web.Response:
        info = request.match_info
        return _json(oip.statistics(self.registry, info.get("model_name", ""), info.get("model_version", "")))

    @_guard
    async def repository_index(self, request: web.Request) -> web.Response:
        ready_only = False
        raw = await read_body(request, self.max_request_size)
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequestError(f"malformed JSON: {exc}") from None
            ready_only = bool(isinstance(body, dict) and body.get("ready"))
        models = oip.repository_index(self.registry)
        return _json([m for m in models if m["state"] == "READY"] if ready_only else models)

    # -- v2 inference --------------------------------------------------------------------------------
    @_guard
    async def infer(self, request: web.Request) -> web.Response:
        info = request.match_info
        body = await read_body(request, self.max_request_size)
        header = request.headers.get("Inference-Header-Content-Length")
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise BadRequestError(f"invalid Inference-Header-Content-Length: {header!r}") from None
        req = oip.parse_rest_request(body, header_length)
        mv, outputs = await oip.infer(
            self.service, info["model_name"], info.get("model_version"), req.inputs,
            [o["name"] for o in req.outputs], flat_headers(request.headers), new_request_id(),
            oip.timeout_of(req.parameters))
        payload, json_size = oip.build_rest_response(mv.name, mv.version, req, outputs)
        if json_size is None:
            return web.Response(body=payload, headers={"Content-Type": JSON_CT})
        return web.Response(body=payload, headers={"Content-Type": "application/octet-stream",
                                                   "Inference-Header-Content-Length": str(json_size)})

    # -- KServe v1 -----------------------------------------------------------------------------------
    async def v1_models(self, request: web.Request) -> web.Response:
        return _json({"models": sorted(self.registry.models)})

    @_guard
    async def v1_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        if name not in self.registry.models:
            raise NotFoundError(f"Model with name {name} does not exist.")
        if not self.service.model_ready(name):
            raise ServiceUnavailableError(f"Model with name {name} is not ready.")
        return _json({"name": name, "ready": True})

    @_guard
    async def v1_predict(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        raw = await read_body(request, self.max_request_size)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequestError(f"Unrecognized request format: {exc}") from None
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list):
            raise BadRequestError('Expected "instances" to be a list')
        mv = self.registry.get(name)
        headers = flat_headers(request.headers)
        start = time.monotonic_ns()
        results = await asyncio.gather(*(self._v1_one(mv, inst, headers) for inst in instances),
                                       return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            oip.record(mv, start, False)
            raise failed
        predictions = list(results)
        oip.record(mv, start, True, items=len(instances))
        return _json({"predictions": predictions})

    async def _v1_one(self, mv: Any, instance: Any, headers: list[str]) -> Any:
        answer = await self.service.predict(mv.name, mv.version, _instance_params(instance), headers,
                                            new_request_id())
        if not isinstance(answer, Result):
            answer = await _joined(answer)
        return _decode_body(answer)


def _instance_params(instance: Any) -> list[Param]:
    if isinstance(instance, dict):
        if set(instance) == {"b64"} and isinstance(instance["b64"], str):
            try:
                return [Param("data", "application/octet-stream", base64.b64decode(instance["b64"], validate=True))]
            except (binascii.Error, ValueError):
                raise BadRequestError("instance b64 is not valid base64") from None
        return [Param(str(k), JSON_CT, orjson.dumps(v)) for k, v in instance.items()]
    return [Param("data", JSON_CT, orjson.dumps(instance))]


async def _joined(chunks: asyncio.Queue) -> Result:
    """A streamed answer as one Result (the chunks' bodies joined)."""
    parts = []
    first: Optional[Result] = None
    while True:
        item = await chunks.get()
        if isinstance(item, BaseException):
            raise item if isinstance(item, ModelServeError) else InternalError(str(item))
        first = first or item
        parts.append(item.body)
        if item.final:
            return Result(first.status, first.content_type, b"".join(parts))


def _decode_body(result: Result) -> Any:
    ct = result.content_type.lower()
    if ct.startswith(JSON_CT):
        try:
            return orjson.loads(result.body)
        except orjson.JSONDecodeError:
            pass
    try:
        return result.body.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(result.body).decode()}


def add_oip_routes(app: web.Application, service: InferenceService, max_request_size: int) -> OipRoutes:
    """Add the v2 and v1 routes to the inference app (before its catch-all 404 route).

    They take the app's token guards: ``app["guard"]`` (inference key), and ``app["health_guard"]``
    for the health routes.
    """
    r = OipRoutes(service, max_request_size)
    guard = app.get("guard")
    get = lambda h: _methods({"GET": h}, guard)  # noqa: E731
    post = lambda h: _methods({"POST": h}, guard)  # noqa: E731
    add = app.router.add_route
    health = app.get("health_guard")
    add("*", "/v2/health/live", _methods({"GET": r.live}, health))
    add("*", "/v2/health/ready", _methods({"GET": r.ready}, health))
    add("*", "/v2", get(r.server_metadata))
    add("*", "/v2/repository/index", post(r.repository_index))
    add("*", "/v2/models/stats", get(r.model_stats))
    for base in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        add("*", base, get(r.model_metadata))
        add("*", base + "/ready", get(r.model_ready))
        add("*", base + "/config", get(r.model_config))
        add("*", base + "/stats", get(r.model_stats))
        add("*", base + "/infer", post(r.infer))
    add("*", "/v1/models", get(r.v1_models))
    add("*", "/v1/models/{model_name}:predict", post(r.v1_predict))
    add("*", "/v1/models/{model_name}", get(r.v1_ready))
    app["oip_routes"] = r
    return r
