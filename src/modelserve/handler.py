"""The public handler API: ``BaseHandler``, ``Context`` and ``PredictionException``.

Imported by the frontend too (through ``modelserve``), so torch is imported only inside methods
that run in a worker.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import time
from typing import Any, Callable, Optional


class PredictionException(Exception):
    """Raised by a handler to reject a batch with a status (400 for bad input)."""

    def __init__(self, message: str, status_code: int = 500, error_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code if error_code is not None else status_code  # TorchServe's name

    @property
    def status_code(self) -> int:
        return self.error_code

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


class Context:
    """What a handler learns about its model, its worker and the current batch."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        manifest: dict[str, Any],
        batch_size: int = 1,
        gpu: Optional[int] = None,
        server_name: str = "modelserve",
        server_version: str = "",
        model_yaml_config: Optional[dict[str, Any]] = None,
        metrics: Any = None,
        limit_max_image_pixels: bool = True,
    ) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self.system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": server_name,
            "server_version": server_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.model_yaml_config: dict[str, Any] = model_yaml_config or {}
        self.metrics = metrics
        self.request_ids: dict[int, str] = {}
        self.request_processor: list[dict[str, str]] = []  # per request: lower-cased headers
        self._status: list[Optional[tuple[int, str]]] = []
        self._content_type: list[Optional[str]] = []
        self._headers: list[Optional[dict[str, str]]] = []
        self._send_partial: Optional[Callable[[list[Any], dict[int, str], str, int], None]] = None

    # -- set up by the worker for each batch --------------------------------------------------
    def begin_batch(self, request_ids: list[str], headers: list[dict[str, str]]) -> None:
        n = len(request_ids)
        self.request_ids = dict(enumerate(request_ids))
        self.request_processor = headers
        self._status = [None] * n
        self._content_type = [None] * n
        self._headers = [None] * n

    # -- TorchServe's request accessors ---------------------------------------------------------
    def get_request_id(self, idx: int = 0) -> Optional[str]:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Optional[str]:
        return self.request_processor[idx].get(key.lower())

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return dict(self.request_processor[idx])

    # -- per-request response properties ---------------------------------------------------------
    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self._status[idx] = (int(code), phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for idx in range(len(self._status)):
            self._status[idx] = (int(code), phrase)

    def get_response_status(self, idx: int = 0) -> Optional[tuple[int, str]]:
        return self._status[idx]

    def set_response_content_type(self, idx: int, value: str) -> None:
        self._content_type[idx] = value

    def get_response_content_type(self, idx: int) -> Optional[str]:
        return self._content_type[idx]

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        headers = self._headers[idx]
        if headers is None:
            headers = self._headers[idx] = {}
        headers[key] = str(value)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._headers[idx] or {}

    @property
    def is_metrics_enabled(self) -> bool:
        return self.metrics is not None


def _module_from_file(path: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class BaseHandler:
    """Default preprocess -> inference -> postprocess over a TorchScript or eager model."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: Optional[dict[str, Any]] = None
        self.device: Any = None
        self.map_location: str = "cpu"
        self.initialized = False
        self.context: Optional[Context] = None
        self.manifest: Optional[dict[str, Any]] = None
        self.model_pt_path: Optional[str] = None

    def initialize(self, context: Context) -> None:
        import torch

        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")
        self.manifest = context.manifest
        model_dir = properties["model_dir"]
        model_info = (self.manifest or {}).get("model", {})
        serialized = model_info.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized) if serialized else None
        model_file = model_info.get("modelFile")
        if model_file:
            self.model = self._load_eager_model(model_dir, model_file, self.model_pt_path)
        elif self.model_pt_path:
            self.model = torch.jit.load(self.model_pt_path, map_location=self.device)
        if self.model is not None:
            self.model.to(self.device)
            self.model.eval()
        mapping_file = os.path.join(model_dir, "index_to_name.json")
        if os.path.isfile(mapping_file):
            with open(mapping_file, encoding="utf-8") as f:
                mapping = json.load(f)
            # TorchServe accepts {"0": "cat"} and {"0": ["n021", "cat"]}; keep the name either way
            self.mapping = {k: (v[-1] if isinstance(v, list) and v else v) for k, v in mapping.items()}
        self.initialized = True

    def _load_eager_model(self, model_dir: str, model_file: str, model_pt_path: Optional[str]) -> Any:
        """Import ``model_file``, take its single ``nn.Module`` subclass, load the state dict."""
        import torch

        path = model_file if os.path.isabs(model_file) else os.path.join(model_dir, os.path.basename(model_file))
        module_name = os.path.splitext(os.path.basename(path))[0]
        module = _module_from_file(path, module_name)
        classes = [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__ and issubclass(cls, torch.nn.Module)
        ]
        if len(classes) != 1:
            raise ValueError(
                f"model file {model_file} must define exactly one torch.nn.Module subclass, found {len(classes)}"
            )
        model = classes[0]()
        if model_pt_path:
            state_dict = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state_dict)
        return model

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        import torch

        return torch.as_tensor(data, device=self.device)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        return data.tolist()

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        self.context = context
        start = time.perf_counter()
        output = self.postprocess(self.inference(self.preprocess(data)))
        metrics = getattr(context, "metrics", None)
        if metrics is not None and hasattr(metrics, "add_time"):
            metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return output

    def describe_handle(self) -> Any:
        """Custom metadata for ``GET /models/{name}?customized=true``; override to provide it."""
        return None
