"""Batched handler for the 10-class image classifier (TorchScript model.pt).

Per request it accepts:
  * image bytes (PNG, JPEG, ... anything Pillow reads) as the raw body or as a multipart
    field named "data" or "body"; also a base64 string of such bytes (e.g. {"data": "<b64>"});
  * a JSON array of shape [3, 32, 32] or a flat list of 3072 floats, used as the model
    input as it is (already normalised); also when sent as text or octet-stream.
All good requests of a batch run through the model in one call. A bad request gets a 400
with the reason while the rest of the batch is answered normally. Each answer is the top-k
classes as ``[{label: probability}, ...]`` sorted by probability (k from model-config.yaml
``handler: {topk: N}``, default 5). Every response carries ``x-batch-size``: how many
requests the model ran together.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any, Optional

from modelserve import BaseHandler, PredictionException

SIZE = 32
CHANNELS = 3
# Per-channel normalisation applied to decoded images (CIFAR-10 statistics).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
DEFAULT_TOPK = 5


def _bad(reason: str) -> PredictionException:
    """One request's input cannot become a model input: answered 400 with ``reason``."""
    return PredictionException(reason, 400)


def _payload(row: dict[str, Any]) -> Any:
    """The request's input: multipart field 'data' or 'body', the raw body, or its only field."""
    for key in ("data", "body"):
        if key in row:
            return row[key]
    if len(row) == 1:
        (key, value), = row.items()
        # A JSON array posted as a form (curl -d without a Content-Type) arrives as an empty field's name.
        return key if value in ("", b"") else value
    raise _bad(f"no input found; send an image or a JSON array (fields: {sorted(row)})")


def _image_tensor(raw: bytes) -> Any:
    """Decode image bytes -> normalised float tensor (3, 32, 32)."""
    import torch

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        # A server setup problem, not the client's: fail the batch with 500 and say how to fix it.
        raise PredictionException(
            "the image_classifier handler needs Pillow to decode images: pip install pillow", 500
        ) from None
    try:
        with Image.open(io.BytesIO(raw)) as src:
            img = src.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise _bad(f"cannot decode image: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt image data
        raise _bad(f"cannot decode image: {exc}") from None
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    x = pixels.view(SIZE, SIZE, CHANNELS).permute(2, 0, 1).float().div(255.0)
    mean = torch.tensor(MEAN).view(CHANNELS, 1, 1)
    std = torch.tensor(STD).view(CHANNELS, 1, 1)
    return (x - mean) / std


def _array_tensor(value: list[Any]) -> Any:
    """A JSON array [3][32][32] or 3072 floats -> float tensor (3, 32, 32)."""
    import torch

    try:
        x = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise _bad(f"JSON input is not a numeric array: {exc}") from None
    shape = list(x.shape)
    if shape == [CHANNELS * SIZE * SIZE]:
        x = x.view(CHANNELS, SIZE, SIZE)
    elif shape != [CHANNELS, SIZE, SIZE]:
        raise _bad(f"JSON array must have shape [3, 32, 32] or be 3072 numbers, got shape {shape}")
    if not bool(torch.isfinite(x).all()):
        raise _bad("JSON array contains NaN or infinite values")
    return x


def _json_text(text: str) -> Any:
    """Parse text that looks like a JSON array/object (e.g. curl -d without a JSON content type)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _bad(f"body looks like JSON but is not valid JSON: {exc}") from None


def to_input(value: Any, depth: int = 0) -> Any:
    """One request's payload -> tensor (3, 32, 32), or raise PredictionException(400)."""
    if depth > 2:
        raise _bad("input is nested too deeply; send an image or a JSON array")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if not raw:
            raise _bad("empty body; send an image or a JSON array")
        if raw.lstrip()[:1] in (b"[", b"{"):  # JSON sent with a non-JSON content type
            return to_input(_json_text(raw.decode("utf-8", errors="replace")), depth + 1)
        return _image_tensor(raw)
    if isinstance(value, list):
        return _array_tensor(value)
    if isinstance(value, dict):
        for key in ("data", "body"):  # e.g. {"data": "<base64 image>"}
            if key in value:
                return to_input(value[key], depth + 1)
        raise _bad(f"JSON object needs a 'data' field, got fields {sorted(value)[:10]}")
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("[", "{"):
            return to_input(_json_text(text), depth + 1)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("text input must be a base64-encoded image; send image bytes or a JSON array") from None
        return to_input(raw, depth + 1)
    raise _bad(f"unsupported input of type {type(value).__name__}; send an image or a JSON array")


class ImageClassifierHandler(BaseHandler):
    """Default initialize (TorchScript model.pt + index_to_name.json); batched top-k output."""

    def __init__(self) -> None:
        super().__init__()
        self.topk = DEFAULT_TOPK
        self._errors: dict[int, str] = {}  # batch index -> reason, for the current batch
        self._valid: list[int] = []  # batch indices that went through the model
        self._batch_len = 0

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        if self.model is None:
            raise RuntimeError("image_classifier needs a TorchScript --serialized-file (model.pt)")
        topk = (context.model_yaml_config.get("handler") or {}).get("topk", DEFAULT_TOPK)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"model-config.yaml handler.topk must be a positive integer, got {topk!r}")
        self.topk = topk

    def _label(self, index: int) -> str:
        if self.mapping is None:
            return str(index)
        return str(self.mapping.get(str(index), index))

    def preprocess(self, data: list[dict[str, Any]]) -> Optional[Any]:
        import torch

        self._batch_len = len(data)
        self._errors = {}
        self._valid = []
        tensors = []
        for idx, row in enumerate(data):
            try:
                tensors.append(to_input(_payload(row)))
                self._valid.append(idx)
            except PredictionException as exc:
                if exc.status_code != 400:
                    raise  # e.g. Pillow missing: the whole batch fails
                # Reject only this request; the others of the batch still run.
                self._errors[idx] = exc.message
                if self.context is not None:
                    self.context.set_response_status(400, exc.message, idx)
        if not tensors:
            return None
        return torch.stack(tensors).to(self.device)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        if data is None:  # every request of the batch was bad
            return None
        return super().inference(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        import torch

        results: list[Any] = [self._errors.get(i, "") for i in range(self._batch_len)]
        ran = len(self._valid)
        if data is not None:
            probs = torch.softmax(data.float(), dim=1)
            k = min(self.topk, probs.shape[1])
            values, indices = torch.topk(probs, k, dim=1)  # sorted, highest first
            for row, idx in enumerate(self._valid):
                results[idx] = [
                    {self._label(int(c)): float(p)} for p, c in zip(values[row].tolist(), indices[row].tolist())
                ]
        if self.context is not None:
            for idx in range(self._batch_len):
                self.context.set_response_header(idx, "x-batch-size", str(ran))
        return results
