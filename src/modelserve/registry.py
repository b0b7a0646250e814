"""Models -> versions -> runtime (queue + worker pool); register, scale, set-default, unregister."""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import psutil

from .archive import LoadedArchive, open_archive, validate_model_name
from .batching import RequestQueue
from .config import ModelConfig, ServerConfig
from .devices import GpuAssigner, effective_cpus
from .fetch import allowed, compile_patterns, download, inside, is_remote
from .errors import (BadRequestError, ConflictError, ForbiddenError, ModelLoadError, NotFoundError,
                     ServiceUnavailableError, VersionNotFoundError)
from .log import get_logger
from .metrics import ModelStats, ServerMetrics
from .pool import BatchObserver, MetricsSink, WorkerPool, WorkerSpec
from .types import InferenceRequest

log = get_logger()


@dataclass
class RegisterOptions:
    """What a register call may set; None means: take it from the archive or the server config."""

    model_name: Optional[str] = None
    handler: Optional[str] = None
    runtime: Optional[str] = None
    batch_size: Optional[int] = None
    max_batch_delay: Optional[int] = None
    initial_workers: Optional[int] = None
    response_timeout: Optional[int] = None
    startup_timeout: Optional[int] = None
    loaded_at_startup: bool = False


class ModelVersion:
    """One registered version of a model: its archive, settings, queue and workers."""

    def __init__(self, name: str, archive: LoadedArchive, url: str, config: ModelConfig, handler: str,
                 runtime: str, server: ServerConfig, next_gpu: Callable[[], Optional[int]], threads: int,
                 loaded_at_startup: bool, on_metrics: Optional[MetricsSink], on_batch: Optional[BatchObserver],
                 extracted: bool, stats: ModelStats) -> None:
        self.name = name
        self.stats = stats
        self.version = str(archive.manifest.get("model", {}).get("modelVersion") or "1.0")
        self.archive = archive
        self.url = url
        self.config = config
        self.handler = handler
        self.handler_override: Optional[str] = None  # a handler given at register time, kept for snapshots
        self.runtime = runtime
        self.loaded_at_startup = loaded_at_startup
        self.extracted = extracted
        self.registered_at = time.time()
        self.queue = RequestQueue(server.job_queue_size, server.job_queue_max_bytes)
        self.min_workers = config.min_workers
        self.max_workers = config.max_workers
        spec = WorkerSpec(
            model_name=name, model_version=self.version, model_dir=archive.model_dir, manifest=archive.manifest,
            handler=handler, batch_size=config.batch_size, model_yaml_config=config.yaml,
            max_response_size=server.max_response_size, threads=threads,
            startup_timeout=float(config.startup_timeout), response_timeout=float(config.response_timeout),
            ping_interval=server.worker_ping_interval, ping_timeout=server.worker_ping_timeout,
            limit_max_image_pixels=server.limit_max_image_pixels,
        )
        self.pool = WorkerPool(spec, self.queue, config.max_batch_delay, next_gpu, on_metrics, on_batch)

    # -- requests -----------------------------------------------------------------------------------
    def submit(self, req: InferenceRequest) -> None:
        if not self.pool.serviceable():
            raise ServiceUnavailableError(
                f"No worker is available to serve model {self.name} version {self.version}"
                + (f": {self.pool.last_error()}" if self.pool.last_error() else ""))
        self.queue.put(req)

    @property
    def healthy(self) -> bool:
        return self.pool.live_workers() >= self.min_workers

    # -- lifecycle ----------------------------------------------------------------------------------
    async def scale(self, min_workers: int, max_workers: Optional[int] = None) -> None:
        await self.pool.scale(min_workers)
        self.min_workers = min_workers
        self.max_workers = max(max_workers if max_workers is not None else self.max_workers, min_workers)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Answer every queued and in-flight request, then stop the workers."""
        self.queue.closed = True
        deadline = time.monotonic() + drain_timeout
        while (len(self.queue) or any(w.busy for w in self.pool.workers())) \
                and time.monotonic() < deadline and self.pool.serviceable():
            await asyncio.sleep(0.01)
        for req in self.queue.drain_all():
            req.future.set_exception(ServiceUnavailableError(
                f"Model {self.name} version {self.version} was unregistered before this request ran"))
        await self.pool.stop()
        if self.extracted:
            shutil.rmtree(self.archive.model_dir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        workers = []
        for info in self.pool.workers_info():
            try:
                mem = psutil.Process(info["pid"]).memory_info().rss if info["pid"] else 0
            except (psutil.Error, ValueError):
                mem = 0
            workers.append({
                "id": info["id"], "startTime": info["startTime"], "status": info["status"],
                "memoryUsage": mem, "pid": info["pid"], "gpu": info["gpu"], "gpuUsage": "N/A",
                **({"lastError": info["lastError"]} if "lastError" in info else {}),
            })
        return {
            "modelName": self.name,
            "modelVersion": self.version,
            "modelUrl": self.url,
            "runtime": self.runtime,
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "batchSize": cfg.batch_size,
            "maxBatchDelay": cfg.max_batch_delay,
            "responseTimeout": cfg.response_timeout,
            "startupTimeout": cfg.startup_timeout,
            "maxRetryTimeoutInSec": 300,
            "clientTimeoutInMills": cfg.client_timeout_ms,
            "parallelType": "",
            "parallelLevel": 0,
            "deviceType": cfg.device_type or ("gpu" if any(w["gpu"] for w in workers) else "cpu"),
            "deviceIds": list(cfg.device_ids) if cfg.device_ids else [],
            "continuousBatching": False,
            "useJobTicket": False,
            "useVenv": False,
            "stateful": False,
            "sequenceMaxIdleMSec": 0,
            "sequenceTimeoutMSec": 0,
            "maxNumSequence": 0,
            "maxSequenceJobQueueSize": 0,
            "loadedAtStartup": self.loaded_at_startup,
            "workers": workers,
            "jobQueueStatus": {"remainingCapacity": self.queue.remaining_capacity(),
                               "pendingRequests": len(self.queue)},
        }


class ModelRegistry:
    """Every registered model version, and which version of each model is the default."""

    def __init__(self, config: ServerConfig, work_dir: str, gpus: GpuAssigner, metrics: ServerMetrics,
                 on_change: Optional[Callable[[], None]] = None) -> None:
        self.config = config
        self.work_dir = work_dir
        self.gpus = gpus
        self.metrics = metrics
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.defaults: dict[str, str] = {}
        self.on_change = on_change
        self._allowed = compile_patterns(config.allowed_urls)
        self._tasks: set[asyncio.Task] = set()  # background worker starts (asynchronous register)

    # -- lookup -------------------------------------------------------------------------------------
    def get(self, name: str, version: Optional[str] = None) -> ModelVersion:
        versions = self.models.get(name)
        if not versions:
            raise NotFoundError(f"Model not found: {name}")
        if version is None:
            return versions[self.defaults[name]]
        mv = versions.get(version)
        if mv is None:
            raise VersionNotFoundError(f"Model version: {version} does not exist for model: {name}")
        return mv

    def versions(self, name: str) -> list[ModelVersion]:
        versions = self.models.get(name)
        if not versions:
            raise NotFoundError(f"Model not found: {name}")
        return list(versions.values())

    def all_versions(self) -> list[ModelVersion]:
        return [mv for versions in self.models.values() for mv in versions.values()]

    def default_workers(self) -> int:
        if self.config.default_workers_per_model > 0:
            return self.config.default_workers_per_model
        return self.gpus.gpu_count or effective_cpus()

    # -- archives -----------------------------------------------------------------------------------
    def resolve_url(self, url: str, trusted: bool = False) -> str:
        """A local archive for ``url``: a name in the model store, or an absolute path.

        Untrusted (API) registrations may only name the model store, or what ``allowed_urls`` allows;
        startup models and snapshots are the operator's own and may name any local path.
        """
        if not url:
            raise BadRequestError("Parameter url is required.")
        if url.startswith("file://"):
            url = url[len("file://"):]
        if ".." in url.replace("\\", "/").split("/"):
            raise NotFoundError(f"Relative path is not allowed in url: {url}")
        store = self.config.model_store
        if os.path.isabs(url):
            path = url
        elif store:
            path = os.path.join(store, url)
        else:
            raise NotFoundError(f"Model store has not been configured; cannot find {url}")
        if not trusted and not (store and inside(store, path)) and not allowed("file://" + path, self._allowed):
            raise NotFoundError(f"Given URL {url} does not match any allowed URL(s)")
        if not os.path.exists(path):
            raise NotFoundError(f"Model not found in model store: {url}")
        return path

    async def _locate(self, url: str, trusted: bool) -> str:
        if not is_remote(url):
            return self.resolve_url(url, trusted)
        if not allowed(url, self._allowed):
            raise NotFoundError(f"Given URL {url} does not match any allowed URL(s)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, download, url, self.config.model_store, self.config.archive_max_bytes)

    def _open(self, path: str) -> tuple[LoadedArchive, bool]:
        archive = open_archive(path, self.work_dir, self.config.archive_max_bytes, self.config.archive_max_files)
        return archive, archive.extracted

    # -- register -----------------------------------------------------------------------------------
    async def register(self, url: str, opts: RegisterOptions, trusted: bool = False,
                       wait: bool = True) -> ModelVersion:
        """Register a version: visible at once; its workers started now (``wait``) or in the background.

        When ``wait`` and a worker fails to load, the version is removed again and the ModelLoadError
        carries the worker's own error.
        """
        mv = await self._prepare(url, opts, trusted)
        self.models.setdefault(mv.name, {})[mv.version] = mv
        self.metrics.models[(mv.name, mv.version)] = mv.stats
        self.defaults.setdefault(mv.name, mv.version)
        if wait:
            await self._start_workers(mv)
        else:
            task = asyncio.get_running_loop().create_task(self._start_workers(mv, keep_on_failure=True))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return mv

    async def _start_workers(self, mv: ModelVersion, keep_on_failure: bool = False) -> None:
        try:
            await mv.pool.scale(mv.min_workers)
        except ModelLoadError as exc:
            error = ModelLoadError(f"Failed to start workers for model {mv.name} version: {mv.version}\n"
                                   f"{exc.message}")
            if keep_on_failure:
                log.error("%s", error.message)
                return
            if self.models.get(mv.name, {}).get(mv.version) is mv:
                self._remove(mv)
            await mv.stop(0)
            raise error from None
        log.info("Registered model %s version %s with %d workers", mv.name, mv.version, len(mv.pool))
        self._changed()

    async def _prepare(self, url: str, opts: RegisterOptions, trusted: bool) -> ModelVersion:
        path = await self._locate(url, trusted)
        loop = asyncio.get_running_loop()
        archive, extracted = await loop.run_in_executor(None, self._open, path)
        try:
            manifest_model = archive.manifest.setdefault("model", {})
            name = opts.model_name or manifest_model.get("modelName") or _stem(url)
            validate_model_name(name)
            manifest_model.setdefault("modelName", name)
            handler = opts.handler or manifest_model.get("handler") or ""
            if opts.handler:
                manifest_model["handler"] = opts.handler
            runtime = opts.runtime or archive.manifest.get("runtime") or "python"
            if runtime not in ("python", "python3", "PYTHON", "PYTHON3"):
                raise BadRequestError(f"Invalid RuntimeType value: {runtime}")
            # TorchServe: startup models default to one worker per GPU or core; the register API to
            # default_workers_per_model when set, else none (scale them up later).
            default_workers = (self.default_workers() if opts.loaded_at_startup
                               else self.config.default_workers_per_model)
            workers_from_api = opts.initial_workers
            config = ModelConfig.resolve(
                self.config, archive.model_config, default_workers,
                batch_size=opts.batch_size, max_batch_delay=opts.max_batch_delay,
                response_timeout=opts.response_timeout, startup_timeout=opts.startup_timeout,
                **({"min_workers": workers_from_api, "max_workers": max(workers_from_api, 1)}
                   if workers_from_api is not None else {}),
            )
            version = str(manifest_model.get("modelVersion") or "1.0")
            if version in self.models.get(name, {}):
                raise ConflictError(f"Model version {version} for model {name} is already registered.")
            threads = self.config.number_of_threads or worker_threads(effective_cpus(), config.min_workers)
            stats = ModelStats()
            mv = ModelVersion(
                name, archive, url, config, handler, runtime, self.config,
                self.gpus.for_model(config.device_type, config.device_ids), threads, opts.loaded_at_startup,
                self._metrics_sink(name, version), _batch_observer(stats), extracted, stats,
            )
            mv.handler_override = opts.handler
        except BaseException:
            if extracted:
                shutil.rmtree(archive.model_dir, ignore_errors=True)
            raise
        return mv

    def _remove(self, mv: ModelVersion) -> None:
        versions = self.models[mv.name]
        del versions[mv.version]
        self.metrics.drop_model(mv.name, mv.version)
        if not versions:
            del self.models[mv.name]
            del self.defaults[mv.name]
        elif self.defaults[mv.name] == mv.version:
            self.defaults[mv.name] = next(iter(versions))

    def _metrics_sink(self, name: str, version: str) -> MetricsSink:
        metrics = self.metrics
        return lambda records: metrics.handler_records(name, version, records)

    # -- other changes ------------------------------------------------------------------------------
    async def scale(self, name: str, version: Optional[str], min_worker: int, max_worker: Optional[int]) -> ModelVersion:
        mv = self.get(name, version)
        try:
            await mv.scale(min_worker, max_worker)
        except ModelLoadError as exc:
            raise ModelLoadError(f"Failed to start workers for model {mv.name} version: {mv.version}\n"
                                 f"{exc.message}") from None
        self._changed()
        return mv

    def set_default(self, name: str, version: str) -> None:
        self.get(name, version)
        self.defaults[name] = version
        self._changed()

    async def unregister(self, name: str, version: Optional[str], drain_timeout: float = 30.0) -> ModelVersion:
        mv = self.get(name, version)
        versions = self.models[name]
        if self.defaults[name] == mv.version and len(versions) > 1:
            raise ForbiddenError(f"Cannot remove default version for model {name}")
        self._remove(mv)
        self._changed()
        await mv.stop(drain_timeout)
        return mv

    async def stop_all(self, drain_timeout: float) -> None:
        for task in list(self._tasks):
            task.cancel()
        everything = self.all_versions()
        self.models.clear()
        self.defaults.clear()
        await asyncio.gather(*(mv.stop(drain_timeout) for mv in everything), return_exceptions=True)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def worker_threads(cores: int, workers: int) -> int:
    """Torch threads per worker: the cores left after one for the frontend, shared by the workers."""
    return max(1, (cores - 1) // max(1, workers)) if cores > 1 else 1


def _batch_observer(stats: ModelStats) -> BatchObserver:
    def observe(batch: list[InferenceRequest], reason: str, started: float, took: float, pipelined: bool) -> None:
        stats.observe_batch([started - r.arrival for r in batch], reason, took, pipelined)
    return observe


def _stem(url: str) -> str:
    base = os.path.basename(url.rstrip("/"))
    for suffix in (".mar", ".tar.gz", ".tgz", ".zip"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base
