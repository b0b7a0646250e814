"""Metric state kept by the frontend and rendered with prometheus-client at scrape time.

The hot path only bumps plain numbers (one asyncio thread, no locks); families are built when
``/metrics`` is scraped. TorchServe's metric names are kept so existing dashboards work; what
TorchServe lacks lives under ``modelserve_`` in base units.
"""
from __future__ import annotations

import logging
import re
import socket
import time
from bisect import bisect_left
from typing import Any, Callable, Iterable, Iterator, Optional

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REJECT_REASONS = ("queue_full", "timeout", "too_large", "auth")

log = logging.getLogger("modelserve")
_NAME_OK = re.compile(r"[^a-zA-Z0-9_:]")


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts):
            acc += n
            out.append((_fmt(bound), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


def _fmt(bound: float) -> str:
    return repr(float(bound))


class ModelStats:
    """Per model version counters and histograms, fed by the service layer and the pool."""

    __slots__ = ("requests", "ok", "failed", "latency_us", "queue_us", "compute_us", "latency", "queue_wait",
                 "handler", "batch_size", "batches", "pipelined", "prediction_ms", "last_inference")

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.failed = 0
        self.latency_us = 0.0
        self.queue_us = 0.0
        self.compute_us = 0.0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.handler = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batches: dict[str, int] = {}
        self.pipelined = 0
        self.prediction_ms = 0.0
        self.last_inference = 0.0

    def observe_request(self, ok: bool, seconds: float) -> None:
        self.requests += 1
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.latency_us += seconds * 1e6
        self.latency.observe(seconds)
        self.last_inference = time.time()

    def observe_batch(self, waits: list[float], reason: str, took: float, pipelined: bool = False) -> None:
        for w in waits:
            self.queue_wait.observe(w)
            self.queue_us += w * 1e6
        self.compute_us += took * 1e6 * len(waits)
        self.handler.observe(took)
        self.batch_size.observe(len(waits))
        self.batches[reason] = self.batches.get(reason, 0) + 1
        if pipelined:
            self.pipelined += 1
        self.prediction_ms = took * 1000


class _HandlerFamily:
    """One handler-defined metric: its kind, label names and values per label set."""

    def __init__(self, kind: str, name: str, labels: tuple[str, ...], unit: str) -> None:
        self.kind = kind
        self.name = name
        self.labels = labels
        self.unit = unit
        self.values: dict[tuple[str, ...], Any] = {}


class ServerMetrics:
    """Everything ``/metrics`` reports; also a prometheus-client collector."""

    def __init__(self, hostname: Optional[str] = None, allowed_model_metrics: Optional[set[str]] = None,
                 metrics_log: Optional[logging.Logger] = None) -> None:
        self.hostname = hostname or socket.gethostname()
        self.models: dict[tuple[str, str], ModelStats] = {}
        self.status_classes = {"2XX": 0, "4XX": 0, "5XX": 0}
        self.rejected: dict[str, int] = {r: 0 for r in REJECT_REASONS}
        self.handler_families: dict[str, _HandlerFamily] = {}
        self.allowed_model_metrics = allowed_model_metrics
        self.metrics_log = metrics_log
        self._warned: set[str] = set()
        self.runtime_source: Optional[Callable[[], Iterator[Metric]]] = None

    # -- feeding ----------------------------------------------------------------------------------
    def for_model(self, name: str, version: str) -> ModelStats:
        stats = self.models.get((name, version))
        if stats is None:
            stats = self.models[(name, version)] = ModelStats()
        return stats

    def drop_model(self, name: str, version: str) -> None:
        self.models.pop((name, version), None)

    def count_status(self, status: int) -> None:
        if status < 300:
            self.status_classes["2XX"] += 1
        elif status < 500:
            self.status_classes["4XX"] += 1
        else:
            self.status_classes["5XX"] += 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def handler_records(self, model: str, version: str, records: list[list[Any]]) -> None:
        """Aggregate metrics recorded inside workers (counters add up across workers and restarts)."""
        for kind, name, value, unit, dims in records:
            if self.allowed_model_metrics is not None and name not in self.allowed_model_metrics:
                continue
            if self.metrics_log is not None:
                dim_text = ",".join(f"{k}:{v}" for k, v in dims.items())
                self.metrics_log.info("%s.%s:%s|#ModelName:%s,ModelVersion:%s%s|#hostname:%s,timestamp:%d",
                                      name, unit or "Count", value, model, version,
                                      f",{dim_text}" if dim_text else "", self.hostname, int(time.time()))
            metric = _NAME_OK.sub("_", name)
            labels = ("ModelName", "ModelVersion", "Level", "Hostname", *sorted(_NAME_OK.sub("_", k) for k in dims))
            fam = self.handler_families.get(metric)
            if fam is None:
                fam = self.handler_families[metric] = _HandlerFamily(kind, metric, labels, unit)
            elif fam.kind != kind or fam.labels != labels:
                if metric not in self._warned:
                    self._warned.add(metric)
                    log.warning("handler metric %s reported with another type or dimensions (%s %s, was %s %s); "
                                "those records are dropped", metric, kind, labels[4:], fam.kind, fam.labels[4:])
                continue
            key = (model, version, "Model", self.hostname, *(str(dims[k]) for k in sorted(dims)))
            if kind == "counter":
                fam.values[key] = fam.values.get(key, 0.0) + value
            elif kind == "histogram":
                hist = fam.values.get(key)
                if hist is None:
                    hist = fam.values[key] = Histogram(LATENCY_BUCKETS if unit in ("s", "seconds") else
                                                       (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
                hist.observe(value)
            else:
                fam.values[key] = value

    # -- rendering --------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        host = self.hostname
        ts_req = CounterMetricFamily("ts_inference_requests", "Total number of inference requests.",
                                     labels=["model_name", "model_version", "hostname"])
        ts_lat = Metric("ts_inference_latency_microseconds", "Cumulative inference duration in microseconds", "unknown")
        ts_q = Metric("ts_queue_latency_microseconds", "Cumulative queue duration in microseconds", "unknown")
        pred = GaugeMetricFamily("PredictionTime", "Time of the last batch, in milliseconds",
                                 labels=["ModelName", "Level", "Hostname"])
        m_lat = HistogramMetricFamily("modelserve_request_latency_seconds", "End-to-end request latency in the frontend",
                                      labels=["model_name", "model_version"])
        m_q = HistogramMetricFamily("modelserve_queue_wait_seconds", "Time a request waited in its model's queue",
                                    labels=["model_name", "model_version"])
        m_h = HistogramMetricFamily("modelserve_handler_seconds", "Time a worker took for one batch",
                                    labels=["model_name", "model_version"])
        m_bs = HistogramMetricFamily("modelserve_batch_size", "Requests per batch", labels=["model_name", "model_version"])
        m_batches = CounterMetricFamily("modelserve_batches", "Batches dispatched, by why the batch was closed",
                                        labels=["model_name", "model_version", "reason"])
        m_pipe = CounterMetricFamily("modelserve_pipelined_batches",
                                     "Batches sent to a worker while it still ran the one before (pipelining)",
                                     labels=["model_name", "model_version"])
        for (name, version), s in sorted(self.models.items()):
            lv = [name, version]
            ts_req.add_metric([name, version, host], s.requests)
            ts_lat.add_sample("ts_inference_latency_microseconds",
                              {"model_name": name, "model_version": version, "hostname": host}, s.latency_us)
            ts_q.add_sample("ts_queue_latency_microseconds",
                            {"model_name": name, "model_version": version, "hostname": host}, s.queue_us)
            pred.add_metric([name, "Model", host], s.prediction_ms)
            for fam, hist in ((m_lat, s.latency), (m_q, s.queue_wait), (m_h, s.handler), (m_bs, s.batch_size)):
                fam.add_metric(lv, hist.buckets(), hist.sum)
            for reason, n in sorted(s.batches.items()):
                m_batches.add_metric([name, version, reason], n)
            m_pipe.add_metric(lv, s.pipelined)
        yield from (ts_req, ts_lat, ts_q, pred, m_lat, m_q, m_h, m_bs, m_batches, m_pipe)
        for cls, n in self.status_classes.items():
            m = Metric(f"Requests{cls}", f"Requests answered with a {cls} status", "unknown")
            m.add_sample(f"Requests{cls}", {"Level": "Host", "Hostname": host}, n)
            yield m
        rej = CounterMetricFamily("modelserve_requests_rejected", "Requests rejected before reaching a worker",
                                  labels=["reason"])
        for reason, n in sorted(self.rejected.items()):
            rej.add_metric([reason], n)
        yield rej
        if self.runtime_source is not None:
            yield from self.runtime_source()
        yield from self._handler_metrics()

    def _handler_metrics(self) -> Iterator[Metric]:
        for fam in self.handler_families.values():
            doc = f"Handler metric {fam.name}" + (f" ({fam.unit})" if fam.unit else "")
            labels = list(fam.labels)
            if fam.kind == "counter":
                m: Metric = CounterMetricFamily(fam.name, doc, labels=labels)
                for key, v in fam.values.items():
                    m.add_metric(list(key), v)
            elif fam.kind == "histogram":
                m = HistogramMetricFamily(fam.name, doc, labels=labels)
                for key, h in fam.values.items():
                    m.add_metric(list(key), h.buckets(), h.sum)
            else:
                m = GaugeMetricFamily(fam.name, doc, labels=labels)
                for key, v in fam.values.items():
                    m.add_metric(list(key), v)
            yield m
