"""``context.metrics`` inside a worker: records handler metrics and ships them with each result."""
from __future__ import annotations

from typing import Any, Optional

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


def _dims(dimensions: Any) -> dict[str, str]:
    """Accept a dict of label -> value, or TorchServe-style objects with ``name``/``value``."""
    if not dimensions:
        return {}
    if isinstance(dimensions, dict):
        return {str(k): str(v) for k, v in dimensions.items()}
    return {str(d.name): str(d.value) for d in dimensions}


def _dims_arg(args: tuple[Any, ...], dimensions: Any) -> Any:
    """The dimensions among extra positional arguments: a dict or list first, or after an ``idx``."""
    if dimensions is not None or not args:
        return dimensions
    first = args[0]
    if isinstance(first, (dict, list, tuple)):
        return first
    return args[1] if len(args) > 1 else None


class HandlerMetrics:
    """The handler-facing metrics API (modelserve's names and TorchServe's)."""

    def __init__(self) -> None:
        self._records: list[list[Any]] = []

    def _add(self, kind: str, name: str, value: float, unit: str, dimensions: Any) -> None:
        self._records.append([kind, str(name), float(value), unit, _dims(dimensions)])

    def add_counter(self, name: str, value: float = 1, *args: Any, dimensions: Any = None,
                    idx: Optional[int] = None) -> None:
        """``add_counter(name, value, dimensions)`` or TorchServe's ``add_counter(name, value, idx, dimensions)``."""
        dims = _dims_arg(args, dimensions)
        if value < 0:
            raise ValueError("a counter can only go up")
        self._add(COUNTER, name, value, "count", dims)

    def add_gauge(self, name: str, value: float, *args: Any, dimensions: Any = None, unit: str = "") -> None:
        self._add(GAUGE, name, value, unit, _dims_arg(args, dimensions))

    def add_histogram(self, name: str, value: float, *args: Any, dimensions: Any = None, unit: str = "") -> None:
        self._add(HISTOGRAM, name, value, unit, _dims_arg(args, dimensions))

    def add_time(self, name: str, value: float, idx: Optional[int] = None, unit: str = "ms",
                 dimensions: Any = None, metric_type: Any = None) -> None:
        self._add(self._kind(metric_type, GAUGE), name, value, unit, dimensions)

    def add_size(self, name: str, value: float, idx: Optional[int] = None, unit: str = "MB",
                 dimensions: Any = None, metric_type: Any = None) -> None:
        self._add(self._kind(metric_type, GAUGE), name, value, unit, dimensions)

    def add_percent(self, name: str, value: float, idx: Optional[int] = None, dimensions: Any = None,
                    metric_type: Any = None) -> None:
        self._add(self._kind(metric_type, GAUGE), name, value, "percent", dimensions)

    def add_metric(self, name: str, value: float, unit: str = "", idx: Optional[int] = None,
                   dimensions: Any = None, metric_type: Any = None) -> None:
        self._add(self._kind(metric_type, COUNTER), name, value, unit, dimensions)

    @staticmethod
    def _kind(metric_type: Any, default: str) -> str:
        if metric_type is None:
            return default
        text = str(getattr(metric_type, "value", metric_type)).lower()
        return text if text in (COUNTER, GAUGE, HISTOGRAM) else default

    def drain(self) -> list[list[Any]]:
        out, self._records = self._records, []
        return out
