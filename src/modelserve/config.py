"""Server configuration (TorchServe-style config.properties) and per-model configuration.

Both are immutable. Unknown keys are never dropped silently: ``ServerConfig.load`` returns the
keys it does not know and the TorchServe keys it accepts but does not use, for one warning at start.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

from .errors import ConfigError


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _opt_int(value: str) -> Optional[int]:
    return int(value) if value.strip() else None


def _doc(text: str, convert: Callable[[str], Any] = str) -> Any:
    return {"doc": text, "convert": convert}


@dataclass(frozen=True)
class ServerConfig:
    """Every key the server reads; defaults follow TorchServe's where it has the key."""

    inference_address: str = field(default="http://127.0.0.1:8080", metadata=_doc("REST inference API (and KServe v1/v2 REST)"))
    management_address: str = field(default="http://127.0.0.1:8081", metadata=_doc("REST management API"))
    metrics_address: str = field(default="http://127.0.0.1:8082", metadata=_doc("Prometheus metrics endpoint"))
    grpc_inference_address: str = field(default="127.0.0.1", metadata=_doc("bind address of the gRPC inference server"))
    grpc_inference_port: int = field(default=7070, metadata=_doc("gRPC inference port", int))
    grpc_management_address: str = field(default="127.0.0.1", metadata=_doc("bind address of the gRPC management server"))
    grpc_management_port: int = field(default=7071, metadata=_doc("gRPC management port", int))
    enable_grpc: bool = field(default=True, metadata=_doc("serve the gRPC APIs", _bool))
    model_store: Optional[str] = field(default=None, metadata=_doc("directory holding model archives"))
    load_models: Optional[str] = field(default=None, metadata=_doc("models to load at start: 'all' or comma-separated [name=]archive"))
    default_workers_per_model: int = field(default=0, metadata=_doc("workers per model when the model does not say; 0 = number of GPUs, else CPU cores", int))
    job_queue_size: int = field(default=100, metadata=_doc("queued requests per model version before 503", int))
    job_queue_max_bytes: int = field(default=256 * 1024**2, metadata=_doc("queued request bytes per model version before 503", int))
    worker_ping_interval: float = field(default=10.0, metadata=_doc("seconds between pings of idle workers; 0 turns pings off", float))
    worker_ping_timeout: float = field(default=10.0, metadata=_doc("seconds a worker may take to answer a ping before it is replaced", float))
    default_response_timeout: int = field(default=120, metadata=_doc("seconds a batch may take before 504 and a worker restart", int))
    default_startup_timeout: int = field(default=120, metadata=_doc("seconds a worker may take to load its model", int))
    worker_template: bool = field(default=True, metadata=_doc("fork workers from a template process that has imported torch once (fast start, restart and scale-up); false: start each worker as a new Python process", _bool))
    max_request_size: int = field(default=6553500, metadata=_doc("largest request body in bytes (413 above)", int))
    max_response_size: int = field(default=6553500, metadata=_doc("largest response body in bytes (500 above)", int))
    batch_size: int = field(default=1, metadata=_doc("default batch size of a model", int))
    max_batch_delay: int = field(default=100, metadata=_doc("default max batch delay of a model, ms", int))
    number_of_gpu: Optional[int] = field(default=None, metadata=_doc("GPUs to use; unset = detect with nvidia-smi", _opt_int))
    enable_model_api: bool = field(default=False, metadata=_doc("allow register/unregister over the management API", _bool))
    disable_token_auth: bool = field(default=False, metadata=_doc("turn token authorization off", _bool))
    key_file: Optional[str] = field(default=None, metadata=_doc("where the token key file lives (default ./key_file.json)"))
    token_expiration_min: float = field(default=60, metadata=_doc("minutes an inference/management key stays valid", float))
    auth_exempt_health: bool = field(default=True, metadata=_doc("leave /ping, /v2/health/* and /metrics open to probes when token auth is on", _bool))
    allowed_urls: str = field(default="", metadata=_doc("comma-separated regexes (full match) of URLs the register API may load beyond the model store, e.g. https://models\\.example\\.com/.*; file:// patterns allow local paths"))
    metrics_mode: str = field(default="prometheus", metadata=_doc("'prometheus' or 'log' (log also writes model_metrics.log)"))
    metrics_config: Optional[str] = field(default=None, metadata=_doc("YAML naming the metrics to emit (TorchServe's metrics.yaml layout)"))
    enable_metrics_api: bool = field(default=True, metadata=_doc("serve GET /metrics", _bool))
    enable_console: bool = field(default=True, metadata=_doc("serve the web console at /console on the management port (its data routes take the management key)", _bool))
    log_dir: str = field(default="logs", metadata=_doc("where the log files and config snapshots go"))
    log_level: str = field(default="INFO", metadata=_doc("server log level"))
    log_format: str = field(default="text", metadata=_doc("'text' or 'json'"))
    enable_access_log: bool = field(default=True, metadata=_doc("write access_log.log", _bool))
    archive_max_bytes: int = field(default=8 * 1024**3, metadata=_doc("largest uncompressed archive, bytes", int))
    archive_max_files: int = field(default=10_000, metadata=_doc("most files in an archive", int))
    shutdown_grace_seconds: int = field(default=30, metadata=_doc("how long shutdown waits for queued and in-flight requests", int))
    number_of_threads: int = field(default=0, metadata=_doc("torch threads per worker; 0 = cores / workers", int))
    limit_max_image_pixels: bool = field(default=True, metadata=_doc("image handlers refuse images over Pillow's pixel limit (decompression bombs)", _bool))
    use_uvloop: bool = field(default=True, metadata=_doc("run the frontend on uvloop when installed", _bool))
    http_fast_path: bool = field(default=True, metadata=_doc("serve POST/PUT /predictions on the inference port with modelserve's own HTTP/1.1 code; false: every request through aiohttp", _bool))

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], base: Optional["ServerConfig"] = None) -> "ServerConfig":
        """Convert string values of known keys; raise ConfigError naming the key on a bad value."""
        kwargs: dict[str, Any] = {}
        by_name = {f.name: f for f in fields(cls)}
        for key, raw in values.items():
            f = by_name[key]
            try:
                kwargs[key] = f.metadata["convert"](raw)
            except ValueError as exc:
                raise ConfigError(f"config key {key}: invalid value {raw!r} ({exc})") from None
        return replace(base or cls(), **kwargs)

    def with_overrides(self, **overrides: Any) -> "ServerConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# TorchServe keys that modelserve accepts but has no use for; reported as ignored, not unknown.
TORCHSERVE_IGNORED_KEYS = frozenset({
    "number_of_netty_threads", "netty_client_threads", "vmargs", "async_logging", "default_service_handler",
    "service_envelope", "install_py_dep_per_model", "cors_allowed_origin", "cors_allowed_methods",
    "cors_allowed_headers", "keystore", "keystore_pass", "keystore_type", "certificate_file", "private_key_file",
    "max_workers", "blacklist_env_vars", "decode_input_request", "model_server_home", "workflow_store",
    "enable_envvars_config", "model_snapshot", "plugins_path", "use_native_io", "io_ratio",
    "metrics_format", "enable_metrics_api_v2", "disable_system_metrics", "system_metrics_cmd", "cpu_launcher_enable",
    "cpu_launcher_args", "disable_ipex", "ipex_enable", "preload_model", "enable_grpc_ssl", "workflow_queue_size",
    "model_load_timeout", "initial_worker_port", "initial_distribution_port", "stream_timeout",
})


def parse_properties(text: str) -> dict[str, str]:
    """Parse Java .properties text: ``key=value`` or ``key: value``, ``#``/``!`` comments, ``\\`` continuation."""
    out: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.lstrip() if pending else raw.strip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        pending = ""
        sep = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if sep < 0:
            key, value = line.strip(), ""
        else:
            key, value = line[:sep].strip(), line[sep + 1:].strip()
        out[key] = value.replace("\\:", ":").replace("\\=", "=").replace("\\\\", "\\")
    return out


@dataclass(frozen=True)
class LoadedConfig:
    config: ServerConfig
    unknown: tuple[str, ...]
    ignored: tuple[str, ...]
    from_env: tuple[str, ...] = ()  # keys set by MODELSERVE_<KEY> variables (and not by a flag)
    unknown_env: tuple[str, ...] = ()  # MODELSERVE_* variables that name no key


def load_server_config(path: Optional[str], overrides: Optional[Mapping[str, Any]] = None,
                       environ: Optional[Mapping[str, str]] = None) -> LoadedConfig:
    """Defaults < ``path`` < MODELSERVE_<KEY> variables of ``environ`` (os.environ) < ``overrides`` (typed)."""
    values: dict[str, str] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                values = parse_properties(f.read())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    known = set(ServerConfig.keys())
    unknown = tuple(sorted(k for k in values if k not in known and k not in TORCHSERVE_IGNORED_KEYS))
    ignored = tuple(sorted(k for k in values if k in TORCHSERVE_IGNORED_KEYS))
    config = ServerConfig.from_mapping({k: v for k, v in values.items() if k in known})
    from .envconfig import apply_env  # imported here: envconfig imports this module
    config, from_env, unknown_env = apply_env(config, environ)
    if overrides:
        config = config.with_overrides(**overrides)
    flagged = {k for k, v in (overrides or {}).items() if v is not None}
    return LoadedConfig(config, unknown, ignored, tuple(k for k in from_env if k not in flagged), unknown_env)


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """``http://127.0.0.1:8080`` -> ("127.0.0.1", 8080)."""
    if "://" not in address:
        address = "http://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"unsupported address scheme: {address}")
    if parts.scheme == "https":
        raise ConfigError(f"https addresses are not supported yet (put a TLS proxy in front): {address}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


# --- per-model configuration ---------------------------------------------------------------------

_MODEL_KEYS = {
    "clientTimeoutInMills": ("client_timeout_ms", int),
    "minWorkers": ("min_workers", int),
    "maxWorkers": ("max_workers", int),
    "batchSize": ("batch_size", int),
    "maxBatchDelay": ("max_batch_delay", int),
    "responseTimeout": ("response_timeout", int),
    "startupTimeout": ("startup_timeout", int),
    "deviceType": ("device_type", str),
    "deviceIds": ("device_ids", list),
}


@dataclass(frozen=True)
class ModelConfig:
    """Settings of one model version (precedence: API > model-config.yaml > server config)."""

    min_workers: int = 1
    max_workers: int = 1
    batch_size: int = 1
    max_batch_delay: int = 100  # ms
    response_timeout: int = 120  # s
    startup_timeout: int = 120  # s
    client_timeout_ms: int = 0  # a queued request older than this is dropped (0: never)
    device_type: Optional[str] = None  # "cpu" | "gpu" | None (auto)
    device_ids: Optional[tuple[int, ...]] = None
    yaml: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def resolve(cls, server: ServerConfig, yaml_config: Mapping[str, Any], default_workers: int,
                **api: Any) -> "ModelConfig":
        values: dict[str, Any] = {
            "min_workers": default_workers,
            "max_workers": default_workers,
            "batch_size": server.batch_size,
            "max_batch_delay": server.max_batch_delay,
            "response_timeout": server.default_response_timeout,
            "startup_timeout": server.default_startup_timeout,
        }
        for yaml_key, (name, conv) in _MODEL_KEYS.items():
            if yaml_key in yaml_config and yaml_config[yaml_key] is not None:
                try:
                    values[name] = conv(yaml_config[yaml_key])
                except (TypeError, ValueError):
                    raise ConfigError(f"model-config.yaml: invalid {yaml_key}: {yaml_config[yaml_key]!r}") from None
        if "minWorkers" in yaml_config and "maxWorkers" not in yaml_config:
            values["max_workers"] = max(values["max_workers"], values["min_workers"])
        values.update({k: v for k, v in api.items() if v is not None})
        if values.get("device_ids") is not None:
            values["device_ids"] = tuple(int(i) for i in values["device_ids"])
        if values["max_workers"] < values["min_workers"]:
            values["max_workers"] = values["min_workers"]
        for name in ("batch_size",):
            if values[name] < 1:
                raise ConfigError(f"{name} must be at least 1, got {values[name]}")
        if values["max_batch_delay"] < 0:
            raise ConfigError(f"max_batch_delay must not be negative, got {values['max_batch_delay']}")
        return cls(yaml=dict(yaml_config), **values)
