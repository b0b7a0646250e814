"""How many GPUs this machine has, found without importing torch (the frontend never does)."""
from __future__ import annotations

import itertools
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
