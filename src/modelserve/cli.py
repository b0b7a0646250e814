"""The ``modelserve`` command: --start (daemon or --foreground), --stop, --version."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

from . import __version__
from .config import ServerConfig, load_server_config
from .errors import ConfigError, ModelServeError
from .log import get_logger, setup_logging

READY_FD_FLAG = "--_ready-fd"


def pid_file_path() -> str:
    return os.environ.get("MODELSERVE_PID_FILE") or os.path.join(tempfile.gettempdir(), ".modelserve.pid")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelserve", description="Serve PyTorch models over REST and gRPC.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--start", action="store_true", help="start the model server")
    action.add_argument("--stop", action="store_true", help="stop the running model server")
    action.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("--model-store", help="directory holding model archives")
    p.add_argument("--models", nargs="+", default=[], metavar="NAME=ARCHIVE",
                   help="models to load at start: NAME=ARCHIVE, ARCHIVE, or 'all'")
    p.add_argument("--ts-config", "--config", dest="ts_config", help="a TorchServe-style config.properties")
    p.add_argument("--foreground", action="store_true", help="stay attached; logs also go to stdout")
    p.add_argument("--log-dir", help="where log files go (default ./logs)")
    p.add_argument("--log-config", help="accepted for TorchServe compatibility; logging is set by config keys")
    p.add_argument("--ncs", "--no-config-snapshots", dest="ncs", action="store_true",
                   help="do not restore or write config snapshots")
    p.add_argument("--disable-token-auth", action="store_true", help="turn token authorization off")
    p.add_argument("--enable-model-api", action="store_true", help="allow register/unregister over the API")
    p.add_argument(READY_FD_FLAG, dest="ready_fd", type=int, help=argparse.SUPPRESS)
    return p


def _config(args: argparse.Namespace) -> tuple[ServerConfig, tuple[str, ...], tuple[str, ...], list[tuple[int, str]]]:
    overrides: dict[str, Any] = {"model_store": args.model_store, "log_dir": args.log_dir}
    if args.disable_token_auth:
        overrides["disable_token_auth"] = True
    if args.enable_model_api:
        overrides["enable_model_api"] = True
    from .envconfig import env_report  # imports urllib.request: not before the template is launched

    loaded = load_server_config(args.ts_config, overrides)
    from_env = tuple(k for k in loaded.from_env if not (k == "load_models" and args.models))  # --models wins
    return loaded.config, loaded.unknown, loaded.ignored, env_report(from_env, loaded.unknown_env)


def _running_pid() -> Optional[int]:
    try:
        with open(pid_file_path(), encoding="ascii") as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"modelserve" not in f.read():
                return None
    except OSError:
        pass
    return pid


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(f"modelserve {__version__}")
        return 0
    if args.stop:
        return stop()
    if args.ready_fd is None and _running_pid() is not None:
        print("modelserve is already running; stop it first with: modelserve --stop", file=sys.stderr)
        return 1
    early = _launch_template() if args.start and (args.foreground or args.ready_fd is not None) else None
    try:
        config, unknown, ignored, env_lines = _config(args)
    except ConfigError as exc:
        _drop_template(early)
        print(f"modelserve: {exc}", file=sys.stderr)
        return 2
    if args.foreground or args.ready_fd is not None:
        return run_foreground(args, config, unknown, ignored, env_lines, early)
    return start_daemon(argv if argv is not None else sys.argv[1:], config)


def _launch_template() -> Optional[tuple[subprocess.Popen, Any]]:
    """Launch the worker template first thing: its ``import torch``, the longest step of a cold start,
    then runs while this process reads its config and imports the frontend. It is dropped if the
    config turns the template off."""
    from .worker.template import launch

    try:
        return launch()
    except OSError:
        return None  # start_template tries again, and reports why


def _drop_template(launched: Optional[tuple[subprocess.Popen, Any]]) -> None:
    if launched is not None:
        from .worker.template import discard

        discard(launched)


# -- foreground: the server process itself -----------------------------------------------------------

def run_foreground(args: argparse.Namespace, config: ServerConfig, unknown: tuple[str, ...],
                   ignored: tuple[str, ...], env_lines: Sequence[tuple[int, str]] = (),
                   launched: Optional[tuple[subprocess.Popen, Any]] = None) -> int:
    from . import spawn

    # First thing: the worker template imports torch while this process imports the frontend (the
    # heavy part, aiohttp/grpc/prometheus, comes with .server in _serve); workers are then forks of it.
    if config.worker_template:
        template_error = spawn.start_template(launched)
    else:
        template_error = None
        _drop_template(launched)
    try:
        return _run_foreground(args, config, unknown, ignored, env_lines, template_error)
    finally:
        spawn.stop_template()


def _run_foreground(args: argparse.Namespace, config: ServerConfig, unknown: tuple[str, ...],
                    ignored: tuple[str, ...], env_lines: Sequence[tuple[int, str]],
                    template_error: Optional[str]) -> int:
    setup_logging(config.log_dir, console=args.ready_fd is None, level=config.log_level, fmt=config.log_format,
                  access_log=config.enable_access_log)
    log = get_logger()
    if unknown:
        log.warning("config: ignoring unknown keys: %s", ", ".join(unknown))
    if ignored:
        log.warning("config: TorchServe keys that modelserve does not use (ignored): %s", ", ".join(ignored))
    for level, line in env_lines:  # which keys MODELSERVE_* variables set
        log.log(level, "%s", line)
    if template_error:
        log.warning("the worker template did not start (%s); workers start as new processes", template_error)
    import asyncio

    if config.use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    try:
        return asyncio.run(_serve(args, config, ready))
    finally:
        if ready is not None and not ready.closed:
            ready.close()


def _report(ready: Any, ok: bool, text: str) -> None:
    if ready is None:
        stream = sys.stdout if ok else sys.stderr
        print(text, file=stream, flush=True)
        return
    try:
        ready.write(("OK " if ok else "FAIL ") + text.replace("\n", "\x1e") + "\n")
        ready.flush()
        ready.close()
    except OSError:
        pass


async def _serve(args: argparse.Namespace, config: ServerConfig, ready: Any) -> int:
    import asyncio

    from .server import ModelServer, parse_model_args

    log = get_logger()
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    signals = {"count": 0}

    def on_signal() -> None:  # only sets flags; the shutdown runs below
        signals["count"] += 1
        if signals["count"] > 1:
            os._exit(1)
        stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        models = parse_model_args(args.models or ([config.load_models] if config.load_models else []),
                                  config.model_store)
    except ConfigError as exc:
        _report(ready, False, f"modelserve: {exc}")
        return 2
    server = ModelServer(config, models, snapshots=not args.ncs)
    try:
        await server.start()
    except (ConfigError, ModelServeError) as exc:
        message = exc.message if isinstance(exc, ModelServeError) else str(exc)
        log.error("Start failed: %s", message)
        _report(ready, False, f"modelserve failed to start:\n{message}")
        await server.stop(grace=0)
        return 1
    _write_pid()
    _report(ready, True, "\n".join(server.addresses + ["Model server started."]))
    if ready is None:
        log.info("Model server started.")
    try:
        await stop_event.wait()
    finally:
        await server.stop()
        _remove_pid()
    return 0


def _write_pid() -> None:
    with open(pid_file_path(), "w", encoding="ascii") as f:
        f.write(str(os.getpid()))


def _remove_pid() -> None:
    try:
        with open(pid_file_path(), encoding="ascii") as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(pid_file_path())
    except OSError:
        pass


# -- daemon: start a detached server and wait until it is ready ----------------------------------------

def start_daemon(argv: list[str], config: ServerConfig) -> int:
    read_fd, write_fd = os.pipe()
    os.makedirs(config.log_dir, exist_ok=True)
    err_path = os.path.join(config.log_dir, "modelserve_stderr.log")
    with open(err_path, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelserve.cli", *argv, READY_FD_FLAG, str(write_fd)],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        line = ready.readline()
    if line.startswith("OK "):
        print(line[3:].rstrip("\n").replace("\x1e", "\n"))
        return 0
    if line.startswith("FAIL "):
        print(line[5:].rstrip("\n").replace("\x1e", "\n"), file=sys.stderr)
    else:
        code = proc.wait(timeout=30)
        print(f"modelserve failed to start (exit code {code}); see {err_path}", file=sys.stderr)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return 1


def stop(timeout: float = 60.0) -> int:
    pid = _running_pid()
    if pid is None:
        print("modelserve is not currently running.")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            print("Model server stopped.")
            return 0
        time.sleep(0.1)
    print(f"modelserve (pid {pid}) did not stop within {timeout:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
