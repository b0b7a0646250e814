"""``ts.torch_handler.image_classifier.ImageClassifier``: TorchServe's default image classifier.

Resize 256, centre crop 224, ImageNet normalisation, softmax, ``topk`` (5) classes per image as
``{"label": probability}`` (labels from index_to_name.json).
"""
from __future__ import annotations

from typing import Any

from modelserve_handlers._vision import ImageTransform

from ..handler_utils.timer import timed
from ..utils.util import map_class_to_label
from .vision_handler import VisionHandler


class ImageClassifier(VisionHandler):
    topk = 5
    image_processing: Any = ImageTransform(resize=256, crop=224)

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    @timed
    def postprocess(self, data: Any) -> list[dict[str, float]]:
        import torch
        import torch.nn.functional as F

        ps = F.softmax(data, dim=1)
        probs, classes = torch.topk(ps, min(self.topk, ps.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
