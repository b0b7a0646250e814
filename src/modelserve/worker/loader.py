"""Find and initialise a model's handler the way TorchServe does (worker side)."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional

from ..handler import Context

# Built-in handler names usable in --handler and in manifests.
BUILTIN_HANDLERS = {
    "base_handler": "modelserve_handlers.base",
    "image_classifier": "modelserve_handlers.image_classifier",
    "image_segmenter": "modelserve_handlers.image_segmenter",
    "object_detector": "modelserve_handlers.object_detector",
    "text_classifier": "modelserve_handlers.text_classifier",
    "tensor": "modelserve_handlers.tensor",
}


@dataclass
class LoadedHandler:
    entry: Callable[[Any, Context], Any]
    service: Optional[Any]  # the handler object for class-based handlers

    def describe(self) -> Any:
        fn = getattr(self.service, "describe_handle", None)
        return fn() if fn is not None else None


def _import_handler_module(handler: str, model_dir: str) -> ModuleType:
    module_ref = handler
    if module_ref in BUILTIN_HANDLERS:
        return importlib.import_module(BUILTIN_HANDLERS[module_ref])
    module_ref = os.path.basename(module_ref)
    if module_ref.endswith(".py"):
        module_ref = module_ref[:-3]
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    return importlib.import_module(module_ref)


def _ensure_ts_compat() -> None:
    """Let TorchServe handlers ``import ts...``: when the real TorchServe package is not installed,
    append modelserve's compatibility folder (holding a ``ts`` package) to ``sys.path``."""
    compat = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat")
    if compat in sys.path or not os.path.isdir(os.path.join(compat, "ts")):
        return
    if importlib.util.find_spec("ts") is None:
        sys.path.append(compat)


def load_handler(handler: str, context: Context) -> LoadedHandler:
    """``x.py``, ``x.py:function``, ``package.module[:function]`` or a built-in name."""
    _ensure_ts_compat()
    if not handler:
        raise ValueError("the manifest names no handler")
    module_part, _, function_name = handler.partition(":")
    module = _import_handler_module(module_part, context.system_properties["model_dir"])
    name = function_name or "handle"
    fn = getattr(module, name, None)
    if fn is not None and inspect.isfunction(fn):
        fn(None, context)  # TorchServe's convention: a function handler initialises on a None batch
        return LoadedHandler(entry=fn, service=None)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    if len(classes) != 1:
        raise ValueError(
            f"handler module {module.__name__} must define a function {name}(data, context) "
            f"or exactly one handler class; found {len(classes)} classes"
        )
    service = classes[0]()
    entry = getattr(service, name, None)
    if entry is None:
        raise ValueError(f"handler class {classes[0].__name__} has no method {name}")
    initialize = getattr(service, "initialize", None)
    if initialize is not None:
        initialize(context)
    return LoadedHandler(entry=entry, service=service)
