"""Config snapshots: the registry's state, written atomically after every change, restored at start."""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

from .log import get_logger
from .registry import ModelRegistry

log = get_logger()
KEEP = 10
SUFFIX = "-snapshot.json"


@dataclass(frozen=True)
class SavedVersion:
    name: str
    version: str
    url: str
    path: str
    handler: Optional[str]
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay: int
    response_timeout: int
    startup_timeout: int
    is_default: bool


def snapshot_dir(log_dir: str) -> str:
    return os.path.join(log_dir, "config")


def state_of(registry: ModelRegistry) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name, versions in registry.models.items():
        out = {}
        for version, mv in versions.items():
            out[version] = {
                "url": mv.url, "path": mv.archive.source, "handler": mv.handler_override,
                "minWorkers": mv.min_workers, "maxWorkers": mv.max_workers,
                "batchSize": mv.config.batch_size, "maxBatchDelay": mv.config.max_batch_delay,
                "responseTimeout": mv.config.response_timeout, "startupTimeout": mv.config.startup_timeout,
            }
        models[name] = {"defaultVersion": registry.defaults.get(name), "versions": out}
    return {"format": 1, "created": time.time(), "models": models}


def write_snapshot(log_dir: str, registry: ModelRegistry) -> str:
    """Write the state atomically (temp file, fsync, rename); keep the newest few."""
    folder = snapshot_dir(log_dir)
    os.makedirs(folder, exist_ok=True)
    data = json.dumps(state_of(registry), indent=2, sort_keys=True).encode()
    name = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + f"{time.time_ns() % 1_000_000_000:09d}{SUFFIX}"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        final = os.path.join(folder, name)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    for old in sorted(_snapshots(folder))[:-KEEP]:
        try:
            os.unlink(os.path.join(folder, old))
        except OSError:
            pass
    return final


def _snapshots(folder: str) -> list[str]:
    try:
        return [f for f in os.listdir(folder) if f.endswith(SUFFIX)]
    except OSError:
        return []


def _parse(doc: Any) -> list[SavedVersion]:
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ValueError("no 'models' object")
    out = []
    for name, entry in doc["models"].items():
        default = entry["defaultVersion"]
        for version, v in entry["versions"].items():
            out.append(SavedVersion(
                name=name, version=version, url=str(v["url"]), path=str(v.get("path") or ""),
                handler=v.get("handler"), min_workers=int(v["minWorkers"]), max_workers=int(v["maxWorkers"]),
                batch_size=int(v["batchSize"]), max_batch_delay=int(v["maxBatchDelay"]),
                response_timeout=int(v["responseTimeout"]), startup_timeout=int(v["startupTimeout"]),
                is_default=(version == default)))
    return out


def load_latest(log_dir: str) -> tuple[Optional[str], list[SavedVersion]]:
    """The newest snapshot that parses; corrupt ones are reported by name and skipped."""
    folder = snapshot_dir(log_dir)
    for fname in sorted(_snapshots(folder), reverse=True):
        path = os.path.join(folder, fname)
        try:
            with open(path, encoding="utf-8") as f:
                return path, _parse(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("config snapshot %s is corrupt or partial (%s); trying the previous one", path, exc)
    return None, []
