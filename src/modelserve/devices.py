"""How many GPUs this machine has, found without importing torch (the frontend never does)."""
from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
from typing import Iterator, Optional, Sequence


def detect_gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        if not ids:
            return 0
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return min(count, len(ids)) if visible is not None else count


class GpuAssigner:
    """Hands out GPU ids round-robin, over a model's ``deviceIds`` when it gives them."""

    def __init__(self, gpu_count: int) -> None:
        self.gpu_count = gpu_count
        self._all: Iterator[int] = itertools.cycle(range(gpu_count)) if gpu_count else iter(())

    def for_model(self, device_type: Optional[str], device_ids: Optional[Sequence[int]]):
        """A ``next_gpu`` callable for one model version (None means: run on the CPU)."""
        if self.gpu_count == 0 or (device_type or "").lower() == "cpu":
            return lambda: None
        if device_ids:
            cycle = itertools.cycle([i for i in device_ids])
            return lambda: next(cycle)
        return lambda: next(self._all)


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """CPUs the cgroup (a container's CPU limit) allows, or None when unlimited or unknown.

    Reads cgroup v2 ``cpu.max`` ("quota period" or "max period"), else cgroup v1
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us``.
    """
    try:
        with open(os.path.join(root, "cpu.max"), encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us"), encoding="ascii") as f:
            quota_us = int(f.read().strip())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us"), encoding="ascii") as f:
            period_us = int(f.read().strip())
    except (OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def effective_cpus(root: str = "/sys/fs/cgroup") -> int:
    """Whole CPUs this process may use: the smallest of the host's, the affinity mask's and the cgroup's."""
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)) or counts[0])
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        counts.append(max(1, math.ceil(limit)))
    return min(counts)
