"""The REST management API (port 8081): TorchServe's routes, parameters and shapes."""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

import orjson
from aiohttp import web

from ..errors import BadRequestError, MethodNotAllowedError, ModelServeError, NotFoundError
from ..log import get_logger
from ..registry import RegisterOptions
from ..service import (PROCESSING, ManagementService, default_status, registered_status, scaled_status,
                       unregistered_status)
from .common import describe_api, error_response, json_response, methods, token_guard
from .openapi import management_openapi

log = get_logger()

_INT_PARAMS = ("batch_size", "max_batch_delay", "initial_workers", "response_timeout", "startup_timeout")


def _int(params: dict[str, Any], key: str) -> Optional[int]:
    """An integer parameter; like TorchServe, a value that is not an integer counts as not given."""
    value = params.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bool(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def _guard(fn: Callable) -> Callable:
    async def wrapped(self: "ManagementRoutes", request: web.Request) -> web.Response:
        try:
            return await fn(self, request)
        except ModelServeError as exc:
            return error_response(exc)
    return wrapped


class ManagementRoutes:
    def __init__(self, service: ManagementService, enable_model_api: bool) -> None:
        self.service = service
        self.enable_model_api = enable_model_api
        self._tasks: set[asyncio.Task] = set()

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body and "json" in request.headers.get("Content-Type", "").lower():
            raw = await request.read()
            if raw.strip():
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise BadRequestError(f"Invalid JSON body: {exc}") from None
                if not isinstance(body, dict):
                    raise BadRequestError("The JSON body must be an object")
                params.update(body)
        return params

    def _require_model_api(self) -> None:
        if not self.enable_model_api:
            raise MethodNotAllowedError("Model API is disabled; start with --enable-model-api to allow it")

    @_guard
    async def list_models(self, request: web.Request) -> web.Response:
        q = request.query
        return json_response(self.service.list_models(_int(dict(q), "limit"), _int(dict(q), "next_page_token")))

    @_guard
    async def register(self, request: web.Request) -> web.Response:
        self._require_model_api()
        params = await self._params(request)
        url = params.get("url")
        if url is None:
            raise BadRequestError("Parameter url is required.")
        if not url:
            raise NotFoundError("Model not found in model store: (empty url)")
        opts = RegisterOptions(
            model_name=params.get("model_name") or None, handler=params.get("handler") or None,
            runtime=params.get("runtime") or None, **{k: _int(params, k) for k in _INT_PARAMS},
        )
        synchronous = _bool(params, "synchronous", True)
        mv = await self.service.register(str(url), opts, wait=synchronous)
        status = registered_status(mv, synchronous)
        if status is None:
            return json_response({"status": PROCESSING}, 202)
        return json_response({"status": status})

    @_guard
    async def describe(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        version = request.match_info.get("model_version")
        if _bool(dict(request.query), "customized", False):
            return json_response(await self.service.describe_custom(name, version))
        return json_response(self.service.describe(name, version))

    @_guard
    async def scale(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        version = request.match_info.get("model_version")
        params = await self._params(request)
        mv = self.service.registry.get(name, version)
        lo, hi = self.service.scale_bounds(_int(params, "min_worker"), _int(params, "max_worker"))
        if _bool(params, "synchronous", False):
            await self.service.scale(name, version, lo, hi)
            return json_response({"status": scaled_status(mv, lo, version)})
        self._background(self.service.scale(name, version, lo, hi))
        return json_response({"status": PROCESSING}, 202)

    @_guard
    async def unregister(self, request: web.Request) -> web.Response:
        self._require_model_api()
        name = request.match_info["model_name"]
        version = request.match_info.get("model_version")
        mv = await self.service.unregister(name, version)
        return json_response({"status": unregistered_status(mv)})

    @_guard
    async def set_default(self, request: web.Request) -> web.Response:
        name = request.match_info["model_name"]
        version = request.match_info["model_version"]
        self.service.set_default(name, version)
        return json_response({"status": default_status(name, version)})


def build_management_app(service: ManagementService, enable_model_api: bool, auth: Any = None) -> web.Application:
    routes = ManagementRoutes(service, enable_model_api)
    app = web.Application()
    guard = token_guard(auth, "management")
    models = methods({"GET": routes.list_models, "POST": routes.register}, guard)
    model = methods({"GET": routes.describe, "PUT": routes.scale, "DELETE": routes.unregister}, guard)
    set_default = methods({"PUT": routes.set_default}, guard)
    # TorchServe ignores a trailing slash: /models/x/ is /models/x
    for suffix in ("", "/"):
        app.router.add_route("*", "/models" + suffix, models)
        app.router.add_route("*", "/models/{model_name}" + suffix, model)
        app.router.add_route("*", "/models/{model_name}/{model_version}" + suffix, model)
        app.router.add_route("*", "/models/{model_name}/{model_version}/set-default" + suffix, set_default)
    describe = describe_api(management_openapi)
    app.router.add_route("*", "/", methods({"OPTIONS": describe}, guard))
    app.router.add_route("*", "/api-description", methods({"GET": describe, "OPTIONS": describe}, guard))
    if auth is not None:
        async def token(request: web.Request) -> web.Response:
            try:
                return json_response(auth.rotate(request.query.get("type"), request.headers.get("Authorization")))
            except ModelServeError as exc:
                return error_response(exc)
        app.router.add_route("*", "/token", methods({"GET": token}))
    app["routes"] = routes
    return app
