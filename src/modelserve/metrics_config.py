"""The optional metrics YAML (TorchServe's metrics.yaml layout): which metrics to emit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import yaml

from .errors import ConfigError

# Frontend families that carry TorchServe's names; a metrics YAML may switch these off.
TS_FAMILIES = frozenset({
    "ts_inference_requests", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds",
    "Requests2XX", "Requests4XX", "Requests5XX", "CPUUtilization", "MemoryUsed", "MemoryAvailable",
    "MemoryUtilization", "DiskAvailable", "DiskUsage", "DiskUtilization", "GPUUtilization", "GPUMemoryUsed",
    "GPUMemoryUtilization", "PredictionTime",
})


@dataclass(frozen=True)
class MetricsSelection:
    ts_metrics: Optional[frozenset[str]]  # None: all
    model_metrics: Optional[frozenset[str]]  # None: all


def _names(section: Any, where: str) -> frozenset[str]:
    if section is None:
        return frozenset()
    if not isinstance(section, dict):
        raise ConfigError(f"metrics config: {where} must map metric types to lists")
    names = set()
    for kind, items in section.items():
        if kind not in ("counter", "gauge", "histogram"):
            raise ConfigError(f"metrics config: unknown metric type {kind!r} under {where}")
        for item in items or ():
            if not isinstance(item, dict) or "name" not in item:
                raise ConfigError(f"metrics config: every {where}.{kind} entry needs a name")
            names.add(str(item["name"]))
    return frozenset(names)


def load_metrics_selection(path: Optional[str]) -> MetricsSelection:
    if not path:
        return MetricsSelection(None, None)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read metrics config {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"metrics config {path} must be a mapping")
    ts = _names(doc.get("ts_metrics"), "ts_metrics") if "ts_metrics" in doc else None
    model = _names(doc.get("model_metrics"), "model_metrics") if "model_metrics" in doc else None
    return MetricsSelection(ts, model)
