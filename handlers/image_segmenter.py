"""Built-in ``image_segmenter``: an image in, the most probable class of every pixel out.

Input, per request: as ``image_classifier`` (image bytes, multipart ``data``, or base64 text/JSON).

The model returns per-class scores ``[N, K, H, W]`` -- a tensor, or a dict with the tensor under
``out`` (TorchVision's segmentation models). Softmax runs over the K classes.

Output, per request (TorchServe's format, ``output: class_prob``): a ``[H][W][2]`` nested list; each
pixel is ``[class_index, probability]`` (the class index as a float, as TorchServe sends it). With
``output: class`` the response is a ``[H][W]`` list of integer class indices instead.

model-config.yaml, under ``handler:``: ``output``, and the image keys of ``image_classifier``
(``resize`` 256, ``crop`` 224, ``mean``/``std`` ImageNet, ``color_mode``, ``max_image_pixels``,
``image_formats``).
"""
from __future__ import annotations

from typing import Any

from ._common import primary_output
from ._vision import VisionBase

OUTPUTS = ("class_prob", "class")


class ImageSegmenter(VisionBase):
    handler_name = "image_segmenter"

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.output = self.option("output", "class_prob")
        if self.output not in OUTPUTS:
            raise ValueError(f"handler.output must be one of {OUTPUTS}, got {self.output!r}")

    def effective_config(self) -> dict[str, Any]:
        out = super().effective_config()
        out["output"] = self.output
        return out

    def postprocess(self, data: Any) -> list[Any]:
        import torch

        scores = primary_output(data, keys=("out",))
        if scores.dim() != 4:
            raise ValueError(f"a segmentation model must return [N, K, H, W] scores, got shape {list(scores.shape)}")
        probs = torch.softmax(scores.float(), dim=1)
        values, indices = probs.max(dim=1)
        if self.output == "class":
            return indices.tolist()
        return torch.stack([indices.to(values.dtype), values], dim=3).tolist()
