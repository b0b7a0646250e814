"""Host and GPU gauges with TorchServe's names, read at scrape time."""
from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import psutil
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger("modelserve")


class SystemMetrics:
    def __init__(self, hostname: str, disk_path: str = "/") -> None:
        self.hostname = hostname
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # primes the counter: the first scrape then reports real usage
        self._nvml: Any = _load_nvml()

    def collect(self) -> Iterator[Metric]:
        labels = ["Level", "Hostname"]
        host = ["Host", self.hostname]
        vm = psutil.virtual_memory()
        disk = psutil.disk_usage(self.disk_path)
        gb = 1024 ** 3
        mb = 1024 ** 2
        for name, doc, value in (
            ("CPUUtilization", "CPU utilization, percent", psutil.cpu_percent(interval=None)),
            ("MemoryUsed", "Memory used, megabytes", vm.used / mb),
            ("MemoryAvailable", "Memory available, megabytes", vm.available / mb),
            ("MemoryUtilization", "Memory utilization, percent", vm.percent),
            ("DiskAvailable", "Disk space available, gigabytes", disk.free / gb),
            ("DiskUsage", "Disk space used, gigabytes", disk.used / gb),
            ("DiskUtilization", "Disk utilization, percent", disk.percent),
        ):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(host, value)
            yield g
        if self._nvml is not None:
            yield from self._gpu()

    def _gpu(self) -> Iterator[Metric]:
        nvml = self._nvml
        labels = ["Level", "DeviceId", "Hostname"]
        util = GaugeMetricFamily("GPUUtilization", "GPU utilization, percent", labels=labels)
        used = GaugeMetricFamily("GPUMemoryUsed", "GPU memory used, megabytes", labels=labels)
        mem_util = GaugeMetricFamily("GPUMemoryUtilization", "GPU memory utilization, percent", labels=labels)
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                key = ["Host", str(i), self.hostname]
                util.add_metric(key, nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                used.add_metric(key, mem.used / 1024 ** 2)
                mem_util.add_metric(key, 100.0 * mem.used / mem.total if mem.total else 0.0)
        except Exception as exc:  # noqa: BLE001 - a GPU read failure must not break the scrape
            log.warning("reading GPU metrics failed: %s", exc)
        yield from (util, used, mem_util)


def _load_nvml() -> Optional[Any]:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        return pynvml
    except Exception:  # noqa: BLE001 - no driver, no library, or no GPU: no GPU metrics
        return None
