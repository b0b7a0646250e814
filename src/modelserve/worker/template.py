"""The worker template ("forkserver"): imports torch and the worker code once, then forks workers.

The frontend starts it (``python -m modelserve.worker.template``) first thing, so the expensive
``import torch`` runs while the frontend imports its own code, and every worker start or restart
after that is a ``fork()`` instead of a new interpreter importing torch again. ``modelserve.spawn``
is the frontend's side.

Protocol, over a SOCK_SEQPACKET socket (one JSON message per packet):

* frontend -> template: ``{"id", "env", "cwd"}`` with two fds (SCM_RIGHTS): the worker's end of its
  socketpair and the write end of the pipe for its stdout/stderr. ``env`` is the worker's whole
  environment (it holds the spec, as for a spawned worker).
* template -> frontend: ``{"ready": pid}`` once imported; ``{"id", "pid"}`` (with a pidfd when the
  kernel has them) or ``{"id", "error"}`` per request; ``{"exit": pid, "rc": code}`` when a worker
  has been reaped (``rc`` as subprocess reports it: negative for "killed by that signal").

The template exits when the frontend closes the socket, and dies with the frontend (PR_SET_PDEATHSIG),
which takes its workers down with it (they have the same setting towards the template).

Fork safety: the template only imports. It must start no threads and must not initialise CUDA,
OpenMP or torch's thread pools (no torch ops, no ``torch.set_num_threads`` here); a forked child
would inherit locks held by threads that do not exist in it. The one thread an import starts,
OpenBLAS's pool (numpy's, imported by torch), is shut down by OpenBLAS's own fork handler before
each fork and rebuilt on demand in the child.
"""
from __future__ import annotations

import io
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any, NoReturn, Optional

import orjson

CONTROL_FD_ENV = "MODELSERVE_TEMPLATE_FD"
PARENT_ENV = "MODELSERVE_TEMPLATE_PARENT"
MAX_MESSAGE = 1024 * 1024

# What a spawned worker imports anyway; importing it here is what makes a forked worker start fast.
PRELOAD = ("torch", "numpy", "modelserve.worker.main", "modelserve.worker.codec", "modelserve.worker.tensors",
           "modelserve.worker.loader", "modelserve.worker.metrics")


def launch() -> tuple[subprocess.Popen, socket.socket]:
    """Start a template process (the frontend's side): the process and our end of its control socket.

    Light to import on purpose: the CLI calls it before it imports asyncio and its own config code.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ)
    env[CONTROL_FD_ENV] = str(theirs.fileno())
    env[PARENT_ENV] = str(os.getpid())
    try:
        # Popen from the main thread: PR_SET_PDEATHSIG fires when the thread that forked exits
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelserve.worker.template"], pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/", env=env)
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
    except OSError:
        pass
    return proc, ours


def discard(launched: tuple[subprocess.Popen, socket.socket]) -> None:
    """Stop a template that was launched but will not be used."""
    proc, sock = launched
    sock.close()
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _die_with_parent() -> None:
    from .main import _die_with_parent as die  # noqa: PLC0415 - one implementation of the prctl

    die()


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # torch or numpy missing: workers import what they need themselves
            pass


def _send(ctl: socket.socket, msg: dict[str, Any], fds: Optional[list[int]] = None) -> None:
    data = orjson.dumps(msg)
    if fds:
        socket.send_fds(ctl, [data], fds)
    else:
        ctl.send(data)


class Template:
    def __init__(self, ctl: socket.socket, import_s: float = 0.0) -> None:
        self.ctl = ctl
        self.import_s = import_s
        self.pid = os.getpid()
        self.wake_r, self.wake_w = os.pipe()
        # ``python -m`` put the start directory first on sys.path; a worker gets its model dir there
        self.path0_is_cwd = bool(sys.path) and not getattr(sys.flags, "safe_path", False) \
            and sys.path[0] == os.getcwd()
        self.env = dict(os.environ)

    def run(self) -> int:
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only wakes the poll below
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        _send(self.ctl, {"ready": self.pid, "import_s": round(self.import_s, 3)})
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif not self._request():
                    return 0
            self._reap()

    def _request(self) -> bool:
        """Handle one message from the frontend; False when it has gone."""
        try:
            data, fds, flags, _ = socket.recv_fds(self.ctl, MAX_MESSAGE, 4)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data and not fds:
            return False
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            msg = {}
        rid = msg.get("id")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 2 or "env" not in msg:
            for fd in fds:
                os.close(fd)
            self._reply({"id": rid, "error": "malformed fork request"})
            return True
        self._fork(rid, msg, fds[0], fds[1])
        return True

    def _reply(self, msg: dict[str, Any], fds: Optional[list[int]] = None) -> None:
        try:
            _send(self.ctl, msg, fds)
        except OSError:  # the frontend has gone: nothing left to serve
            os._exit(0)

    def _fork(self, rid: Any, msg: dict[str, Any], sock_fd: int, out_fd: int) -> None:
        for stream in (sys.stdout, sys.stderr):  # or the child would write our buffered text again
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(sock_fd)
            os.close(out_fd)
            self._reply({"id": rid, "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            self._child(msg, sock_fd, out_fd)  # raises SystemExit: the child never comes back here
        os.close(sock_fd)
        os.close(out_fd)
        pidfd = None
        try:  # a handle that cannot name a recycled pid: the frontend signals the worker through it
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pass
        try:
            self._reply({"id": rid, "pid": pid}, [pidfd] if pidfd is not None else None)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._reply({"exit": pid, "rc": os.waitstatus_to_exitcode(status)})

    # -- in the forked child ------------------------------------------------------------------
    def _child(self, msg: dict[str, Any], sock_fd: int, out_fd: int) -> NoReturn:
        """Run the worker, then exit the way a spawned worker's interpreter does (atexit handlers,
        finalisation: a handler's unclosed files are flushed): SystemExit unwinds out of the
        template's loop, which nothing on the way catches."""
        try:
            code = self._become_worker(msg, sock_fd, out_fd)
        except SystemExit:
            raise
        except BaseException:  # noqa: BLE001 - reported on the worker's stderr, then the exit code says it
            traceback.print_exc()
            code = 1
        raise SystemExit(code)

    def _become_worker(self, msg: dict[str, Any], sock_fd: int, out_fd: int) -> int:
        # undo what the template set up for itself
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.ctl.close()
        # PR_SET_PDEATHSIG is cleared by fork: set it towards the template, then close the race
        _die_with_parent()
        if os.getppid() != self.pid:
            os._exit(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        for name in ("stdout", "stderr"):  # unbuffered, as PYTHONUNBUFFERED gives a spawned worker
            old = getattr(sys, name)
            stream = io.TextIOWrapper(io.FileIO(1 if name == "stdout" else 2, "w", closefd=False),
                                      encoding=getattr(old, "encoding", None) or "utf-8",
                                      errors=getattr(old, "errors", None) or "backslashreplace",
                                      line_buffering=True, write_through=True)
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)
        env: dict[str, str] = msg["env"]
        os.environ.clear()
        os.environ.update(env)
        from .main import FD_ENV, main

        os.environ[FD_ENV] = str(sock_fd)
        os.chdir(msg["cwd"])
        if self.path0_is_cwd:
            sys.path[0] = os.getcwd()
        sys.argv[:] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")]
        _apply_threads(self.env, env)
        _reseed()
        return main()


def _apply_threads(template_env: dict[str, str], env: dict[str, str]) -> None:
    """OMP_NUM_THREADS was read when the libraries loaded in the template: apply the worker's value."""
    value = env.get("OMP_NUM_THREADS")
    if value == template_env.get("OMP_NUM_THREADS"):
        return
    try:
        n = int(value or "")
    except ValueError:
        return
    if n <= 0:
        return
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    if "OPENBLAS_NUM_THREADS" not in env and "GOTO_NUM_THREADS" not in env:
        _set_openblas_threads(n)


def _set_openblas_threads(n: int) -> None:
    """numpy's OpenBLAS sized its pool from OMP_NUM_THREADS when it loaded: resize it."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return
    for lib in libs:
        try:
            dll = ctypes.CDLL(lib)
        except OSError:
            continue
        for symbol in ("openblas_set_num_threads", "openblas_set_num_threads64_",
                       "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_"):
            fn = getattr(dll, symbol, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                break


def _reseed() -> None:
    """Python's ``random`` reseeds itself after fork; numpy's global generator does not."""
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        try:
            np_random.seed()
        except Exception:  # noqa: BLE001
            pass


def main() -> int:
    ctl = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    ctl.setblocking(True)
    parent = int(os.environ.pop(PARENT_ENV, "0") or 0)
    _die_with_parent()  # dies with the frontend, even on kill -9; its workers die with it
    if parent and os.getppid() != parent:
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the frontend decides
    started = time.monotonic()
    _preload()
    code = Template(ctl, time.monotonic() - started).run()
    # Nothing to clean up, and finalising an interpreter that imported torch takes ~0.5 s, which
    # every server stop would wait for: leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
