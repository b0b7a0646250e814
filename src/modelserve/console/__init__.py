"""The web console: a static page at ``/console`` on the management port and the small JSON API it reads.

The page and its static files load without a key (they hold no data); every ``/console/api/*`` route
takes the management key (``Authorization: Bearer``) when token authorization is on. Routes:

- ``GET /console``: the page; ``GET /console/static/{file}``: its scripts and styles (shipped in the package).
- ``GET /console/api/stats``: every model version's settings, workers and queue, its cumulative counters and
  histogram buckets from the server's metrics, and a timestamp (the page keeps the samples and computes rates).
- ``POST /console/api/predict/{model}[/{version}]``: runs a prediction through the service layer, as the
  inference port would, and answers ``{status, headers, body, ...}`` (no CORS needed).
- ``GET /console/api/inference?path=/...``: GET routes of the inference port (for the API docs' try forms).
"""
from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any, Optional

import aiohttp
import orjson
import psutil
from aiohttp import web

from ..config import ServerConfig, split_address
from ..errors import BadRequestError, ModelServeError, NotFoundError, RequestTooLargeError
from ..metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Histogram
from ..registry import ModelRegistry, ModelVersion
from ..service import InferenceService, new_request_id
from ..types import Param, Result
from ..http.common import check_size, error_response, flat_headers, json_response, methods, read_params, token_guard

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
          ".png": "image/png"}
_SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_DROP_HEADERS = {"authorization", "cookie", "host", "content-length", "origin", "referer", "connection"}


def _static(name: str) -> web.Response:
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in _TYPES or not path.is_file():
        return error_response(NotFoundError("Requested resource is not found, please refer to API document."))
    return web.Response(body=path.read_bytes(), headers={"Content-Type": f"{_TYPES[path.suffix]}; charset=utf-8"
                                                          if path.suffix != ".png" else _TYPES[".png"], **_SECURITY})


def _hist(h: Histogram) -> dict[str, Any]:
    return {"counts": list(h.counts), "sum": h.sum, "count": h.count}


def _memory(pid: Optional[int]) -> int:
    try:
        return psutil.Process(pid).memory_info().rss if pid else 0
    except (psutil.Error, ValueError):
        return 0


def _version(mv: ModelVersion, default: Optional[str]) -> dict[str, Any]:
    cfg = mv.config
    s = mv.stats
    gpus = {str(w.id): w.gpu for w in mv.pool.workers()}
    workers = [{"id": w["id"], "status": w["status"], "pid": w["pid"], "memoryUsage": _memory(w["pid"]),
                "restarts": w.get("restarts", 0), "gpu": gpus.get(w["id"]), "startTime": w["startTime"],
                **({"lastError": w["lastError"]} if "lastError" in w else {})}
               for w in mv.pool.workers_info()]
    return {
        "modelName": mv.name, "modelVersion": mv.version, "isDefault": mv.version == default,
        "modelUrl": mv.url, "handler": mv.handler,
        "minWorkers": mv.min_workers, "maxWorkers": mv.max_workers,
        "batchSize": cfg.batch_size, "maxBatchDelay": cfg.max_batch_delay, "responseTimeout": cfg.response_timeout,
        "workers": workers,
        "queue": {"pending": len(mv.queue), "capacity": mv.queue.maxsize,
                  "remainingCapacity": mv.queue.remaining_capacity()},
        "stats": {"requests": s.requests, "ok": s.ok, "failed": s.failed, "latency": _hist(s.latency),
                  "queueWait": _hist(s.queue_wait), "handler": _hist(s.handler), "batchSize": _hist(s.batch_size),
                  "batches": dict(s.batches)},
    }


class ConsoleRoutes:
    def __init__(self, config: ServerConfig, registry: ModelRegistry, inference: InferenceService,
                 auth: Any) -> None:
        self.config = config
        self.registry = registry
        self.inference = inference
        self.auth = auth

    async def page(self, request: web.Request) -> web.Response:
        return _static("index.html")

    async def static(self, request: web.Request) -> web.Response:
        return _static(request.match_info["name"])

    async def stats(self, request: web.Request) -> web.Response:
        reg = self.registry
        models = [_version(mv, reg.defaults.get(name))
                  for name in sorted(reg.models) for mv in sorted(reg.models[name].values(), key=lambda m: m.version)]
        return json_response({
            "time": time.time(),
            "inferenceAddress": self.config.inference_address,
            "managementAddress": self.config.management_address,
            "modelApi": self.config.enable_model_api,
            "auth": self.auth is not None,
            "latencyBuckets": list(LATENCY_BUCKETS),
            "batchBuckets": list(BATCH_BUCKETS),
            "models": models,
        })

    async def predict(self, request: web.Request) -> web.Response:
        info = request.match_info
        rid = new_request_id()
        started = time.monotonic()
        try:
            try:
                params = await self._params(request)
            except ModelServeError as exc:  # predict counts its own errors; these never reached it
                self.inference.record_error(exc)
                raise
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_HEADERS}
            answer = await self.inference.predict(info["model_name"], info.get("model_version"), params,
                                                  flat_headers(headers), rid)  # type: ignore[arg-type]
            result = answer if isinstance(answer, Result) else await _collect(answer)
            status, ctype, body = result.status, result.content_type, result.body
            out_headers = {"Content-Type": ctype, **(result.headers or {})}
        except ModelServeError as exc:
            status, ctype, body = exc.status, "application/json", orjson.dumps(exc.to_dict())
            out_headers = {"Content-Type": ctype}
        out_headers["x-request-id"] = rid
        try:
            text, encoding = bytes(body).decode("utf-8"), "text"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(body).decode(), "base64"
        return json_response({"status": status, "headers": out_headers, "contentType": ctype, "body": text,
                              "bodyEncoding": encoding, "bytes": len(body), "requestId": rid,
                              "latencyMs": round((time.monotonic() - started) * 1000, 3)})

    async def _params(self, request: web.Request) -> list[Param]:
        limit = self.config.max_request_size
        ct = request.headers.get("Content-Type", "")
        if ct.lower().startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return await read_params(request, limit)
        # read the stream directly: the management app's client_max_size is smaller than max_request_size
        check_size(request, limit)
        data = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > limit:
                raise RequestTooLargeError(f"Request body exceeds max_request_size ({limit})")
        return [Param("body", ct or "application/octet-stream", bytes(data))]

    async def inference_get(self, request: web.Request) -> web.Response:
        """A GET on the inference port, for the API docs' try forms (the page cannot reach another origin)."""
        path = request.query.get("path", "")
        if not path.startswith("/") or path.startswith("//") or "\\" in path:
            return error_response(BadRequestError("path must be an absolute path such as /ping"))
        host, port = split_address(self.config.inference_address, 8080)
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        headers = {"Authorization": f"Bearer {self.auth.key('inference')}"} if self.auth is not None else {}
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                async with session.get(url, headers=headers, allow_redirects=False) as resp:
                    body = await resp.read()
                    return web.Response(body=body, status=resp.status,
                                        headers={"Content-Type": resp.headers.get("Content-Type", "text/plain")})
        except (aiohttp.ClientError, TimeoutError) as exc:
            return json_response({"code": 502, "type": "BadGateway",
                                  "message": f"inference port unreachable: {exc}"}, 502)


async def _collect(chunks: Any) -> Result:
    """A streamed answer, joined into one Result (the console shows the whole body)."""
    first = chunks.get_nowait()
    parts = [first.body]
    item = first
    while not item.final:
        item = await chunks.get()
        if isinstance(item, BaseException):
            err = item if isinstance(item, ModelServeError) else ModelServeError(str(item))
            parts.append(orjson.dumps(err.to_dict()))
            break
        parts.append(item.body or b"")
    return Result(first.status, first.content_type, b"".join(parts), first.headers)


def add_console(app: web.Application, config: ServerConfig, registry: ModelRegistry, inference: InferenceService,
                auth: Any = None) -> None:
    """Mount the console on the management app (before its 404 fallback)."""
    routes = ConsoleRoutes(config, registry, inference, auth)
    guard = token_guard(auth, "management")
    page = methods({"GET": routes.page})
    app.router.add_route("*", "/console", page)
    app.router.add_route("*", "/console/", page)
    app.router.add_route("*", "/console/static/{name}", methods({"GET": routes.static}))
    app.router.add_route("*", "/console/api/stats", methods({"GET": routes.stats}, guard))
    predict = methods({"POST": routes.predict, "PUT": routes.predict}, guard)
    app.router.add_route("*", "/console/api/predict/{model_name}", predict)
    app.router.add_route("*", "/console/api/predict/{model_name}/{model_version}", predict)
    app.router.add_route("*", "/console/api/inference", methods({"GET": routes.inference_get}, guard))
    app["console"] = routes
