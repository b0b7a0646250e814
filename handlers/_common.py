"""Plumbing shared by the built-in handlers (a helper module: it is not a handler itself).

The built-in handler modules each define exactly one class (the worker's loader instantiates the
single class a handler module defines), so every base class and helper they share lives here or in
:mod:`modelserve_handlers._vision`.

The request cycle of a built-in handler::

    handle(data, context)
      preprocess(data)          -> one model input per usable request (bad ones are rejected, 400)
      run(items)                -> inference() + postprocess() per group of same-shaped inputs
      merge                     -> one result per request; rejected requests answer 400 with the reason

A request whose input cannot be used (not an image, empty body, malformed JSON array ...) raises
:class:`RequestError` in ``preprocess_one``; only that request is answered 400 with the message,
the others of its batch are still served.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterable, Optional

from modelserve.handler import BaseHandler, Context

logger = logging.getLogger("modelserve.handlers")

INDEX_TO_NAME = "index_to_name.json"


class RequestError(ValueError):
    """One request's input is unusable; that request is answered 400 with this message."""


# -- configuration ------------------------------------------------------------------------------

def handler_config(context: Context) -> dict[str, Any]:
    """The ``handler:`` section of the archive's model-config.yaml (``{}`` when there is none)."""
    yaml_config = getattr(context, "model_yaml_config", None) or {}
    section = yaml_config.get("handler") or {}
    if not isinstance(section, dict):
        raise ValueError("model-config.yaml: the `handler` section must be a mapping")
    return section


def size_pair(value: Any, key: str) -> Optional[tuple[int, int]]:
    """``None`` (disabled), an int ``n`` (-> ``(n, n)``) or ``[height, width]``."""
    if value is None or value is False:
        return None
    if isinstance(value, bool):
        raise ValueError(f"handler.{key} must be an integer, [height, width] or null")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"handler.{key} must be positive, got {value}")
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"handler.{key} must be a positive integer, [height, width] or null; got {value!r}")


# -- labels -------------------------------------------------------------------------------------

def normalise_label_mapping(mapping: Any, source: str = INDEX_TO_NAME) -> dict[str, str]:
    """TorchServe's index_to_name.json layouts -> ``{"0": "name", ...}``.

    Accepted: ``{"0": "cat"}``, ``{"0": ["n02123045", "cat"]}`` (the last element is the name),
    ``{"object_type_names": ["a", "b"]}`` and, as an extension, a plain JSON list of names.
    """
    if isinstance(mapping, list):
        mapping = {"object_type_names": mapping}
    if not isinstance(mapping, dict):
        raise ValueError(f'{source}: the mapping must be a JSON object of "index": "label"')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(i): str(name) for i, name in enumerate(names)}
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if isinstance(value, list) and value:
            value = value[-1]
        if not isinstance(value, str):
            raise ValueError(f"{source}: label of {key!r} must be a string or a list of strings, got {value!r}")
        out[str(key)] = value
    return out


def load_label_mapping(model_dir: str, file_name: str = INDEX_TO_NAME) -> Optional[dict[str, str]]:
    path = os.path.join(model_dir, file_name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return normalise_label_mapping(json.load(f), file_name)


def label_for(mapping: Optional[dict[str, str]], index: Any) -> str:
    """The friendly name of class ``index``; the index as a string when it has none."""
    key = str(index)
    if mapping is None:
        return key
    return mapping.get(key, key)


# -- request payloads -----------------------------------------------------------------------------

def _is_empty(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, str)) and len(value) == 0


def request_payload(row: Any) -> Any:
    """The input of one request: its ``data`` field, else its ``body`` (TorchServe's convention).

    A multipart request whose only field has another name gives that field.
    """
    if not isinstance(row, dict):
        return row
    for key in ("data", "body"):
        value = row.get(key)
        if value is not None and not _is_empty(value):
            return value
    if "data" in row or "body" in row:
        return row.get("data", row.get("body"))
    if len(row) == 1:
        return next(iter(row.values()))
    if not row:
        return None
    raise RequestError(f"expected the input in a `data` or `body` field; got fields {sorted(row)}")


def primary_output(output: Any, keys: Iterable[str] = ("out", "logits")) -> Any:
    """The main tensor of a model's output: itself, ``out``/``logits`` of a dict, the first of a tuple."""
    if isinstance(output, dict):
        for key in keys:
            if key in output:
                return output[key]
        if len(output) == 1:
            return next(iter(output.values()))
        raise ValueError(f"model returned a dict with keys {sorted(output)}; expected one of {list(keys)}")
    if isinstance(output, (tuple, list)) and output and not isinstance(output[0], dict):
        return output[0]
    return output


# -- the shared handler ---------------------------------------------------------------------------

class BatchHandler(BaseHandler):
    """Per-request validation, shape-grouped batching, 400 for bad input, labels, ``describe_handle``."""

    #: the built-in name, reported by describe_handle
    handler_name = "base_handler"

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}
        self._rejected: dict[int, str] = {}

    # -- set up -----------------------------------------------------------------------------------
    def initialize(self, context: Context) -> None:
        self.context = context
        self.config = handler_config(context)
        super().initialize(context)
        if self.model is None:
            raise RuntimeError(
                f"the {self.handler_name} handler needs a model: archive a TorchScript file with "
                "--serialized-file, or an eager model with --model-file and its state dict")
        model_dir = context.system_properties["model_dir"]
        self.mapping = load_label_mapping(model_dir, str(self.config.get("index_to_name", INDEX_TO_NAME)))

    def option(self, key: str, default: Any) -> Any:
        return self.config.get(key, default)

    def describe_handle(self) -> Any:
        return {"handler": self.handler_name, "config": self.effective_config(),
                "labels": len(self.mapping) if self.mapping else 0}

    def effective_config(self) -> dict[str, Any]:
        return dict(self.config)

    # -- request cycle ----------------------------------------------------------------------------
    def reject(self, idx: int, reason: str) -> None:
        self._rejected[idx] = reason

    def preprocess_one(self, row: Any, idx: int) -> Any:
        raise NotImplementedError

    def preprocess(self, data: list[Any]) -> list[Any]:
        """One model input per usable request; a bad request is recorded with :meth:`reject`."""
        items = []
        self._kept: list[int] = []
        for idx, row in enumerate(data):
            try:
                item = self.preprocess_one(row, idx)
            except RequestError as exc:
                self.reject(idx, str(exc))
                continue
            items.append(item)
            self._kept.append(idx)
        return items

    def run(self, items: list[Any]) -> list[Any]:
        """Stack same-shaped inputs, one forward per shape, results back in order."""
        import torch

        groups: dict[tuple[int, ...], list[int]] = {}
        for k, item in enumerate(items):
            groups.setdefault(tuple(item.shape), []).append(k)
        results: list[Any] = [None] * len(items)
        for positions in groups.values():
            batch = torch.stack([items[k] for k in positions]).to(self.device)
            outputs = self.postprocess(self.inference(batch))
            if len(outputs) != len(positions):
                raise RuntimeError(f"postprocess returned {len(outputs)} results for a batch of {len(positions)}")
            for k, out in zip(positions, outputs):
                results[k] = out
        return results

    def handle(self, data: list[Any], context: Context) -> list[Any]:
        self.context = context
        start = time.perf_counter()
        self._rejected = {}
        items = self.preprocess(data)
        results = self.run(items) if items else []
        out: list[Any] = [None] * len(data)
        for idx, result in zip(self._kept, results):
            out[idx] = result
        for idx, reason in self._rejected.items():
            context.set_response_status(400, reason, idx)
            out[idx] = reason
        metrics = getattr(context, "metrics", None)
        if metrics is not None and hasattr(metrics, "add_time"):
            metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return out
