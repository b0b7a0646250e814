"""The REST inference API (port 8080): TorchServe's routes."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from ..errors import InternalError, ModelServeError
from ..service import InferenceService, new_request_id
from ..types import Result
from .common import (describe_api, error_response, flat_headers, json_response, methods, not_found_route, read_params,
                     token_guard)
from .openapi import inference_openapi


class InferenceRoutes:
    def __init__(self, service: InferenceService, max_request_size: int) -> None:
        self.service = service
        self.max_request_size = max_request_size

    async def ping(self, request: web.Request) -> web.Response:
        if self.service.healthy():
            return json_response({"status": "Healthy"})
        return json_response({"status": "Unhealthy"}, 500)

    async def predict(self, request: web.Request) -> web.StreamResponse:
        rid = new_request_id()
        info = request.match_info
        try:
            params = await read_params(request, self.max_request_size)
        except ModelServeError as exc:
            self.service.record_error(exc)
            return error_response(exc, rid)
        try:
            answer = await self.service.predict(
                info["model_name"], info.get("model_version"), params, flat_headers(request.headers), rid)
        except ModelServeError as exc:  # counted by the service
            return error_response(exc, rid)
        if isinstance(answer, Result):
            return _to_response(answer, rid)
        return await _stream(request, answer, rid)


def _to_response(result: Result, rid: str) -> web.Response:
    headers = {"Content-Type": result.content_type, "x-request-id": rid}
    if result.headers:
        headers.update(result.headers)
    return web.Response(body=result.body, status=result.status, headers=headers)


async def _stream(request: web.Request, chunks: asyncio.Queue, rid: str) -> web.StreamResponse:
    """Chunked transfer: one HTTP chunk per intermediate result, then the final one."""
    first = chunks.get_nowait()
    resp = web.StreamResponse(status=first.status, headers={
        "Content-Type": first.content_type, "x-request-id": rid, "Transfer-Encoding": "chunked"})
    await resp.prepare(request)
    await resp.write(first.body)
    while True:
        item = await chunks.get()
        if isinstance(item, BaseException):
            err = item if isinstance(item, ModelServeError) else InternalError(str(item))
            await resp.write(orjson.dumps(err.to_dict()))
            break
        if item.body:
            await resp.write(item.body)
        if item.final:
            break
    await resp.write_eof()
    return resp


def build_inference_app(service: InferenceService, max_request_size: int, auth: Any = None,
                        exempt_health: bool = True) -> web.Application:
    routes = InferenceRoutes(service, max_request_size)
    app = web.Application(client_max_size=max_request_size)
    guard = token_guard(auth, "inference", service.record_error if service is not None else None)
    health_guard = None if exempt_health else guard
    predict = methods({"POST": routes.predict, "PUT": routes.predict}, guard)
    app.router.add_route("*", "/ping", methods({"GET": routes.ping, "POST": routes.ping}, health_guard))
    app.router.add_route("*", "/predictions/{model_name}", predict)
    app.router.add_route("*", "/predictions/{model_name}/{model_version}", predict)
    describe = describe_api(inference_openapi)
    app.router.add_route("*", "/", methods({"OPTIONS": describe}, guard))
    app.router.add_route("*", "/api-description", methods({"GET": describe, "OPTIONS": describe}, guard))
    app["guard"] = guard
    app["health_guard"] = health_guard
    app["routes"] = routes
    return app


def add_fallback(app: web.Application) -> None:
    """A JSON 404 for every path no route matched (added last)."""
    app.router.add_route("*", "/{tail:.*}", not_found_route)
