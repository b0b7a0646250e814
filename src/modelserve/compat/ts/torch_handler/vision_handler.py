"""``ts.torch_handler.vision_handler.VisionHandler``: images in, a stacked batch tensor for the model.

Each request's ``data``/``body`` is image bytes (or a base64 string) decoded with Pillow and passed
through ``self.image_processing`` (any callable PIL image -> tensor: modelserve's
``ImageTransform``, or a torchvision ``transforms.Compose`` when torchvision is installed); a JSON
array is taken as an already preprocessed image. Undecodable, truncated or oversized images answer
400 with the reason (TorchServe answers those with 500).
"""
from __future__ import annotations

import abc
from typing import Any

from modelserve_handlers._common import request_payload
from modelserve_handlers._vision import ImageError, ImageTransform, image_bytes, open_image, require_pillow

from ..handler_utils.timer import timed
from ..utils.util import PredictionException
from .base_handler import BaseHandler


class VisionHandler(BaseHandler, abc.ABC):
    """Base class of the image handlers."""

    #: PIL image -> tensor; subclasses replace it (to-tensor only by default)
    image_processing: Any = ImageTransform(resize=None, crop=None, mean=None, std=None, mode=None)

    def initialize(self, context: Any) -> None:
        Image = require_pillow(type(self).__name__)
        super().initialize(context)
        self.ig = None
        properties = context.system_properties
        if not properties.get("limit_max_image_pixels", True):
            Image.MAX_IMAGE_PIXELS = None
        self.initialized = True

    def _image_from_row(self, row: Any) -> Any:
        from PIL import Image

        value = request_payload(row)
        if isinstance(value, (str, bytes, bytearray, memoryview, dict)) or value is None:
            limit = Image.MAX_IMAGE_PIXELS
            return open_image(image_bytes(value), limit, mode=None)
        return value

    @timed
    def preprocess(self, data: list[Any]) -> Any:
        import torch

        images = []
        for idx, row in enumerate(data):
            try:
                image = self._image_from_row(row)
            except ImageError as exc:
                raise PredictionException(f"request {idx}: {exc}" if len(data) > 1 else str(exc), 400) from None
            if isinstance(image, list):
                image = torch.FloatTensor(image)
            else:
                image = self.image_processing(image)
            images.append(image)
        try:
            return torch.stack(images).to(self.device)
        except RuntimeError as exc:
            raise PredictionException(f"images of one batch must have the same size after preprocessing: {exc}",
                                      400) from None

    def get_insights(self, tensor_data: Any, _: Any, target: int = 0) -> Any:
        try:
            from captum.attr import IntegratedGradients
        except ImportError:
            raise PredictionException("explanations need captum (pip install captum)", 501) from None
        if self.ig is None:
            self.ig = IntegratedGradients(self.model)
        return self.ig.attribute(tensor_data, target=target, n_steps=15).tolist()
