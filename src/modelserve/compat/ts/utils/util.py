"""``ts.utils.util``: the helpers TorchServe handlers import (label mapping, class discovery ...)."""
from __future__ import annotations

import enum
import functools
import inspect
import json
import logging
import os
import warnings
from typing import Any, Callable, Iterable, Optional

from modelserve.handler import PredictionException as _PredictionException

logger = logging.getLogger(__name__)

__all__ = [
    "PT2Backend", "PredictionException", "check_valid_pt2_backend", "deprecated", "get_yaml_config",
    "list_classes_from_module", "load_label_mapping", "map_class_to_label",
]


class PT2Backend(str, enum.Enum):
    EAGER = "eager"
    AOT_EAGER = "aot_eager"
    INDUCTOR = "inductor"
    NVFUSER = "nvfuser"
    AOT_NVFUSER = "aot_nvfuser"
    AOT_CUDAGRAPHS = "aot_cudagraphs"
    OFI = "ofi"
    FX2TRT = "fx2trt"
    ONNXRT = "onnxrt"
    IPEX = "ipex"
    TORCHXLA_TRACE_ONCE = "torchxla_trace_once"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


class PredictionException(_PredictionException):
    """Reject a batch with a status code; TorchServe's signature ``(message, error_code=500)``.

    A subclass of ``modelserve.PredictionException``, so the worker answers it with ``error_code``.
    """

    def __init__(self, message: str, error_code: int = 500) -> None:
        super().__init__(message, error_code)


def list_classes_from_module(module: Any, parent_class: Optional[type] = None) -> list[type]:
    """The classes defined in ``module`` itself (not imported into it), optionally only subclasses."""
    classes = [member for _, member in inspect.getmembers(module, inspect.isclass)
               if member.__module__ == module.__name__]
    if parent_class is not None:
        classes = [c for c in classes if issubclass(c, parent_class)]
    return classes


def check_valid_pt2_backend(backend: str) -> bool:
    if backend in {b.value for b in PT2Backend}:
        return True
    logger.warning("%s is not a supported backend", backend)
    return False


def load_label_mapping(mapping_file_path: str) -> Optional[dict[str, str]]:
    """index_to_name.json -> ``{"index": "label"}``; None (with a warning) when the file is missing.

    Values may be a label or a list whose last element is the label; the older layout
    ``{"object_type_names": [...]}`` is accepted too.
    """
    if not os.path.isfile(mapping_file_path):
        logger.warning("%r is missing. Inference output will not include class name.", mapping_file_path)
        return None
    with open(mapping_file_path, encoding="utf-8") as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise Exception('index->name JSON mapping should be in "class": "label" format.')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(i): name for i, name in enumerate(names)}
    out = {}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise Exception("labels in index->name mapping must be either str or List[str]")
        out[key] = label
    return out


def map_class_to_label(probs: list[list[Any]], mapping: Optional[dict[str, str]] = None,
                       lbl_classes: Optional[Iterable[Iterable[Any]]] = None) -> list[dict[str, Any]]:
    """Rows of probabilities -> one ``{label: probability}`` dict per row.

    ``lbl_classes`` gives each row's class indices (e.g. from ``torch.topk``); without it a row's
    classes are 0..len-1. Labels come from ``mapping`` (keys are indices as strings) when given.
    """
    if not isinstance(probs, list):
        raise Exception("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise Exception("Mapping must be a dict")
    if lbl_classes is None:
        lbl_classes = [range(len(row)) for row in probs]

    def name(cls: Any) -> str:
        return mapping[str(cls)] if mapping is not None else str(cls)

    return [{name(cls): prob for cls, prob in zip(classes, row)} for classes, row in zip(lbl_classes, probs)]


def get_yaml_config(yaml_file_path: str) -> dict[str, Any]:
    import yaml

    with open(yaml_file_path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def deprecated(version: str, replacement: str = "", klass: type = PendingDeprecationWarning) -> Callable:
    """Decorator: warn that a function goes away in ``version`` (and what replaces it)."""

    def wrap(func: Callable) -> Callable:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            warnings.warn(f"{func.__name__} is deprecated in {version} and moved to {replacement}",
                          klass, stacklevel=2)
            return func(*args, **kwargs)

        return inner

    return wrap
