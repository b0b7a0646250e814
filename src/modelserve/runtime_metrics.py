"""Gauges read from the registry at scrape time: queue depth, workers by state, worker memory."""
from __future__ import annotations

from typing import Iterator

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .registry import ModelRegistry

WORKER_STATES = ("STARTING", "READY", "DEAD", "STOPPING")


def runtime_families(registry: ModelRegistry) -> Iterator[Metric]:
    lv = ["model_name", "model_version"]
    depth = GaugeMetricFamily("modelserve_queue_depth", "Requests waiting in the model's queue", labels=lv)
    workers = GaugeMetricFamily("modelserve_workers", "Worker processes by state", labels=[*lv, "state"])
    memory = GaugeMetricFamily("modelserve_worker_memory_bytes", "Resident memory of each worker process",
                               labels=[*lv, "worker_id"])
    restarts = CounterMetricFamily("modelserve_worker_restarts", "Worker processes restarted after dying",
                                   labels=lv)
    for mv in registry.all_versions():
        key = [mv.name, mv.version]
        depth.add_metric(key, len(mv.queue))
        counts = dict.fromkeys(WORKER_STATES, 0)
        for w in mv.pool.workers():
            counts[w.status] = counts.get(w.status, 0) + 1
            if w.pid and w.status == "READY":
                try:
                    memory.add_metric([*key, str(w.id)], psutil.Process(w.pid).memory_info().rss)
                except psutil.Error:
                    pass
        for state, n in counts.items():
            workers.add_metric([*key, state], n)
        restarts.add_metric(key, mv.pool.restarts)
    yield from (depth, workers, memory, restarts)
