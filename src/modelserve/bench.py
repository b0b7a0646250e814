"""``modelserve-bench``: a load generator and report for a running model server.

Like Triton's perf_analyzer or TorchServe's benchmark-ab, aimed at one model of a server that is
already running (modelserve or TorchServe; anything speaking the same protocols):

* ``--mode rest`` (default): ``POST {url}/predictions/{model}[/{version}]`` with the body file.
* ``--mode oip``: ``POST {url}/v2/models/{model}[/versions/{version}]/infer`` with a JSON body file.
* ``--mode grpc``: TorchServe's ``InferenceAPIsService/Predictions`` (the body goes in
  ``input["data"]``) through the generated stubs in :mod:`modelserve.grpc._generated`.

Load is closed-loop (``-c 1,16,64``: that many requests in flight, each sent as soon as the previous
one on its slot answered) and/or open-loop (``--rate 200,500``: Poisson arrivals at that mean rate,
latency counted from the scheduled send time so a slow server cannot hide its queue). Every level
gets a warm-up (``--warmup`` s, discarded), then a measured window of ``-d`` seconds or ``-n``
requests. The report gives req/s, p50/p90/p99/max latency, errors by kind (``http_503``, ``connect``,
``timeout``, ``read``, ``grpc_UNAVAILABLE``...), and, when the server's metrics endpoint is known
(``--metrics-url``), the server-side breakdown over the measured window: mean queue wait, mean batch
size and mean handler time per batch, per model, from the difference of two ``/metrics`` scrapes.

The client is uvloop + aiohttp with keep-alive connections (one per in-flight request).
``--processes N`` runs N client processes and merges their latency samples, for servers that answer
faster than one Python process can ask; see docs/benchmark.md for where a client process tops out.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import random
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence
from urllib.parse import quote, urlsplit

__all__ = ["main", "run_bench", "Target", "scrape_metrics", "server_breakdown", "percentile"]

# --------------------------------------------------------------------------------------------------
# What to hit


@dataclass
class Target:
    """One endpoint, fully resolved: everything a client process needs (picklable)."""

    mode: str  # rest | oip | grpc
    url: str  # full URL for rest/oip; host:port for grpc
    model: str
    version: str = ""
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    max_connections: int = 0  # open loop: cap on connections; 0 = unlimited
    client: str = "raw"  # raw (built-in HTTP/1.1 keep-alive client) | aiohttp

    def describe(self) -> str:
        if self.mode == "grpc":
            return f"gRPC Predictions {self.url} model={self.model}" + (f" version={self.version}" if self.version else "")
        return f"POST {self.url}"


def build_target(a: argparse.Namespace) -> Target:
    body = b""
    if a.body:
        with open(a.body, "rb") as f:
            body = f.read()
    elif a.data is not None:
        body = a.data.encode()
    headers: dict[str, str] = {}
    for h in a.header:
        k, sep, v = h.partition(":")
        if not sep or not k.strip():
            raise SystemExit(f"modelserve-bench: --header wants 'Name: value', got {h!r}")
        headers[k.strip()] = v.strip()
    ctype = a.content_type or ("application/json" if a.mode == "oip" else "application/octet-stream")
    if a.mode == "grpc":
        url = a.url or "127.0.0.1:7070"
        for prefix in ("grpc://", "http://"):
            if url.startswith(prefix):
                url = url[len(prefix):]
        url = url.rstrip("/")
    else:
        base = (a.url or "http://127.0.0.1:8080").rstrip("/")
        if "://" not in base:
            base = "http://" + base
        m, v = quote(a.model, safe=""), quote(a.version or "", safe="")
        if a.path:
            path = a.path.format(model=m, version=v)
        elif a.mode == "oip":
            path = f"/v2/models/{m}" + (f"/versions/{v}" if v else "") + "/infer"
        else:
            path = f"/predictions/{m}" + (f"/{v}" if v else "")
        url = base + path
    return Target(mode=a.mode, url=url, model=a.model, version=a.version or "", body=body, content_type=ctype,
                  headers=headers, timeout=a.timeout, max_connections=a.max_connections, client=a.client)


# --------------------------------------------------------------------------------------------------
# Clients: one request at a time, returning None (success) or an error kind


class _HttpClient:
    def __init__(self, target: Target, connections: int) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.url = target.url
        self.body = target.body
        self.headers = {"Content-Type": target.content_type, **target.headers}
        conn = aiohttp.TCPConnector(limit=max(0, connections), force_close=False, ttl_dns_cache=None,
                                    enable_cleanup_closed=False)
        self.session = aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=target.timeout),
            skip_auto_headers=("User-Agent", "Accept-Encoding"), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False)
        self._errors: tuple[tuple[type, str], ...] = (
            (aiohttp.ClientConnectorError, "connect"),
            (aiohttp.ServerDisconnectedError, "read"),
            (aiohttp.ClientPayloadError, "read"),
            (aiohttp.ClientOSError, "read"),
        )

    async def one(self) -> Optional[str]:
        try:
            async with self.session.post(self.url, data=self.body, headers=self.headers) as r:
                await r.read()
                status = r.status
            return None if status < 400 else f"http_{status}"
        except asyncio.TimeoutError:
            return "timeout"
        except self._aiohttp.ClientError as e:
            for cls, kind in self._errors:
                if isinstance(e, cls):
                    return kind
            return type(e).__name__
        except OSError:
            return "connect"

    async def close(self) -> None:
        await self.session.close()


class _RawProto(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection that sends a prebuilt request and parses just enough of the answer
    (status, Content-Length or chunked body, Connection: close) to know when it is complete."""

    __slots__ = ("transport", "buf", "waiter", "closed", "_need", "_status", "_chunked", "_close")

    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = bytearray()
        self.waiter: Optional[asyncio.Future] = None
        self.closed = False
        self._need = -1  # bytes of a complete message, once the head is parsed; -1: head not parsed yet
        self._status = 0
        self._chunked = False
        self._close = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(self._status if self._need == -2 else _READ_ERROR)  # -2: body delimited by the close

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        self._parse()

    def _parse(self) -> None:
        buf = self.buf
        if self._need == -1:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            try:
                self._status = int(head[9:12])
            except ValueError:
                self._fail()
                return
            self._close = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
            i = head.find(b"\r\ncontent-length:")
            self._chunked = i < 0 and b"\r\ntransfer-encoding: chunked" in head
            del buf[:end + 4]
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                self._need = int(head[i + 17:j if j >= 0 else len(head)])
            elif self._chunked:
                self._need = 0
            elif self._status in (204, 304) or 100 <= self._status < 200:
                self._need = 0
            else:
                self._need = -2  # until the connection closes
                self._close = True
                return
        if self._chunked:
            if not self._chunks_done():
                return
        elif self._need >= 0:
            if len(buf) < self._need:
                return
            del buf[:self._need]
        else:
            return
        self._need = -1
        w, self.waiter = self.waiter, None
        if self._close:
            self.closed = True
            self.transport.close()
        if w is not None and not w.done():
            w.set_result(self._status)

    def _chunks_done(self) -> bool:
        buf = self.buf
        pos = 0
        while True:
            j = buf.find(b"\r\n", pos)
            if j < 0:
                return False
            try:
                size = int(bytes(buf[pos:j]).split(b";", 1)[0], 16)
            except ValueError:
                self._fail()
                return False
            if size == 0:
                k = buf.find(b"\r\n\r\n", j)  # trailers end with an empty line
                if k < 0:
                    if buf[j:j + 4] == b"\r\n\r\n":
                        k = j
                    else:
                        return False
                del buf[:k + 4]
                return True
            if len(buf) < j + 2 + size + 2:
                return False
            pos = j + 2 + size + 2

    def _fail(self) -> None:
        w, self.waiter = self.waiter, None
        self.closed = True
        self.transport.close()
        if w is not None and not w.done():
            w.set_result(_READ_ERROR)


class _RawHttpClient:
    """The default HTTP client: prebuilt request bytes on keep-alive connections, no per-request objects
    beyond one future. About twice the requests per CPU second of aiohttp's client (docs/benchmark.md)."""

    def __init__(self, target: Target, connections: int) -> None:
        u = urlsplit(target.url)
        if u.scheme != "http":
            raise ValueError("the raw client speaks plain http only")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        hostport = u.netloc.rsplit("@", 1)[-1]
        head = [f"POST {path} HTTP/1.1", f"Host: {hostport}", f"Content-Type: {target.content_type}",
                f"Content-Length: {len(target.body)}"]
        head += [f"{k}: {v}" for k, v in target.headers.items()
                 if k.lower() not in ("host", "content-length", "content-type")]
        if any(k.lower() == "content-type" for k in target.headers):
            head[2] = next(f"Content-Type: {v}" for k, v in target.headers.items() if k.lower() == "content-type")
        self.request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + target.body
        self.timeout = target.timeout
        self.limit = connections
        self.idle: list[_RawProto] = []
        self.open = 0
        self._slots: Optional[asyncio.Semaphore] = asyncio.Semaphore(connections) if connections else None
        self.loop = asyncio.get_running_loop()

    async def _conn(self) -> _RawProto:
        while self.idle:
            p = self.idle.pop()
            if not p.closed:
                return p
            self.open -= 1
        _, p = await self.loop.create_connection(_RawProto, self.host, self.port)
        self.open += 1
        return p

    async def one(self) -> Optional[str]:
        sem = self._slots
        if sem is not None:
            await sem.acquire()
        try:
            return await self._one()
        finally:
            if sem is not None:
                sem.release()

    async def _one(self) -> Optional[str]:
        loop = self.loop
        fut = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, fut)
        try:
            try:
                p = await self._conn()
            except OSError:
                return "connect"
            if fut.done():  # timed out while connecting
                self.idle.append(p)
                return "timeout"
            p.waiter = fut
            p.transport.write(self.request)
            if p.buf:
                p._parse()
            status = await fut
        finally:
            timer.cancel()
        if status < 0:
            p.waiter = None
            if not p.closed:
                p.closed = True
                p.transport.close()
            self.open -= 1
            return "timeout" if status == _TIMED_OUT else "read"
        if p.closed:
            self.open -= 1
        else:
            self.idle.append(p)
        return None if status < 400 else f"http_{status}"

    async def close(self) -> None:
        for p in self.idle:
            if p.transport is not None:
                p.transport.close()
        self.idle.clear()


_TIMED_OUT, _READ_ERROR = -1, -2


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(_TIMED_OUT)


def grpc_stubs() -> tuple[Any, Any, Any]:
    """(grpc, inference_pb2, inference_pb2_grpc); raises ImportError when unavailable."""
    import grpc  # noqa: F401
    import grpc.aio  # noqa: F401

    from .grpc._generated import inference_pb2, inference_pb2_grpc

    return grpc, inference_pb2, inference_pb2_grpc


class _GrpcClient:
    def __init__(self, target: Target, connections: int) -> None:
        grpc, pb2, pb2_grpc = grpc_stubs()
        self._grpc = grpc
        self.timeout = target.timeout
        self.channel = grpc.aio.insecure_channel(target.url, options=[
            ("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)])
        self.stub = pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.request = pb2.PredictionsRequest(model_name=target.model, model_version=target.version,
                                              input={"data": target.body})
        self.metadata = tuple((k.lower(), v) for k, v in target.headers.items()) or None

    async def one(self) -> Optional[str]:
        try:
            await self.stub.Predictions(self.request, timeout=self.timeout, metadata=self.metadata)
            return None
        except self._grpc.aio.AioRpcError as e:
            code = e.code()
            if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout"
            if code == self._grpc.StatusCode.UNAVAILABLE:
                return "connect"
            return f"grpc_{code.name}"

    async def close(self) -> None:
        await self.channel.close()


# --------------------------------------------------------------------------------------------------
# One client process: runs phases (warm-up or measured) and returns raw samples


@dataclass
class PhaseSpec:
    kind: str  # closed | open
    level: float  # concurrency (closed) or rate in req/s (open) for this process
    duration: float  # seconds; 0 = until count requests
    count: int = 0  # requests; 0 = until duration
    start_at: float = 0.0  # time.time() when to begin (aligns processes)
    seed: int = 0
    record: bool = True


@dataclass
class PhaseResult:
    lat: array.array  # seconds, successful requests only
    errors: dict[str, int]
    ok: int
    issued: int
    start: float  # wall clock
    end: float
    max_lag: float = 0.0  # open loop: worst lateness of the scheduler, s
    cpu: float = 0.0  # CPU seconds this client process spent in the phase


class _Stats:
    __slots__ = ("ok", "err")

    def __init__(self) -> None:
        self.ok = 0
        self.err = 0


class Runner:
    """The load loop of one client process (kept across phases so connections stay warm)."""

    def __init__(self, target: Target, connections: int, slot: Optional[tuple[Any, int]] = None) -> None:
        self.target = target
        self.connections = connections
        self.client: Any = None
        self.stats = _Stats()
        self._slot = slot

    async def _ensure(self) -> None:
        if self.client is None:
            if self.target.mode == "grpc":
                cls: Any = _GrpcClient
            elif self.target.client == "raw" and self.target.url.startswith("http://"):
                cls = _RawHttpClient
            else:
                cls = _HttpClient
            self.client = cls(self.target, self.connections)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def _publish(self) -> None:
        arr, i = self._slot  # type: ignore[misc]
        while True:
            arr[2 * i] = self.stats.ok
            arr[2 * i + 1] = self.stats.err
            await asyncio.sleep(0.2)

    async def phase(self, spec: PhaseSpec) -> PhaseResult:
        await self._ensure()
        self.stats.ok = self.stats.err = 0
        pub = asyncio.ensure_future(self._publish()) if self._slot is not None else None
        try:
            delay = spec.start_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            cpu0 = time.process_time()
            r = await (self._open(spec) if spec.kind == "open" else self._closed(spec))
            r.cpu = time.process_time() - cpu0
            return r
        finally:
            if pub is not None:
                pub.cancel()
                arr, i = self._slot  # type: ignore[misc]
                arr[2 * i], arr[2 * i + 1] = self.stats.ok, self.stats.err

    async def _closed(self, spec: PhaseSpec) -> PhaseResult:
        one = self.client.one
        now = time.perf_counter
        lat = array.array("d")
        errors: Counter[str] = Counter()
        stats = self.stats
        left = [spec.count if spec.count else -1]
        wall0, t_start = time.time(), now()
        end = t_start + spec.duration if spec.duration else math.inf

        async def slot() -> None:
            while True:
                if left[0] == 0:
                    return
                t0 = now()
                if t0 >= end:
                    return
                if left[0] > 0:
                    left[0] -= 1
                err = await one()
                t1 = now()
                if t1 > end:
                    return  # completed after the window: not counted, like wrk
                if err is None:
                    lat.append(t1 - t0)
                    stats.ok += 1
                else:
                    errors[err] += 1
                    stats.err += 1
                    if err == "connect":
                        await asyncio.sleep(0.01)  # do not spin on a refused port

        n = max(1, int(spec.level))
        await asyncio.gather(*(slot() for _ in range(n)))
        t_end = min(now(), end)
        issued = stats.ok + stats.err
        return PhaseResult(lat, dict(errors), stats.ok, issued, wall0, wall0 + (t_end - t_start))

    async def _open(self, spec: PhaseSpec) -> PhaseResult:
        one = self.client.one
        now = time.perf_counter
        rng = random.Random(spec.seed)
        rate = float(spec.level)
        lat = array.array("d")
        errors: Counter[str] = Counter()
        stats = self.stats
        wall0, t_start = time.time(), now()
        end = t_start + spec.duration if spec.duration else math.inf
        pending: set[asyncio.Future] = set()
        ok_in_window = [0]
        max_lag = 0.0
        issued = 0

        async def fire(t_sched: float) -> None:
            err = await one()
            t1 = now()
            if err is None:
                lat.append(t1 - t_sched)  # from the scheduled time: queueing in the client counts
                stats.ok += 1
                if t1 <= end:
                    ok_in_window[0] += 1
            else:
                errors[err] += 1
                stats.err += 1

        t_next = t_start + rng.expovariate(rate)
        while True:
            if spec.count and issued >= spec.count:
                break
            if t_next >= end:
                break
            d = t_next - now()
            if d > 0:
                await asyncio.sleep(d)
            t = now()
            # the loop's timers are coarse (~1 ms): send every arrival that is due
            while t_next <= t and t_next < end and not (spec.count and issued >= spec.count):
                max_lag = max(max_lag, t - t_next)
                fut = asyncio.ensure_future(fire(t_next))
                pending.add(fut)
                fut.add_done_callback(pending.discard)
                issued += 1
                t_next += rng.expovariate(rate)
        t_last = now()
        if pending:  # stragglers count for latency (bounded by the request timeout)
            await asyncio.gather(*list(pending), return_exceptions=True)
        if not spec.duration:
            t_end = now()
            okw = stats.ok
        else:
            t_end = min(max(t_last, now()), end)
            okw = ok_in_window[0]
        return PhaseResult(lat, dict(errors), okw, issued, wall0, wall0 + (t_end - t_start), max_lag)


def _new_loop(mode: str) -> asyncio.AbstractEventLoop:
    if mode != "grpc":  # grpc.aio is not dependable on uvloop
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _child(conn: Any, target: Target, connections: int, arr: Any, index: int) -> None:
    """Entry point of a client process: run phases sent over ``conn`` until None."""
    loop = _new_loop(target.mode)
    asyncio.set_event_loop(loop)
    runner = Runner(target, connections, (arr, index))
    try:
        conn.send("ready")
        while True:
            spec = conn.recv()
            if spec is None:
                break
            r = loop.run_until_complete(runner.phase(spec))
            conn.send((r.lat.tobytes(), r.errors, r.ok, r.issued, r.start, r.end, r.max_lag, r.cpu))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        loop.run_until_complete(runner.close())
        loop.close()


# --------------------------------------------------------------------------------------------------
# Statistics


def percentile(sorted_values: Sequence[float], p: float) -> Optional[float]:
    """Nearest-rank percentile of an ascending sequence (None when empty)."""
    n = len(sorted_values)
    if not n:
        return None
    k = max(0, min(n - 1, math.ceil(p / 100.0 * n) - 1))
    return sorted_values[k]


def _summary(results: list[PhaseResult]) -> dict[str, Any]:
    lat = array.array("d")
    errors: Counter[str] = Counter()
    ok = issued = 0
    for r in results:
        lat.extend(r.lat)
        errors.update(r.errors)
        ok += r.ok
        issued += r.issued
    start = min(r.start for r in results)
    end = max(r.end for r in results)
    dur = max(end - start, 1e-9)
    s = sorted(lat)
    ms = lambda v: None if v is None else round(v * 1e3, 3)  # noqa: E731
    out = {
        "requests": ok + sum(errors.values()),
        "ok": ok,
        "issued": issued,
        "duration_s": round(dur, 3),
        "rps": round(ok / dur, 1),
        "mean_ms": ms(sum(s) / len(s)) if s else None,
        "p50_ms": ms(percentile(s, 50)),
        "p90_ms": ms(percentile(s, 90)),
        "p99_ms": ms(percentile(s, 99)),
        "max_ms": ms(s[-1] if s else None),
        "errors": dict(sorted(errors.items())),
    }
    lags = [r.max_lag for r in results if r.max_lag]
    if lags:
        out["scheduler_max_lag_ms"] = ms(max(lags))
    # how busy the client processes were: near 100% of a core means the client may be the bottleneck
    out["client_cpu_pct"] = [round(100 * r.cpu / max(r.end - r.start, 1e-9), 1) for r in results]
    return out


# --------------------------------------------------------------------------------------------------
# Server-side breakdown from /metrics

_HISTS = {
    "modelserve_queue_wait_seconds": "queue_wait",
    "modelserve_batch_size": "batch_size",
    "modelserve_handler_seconds": "handler",
    "modelserve_request_latency_seconds": "frontend_latency",
}
_TS_COUNTERS = {  # TorchServe's Prometheus counters (cumulative microseconds / requests)
    "ts_queue_latency_microseconds": "ts_queue_us",
    "ts_inference_latency_microseconds": "ts_latency_us",
    "ts_inference_requests": "ts_requests",
}


def scrape_metrics(metrics_url: str, timeout: float = 5.0) -> dict[tuple[str, str], dict[str, float]]:
    """Scrape ``{metrics_url}/metrics``: {(model, version): {"queue_wait_sum": s, "queue_wait_count": n, ...}}."""
    from prometheus_client.parser import text_string_to_metric_families

    url = metrics_url.rstrip("/")
    if not url.endswith("/metrics"):
        url += "/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode("utf-8", "replace")
    out: dict[tuple[str, str], dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name
        short = _HISTS.get(name)
        if short is not None:
            for s in fam.samples:
                if s.name.endswith("_sum"):
                    suffix = "sum"
                elif s.name.endswith("_count"):
                    suffix = "count"
                else:
                    continue
                key = (s.labels.get("model_name", ""), s.labels.get("model_version", ""))
                d = out.setdefault(key, {})
                d[f"{short}_{suffix}"] = d.get(f"{short}_{suffix}", 0.0) + s.value
            continue
        short = _TS_COUNTERS.get(name)
        if short is not None:
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                key = (s.labels.get("model_name", ""), s.labels.get("model_version", ""))
                d = out.setdefault(key, {})
                d[short] = d.get(short, 0.0) + s.value
    return out


def server_breakdown(before: dict[tuple[str, str], dict[str, float]],
                     after: dict[tuple[str, str], dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per model (``name`` or ``name/version`` when one name has several), means over the scrape interval."""
    rows: dict[str, dict[str, Any]] = {}
    names = Counter(k[0] for k in after)
    for key, a in sorted(after.items()):
        b = before.get(key, {})
        d = {k: v - b.get(k, 0.0) for k, v in a.items()}

        def mean(short: str, scale: float = 1.0, digits: int = 3) -> Optional[float]:
            n = d.get(f"{short}_count", 0.0)
            return round(scale * d.get(f"{short}_sum", 0.0) / n, digits) if n > 0 else None

        row: dict[str, Any] = {}
        if d.get("batch_size_count", 0) > 0 or d.get("queue_wait_count", 0) > 0:
            row = {
                "requests": int(d.get("queue_wait_count", 0) or d.get("frontend_latency_count", 0)),
                "batches": int(d.get("batch_size_count", 0)),
                "queue_wait_ms_mean": mean("queue_wait", 1e3),
                "batch_size_mean": mean("batch_size", 1.0, 2),
                "handler_ms_mean": mean("handler", 1e3),
                "frontend_latency_ms_mean": mean("frontend_latency", 1e3),
            }
        elif d.get("ts_requests", 0) > 0:
            n = d["ts_requests"]
            row = {"requests": int(n),
                   "queue_wait_ms_mean": round(d.get("ts_queue_us", 0.0) / n / 1e3, 3) if "ts_queue_us" in d else None,
                   "frontend_latency_ms_mean": (round(d.get("ts_latency_us", 0.0) / n / 1e3, 3)
                                                if "ts_latency_us" in d else None)}
        if row:
            label = key[0] if names[key[0]] == 1 or not key[1] else f"{key[0]}/{key[1]}"
            rows[label] = row
    return rows


def default_metrics_url(target: Target) -> Optional[str]:
    """The TorchServe/modelserve default layout: inference on 8080 means metrics on 8082."""
    if target.mode == "grpc":
        host, _, port = target.url.rpartition(":")
        return f"http://{host}:8082" if port == "7070" else None
    u = urlsplit(target.url)
    if u.port == 8080:
        return f"{u.scheme}://{u.hostname}:8082"
    return None


# --------------------------------------------------------------------------------------------------
# The driver: levels x (warm-up, measured window), over 1 or N client processes


def _split(total: float, parts: int, integer: bool) -> list[float]:
    if integer:
        t = int(total)
        base, extra = divmod(t, parts)
        return [base + (1 if i < extra else 0) for i in range(parts)]
    return [total / parts] * parts


class _Pool:
    """N client processes, or the current process when N == 1."""

    def __init__(self, target: Target, processes: int, connections: int) -> None:
        self.target = target
        self.n = processes
        if processes == 1:
            self.loop = _new_loop(target.mode)
            self.runner = Runner(target, connections)
            self.conns: list[Any] = []
            return
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a process that may hold threads or a loop
        self.arr = ctx.RawArray("d", 2 * processes)
        self.procs = []
        self.conns = []
        for i in range(processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child, args=(child, target, connections, self.arr, i), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        for c in self.conns:
            if c.recv() != "ready":
                raise RuntimeError("client process failed to start")

    def counts(self) -> tuple[int, int]:
        if self.n == 1:
            return self.runner.stats.ok, self.runner.stats.err
        ok = sum(int(self.arr[2 * i]) for i in range(self.n))
        err = sum(int(self.arr[2 * i + 1]) for i in range(self.n))
        return ok, err

    def run(self, specs: list[Optional[PhaseSpec]], tick: Optional[Callable[[], None]]) -> list[PhaseResult]:
        if self.n == 1:
            spec = specs[0]
            assert spec is not None

            async def go() -> PhaseResult:
                task = asyncio.ensure_future(self.runner.phase(spec))
                while tick is not None and not task.done():
                    await asyncio.wait([task], timeout=0.5)
                    tick()
                return await task

            return [self.loop.run_until_complete(go())]
        from multiprocessing.connection import wait

        busy = {}
        for i, (c, s) in enumerate(zip(self.conns, specs)):
            if s is not None:
                if self.n > 1:
                    self.arr[2 * i] = self.arr[2 * i + 1] = 0
                c.send(s)
                busy[c] = i
        results = []
        while busy:
            for c in wait(list(busy), timeout=0.5):
                raw = c.recv()
                busy.pop(c)
                lat = array.array("d")
                lat.frombytes(raw[0])
                results.append(PhaseResult(lat, *raw[1:]))
            if tick is not None:
                tick()
        return results

    def close(self) -> None:
        if self.n == 1:
            self.loop.run_until_complete(self.runner.close())
            self.loop.close()
            return
        for c in self.conns:
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


class _Progress:
    def __init__(self, enabled: bool, pool: _Pool) -> None:
        self.enabled = enabled
        self.pool = pool
        self.label = ""
        self.t0 = 0.0
        self.total = 0.0
        self._len = 0

    def begin(self, label: str, total: float) -> None:
        self.label, self.total, self.t0 = label, total, time.time()

    def tick(self) -> None:
        if not self.enabled:
            return
        el = max(time.time() - self.t0, 1e-9)
        ok, err = self.pool.counts()
        of = f"/{self.total:g}s" if self.total else "s"
        line = f"{self.label}: {el:5.1f}{of}  {ok} ok ({ok / el:,.0f} req/s)  {err} errors"
        sys.stderr.write("\r" + line.ljust(self._len))
        sys.stderr.flush()
        self._len = len(line)

    def end(self) -> None:
        if self.enabled and self._len:
            sys.stderr.write("\r" + " " * self._len + "\r")
            sys.stderr.flush()
            self._len = 0


def _levels(concurrency: Optional[str], rate: Optional[str]) -> list[tuple[str, float]]:
    levels: list[tuple[str, float]] = []
    if concurrency:
        for x in concurrency.split(","):
            if x.strip():
                c = int(x)
                if c < 1:
                    raise SystemExit("modelserve-bench: concurrency must be >= 1")
                levels.append(("closed", c))
    if rate:
        for x in rate.split(","):
            if x.strip():
                r = float(x)
                if r <= 0:
                    raise SystemExit("modelserve-bench: --rate must be > 0")
                levels.append(("open", r))
    return levels


def run_bench(target: Target, levels: list[tuple[str, float]], *, duration: float = 10.0, requests: int = 0,
              warmup: float = 2.0, processes: int = 1, pause: float = 0.0, metrics_url: Optional[str] = None,
              progress: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run every level (warm-up, then the measured window) and return the report as a dict."""
    if target.mode == "grpc":
        grpc_stubs()  # ImportError surfaces here, before processes start
    # closed loop: one connection per slot (the slots bound them); open loop: --max-connections or unbounded
    per_proc_conns = math.ceil(target.max_connections / processes) if target.max_connections else 0
    pool = _Pool(target, processes, per_proc_conns)
    prog = _Progress(progress, pool)
    results: list[dict[str, Any]] = []
    try:
        for li, (kind, level) in enumerate(levels):
            label = f"c={int(level)}" if kind == "closed" else f"rate={level:g}/s"
            nproc = min(processes, int(level)) if kind == "closed" else processes
            shares = _split(level, nproc, kind == "closed")
            counts = _split(requests, nproc, True) if requests else [0] * nproc

            def specs(secs: float, cnts: list[int], record: bool, li: int = li) -> list[Optional[PhaseSpec]]:
                at = time.time() + (0.05 if processes > 1 else 0.0)
                out: list[Optional[PhaseSpec]] = [
                    PhaseSpec(kind, shares[i], secs, cnts[i], at, seed=seed * 1000003 + li * 7919 + i * 31 + record,
                              record=record) for i in range(nproc)]
                return out + [None] * (processes - nproc)

            if warmup > 0:
                prog.begin(f"{label} warm-up", warmup)
                pool.run(specs(warmup, [0] * nproc, False), prog.tick)
                prog.end()
            before = after = None
            scrape_error = None
            if metrics_url:
                try:
                    before = scrape_metrics(metrics_url)
                except Exception as e:  # noqa: BLE001 - reported, not fatal
                    scrape_error = f"{type(e).__name__}: {e}"
            prog.begin(label, 0 if requests else duration)
            raw = pool.run(specs(0 if requests else duration, counts, True), prog.tick)
            prog.end()
            if metrics_url and before is not None:
                try:
                    after = scrape_metrics(metrics_url)
                except Exception as e:  # noqa: BLE001
                    scrape_error = f"{type(e).__name__}: {e}"
            row: dict[str, Any] = {"load": label, "kind": kind}
            row["concurrency" if kind == "closed" else "rate"] = int(level) if kind == "closed" else level
            row["processes"] = nproc
            row.update(_summary(raw))
            if kind == "open":
                row["achieved_rate"] = round(row["issued"] / max(row["duration_s"], 1e-9), 1)
            if metrics_url:
                if before is not None and after is not None:
                    row["server"] = server_breakdown(before, after)
                else:
                    row["server_error"] = scrape_error
            results.append(row)
            if progress:
                sys.stderr.write(_row_line(row) + "\n")
            if pause > 0 and li < len(levels) - 1:
                time.sleep(pause)
    finally:
        pool.close()
    return {
        "target": {"mode": target.mode, "url": target.url, "model": target.model, "version": target.version,
                   "content_type": target.content_type, "body_bytes": len(target.body),
                   "headers": sorted(target.headers)},
        "config": {"duration_s": None if requests else duration, "requests": requests or None,
                   "warmup_s": warmup, "processes": processes, "timeout_s": target.timeout,
                   "metrics_url": metrics_url},
        "client": _client_versions(target.mode),
        "results": results,
    }


def _client_versions(mode: str) -> dict[str, str]:
    from . import __version__

    v = {"modelserve": __version__, "python": sys.version.split()[0]}
    try:
        import aiohttp

        v["aiohttp"] = aiohttp.__version__
    except ImportError:
        pass
    if mode != "grpc":
        try:
            import uvloop

            v["uvloop"] = uvloop.__version__
        except ImportError:
            pass
    else:
        import grpc

        v["grpcio"] = grpc.__version__
    return v


CLIENT_BUSY_PCT = 90


def _fmt(v: Optional[float], width: int, digits: int = 2) -> str:
    return ("-" if v is None else f"{v:.{digits}f}").rjust(width)


def _row_line(r: dict[str, Any]) -> str:
    errs = ", ".join(f"{k}={v}" for k, v in r["errors"].items()) or "none"
    return (f"{r['load']}: {r['rps']:,.1f} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
            f"({r['ok']} ok, errors: {errs})")


def format_report(rep: dict[str, Any]) -> str:
    t, cfg = rep["target"], rep["config"]
    window = f"{cfg['requests']} requests" if cfg["requests"] else f"{cfg['duration_s']:g} s"
    lines = [
        f"modelserve-bench: {t['mode']} {t['url']}" + (f" (model {t['model']})" if t["mode"] == "grpc" else ""),
        f"  body {t['body_bytes']} B {t['content_type']}; {window} per level after {cfg['warmup_s']:g} s warm-up; "
        f"{cfg['processes']} client process(es)",
        "",
        f"{'load':>14} {'req/s':>10} {'mean ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9} "
        f"{'ok':>8}  errors",
    ]
    for r in rep["results"]:
        errs = ", ".join(f"{k}={v}" for k, v in r["errors"].items()) or "-"
        lines.append(f"{r['load']:>14} {r['rps']:>10,.1f} {_fmt(r['mean_ms'], 9)} {_fmt(r['p50_ms'], 9)} "
                     f"{_fmt(r['p90_ms'], 9)} {_fmt(r['p99_ms'], 9)} {_fmt(r['max_ms'], 9)} {r['ok']:>8}  {errs}")
        if r["kind"] == "open":
            lines.append(f"{'':>14} target {r['rate']:g}/s, sent {r['achieved_rate']:g}/s, "
                         f"scheduler max lag {r.get('scheduler_max_lag_ms', 0)} ms")
    busy = [r["load"] for r in rep["results"] if max(r.get("client_cpu_pct") or [0]) >= CLIENT_BUSY_PCT]
    if busy:
        lines.append(f"  note: a client process was >= {CLIENT_BUSY_PCT}% busy at {', '.join(busy)}: the client may be "
                     "the bottleneck (use --processes N on a machine with spare cores, or wrk)")
    server_rows = [(r["load"], m, s) for r in rep["results"] for m, s in (r.get("server") or {}).items()]
    if server_rows:
        lines += ["", "server side (from /metrics, over each measured window):",
                  f"{'load':>14} {'model':>16} {'requests':>9} {'queue ms':>9} {'batch':>7} {'handler ms':>11} "
                  f"{'frontend ms':>12}"]
        for load, m, s in server_rows:
            lines.append(f"{load:>14} {m:>16} {s.get('requests', 0):>9} {_fmt(s.get('queue_wait_ms_mean'), 9, 3)} "
                         f"{_fmt(s.get('batch_size_mean'), 7)} {_fmt(s.get('handler_ms_mean'), 11, 3)} "
                         f"{_fmt(s.get('frontend_latency_ms_mean'), 12, 3)}")
    errs = [(r["load"], r["server_error"]) for r in rep["results"] if r.get("server_error")]
    for load, e in errs:
        lines.append(f"  ({load}: server metrics unavailable: {e})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelserve-bench",
        description="Load-test one model of a running modelserve (or TorchServe) and report throughput, "
                    "latency percentiles, errors and the server-side breakdown.",
        epilog="examples:\n"
               "  modelserve-bench -m linear --body x.txt --content-type text/plain -c 1,16,64 -d 10\n"
               "  modelserve-bench -m mlp --body mlp.json --content-type application/json --rate 200,400 "
               "--metrics-url http://127.0.0.1:8082\n"
               "  modelserve-bench --mode grpc --url 127.0.0.1:7070 -m linear --body x.txt -c 16 --json\n"
               "see docs/benchmark.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="model name")
    p.add_argument("--model-version", dest="version", default="", help="model version (default: the default version)")
    p.add_argument("--mode", choices=("rest", "oip", "grpc"), default="rest",
                   help="rest: /predictions/{model}; oip: /v2/models/{model}/infer; grpc: TorchServe Predictions")
    p.add_argument("--url", help="inference base URL (default http://127.0.0.1:8080; grpc: 127.0.0.1:7070)")
    p.add_argument("--path", help="path template instead of the mode's, e.g. '/predictions/{model}'")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", "-b", help="file sent as the request body")
    body.add_argument("--data", help="literal request body")
    p.add_argument("--content-type", "-T", help="Content-Type (default application/octet-stream; oip: application/json)")
    p.add_argument("--header", "-H", action="append", default=[], metavar="'NAME: VALUE'",
                   help="extra request header (gRPC: metadata), e.g. 'Authorization: Bearer KEY'; repeatable")
    p.add_argument("-c", "--concurrency", help="closed loop: comma-separated in-flight counts (default 16 "
                   "unless --rate is given)")
    p.add_argument("--rate", help="open loop: comma-separated mean request rates, req/s (Poisson arrivals)")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds measured per level (default 10)")
    p.add_argument("-n", "--requests", type=int, default=0, help="requests measured per level instead of -d")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per level, discarded (default 2)")
    p.add_argument("--pause", type=float, default=1.0, help="idle seconds between levels (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s (default 30)")
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                   help="HTTP client: raw (built-in keep-alive HTTP/1.1, default; plain http only) or aiohttp")
    p.add_argument("--processes", "-p", type=int, default=1, help="client processes; their samples are merged")
    p.add_argument("--max-connections", type=int, default=0,
                   help="open loop: cap on connections (default: unlimited; closed loop uses one per slot)")
    p.add_argument("--metrics-url", help="metrics base URL for the server-side breakdown, e.g. "
                   "http://127.0.0.1:8082 (default: 8082 when --url is on 8080); 'none' to skip")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--progress", action="store_true", default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--seed", type=int, default=0, help="seed of the open-loop arrival times")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = _parser().parse_args(argv)
    if a.processes < 1:
        raise SystemExit("modelserve-bench: --processes must be >= 1")
    if a.duration <= 0 and not a.requests:
        raise SystemExit("modelserve-bench: -d must be > 0 (or give -n)")
    levels = _levels(a.concurrency if a.concurrency or a.rate else "16", a.rate)
    if not levels:
        raise SystemExit("modelserve-bench: nothing to run (give -c or --rate)")
    if a.mode == "grpc":
        try:
            grpc_stubs()
        except ImportError as e:
            msg = f"modelserve-bench: gRPC mode unavailable ({e}); skipped"
            print(msg, file=sys.stderr)
            if a.json:
                print(json.dumps({"skipped": True, "reason": str(e), "results": []}))
            return 0
    target = build_target(a)
    if a.metrics_url and a.metrics_url.lower() == "none":
        metrics_url = None
    else:
        metrics_url = a.metrics_url or default_metrics_url(target)
    progress = a.progress if a.progress is not None else sys.stderr.isatty()
    try:
        rep = run_bench(target, levels, duration=a.duration, requests=a.requests, warmup=a.warmup,
                        processes=a.processes, pause=a.pause, metrics_url=metrics_url, progress=progress,
                        seed=a.seed)
    except KeyboardInterrupt:
        print("\nmodelserve-bench: interrupted", file=sys.stderr)
        return 130
    if a.json:
        print(json.dumps(rep, indent=1))
    else:
        print(format_report(rep))
    failed = all(r["ok"] == 0 for r in rep["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
