"""``ts.torch_handler.image_segmenter.ImageSegmenter``: per pixel ``[class, probability]``.

The model's output is ``[N, K, H, W]`` scores, or a dict with them under ``out``; each image's
response is a ``[H][W][2]`` list of ``[class_index, probability]`` (TorchServe's format).
"""
from __future__ import annotations

from typing import Any

from modelserve_handlers._vision import ImageTransform

from ..handler_utils.timer import timed
from .vision_handler import VisionHandler


class ImageSegmenter(VisionHandler):
    image_processing: Any = ImageTransform(resize=256, crop=224)

    @timed
    def postprocess(self, data: Any) -> list[Any]:
        import torch

        if isinstance(data, dict):
            data = data["out"]
        probs = torch.nn.functional.softmax(data, dim=1)
        best = torch.max(probs, dim=1)
        return torch.stack([best.indices.type(best.values.dtype), best.values], dim=3).tolist()


class ImangeSegmenter(ImageSegmenter):
    """TorchServe's original (misspelled) name, kept for old handlers."""
