"""Built-in ``object_detector``: an image in, the detected objects with boxes and scores out.

Input, per request: as ``image_classifier`` (image bytes, multipart ``data``, or base64 text/JSON).
By default an image is only converted to a float tensor ``[3, H, W]`` in [0, 1] (no resize, no
normalisation: TorchVision detection models do their own).

The model is called TorchVision-style with a *list* of image tensors (images may differ in size) and
returns one dict per image with ``boxes`` (``[R, 4]``, x1 y1 x2 y2 in pixels), ``labels`` (``[R]``)
and ``scores`` (``[R]``). A scripted TorchVision model's ``(losses, detections)`` pair is accepted.

Output, per request (TorchServe's format): a list with one entry per detection scoring at least
``threshold``: ``{"<label>": [x1, y1, x2, y2], "score": s}``; labels come from ``index_to_name.json``
when present, else the label index as a string.

model-config.yaml, under ``handler:``: ``threshold`` (0.5), and the image keys of
``image_classifier`` whose defaults here are ``resize: null``, ``crop: null``, ``mean: null``,
``std: null``.
"""
from __future__ import annotations

from typing import Any

from ._common import label_for
from ._vision import VisionBase


class ObjectDetector(VisionBase):
    handler_name = "object_detector"
    default_resize = None
    default_crop = None
    default_mean = None
    default_std = None

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        threshold = self.option("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"handler.threshold must be a number, got {threshold!r}")
        self.threshold = float(threshold)

    def effective_config(self) -> dict[str, Any]:
        out = super().effective_config()
        out["threshold"] = self.threshold
        return out

    def run(self, items: list[Any]) -> list[Any]:
        outputs = self.postprocess(self.inference([item.to(self.device) for item in items]))
        if len(outputs) != len(items):
            raise RuntimeError(f"the detection model returned {len(outputs)} results for {len(items)} images")
        return outputs

    def postprocess(self, data: Any) -> list[list[dict[str, Any]]]:
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], list):
            data = data[1]  # a scripted TorchVision detector returns (losses, detections)
        if isinstance(data, dict):
            data = [data]
        results = []
        for detections in data:
            if not isinstance(detections, dict) or not {"boxes", "labels", "scores"} <= set(detections):
                raise ValueError("a detection model must return, per image, a dict with boxes, labels and scores")
            keep = detections["scores"] >= self.threshold
            boxes = detections["boxes"][keep].tolist()
            labels = detections["labels"][keep].tolist()
            scores = detections["scores"][keep].tolist()
            results.append([
                {label_for(self.mapping, int(label)): box, "score": score}
                for box, label, score in zip(boxes, labels, scores)
            ])
        return results
