"""Helpers shared by the REST apps: JSON responses, the error shape, reading request inputs."""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from ..errors import BadRequestError, MethodNotAllowedError, ModelServeError, NotFoundError, RequestTooLargeError
from ..types import Param

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200, request_id: Optional[str] = None) -> web.Response:
    headers = {"Content-Type": JSON}
    if request_id:
        headers["x-request-id"] = request_id
    return web.Response(body=orjson.dumps(data), status=status, headers=headers)


def error_headers(exc: ModelServeError) -> Optional[dict[str, str]]:
    """Headers an error answer carries besides its JSON: a 503 asks the client to retry shortly."""
    return {"Retry-After": "1"} if exc.status == 503 else None


def error_response(exc: ModelServeError, request_id: Optional[str] = None) -> web.Response:
    resp = json_response(exc.to_dict(), exc.status, request_id)
    extra = error_headers(exc)
    if extra:
        resp.headers.update(extra)
    return resp


def not_found_route(request: web.Request) -> Awaitable[web.Response]:
    async def respond() -> web.Response:
        return error_response(NotFoundError("Requested resource is not found, please refer to API document."))
    return respond()


Guard = Callable[[web.Request], None]  # raises a ModelServeError (e.g. 401) to refuse a request


def methods(allowed: dict[str, Handler], guard: Optional[Guard] = None,
            render: Callable[[ModelServeError], web.Response] = error_response) -> Handler:
    """One route for every method: check the guard, dispatch, or answer a 405 (``render`` shapes errors)."""

    async def dispatch(request: web.Request) -> web.StreamResponse:
        if guard is not None:
            try:
                guard(request)
            except ModelServeError as exc:
                return render(exc)
        handler = allowed.get(request.method)
        if handler is None:
            resp = render(MethodNotAllowedError(f"Method {request.method} is not allowed on this resource"))
            resp.headers["Allow"] = ", ".join(sorted(allowed))
            return resp
        return await handler(request)

    return dispatch


def token_guard(auth: Any, kind: str, on_reject: Optional[Callable[[ModelServeError], None]] = None) -> Optional[Guard]:
    """A guard requiring the ``kind`` key, or None when token authorization is off."""
    if auth is None:
        return None

    def guard(request: web.Request) -> None:
        try:
            auth.check(kind, request.headers.get("Authorization"))
        except ModelServeError as exc:
            if on_reject is not None:
                on_reject(exc)
            raise

    return guard


def describe_api(build: Callable[[], Any]) -> Handler:
    """A handler answering the port's OpenAPI document (built once, on first use)."""
    cache: list[bytes] = []

    async def describe(request: web.Request) -> web.Response:
        if not cache:
            cache.append(orjson.dumps(build()))
        return web.Response(body=cache[0], headers={"Content-Type": JSON})

    return describe


def check_size(request: web.Request, limit: int) -> None:
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLargeError(f"Request body of {length} bytes exceeds max_request_size ({limit})")


async def read_body(request: web.Request, limit: int) -> bytes:
    check_size(request, limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLargeError(f"Request body exceeds max_request_size ({limit})") from None


async def read_params(request: web.Request, limit: int) -> list[Param]:
    """The request's inputs: the raw body as ``body``, or one Param per form field."""
    ct = request.headers.get("Content-Type", "")
    lower = ct.lower()
    if lower.startswith("multipart/form-data"):
        check_size(request, limit)
        params = []
        total = 0
        try:
            reader = await request.multipart()
            async for part in reader:
                if part is None:
                    break
                data = await part.read(decode=False)  # type: ignore[union-attr]
                total += len(data)
                if total > limit:
                    raise RequestTooLargeError(f"Request body exceeds max_request_size ({limit})")
                part_ct = part.headers.get("Content-Type") or ("application/octet-stream" if part.filename else "text/plain")
                params.append(Param(part.name or "data", part_ct, bytes(data)))
        except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
            raise BadRequestError(f"Malformed multipart body: {exc}") from None
        return params
    return body_params(ct, await read_body(request, limit))


def body_params(ct: str, body: bytes) -> list[Param]:
    """The inputs of a request that is not multipart: form fields, or the raw body as ``body``."""
    if ct[:33].lower() == "application/x-www-form-urlencoded":
        if b"=" not in body:  # `curl -d 5.0` sends a bare value under this type: keep it as the body
            return [Param("body", "text/plain", body)]
        return [Param(k, "text/plain", v.encode()) for k, v in parse_qsl(body.decode("utf-8", "replace"),
                                                                           keep_blank_values=True)]
    return [Param("body", ct or "application/octet-stream", body)]


def flat_headers(headers: CIMultiDict) -> list[str]:
    out: list[str] = []
    for k, v in headers.items():
        out.append(k.lower())
        out.append(v)
    return out
