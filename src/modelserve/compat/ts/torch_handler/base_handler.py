"""``ts.torch_handler.base_handler.BaseHandler`` with TorchServe's default behaviour.

``initialize`` picks the device (``cuda:<gpu_id>`` when the worker has a GPU, else MPS or CPU), then
loads the model named by the manifest: with a ``modelFile`` the eager way (import the model file,
instantiate its single class, load ``serializedFile`` as its state dict), otherwise the
``serializedFile`` as TorchScript. ``index_to_name.json`` becomes ``self.mapping``.
``handle`` runs ``preprocess -> inference -> postprocess`` and records ``HandlerTime``.
"""
from __future__ import annotations

import abc
import importlib
import logging
import os
import sys
import time
from typing import Any, Optional

from modelserve.handler import BaseHandler as _ModelserveBaseHandler

from ..handler_utils.timer import timed
from ..utils.util import PredictionException, check_valid_pt2_backend, list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)

PROFILER_AVAILABLE = True
PT2_AVAILABLE = True
XLA_AVAILABLE = False
ONNX_AVAILABLE = False
IPEX_AVAILABLE = False


class BaseHandler(_ModelserveBaseHandler, abc.ABC):
    """TorchServe's base handler; subclass it and override preprocess/inference/postprocess."""

    def __init__(self) -> None:
        super().__init__()
        self.map_location: Optional[str] = None
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}
        self.model_yaml_config: dict[str, Any] = {}

    # -- loading ------------------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        import torch

        self.context = context
        if context is not None and hasattr(context, "model_yaml_config"):
            self.model_yaml_config = context.model_yaml_config or {}
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        elif gpu_id is not None and getattr(torch.backends, "mps", None) is not None \
                and torch.backends.mps.is_available():
            self.map_location = "mps"
            self.device = torch.device("mps")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")

        self.manifest = context.manifest
        model_dir = properties.get("model_dir")
        model_info = (self.manifest or {}).get("model", {})
        serialized = model_info.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized) if serialized else None
        model_file = model_info.get("modelFile", "")
        if model_file:
            logger.debug("Loading eager model")
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
            self.model.to(self.device)
            self.model.eval()
        elif self.model_pt_path and self.model_pt_path.endswith(".onnx"):
            raise RuntimeError("ONNX models are not supported by modelserve's ts compatibility layer; "
                               "load them in a custom initialize (onnxruntime)")
        elif self.model_pt_path:
            self.model = self._load_torchscript_model(self.model_pt_path)
            self.model.eval()
        else:
            raise RuntimeError("No model weights could be loaded: the manifest names no serializedFile "
                               "or modelFile (override initialize for a handler without a model)")
        self._maybe_compile()
        logger.debug("Model file %s loaded successfully", self.model_pt_path)
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    def _maybe_compile(self) -> None:
        """``pt2: {compile: {enable: true, backend: ..., mode: ...}}`` or ``pt2: <backend>``."""
        import torch

        pt2 = (self.model_yaml_config or {}).get("pt2")
        if not pt2:
            return
        if isinstance(pt2, str):
            options: dict[str, Any] = {"backend": pt2}
        elif isinstance(pt2, dict) and "compile" in pt2:
            options = dict(pt2["compile"] or {})
            if not options.pop("enable", False):
                return
        elif isinstance(pt2, dict) and "export" not in pt2:
            options = dict(pt2)
        else:
            return
        if "backend" in options and not check_valid_pt2_backend(options["backend"]):
            return
        try:
            self.model = torch.compile(self.model, **options)
            logger.info("Compiled model with %s", options)
        except Exception as exc:  # noqa: BLE001 - TorchServe goes on without compilation
            logger.warning("Compiling the model with %s failed, proceeding without compilation: %s", options, exc)

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        import torch

        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir: str, model_file: str, model_pt_path: Optional[str]) -> Any:
        import torch

        model_def_path = os.path.join(model_dir, model_file)
        if not os.path.isfile(model_def_path):
            raise RuntimeError("Missing the model.py file")
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)
        module = importlib.import_module(os.path.splitext(model_file)[0].replace(os.sep, "."))
        classes = list_classes_from_module(module)
        if len(classes) != 1:
            raise ValueError(f"Expected only one class as model definition. {classes}")
        model = classes[0]()
        if model_pt_path:
            state_dict = torch.load(model_pt_path, map_location=self.device)
            model.load_state_dict(state_dict)
        return model

    # -- the request cycle ---------------------------------------------------------------------------
    @timed
    def preprocess(self, data: Any) -> Any:
        import torch

        return torch.as_tensor(data, device=self.device)

    @timed
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            marshalled = data.to(self.device) if hasattr(data, "to") else data
            return self.model(marshalled, *args, **kwargs)

    @timed
    def postprocess(self, data: Any) -> Any:
        return data.tolist()

    def handle(self, data: Any, context: Any) -> Any:
        start = time.time()
        self.context = context
        metrics = context.metrics
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            data_preprocess = self.preprocess(data)
            if not self._is_explain():
                output = self.postprocess(self.inference(data_preprocess))
            else:
                output = self.explain_handle(data_preprocess, data)
        if metrics is not None:
            metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        return output

    def _header(self, key: str) -> Optional[str]:
        ctx = self.context
        if ctx is None or not getattr(ctx, "request_processor", None):
            return None
        return ctx.get_request_header(0, key)

    def _is_explain(self) -> bool:
        if self._header("explain") == "True":
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return self._header("describe") == "True"

    def explain_handle(self, data_preprocess: Any, raw_data: Any) -> Any:
        """Explanations: calls ``get_insights(data_preprocess, inputs, target)`` when the handler has one.

        modelserve has no ``/explanations`` API; a request reaches this with the header
        ``explain: True``.
        """
        get_insights = getattr(self, "get_insights", None)
        if get_insights is None:
            raise PredictionException(
                f"{type(self).__name__} does not implement explanations (get_insights); "
                "modelserve does not provide TorchServe's Captum-based explanations", 501)
        inputs, target = None, 0
        row = raw_data[0] if raw_data else None
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        return get_insights(data_preprocess, inputs, target)

    def describe_handle(self) -> Any:
        """Custom model metadata for ``GET /models/{name}?customized=true``; None by default."""
        return None

    def get_device(self) -> Any:
        return self.device
