"""Built-in ``image_classifier``: an image in, the top-k classes with their probabilities out.

Input, per request: image bytes (JPEG, PNG or any format Pillow reads) as the raw body or the
multipart field ``data``; or a base64 string as a text/JSON body (``{"data": "<base64>"}`` too).

Output, per request: ``{"label": probability, ...}`` holding the ``topk`` most probable classes,
most probable first (TorchServe's format). Labels come from ``index_to_name.json`` when the archive
has one, else they are the class indices as strings.

model-config.yaml, under ``handler:`` (all optional)::

    handler:
      topk: 5                 # classes per response
      resize: 256             # shorter side in pixels; [h, w] for an exact size; null: no resize
      crop: 224               # centre crop; [h, w]; null: no crop
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
      color_mode: RGB         # or L (grayscale), RGBA
      softmax: true           # false when the model already returns probabilities
      max_image_pixels: 89478485   # larger images are answered 400; null: no limit
      image_formats: null     # e.g. [JPEG, PNG] to accept only those
"""
from __future__ import annotations

from typing import Any

from ._common import label_for, primary_output
from ._vision import VisionBase


class ImageClassifier(VisionBase):
    handler_name = "image_classifier"

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        topk = self.option("topk", 5)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"handler.topk must be a positive integer, got {topk!r}")
        self.topk = topk
        self.apply_softmax = bool(self.option("softmax", True))

    def effective_config(self) -> dict[str, Any]:
        out = super().effective_config()
        out.update(topk=self.topk, softmax=self.apply_softmax)
        return out

    def postprocess(self, data: Any) -> list[dict[str, float]]:
        import torch

        logits = primary_output(data)
        if logits.dim() == 1:
            logits = logits.unsqueeze(0)
        logits = logits.flatten(1).float()
        probs = torch.softmax(logits, dim=1) if self.apply_softmax else logits
        k = min(self.topk, probs.shape[1])
        values, classes = torch.topk(probs, k, dim=1)
        return [
            {label_for(self.mapping, c): p for c, p in zip(row_classes, row_values)}
            for row_classes, row_values in zip(classes.tolist(), values.tolist())
        ]
