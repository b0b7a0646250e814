"""``ts.handler_utils.timer.timed``: time a handler method when ``handler.profile`` is true.

With ``handler: {profile: true}`` in model-config.yaml, each decorated call records a
``ts_handler_<method>`` time metric (milliseconds) through ``context.metrics``.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable


def _profiling(handler: Any) -> bool:
    context = getattr(handler, "context", None)
    config = getattr(context, "model_yaml_config", None) or {}
    section = config.get("handler") if isinstance(config, dict) else None
    return bool(isinstance(section, dict) and section.get("profile"))


def timed(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _profiling(self):
            return func(self, *args, **kwargs)
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = func(self, *args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        metrics = getattr(self.context, "metrics", None)
        if metrics is not None:
            metrics.add_time("ts_handler_" + func.__name__, (time.perf_counter() - start) * 1000)
        return result

    return wrapper
