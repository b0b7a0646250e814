"""The inference port's HTTP/1.1 protocol: predictions served directly, everything else by aiohttp.

aiohttp's request machinery (Request objects, routing, middlewares, the response writer) costs
about 30 µs a request on these machines, more than the rest of the request path. So the inference
port speaks HTTP/1.1 itself for the one route that carries the load, ``POST``/``PUT
/predictions/{model}[/{version}]`` with a ``Content-Length`` body, and hands the connection to
aiohttp, bytes not yet consumed included, at the first request it does not serve itself (another
route, multipart, chunked, ``Expect``, anything unusual). Handing over happens only between
requests, so the two never answer on one connection at once.
"""
from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from typing import Any, Callable, Optional, Sequence

import orjson

from ..errors import InternalError, ModelServeError
from ..log import access_log, get_logger
from ..service import InferenceService, new_request_id
from ..types import Result
from .common import body_params, error_headers

log = get_logger()

MAX_HEAD = 16 * 1024  # a larger head goes to aiohttp, which answers 431/400 for it
PREFIX = b"/predictions/"
KEEPALIVE_TIMEOUT = 75.0  # as aiohttp's default: idle keep-alive connections are closed after this
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_FAST_METHODS = {b"POST": "POST", b"PUT": "PUT"}
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Date:
    """The Date header, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def get(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
        return cls.value


class FastPath:
    """What the protocol needs from the server: the service, limits, auth, and aiohttp to hand over to."""

    def __init__(self, service: InferenceService, max_request_size: int, auth: Any,
                 fallback: Callable[[], asyncio.Protocol]) -> None:
        self.service = service
        self.max_request_size = max_request_size
        self.auth = auth
        self.fallback = fallback
        self.connections: set["FastHTTPProtocol"] = set()
        self.closing = False

    def protocol(self) -> "FastHTTPProtocol":
        return FastHTTPProtocol(self)

    def sweep_idle(self, now: float) -> None:
        for conn in list(self.connections):
            if conn.task is None and now - conn.last_active > KEEPALIVE_TIMEOUT:
                conn.close()

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now, busy ones once their answer is written (or after ``timeout``)."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            busy = [c.task for c in self.connections if c.task is not None]
            remaining = deadline - loop.time()
            if not busy or remaining <= 0:
                break
            if all(t.done() for t in busy):
                await asyncio.sleep(0.001)  # their answer callbacks are about to run
            else:
                await asyncio.wait(busy, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        for conn in list(self.connections):
            conn.close()


class FastHTTPProtocol(asyncio.Protocol):
    __slots__ = ("fp", "transport", "buf", "task", "remote", "last_active", "handed_over", "_paused",
                 "_drain", "http10", "loop", "_current")

    def __init__(self, fp: FastPath) -> None:
        self.fp = fp
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        # The request being answered: its future, or the task streaming its answer.
        self.task: Optional[asyncio.Future] = None
        self._current: Optional[tuple[Any, ...]] = None
        self.remote = "-"
        self.last_active = 0.0
        self.handed_over = False
        self._paused = False
        self._drain: Optional[asyncio.Future] = None
        self.http10 = False
        # Kept: on Python 3.11 every asyncio.get_running_loop() is a getpid() system call.
        self.loop = asyncio.get_running_loop()

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (tuple, list)) and peer:
            self.remote = str(peer[0])
        self.last_active = self.loop.time()
        self.fp.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._next()
        elif len(self.buf) > self.fp.max_request_size + MAX_HEAD and not self._paused:
            self._paused = True  # a client sending ahead of its answers: stop reading until we catch up
            self.transport.pause_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.fp.connections.discard(self)
        if self.task is not None:
            self.task.cancel()  # the client went away: its request leaves the queue (see _answered)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- requests ------------------------------------------------------------------------------------
    def _next(self) -> None:
        """Start on the next whole request in the buffer, or hand the connection over."""
        if self.task is not None or self.handed_over:
            return
        buf = self.buf
        end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(buf) >= MAX_HEAD or (buf and not buf[:1].isalpha()):
                self._hand_over()
            return
        head = bytes(buf[:end])
        parsed = _HEADS.get(head)  # load generators and most clients repeat one head verbatim
        if parsed is None:
            parsed = _parse_head(head)
            if parsed is None:
                self._hand_over()
                return
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[head] = parsed
        method, target, version, headers, length, ctype, keep_alive, auth, names = parsed
        if length > self.fp.max_request_size:
            self._hand_over()  # aiohttp answers the 413
            return
        total = end + 4 + length
        if len(buf) < total:
            return  # the rest of the body is on its way
        body = bytes(buf[end + 4:total])
        del buf[:total]
        self.http10 = version == "1.0"
        self._start(method, target, version, headers, body, ctype, keep_alive, auth, names)

    def _hand_over(self) -> None:
        """aiohttp takes the connection from here on, starting with the bytes not yet consumed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.handed_over = True
        self.fp.connections.discard(self)
        proto = self.fp.fallback()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        data, self.buf = bytes(self.buf), bytearray()
        if data:
            proto.data_received(data)

    def _start(self, method: str, target: str, version: str, headers: Sequence[str], body: bytes,
               ctype: str, keep_alive: bool, auth: Optional[str], names: list[str]) -> None:
        """Queue the request; ``_answered`` writes the answer when its future resolves.

        A callback per request instead of a task: no coroutine, no task bookkeeping, no extra
        event-loop step between the worker's result and the response write.
        """
        t0 = time.monotonic()  # not loop.time(): uvloop's clock moves in whole milliseconds
        rid = new_request_id()
        service = self.fp.service
        try:
            if self.fp.auth is not None:
                try:
                    self.fp.auth.check("inference", auth)
                except ModelServeError as exc:
                    service.record_error(exc)
                    raise
            mv, req = service.submit(names[0], names[1] if len(names) > 1 else None,
                                     body_params(ctype, body), headers, rid)
        except ModelServeError as exc:
            self._write_error(exc, rid, keep_alive)
            self._finish(exc.status, method, target, version, t0, keep_alive)
            return
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, the connection lives on
            log.exception("inference request %s failed", rid)
            self._write_error(InternalError(f"{type(exc).__name__}: {exc}"), rid, keep_alive)
            self._finish(500, method, target, version, t0, keep_alive)
            return
        self.task = req.future
        self._current = (mv, req, method, target, version, t0, keep_alive)
        req.future.add_done_callback(self._answered)

    def _answered(self, fut: asyncio.Future) -> None:
        current, self._current = self._current, None
        if current is None or fut is not self.task:
            return
        mv, req, method, target, version, t0, keep_alive = current
        service = self.fp.service
        if fut.cancelled():  # connection_lost: the client is gone
            self.task = None
            service.abandon(mv, req)
            return
        rid = req.request_id
        try:
            try:
                answer = service.outcome(mv, req)
            except ModelServeError as exc:
                status = exc.status
                self._write_error(exc, rid, keep_alive)
            else:
                if not isinstance(answer, Result):
                    self.task = self.loop.create_task(self._streamed(answer, rid, method, target, version, t0,
                                                                     keep_alive))
                    return
                status = answer.status
                self._write(answer.status, answer.content_type, answer.body, rid, answer.headers, keep_alive)
        except Exception as exc:  # noqa: BLE001
            log.exception("inference request %s failed", rid)
            status = 500
            self._write_error(InternalError(f"{type(exc).__name__}: {exc}"), rid, keep_alive)
        self._finish(status, method, target, version, t0, keep_alive)

    async def _streamed(self, chunks: asyncio.Queue, rid: str, method: str, target: str, version: str,
                        t0: float, keep_alive: bool) -> None:
        try:
            status = await self._stream(chunks, rid, keep_alive)
        except asyncio.CancelledError:
            self.task = None
            return
        except Exception:  # noqa: BLE001
            log.exception("inference request %s failed while streaming", rid)
            status = 500
            self.close()  # the head is out: the connection cannot carry a clean error any more
        self._finish(status, method, target, version, t0, keep_alive)

    def _finish(self, status: int, method: str, target: str, version: str, t0: float, keep_alive: bool) -> None:
        """The answer is written: log it, then close, or go on to the next request."""
        loop = self.loop
        out = access_log()
        if out is not None:
            out.line(self.remote, f"{method} {target} HTTP/{version}", status, (time.monotonic() - t0) * 1000)
        self.task = None
        self.last_active = loop.time()
        if not keep_alive or self.fp.closing:
            self.close()
        elif self.buf:
            if self._paused:
                self._paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            loop.call_soon(self._next)  # not recursively: a pipelined run of errors would nest deeply

    # -- answers -------------------------------------------------------------------------------------
    def _head(self, status: int, ctype: str, rid: str, extra: Optional[dict[str, str]], keep_alive: bool,
              length: Optional[int]) -> bytearray:
        if extra:
            ctype, lines = _extra_headers(ctype, extra)
        else:
            lines = b""
        head = bytearray(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nx-request-id: %s\r\nDate: %s\r\nServer: modelserve\r\n"
                         % (status, _REASONS.get(status, b"Unknown"), ctype.encode("latin-1", "replace"),
                            rid.encode(), _Date.get()))
        head += lines
        head += b"Content-Length: %d\r\n" % length if length is not None else b"Transfer-Encoding: chunked\r\n"
        if not keep_alive:
            head += b"Connection: close\r\n"
        elif self.http10:
            head += b"Connection: keep-alive\r\n"
        head += b"\r\n"
        return head

    def _write(self, status: int, ctype: str, body: bytes, rid: str, extra: Optional[dict[str, str]],
               keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head = self._head(status, ctype, rid, extra, keep_alive, len(body))
        if len(body) < 16384:
            head += body
            transport.write(head)
        else:
            transport.writelines((head, body))

    def _write_error(self, exc: ModelServeError, rid: str, keep_alive: bool) -> None:
        self._write(exc.status, "application/json", orjson.dumps(exc.to_dict()), rid, error_headers(exc), keep_alive)

    async def _stream(self, chunks: asyncio.Queue, rid: str, keep_alive: bool) -> int:
        """Chunked transfer: one HTTP chunk per intermediate result, then the final one."""
        first = chunks.get_nowait()
        transport = self.transport
        assert transport is not None
        transport.write(self._head(first.status, first.content_type, rid, None, keep_alive, None))
        item: Any = first
        while True:
            if isinstance(item, BaseException):
                err = item if isinstance(item, ModelServeError) else InternalError(str(item))
                item = Result(err.status, "", orjson.dumps(err.to_dict()))
            if item.body:
                transport.write(b"%x\r\n%s\r\n" % (len(item.body), item.body))
                if self._drain is not None:
                    await self._drain
            if item.final:
                break
            item = await chunks.get()
        transport.write(b"0\r\n\r\n")
        return first.status


Head = tuple[str, str, str, tuple[str, ...], int, str, bool, Optional[str], list[str]]
_HEADS: dict[bytes, Head] = {}  # parsed heads by their bytes, shared by the requests that repeat them
_HEADS_MAX = 256


def _parse_head(head: bytes) -> Optional[Head]:
    """The request line and headers of a request this protocol serves itself, or None to hand it over.

    Anything it does not serve, or that is not plainly well formed, goes to aiohttp's strict parser.
    Returns method, target, version, headers (flat, names lower-cased), Content-Length, Content-Type,
    keep-alive, Authorization and the route's [model] or [model, version].
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method = _FAST_METHODS.get(parts[0])
    version = _VERSIONS.get(parts[2])
    raw_target = parts[1]
    if method is None or version is None or not raw_target.startswith(PREFIX) or b"%" in raw_target:
        return None
    try:
        target = raw_target.decode("ascii")
    except UnicodeDecodeError:
        return None
    names = target.partition("?")[0][len("/predictions/"):].split("/")
    if len(names) > 2 or not all(names):
        return None  # not a predictions route
    headers: list[str] = []
    length = 0
    seen_length = False
    ctype = ""
    conn = ""
    auth: Optional[str] = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not _TOKEN_BYTES.issuperset(name):
            return None  # also: obs-fold continuation lines, spaces before the colon
        lname = name.lower()
        text = value.strip(b" \t").decode("utf-8", "surrogateescape")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            return None
        if lname == b"content-length":
            if seen_length or not value.strip().isdigit():
                return None
            seen_length = True
            length = int(value)
        elif lname in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
        elif lname == b"content-type":
            ctype = text
            if ctype[:10].lower() == "multipart/":
                return None
        elif lname == b"connection":
            conn = text.lower()
        elif lname == b"authorization":
            auth = text
        headers.append(lname.decode("ascii"))
        headers.append(text)
    keep_alive = ("close" not in conn) if version == "1.1" else ("keep-alive" in conn)
    return method, target, version, tuple(headers), length, ctype, keep_alive, auth, names


def _extra_headers(ctype: str, extra: dict[str, str]) -> tuple[str, bytes]:
    """A handler's own response headers; it may replace Content-Type, never the framing headers."""
    out = bytearray()
    for k, v in extra.items():
        lk = k.lower()
        if lk == "content-type":
            ctype = v
            continue
        if lk in ("content-length", "transfer-encoding", "connection") or any(c in k + v for c in "\r\n\x00"):
            continue
        out += f"{k}: {v}\r\n".encode("latin-1", "replace")
    return ctype, bytes(out)
