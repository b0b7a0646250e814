"""A TorchServe class-based handler, unchanged: it imports only ``ts``, torch and the stdlib.

Input: four measurements (sepal length, sepal width, petal length, petal width) as a JSON list or a
JSON object with those keys. The header ``X-Units: mm`` says they are in millimetres (the model
expects centimetres). Output: ``{"species": probability}`` for the three classes.
"""
import json

import torch

from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException, map_class_to_label

FIELDS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


class IrisHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for idx, row in enumerate(data):
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = body.decode("utf-8")
            if isinstance(body, str):
                body = json.loads(body)
            if isinstance(body, dict):
                body = [body.get(name) for name in FIELDS]
            if not isinstance(body, list) or len(body) != 4 or not all(isinstance(v, (int, float)) for v in body):
                raise PredictionException(f"expected 4 numbers or an object with {', '.join(FIELDS)}", 400)
            scale = 0.1 if (self.context.get_request_header(idx, "X-Units") or "cm").lower() == "mm" else 1.0
            rows.append([float(v) * scale for v in body])
        self.context.metrics.add_counter("IrisRows", len(rows))
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def postprocess(self, data):
        return map_class_to_label(torch.softmax(data, dim=1).tolist(), self.mapping)

    def describe_handle(self):
        return {"inputs": list(FIELDS), "classes": self.mapping}
