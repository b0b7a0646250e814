"""Shared fixtures: real modelserve processes on free ports, and archives built in the test."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


_ISSUED: set[int] = set()
_RANDOM = random.Random(os.urandom(16))


def free_port() -> int:
    """A port free now, chosen outside the kernel's ephemeral range.

    A port from ``bind(0)`` comes from that range, so between this call and the server's bind an
    outgoing connection (this process's own ``/ping`` polls included) could take it as its source
    port. Outside the range only an explicit bind can, and no port is handed out twice.
    """
    low, high = _ephemeral_range()
    lo, hi = (10000, low - 1) if low > 12000 else (high + 1, 65535)
    for _ in range(500):
        port = _RANDOM.randint(lo, hi)
        if port in _ISSUED:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ISSUED.add(port)
        return port
    with socket.socket() as s:  # the range is crowded: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def modelserve_cmd() -> list[str]:
    exe = BIN / "modelserve"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "modelserve.cli"]


def archiver_cmd() -> list[str]:
    exe = BIN / "modelserve-archiver"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "modelserve_archiver"]


def make_archive(store: Path, name: str, handler_src: str, *, version: str = "1.0",
                 config_yaml: Optional[str] = None, extra: Optional[dict[str, bytes]] = None,
                 serialized: Optional[Path] = None, model_file: Optional[Path] = None,
                 fmt: str = "default") -> Path:
    """Write a handler (and optional files) to a temp folder and archive it with modelserve-archiver."""
    src = store.parent / f"src-{name}-{version}"
    src.mkdir(parents=True, exist_ok=True)
    handler = src / f"{name.replace('-', '_').replace('.', '_')}_handler.py"
    handler.write_text(textwrap.dedent(handler_src))
    cmd = archiver_cmd() + ["--model-name", name, "--version", version, "--handler", str(handler),
                            "--export-path", str(store), "--force", "--archive-format", fmt]
    if config_yaml is not None:
        cfg = src / "model-config.yaml"
        cfg.write_text(textwrap.dedent(config_yaml))
        cmd += ["--config-file", str(cfg)]
    if extra:
        paths = []
        for fname, data in extra.items():
            p = src / fname
            p.write_bytes(data)
            paths.append(str(p))
        cmd += ["--extra-files", ",".join(paths)]
    if serialized is not None:
        cmd += ["--serialized-file", str(serialized)]
    if model_file is not None:
        cmd += ["--model-file", str(model_file)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    suffix = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}[fmt]
    return store / f"{name}{suffix}"


class Server:
    """A real ``modelserve --start --foreground`` process on free ports."""

    def __init__(self, workdir: Path, store: Path, models: list[str], extra_config: str = "",
                 args: Optional[list[str]] = None, env: Optional[dict[str, str]] = None,
                 snapshots: bool = False, auth: bool = False) -> None:
        self.workdir = workdir
        self.store = store
        self.ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_mgmt")}
        self.config = workdir / "config.properties"
        self.config.write_text(textwrap.dedent(f"""\
            inference_address=http://127.0.0.1:{self.ports['inference']}
            management_address=http://127.0.0.1:{self.ports['management']}
            metrics_address=http://127.0.0.1:{self.ports['metrics']}
            grpc_inference_port={self.ports['grpc']}
            grpc_management_port={self.ports['grpc_mgmt']}
            model_store={store}
            default_workers_per_model=1
            """) + textwrap.dedent(extra_config))
        self.log_dir = workdir / "logs"
        self.cmd = modelserve_cmd() + ["--start", "--foreground", "--ts-config", str(self.config),
                                       "--log-dir", str(self.log_dir)]
        if not auth:
            self.cmd.append("--disable-token-auth")
        if not snapshots:
            self.cmd.append("--ncs")
        if models:
            self.cmd += ["--models", *models]
        self.cmd += args or []
        self.env = dict(os.environ, MODELSERVE_PID_FILE=str(workdir / "modelserve.pid"), **(env or {}))
        self.proc: Optional[subprocess.Popen] = None
        self.output = workdir / "server.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def mgmt(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    def start(self, wait: bool = True, timeout: float = 90) -> "Server":
        out = open(self.output, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.workdir, stdin=subprocess.DEVNULL)
        out.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.read_output()}")
            try:
                if requests.get(self.url + "/ping", timeout=2, headers=self.auth_headers("inference")).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.read_output()}")

    def keys(self) -> dict[str, str]:
        path = self.workdir / "key_file.json"
        if not path.exists():
            return {}
        return {kind: entry["key"] for kind, entry in json.loads(path.read_text()).items()}

    def auth_headers(self, kind: str) -> dict[str, str]:
        key = self.keys().get(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def read_output(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def describe(self, name: str, version: Optional[str] = None) -> list[dict[str, Any]]:
        url = f"{self.mgmt}/models/{name}" + (f"/{version}" if version else "")
        r = requests.get(url, timeout=30, headers=self.auth_headers("management"))
        r.raise_for_status()
        return r.json()


@pytest.fixture
def model_store(tmp_path: Path) -> Path:
    store = tmp_path / "model_store"
    store.mkdir()
    return store


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def factory(store: Path, models: list[str], **kw: Any) -> Server:
        wd = tmp_path / f"server{len(servers)}"
        wd.mkdir()
        srv = Server(wd, store, models, **kw)
        servers.append(srv)
        return srv

    yield factory
    for srv in servers:
        srv.stop()


def json_of(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return json.loads(resp.text or "null")
