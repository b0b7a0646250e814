"""The composition root: builds the registry, services and apps, with an explicit start/stop."""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

from aiohttp import web
from prometheus_client import CollectorRegistry

from .config import ServerConfig, split_address
from .console import add_console
from .devices import GpuAssigner, detect_gpu_count
from .errors import ConfigError, ModelLoadError, ModelServeError
from .grpc.server import GrpcServers
from .http.inference import add_fallback, build_inference_app
from .http.management import build_management_app
from .auth import TokenAuth
from .http.common import token_guard
from .http.fastpath import FastPath
from .http.metrics import build_metrics_app
from .http.v2 import add_oip_routes
from .log import ACCESS_LOGGER, METRICS_LOGGER, access_log, get_logger
from .metrics import ServerMetrics
from .metrics_config import TS_FAMILIES, MetricsSelection, load_metrics_selection
from .registry import ModelRegistry, RegisterOptions
from .runtime_metrics import runtime_families
from .snapshot import SavedVersion, load_latest, write_snapshot
from .service import InferenceService, ManagementService
from .sysmetrics import SystemMetrics

log = get_logger()


@dataclass(frozen=True)
class StartupModel:
    name: Optional[str]
    url: str


def parse_model_args(values: list[str], model_store: Optional[str]) -> list[StartupModel]:
    """``--models`` / ``load_models`` entries: ``name=archive``, ``archive``, or ``all``."""
    out: list[StartupModel] = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            if item == "all":
                if not model_store or not os.path.isdir(model_store):
                    raise ConfigError("--models all needs an existing --model-store")
                for entry in sorted(os.listdir(model_store)):
                    path = os.path.join(model_store, entry)
                    if entry.endswith((".mar", ".tar.gz", ".tgz")) or os.path.isfile(
                            os.path.join(path, "MAR-INF", "MANIFEST.json")):
                        out.append(StartupModel(None, entry))
                continue
            name, sep, url = item.partition("=")
            out.append(StartupModel(name.strip() or None, url.strip()) if sep else StartupModel(None, item))
    return out


class AccessLogger(web.AbstractAccessLogger):
    """``<time> <ip> "<METHOD> <path> <proto>" <status> <ms>``, through the buffered access log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        out = access_log()
        if out is not None:
            v = request.version
            out.line(request.remote or "-", f"{request.method} {request.path_qs} HTTP/{v.major}.{v.minor}",
                     response.status, time * 1000)

    @property
    def enabled(self) -> bool:
        return access_log() is not None


class _Selected:
    """Everything /metrics shows, less the TorchServe-named families a metrics YAML leaves out."""

    def __init__(self, metrics: ServerMetrics, system: SystemMetrics, selection: MetricsSelection) -> None:
        self.sources = (metrics, system)
        self.ts_allowed = selection.ts_metrics

    def collect(self):  # type: ignore[no-untyped-def]
        allowed = self.ts_allowed
        for source in self.sources:
            for fam in source.collect():
                if allowed is None or fam.name not in TS_FAMILIES or fam.name in allowed:
                    yield fam


class ModelServer:
    def __init__(self, config: ServerConfig, startup_models: list[StartupModel], snapshots: bool = False) -> None:
        self.config = config
        self.startup_models = startup_models
        self.snapshots = snapshots
        self._restoring = False
        selection = load_metrics_selection(config.metrics_config)
        self.metrics = ServerMetrics(
            allowed_model_metrics=set(selection.model_metrics) if selection.model_metrics is not None else None,
            metrics_log=get_logger(METRICS_LOGGER) if config.metrics_mode == "log" else None)
        self.work_dir = tempfile.mkdtemp(prefix="modelserve-")
        gpu_count = config.number_of_gpu if config.number_of_gpu is not None else detect_gpu_count()
        self.registry = ModelRegistry(config, self.work_dir, GpuAssigner(gpu_count), self.metrics,
                                      on_change=self._snapshot if snapshots else None)
        self.metrics.runtime_source = lambda: runtime_families(self.registry)
        self.prometheus = CollectorRegistry(auto_describe=False)
        self.prometheus.register(_Selected(self.metrics, SystemMetrics(self.metrics.hostname), selection))  # type: ignore[arg-type]
        self.inference = InferenceService(self.registry, self.metrics)
        self.auth = None if config.disable_token_auth else TokenAuth(config.key_file or "key_file.json",
                                                                      config.token_expiration_min)
        self.management = ManagementService(self.registry)
        self._runners: list[web.AppRunner] = []
        self.addresses: list[str] = []
        self._flusher: Optional[asyncio.Task] = None
        self._grpc: Optional[GrpcServers] = None
        self._fast: Optional[FastPath] = None
        self._fast_server: Optional[asyncio.AbstractServer] = None

    def _apps(self) -> list[tuple[str, web.Application, str, int]]:
        cfg = self.config
        inference = build_inference_app(self.inference, cfg.max_request_size, self.auth, cfg.auth_exempt_health)
        add_oip_routes(inference, self.inference, cfg.max_request_size)
        add_fallback(inference)
        management = build_management_app(self.management, cfg.enable_model_api, self.auth)
        if cfg.enable_console:
            add_console(management, cfg, self.registry, self.inference, self.auth)
        add_fallback(management)
        apps = [
            ("Inference API", inference, *split_address(cfg.inference_address, 8080)),
            ("Management API", management, *split_address(cfg.management_address, 8081)),
        ]
        if cfg.enable_metrics_api:
            guard = None if cfg.auth_exempt_health else token_guard(self.auth, "management")
            apps.append(("Metrics API", build_metrics_app(self.prometheus, guard),
                         *split_address(cfg.metrics_address, 8082)))
        return apps

    async def start(self) -> None:
        """Bind every port, then load the startup models; raise with the reason on failure."""
        access = get_logger(ACCESS_LOGGER) if self.config.enable_access_log else None
        for label, app, host, port in self._apps():
            # handler_cancellation: a client that goes away frees its queue slot at once
            runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLogger,
                                   access_log=access, handler_cancellation=True,
                                   shutdown_timeout=float(self.config.shutdown_grace_seconds))
            await runner.setup()
            self._runners.append(runner)
            try:
                if label == "Inference API" and self.config.http_fast_path:
                    # predictions go through FastPath; aiohttp takes over a connection for anything else
                    self._fast = FastPath(self.inference, self.config.max_request_size, self.auth,
                                          runner.server)  # type: ignore[arg-type]
                    self._fast_server = await asyncio.get_running_loop().create_server(
                        self._fast.protocol, host, port, backlog=1024, reuse_address=True)
                else:
                    await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True).start()
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port} for the {label}: {exc.strerror}") from None
            self.addresses.append(f"{label} bound to http://{host}:{port}")
            log.info("%s bound to http://%s:%d", label, host, port)
        if self.config.enable_grpc:
            self._grpc = GrpcServers(self.config, self.inference, self.management, self.auth)
            self.addresses += await self._grpc.start()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_access_log())
        if self.snapshots:
            await self._restore_snapshot()
        await self._load_startup_models()
        self.inference.started = True
        self._snapshot()

    async def _flush_access_log(self) -> None:
        loop = asyncio.get_running_loop()
        ticks = 0
        while True:
            await asyncio.sleep(0.25)
            out = access_log()
            if out is not None:
                out.flush()
            ticks += 1
            if self._fast is not None and ticks % 20 == 0:
                self._fast.sweep_idle(loop.time())

    def _snapshot(self) -> None:
        if not self.snapshots or self._restoring:
            return
        try:
            write_snapshot(self.config.log_dir, self.registry)
        except OSError as exc:
            log.error("could not write the config snapshot: %s", exc)

    async def _restore_snapshot(self) -> None:
        path, saved = load_latest(self.config.log_dir)
        if path is None:
            return
        log.info("Restoring %d model versions from snapshot %s", len(saved), path)
        self._restoring = True
        try:
            results = await asyncio.gather(*(self._restore_one(v) for v in saved), return_exceptions=True)
            for v, r in zip(saved, results):
                if isinstance(r, BaseException):
                    msg = r.message if isinstance(r, ModelServeError) else repr(r)
                    log.error("could not restore model %s version %s: %s", v.name, v.version, msg)
            for v in saved:
                if v.is_default and v.version in self.registry.models.get(v.name, {}):
                    self.registry.set_default(v.name, v.version)
        finally:
            self._restoring = False

    async def _restore_one(self, v: SavedVersion) -> None:
        opts = RegisterOptions(model_name=v.name, handler=v.handler, batch_size=v.batch_size,
                               max_batch_delay=v.max_batch_delay, initial_workers=v.min_workers,
                               response_timeout=v.response_timeout, startup_timeout=v.startup_timeout,
                               loaded_at_startup=True)
        try:
            url = v.url
            self.registry.resolve_url(url, trusted=True)
        except ModelServeError:
            url = v.path
        mv = await self.registry.register(url, opts, trusted=True)
        mv.max_workers = max(v.max_workers, mv.min_workers)

    async def _load_startup_models(self) -> None:
        async def load(m: StartupModel) -> None:
            if m.name and m.name in self.registry.models:
                log.info("Model %s was restored from the snapshot; not loading %s again", m.name, m.url)
                return
            mv = await self.registry.register(m.url, RegisterOptions(model_name=m.name, loaded_at_startup=True),
                                              trusted=True)
            log.info("Loaded model %s version %s (%d workers)", mv.name, mv.version, len(mv.pool))

        results = await asyncio.gather(*(load(m) for m in self.startup_models), return_exceptions=True)
        errors = []
        for m, r in zip(self.startup_models, results):
            if isinstance(r, ModelServeError):
                errors.append(f"model {m.name or m.url}: {r.message}")
            elif isinstance(r, BaseException):
                errors.append(f"model {m.name or m.url}: {type(r).__name__}: {r}")
        if errors:
            raise ModelLoadError("\n".join(errors))

    async def stop(self, grace: Optional[float] = None) -> None:
        """Staged: stop accepting, drain queues and in-flight batches, stop workers, clean up."""
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        log.info("Stopping: no new connections; draining requests (grace %ss)", grace)
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        if self._fast_server is not None:
            self._fast_server.close()
        if self._grpc is not None:
            self._grpc.begin_stop(grace)
        if self.inference.started:
            self._snapshot()  # the final snapshot, before the models are drained away
        self.registry.on_change = None
        await self.registry.stop_all(grace)
        if self._grpc is not None:
            await self._grpc.wait_stopped()
        if self._fast is not None:
            await self._fast.shutdown(5.0)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._flusher is not None:
            self._flusher.cancel()
        out = access_log()
        if out is not None:
            out.flush()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        log.info("Model server stopped")
