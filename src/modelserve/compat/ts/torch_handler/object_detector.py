"""``ts.torch_handler.object_detector.ObjectDetector``: boxes, labels and scores per image.

Images are converted to tensors only and stacked; the model (TorchVision-style) returns one dict
per image with ``boxes``, ``labels`` and ``scores``. Each image's response lists the detections
scoring at least ``threshold`` (0.5) as ``{"<label>": [x1, y1, x2, y2], "score": s}``.
"""
from __future__ import annotations

from typing import Any

from modelserve_handlers._vision import ImageTransform

from ..handler_utils.timer import timed
from ..utils.util import map_class_to_label
from .vision_handler import VisionHandler


class ObjectDetector(VisionHandler):
    image_processing: Any = ImageTransform(resize=None, crop=None, mean=None, std=None, mode="RGB")
    threshold = 0.5

    @timed
    def postprocess(self, data: Any) -> list[list[dict[str, Any]]]:
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], list):
            data = data[1]
        result = []
        for row in data:
            keep = row["scores"] >= self.threshold
            detections = []
            for box, cls, score in zip(row["boxes"][keep].tolist(), row["labels"][keep].tolist(),
                                       row["scores"][keep].tolist()):
                entry = map_class_to_label([[box]], self.mapping, [[cls]])[0]
                entry["score"] = score
                detections.append(entry)
            result.append(detections)
        return result
