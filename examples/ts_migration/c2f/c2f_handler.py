"""A TorchServe function-based handler: ``handle(data, context)`` at module level.

It loads its TorchScript model itself on the first call (``data is None``, as TorchServe and
modelserve both do when they load the model). Input: a temperature in Celsius, as a number
(JSON or text). Output: ``{"celsius": c, "fahrenheit": f}``.
"""
import json
import os

import torch

from ts.utils.util import PredictionException

_model = None


def _load(context):
    global _model
    model_dir = context.system_properties.get("model_dir")
    serialized = context.manifest["model"]["serializedFile"]
    _model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu").eval()


def handle(data, context):
    if _model is None:
        _load(context)
    if data is None:
        return None
    values = []
    for row in data:
        body = row.get("data") or row.get("body")
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8")
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                raise PredictionException(f"not a number: {body!r}", 400) from None
        if isinstance(body, bool) or not isinstance(body, (int, float)):
            raise PredictionException("send one number (degrees Celsius)", 400)
        values.append(float(body))
    with torch.inference_mode():
        out = _model(torch.tensor(values).unsqueeze(1)).squeeze(1).tolist()
    return [{"celsius": c, "fahrenheit": round(f, 4)} for c, f in zip(values, out)]
