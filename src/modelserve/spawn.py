"""How the frontend starts a worker process: forked from the worker template, or spawned fresh.

The worker template (``modelserve.worker.template``) is a process that has imported torch and the
worker code once. The CLI starts it before the frontend imports its own code, so the two imports
overlap; each worker is then a ``fork()`` of it (milliseconds) instead of a new interpreter that
imports torch again (a second or more), which makes cold start, scale-up and restarts fast.

A worker is spawned the old way (``python -m modelserve.worker``) when there is no template
(``worker_template=false``; it could not start; it died and its one lazy restart is used up), when
it does not answer, and when the worker's environment differs from the template's in a variable
that is read when an interpreter or a shared library starts (``START_VARS``).

Either way WorkerProcess gets a process-like object: ``pid``, ``returncode``, ``stdout`` (a
StreamReader of the worker's stdout and stderr), ``kill()`` and ``await wait()``.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any, AsyncIterator, Optional

import orjson

from .log import MODEL_LOGGER, get_logger
from .worker.template import discard, launch

log = get_logger()
model_log = logging.getLogger(MODEL_LOGGER)

# Read when an interpreter or a shared library starts (Python's, the dynamic linker's, malloc's, the
# OpenMP/BLAS runtimes', torch's): the template has read them already, so a worker whose value of one
# differs from the template's is spawned fresh. Two exceptions are applied in a forked worker instead:
# OMP_NUM_THREADS (torch.set_num_threads, and OpenBLAS resized) and PYTHONUNBUFFERED (its stdout and
# stderr are reopened unbuffered). CUDA_* variables need no exception: CUDA initialises in the worker.
START_VARS = ("PYTHON", "LD_", "MALLOC_", "GLIBC_TUNABLES", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_",
              "GOTO_", "TORCH_", "PYTORCH_")
FORKABLE_VARS = frozenset({"OMP_NUM_THREADS", "PYTHONUNBUFFERED"})
TEMPLATE_STARTS = 2  # the first start and one lazy restart; then workers are spawned


async def output_lines(reader: asyncio.StreamReader) -> AsyncIterator[str]:
    """A child process's output, line by line, decoded (a line over the reader's limit is skipped)."""
    while True:
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            continue
        if not line:
            return
        yield line.decode("utf-8", errors="replace").rstrip("\n")


class TemplateUnavailable(Exception):
    """The template could not start this worker; it is spawned instead."""


class ForkedWorker:
    """A worker forked by the template, shaped like ``asyncio.subprocess.Process`` for WorkerProcess."""

    def __init__(self, pid: int, pidfd: Optional[int], loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None
        self.stdout: Optional[asyncio.StreamReader] = None
        self._pidfd = pidfd  # signals reach this process even if its pid has been recycled
        self._exit: asyncio.Future = loop.create_future()

    def _set_exit(self, code: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exit.done():
            self._exit.set_result(code)

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, sig)
        else:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)


class WorkerTemplate:
    """The frontend's handle on the template process: start it, ask it for workers, hear their exits."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.sock: Optional[socket.socket] = None
        self.env: dict[str, str] = {}
        self.starts = 0
        self.stopping = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._children: dict[int, ForkedWorker] = {}
        self._writable: Optional[asyncio.Future] = None
        self._pump: Optional[asyncio.Task] = None

    @property
    def alive(self) -> bool:
        return self.sock is not None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def start(self, launched: Optional[tuple[subprocess.Popen, socket.socket]] = None) -> None:
        """Start the template process (it imports while the caller goes on), or adopt one ``launch()``
        started; raise OSError if it cannot start."""
        self.starts += 1
        self.proc, self.sock = launched if launched is not None else launch()
        self.env = dict(os.environ)
        self._loop = None

    def unforkable(self, env: dict[str, str]) -> Optional[str]:
        """Why a worker with this environment cannot be forked from the template (None: it can)."""
        for key in sorted(set(env) | set(self.env)):
            if env.get(key) != self.env.get(key) and key.startswith(START_VARS) and key not in FORKABLE_VARS:
                return f"{key} differs from the worker template's and is read when a process starts"
        return None

    # -- asking for a worker ----------------------------------------------------------------------
    async def fork(self, env: dict[str, str], cwd: str, sock: socket.socket, timeout: float) -> ForkedWorker:
        """A forked worker running ``modelserve.worker.main`` with this environment, directory and socket."""
        if self.sock is None:
            raise TemplateUnavailable("the worker template is not running")
        loop = asyncio.get_running_loop()
        self._attach(loop)
        rid = next(self._ids)
        try:
            data = orjson.dumps({"id": rid, "env": env, "cwd": cwd})
        except TypeError as exc:
            raise TemplateUnavailable(f"cannot send the worker's environment: {exc}") from None
        fut: asyncio.Future = loop.create_future()
        self._pending[rid] = fut
        r, w = os.pipe()  # the worker's stdout and stderr
        child: Optional[ForkedWorker] = None
        try:
            try:
                await self._send(data, [sock.fileno(), w])
            finally:
                os.close(w)
            try:
                child = await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                self._give_up(f"it did not fork a worker within {timeout:g} s")
                raise TemplateUnavailable(f"the worker template did not answer within {timeout:g} s") from None
            reader = asyncio.StreamReader(limit=2 ** 16)
            pipe = os.fdopen(r, "rb", 0)
            r = -1
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
            child.stdout = reader
            return child
        except BaseException:
            self._pending.pop(rid, None)
            if r >= 0:
                os.close(r)
            if child is not None and child.returncode is None:
                child.kill()
            raise

    async def _send(self, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock = self.sock
            if sock is None:
                raise TemplateUnavailable("the worker template exited")
            try:
                socket.send_fds(sock, [data], fds)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                raise TemplateUnavailable(f"cannot reach the worker template: {exc}") from None
            # the socket is full (the template is still importing): wait until it takes more
            if self._writable is None or self._writable.done():
                fut = self._writable = loop.create_future()
                loop.add_writer(sock.fileno(), lambda: fut.done() or fut.set_result(None))
                try:
                    await asyncio.shield(fut)
                finally:
                    if self.sock is sock:
                        loop.remove_writer(sock.fileno())
                    if not fut.done():  # this sender was cancelled: the others waiting try again
                        fut.set_result(None)
            else:
                await asyncio.shield(self._writable)

    # -- what the template says -------------------------------------------------------------------
    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop or self.sock is None:
            return
        self._loop = loop
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._on_readable)
        if self.proc is not None and self.proc.stdout is not None:
            self._pump = loop.create_task(self._pump_output(self.proc))

    async def _pump_output(self, proc: subprocess.Popen) -> None:
        """The template's own output (import warnings, a crash) goes to the model log."""
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2 ** 16)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        try:
            async for line in output_lines(reader):
                model_log.info("[worker template pid %s] %s", proc.pid, line)
        finally:
            transport.close()

    def _on_readable(self) -> None:
        while self.sock is not None:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self._lost()
                return
            try:
                self._on_message(orjson.loads(data), fds[0] if fds else None)
            except Exception:  # noqa: BLE001 - a bad message must not stop the reader
                log.exception("worker template: bad message %r", data[:200])
                for fd in fds:
                    os.close(fd)

    def _on_message(self, msg: dict[str, Any], fd: Optional[int]) -> None:
        if "exit" in msg:
            child = self._children.pop(int(msg["exit"]), None)
            if child is not None:
                child._set_exit(int(msg["rc"]))
        elif "id" in msg:
            fut = self._pending.pop(msg["id"], None)
            if "pid" in msg:
                assert self._loop is not None
                child = ForkedWorker(int(msg["pid"]), fd, self._loop)
                self._children[child.pid] = child
                if fut is None or fut.done():  # its start was given up on
                    child.kill()
                else:
                    fut.set_result(child)
            else:
                if fd is not None:
                    os.close(fd)
                if fut is not None and not fut.done():
                    fut.set_exception(TemplateUnavailable(msg.get("error") or "the template refused"))
        elif "ready" in msg:
            log.info("worker template ready (pid %s, imports took %.2f s)", msg["ready"], msg.get("import_s", 0))
        elif fd is not None:
            os.close(fd)

    def _give_up(self, why: str) -> None:
        """A template that does not answer is killed; the next worker restarts it (once)."""
        log.error("worker template (pid %s): %s; killing it", self.pid, why)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def _lost(self) -> None:
        """The template exited: its workers were killed with it (PR_SET_PDEATHSIG)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
                if self._writable is not None:
                    self._loop.remove_writer(sock.fileno())
            sock.close()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(TemplateUnavailable("the worker template exited"))
        self._pending.clear()
        children, self._children = self._children, {}
        for child in children.values():
            child._set_exit(-signal.SIGKILL)
        if not self.stopping:
            log.warning("worker template (pid %s) exited%s", self.pid,
                        f"; {len(children)} of its workers died with it" if children else "")
        self._reap_later(self.proc, 0)

    def _reap_later(self, proc: Optional[subprocess.Popen], tries: int) -> None:
        """Reap the exited template; kill it if it lingers. Bound to that process: by the time this
        runs again, ``self.proc`` may be its restarted successor."""
        if proc is None or proc.poll() is not None or self._loop is None:
            return
        if tries >= 10:
            proc.kill()
        self._loop.call_later(0.1, self._reap_later, proc, tries + 1)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the control socket (the template exits when it sees that) and reap the process."""
        self.stopping = True
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


_template: Optional[WorkerTemplate] = None


def start_template(launched: Optional[tuple[subprocess.Popen, socket.socket]] = None) -> Optional[str]:
    """Start the worker template for this process's workers (or adopt the one ``launched`` already);
    return why it could not start, if so."""
    global _template
    if _template is not None and _template.alive:
        if launched is not None:
            discard(launched)
        return None
    _template = WorkerTemplate()
    try:
        _template.start(launched)
    except OSError as exc:
        return str(exc)
    return None


def stop_template() -> None:
    global _template
    template, _template = _template, None
    if template is not None:
        template.stop()


def current_template() -> Optional[WorkerTemplate]:
    return _template


async def spawn_worker(env: dict[str, str], cwd: str, sock: socket.socket, timeout: float) -> Any:
    """Start one worker with this environment (it holds the spec), directory and socket end.

    Forked from the template when there is one and the environment allows it, else a new process.
    ``timeout`` bounds how long the template may take to answer before the worker is spawned instead.
    """
    template = _template
    for _ in range(TEMPLATE_STARTS):  # a template that dies under a fork request is restarted (once)
        if template is None or template.stopping:
            break
        if not template.alive and template.starts < TEMPLATE_STARTS:
            log.warning("restarting the worker template")
            try:
                template.start()
            except OSError as exc:
                log.error("the worker template could not restart: %s", exc)
        if not template.alive:
            break
        reason = template.unforkable(env)
        if reason is not None:
            log.info("spawning a worker instead of forking it from the template: %s", reason)
            break
        try:
            return await template.fork(env, cwd, sock, timeout)
        except TemplateUnavailable as exc:
            if template.alive and template.proc is not None and template.proc.poll() is not None:
                template._lost()  # it died (its workers with it) before we saw its socket close
            if template.alive:
                log.warning("worker template could not start a worker (%s); spawning it instead", exc)
                break
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelserve.worker", pass_fds=(sock.fileno(),),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd,
    )
