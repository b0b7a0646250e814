"""The worker's main loop: load the handler, report, then serve frames until told to stop."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from collections import deque
from typing import Any, Optional

import orjson

from .. import __version__
from ..errors import QUEUE_TIMEOUT_MESSAGE
from ..handler import Context, PredictionException
from ..wire import Kind, encode, read_frame, split_blobs
from .codec import InputError, decode_input, encode_output
from .loader import LoadedHandler, load_handler
from .tensors import OIP_TENSOR, encode_outputs, preload_torch
from .metrics import HandlerMetrics

SPEC_ENV = "MODELSERVE_WORKER_SPEC"
FD_ENV = "MODELSERVE_WORKER_FD"


def _die_with_parent() -> None:
    """Ask Linux to kill this worker if the frontend dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _error_text(exc: BaseException) -> str:
    """First line names the error; the traceback follows, once."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}\n{tb}"


class Worker:
    def __init__(self, sock: socket.socket, spec: dict[str, Any]) -> None:
        self.sock = sock
        self.spec = spec
        self.max_response = int(spec.get("max_response_size", 6553500))
        self.metrics = HandlerMetrics()
        self.context = Context(
            model_name=spec["model_name"],
            model_dir=spec["model_dir"],
            manifest=spec["manifest"],
            batch_size=int(spec.get("batch_size", 1)),
            gpu=spec.get("gpu_id"),
            server_version=__version__,
            model_yaml_config=spec.get("model_yaml_config") or {},
            metrics=self.metrics,
            limit_max_image_pixels=bool(spec.get("limit_max_image_pixels", True)),
        )
        self.context._send_partial = self._send_partial
        self.handler: Optional[LoadedHandler] = None
        self._batch_id: Any = None
        self._oip: list[bool] = []  # per handler input: an Open Inference Protocol request (tensors)
        # Batches received and not started: the frontend sends the next while this one runs.
        self._pending: deque[tuple[dict[str, Any], memoryview]] = deque()
        self._cancelled: set[str] = set()  # ids of pending requests whose client gave up
        self._stopping = False

    # -- load --------------------------------------------------------------------------------
    def load(self) -> bool:
        threads = int(self.spec.get("threads") or 0)
        try:
            self.handler = load_handler(self.spec["handler"], self.context)
            preload_torch(self.context.model_yaml_config)
            # OMP_NUM_THREADS (set by the frontend) covers torch imported during the load; this covers
            # a handler that imported torch before, without importing it for handlers that never do.
            torch = sys.modules.get("torch")
            if threads > 0 and torch is not None:
                torch.set_num_threads(threads)
        except BaseException as exc:  # noqa: BLE001 - every load failure must reach the frontend
            text = _error_text(exc)
            sys.stderr.write(text)
            sys.stderr.flush()
            self.sock.sendall(encode(Kind.LOADED, {"ok": False, "error": text}))
            return False
        self.sock.sendall(encode(Kind.LOADED, {"ok": True, "pid": os.getpid()}))
        return True

    # -- serve -------------------------------------------------------------------------------
    def serve(self) -> None:
        """Run batches in the order received; before each, take in every frame already sent.

        That drain is what lets a CANCEL for a request of a batch waiting here arrive in time, and
        what keeps control frames (PING, DESCRIBE) answered in order between batches.
        """
        sock = self.sock
        pending = self._pending
        while True:
            if not pending:
                if self._stopping:
                    return
                try:
                    self._on_frame(*read_frame(sock))
                except (ConnectionError, OSError):
                    return
                continue
            if not self._drain():
                return  # the frontend is gone: nobody would read the results
            header, payload = pending.popleft()
            sock.sendall(self.run_batch(header, payload))

    def _drain(self) -> bool:
        """Read every frame already in the socket without waiting for more; False once it is closed."""
        sock = self.sock
        while True:
            try:
                if not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    return False
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            try:
                self._on_frame(*read_frame(sock))  # a frame has begun: the rest follows at once
            except (ConnectionError, OSError):
                return False

    def _on_frame(self, kind: Kind, header: dict[str, Any], payload: memoryview) -> None:
        if kind is Kind.BATCH:
            self._pending.append((header, payload))
        elif kind is Kind.CANCEL:
            ids = set(header.get("ids") or ())
            for pending, _ in self._pending:  # only ids still waiting here: the set stays small
                for rec in pending["r"]:
                    if rec[0] in ids:
                        self._cancelled.add(rec[0])
        elif kind is Kind.PING:
            self.sock.sendall(encode(Kind.PONG, {"t": header.get("t")}))
        elif kind is Kind.DESCRIBE:
            self.sock.sendall(self.describe())
        elif kind is Kind.STOP:
            self._stopping = True  # after the batches already received

    def describe(self) -> bytes:
        try:
            assert self.handler is not None
            return encode(Kind.DESCRIBED, {"ok": True, "data": self.handler.describe()})
        except Exception as exc:  # noqa: BLE001
            return encode(Kind.DESCRIBED, {"ok": False, "error": _error_text(exc)})

    def run_batch(self, header: dict[str, Any], payload: memoryview) -> bytes:
        self._batch_id = header["id"]
        blobs = split_blobs(header, payload)
        reqs = header["r"]
        n = len(reqs)
        results: list[Optional[list[Any]]] = [None] * n
        data: list[dict[str, Any]] = []
        ids: list[str] = []
        headers: list[dict[str, str]] = []
        index: list[int] = []  # batch position of each handler input
        self._oip = oip = []
        pos = 0
        now = time.monotonic()  # CLOCK_MONOTONIC: system-wide, so the frontend's deadlines compare
        cancelled = self._cancelled
        expired: list[int] = []  # positions answered 504 unrun: the frontend counts them as timeouts
        for i, (rid, params, hdrs, deadline) in enumerate(reqs):
            if cancelled and rid in cancelled:  # the frontend ignores these answers: the client is gone
                cancelled.discard(rid)
                pos += len(params)
                results[i] = [499, "", None, "cancelled: the client went away"]
                continue
            if deadline is not None and now > deadline:
                pos += len(params)
                results[i] = [504, "", None, QUEUE_TIMEOUT_MESSAGE]
                expired.append(i)
                continue
            item: dict[str, Any] = {}
            try:
                for name, ct in params:
                    item[name] = decode_input(ct, blobs[pos], name)
                    pos += 1
            except InputError as exc:
                pos += len(params) - len(item)
                results[i] = [400, "", None, str(exc)]
                continue
            data.append(item)
            oip.append(any(ct.startswith(OIP_TENSOR) for _, ct in params))
            ids.append(rid)
            headers.append(dict(zip(hdrs[::2], hdrs[1::2])) if hdrs else {})
            index.append(i)
        bodies: list[bytes] = [b""] * n
        if data:
            self._run_handler(data, ids, headers, index, results, bodies)
        records = self.metrics.drain()
        out: dict[str, Any] = {"id": self._batch_id, "r": results}
        if expired:
            out["x"] = expired
        if records:
            out["m"] = records
        return encode(Kind.RESULT, out, bodies)

    def _run_handler(self, data: list[dict[str, Any]], ids: list[str], headers: list[dict[str, str]],
                     index: list[int], results: list[Optional[list[Any]]], bodies: list[bytes]) -> None:
        ctx = self.context
        ctx.begin_batch(ids, headers)
        assert self.handler is not None
        try:
            output = self.handler.entry(data, ctx)
            if hasattr(output, "__next__"):  # a generator: every yield is an intermediate response
                last = None
                for last in output:
                    self._send_partial(last, ctx.request_ids, "", 200)
                output = [b""] * len(data) if last is not None else last
            if not isinstance(output, list) or len(output) != len(data):
                got = f"{len(output)} results" if isinstance(output, list) else type(output).__name__
                raise RuntimeError(f"handler returned {got} for a batch of {len(data)} requests; "
                                   "it must return a list with one result per request")
        except PredictionException as exc:
            for i in index:
                results[i] = [exc.status_code, "", None, exc.message]
            return
        except Exception as exc:  # noqa: BLE001 - a handler error answers the batch, never kills the worker
            text = _error_text(exc)
            sys.stderr.write(f"handler error in batch {ids}:\n{text}")
            sys.stderr.flush()
            for i in index:
                results[i] = [500, "", None, text]
            return
        for j, i in enumerate(index):
            results[i] = self._result(j, output[j], bodies, i)

    def _result(self, j: int, item: Any, bodies: list[bytes], i: int) -> list[Any]:
        ctx = self.context
        status = ctx._status[j]
        extra = ctx._headers[j]
        if status is not None and status[0] >= 400:
            message = status[1] or (item if isinstance(item, str) else f"request rejected with status {status[0]}")
            return [status[0], "", extra, message]
        try:
            ct, body = self._encode(j, item)
        except TypeError as exc:
            return [500, "", None, f"cannot serialise the handler's result: {exc}"]
        if len(body) > self.max_response:
            return [500, "", None, f"response of {len(body)} bytes exceeds max_response_size ({self.max_response})"]
        bodies[i] = body
        return [status[0] if status is not None else 200, ct, extra, None]

    def _encode(self, j: int, item: Any) -> tuple[str, bytes]:
        """Request ``j``'s answer: named tensors for OIP requests, else by the item's type."""
        if j < len(self._oip) and self._oip[j]:
            return encode_outputs(item, self.context.model_yaml_config.get("outputs") or [])
        ctx = self.context
        return encode_output(item, ctx._content_type[j] if j < len(ctx._content_type) else None)

    def _send_partial(self, items: list[Any], request_ids: dict[int, str], msg: str, code: int) -> None:
        """Send one intermediate result per request of the batch (streaming)."""
        records = []
        bodies = []
        for j, item in enumerate(items):
            if item is None:
                continue
            ct, body = self._encode(j, item)
            records.append([request_ids.get(j), code, ct, msg or None])
            bodies.append(body)
        self.sock.sendall(encode(Kind.PARTIAL, {"id": self._batch_id, "r": records}, bodies))


def main() -> int:
    _die_with_parent()
    spec = orjson.loads(os.environ.pop(SPEC_ENV))
    sock = socket.socket(fileno=int(os.environ.pop(FD_ENV)))
    sock.setblocking(True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the frontend decides when a worker stops
    worker = Worker(sock, spec)
    if not worker.load():
        return 1
    worker.serve()
    return 0
