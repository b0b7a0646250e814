"""Handler for the y = 2x - 1 model.

Each request's body is a number: text/plain ("5.0", as str or bytes), a JSON number (5.0)
or a JSON list of numbers ([1, 2, 5]). The answer is one list of predictions per request,
e.g. ``[9.0]`` for 5.0. Anything else is rejected with 400.
"""
from __future__ import annotations

import json
import math
from typing import Any

from modelserve import BaseHandler, PredictionException

MAX_VALUES = 10_000  # per request, to keep one request from hogging the worker


def _body(row: dict[str, Any], idx: int) -> Any:
    """The request's payload: the raw body, a multipart field 'data'/'body', or its only field."""
    for key in ("body", "data"):
        if key in row:
            return row[key]
    if len(row) == 1:
        (key, value), = row.items()
        # curl -d 5.0 without a Content-Type sends a form: the number arrives as an empty field's name.
        return key if value in ("", b"") else value
    raise PredictionException(f"request {idx}: no body; send a number, e.g. -d 5.0", 400)


def _number(value: Any, idx: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PredictionException(f"request {idx}: expected a number, got {json.dumps(value)[:60]}", 400)
    x = float(value)
    if not math.isfinite(x):
        raise PredictionException(f"request {idx}: {value!r} is not a finite number", 400)
    return x


def parse_numbers(value: Any, idx: int = 0) -> list[float]:
    """Turn one request body into a list of floats, or raise PredictionException(400)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise PredictionException(f"request {idx}: body is not UTF-8 text; send a number", 400) from None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise PredictionException(f"request {idx}: empty body; send a number, e.g. -d 5.0", 400)
        try:
            value = float(text)
        except ValueError:
            try:  # a JSON list or number sent as text/plain or octet-stream
                value = json.loads(text)
            except ValueError:
                raise PredictionException(f"request {idx}: {text[:60]!r} is not a number", 400) from None
    if isinstance(value, list):
        if not value:
            raise PredictionException(f"request {idx}: empty list; send at least one number", 400)
        if len(value) > MAX_VALUES:
            raise PredictionException(f"request {idx}: {len(value)} values, at most {MAX_VALUES} allowed", 400)
        return [_number(v, idx) for v in value]
    return [_number(value, idx)]


class SimpleLinearHandler(BaseHandler):
    """Default eager-model initialize (model.py + model.pth); number parsing in and out."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: list[int] = []  # values per request of the current batch

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        import torch

        values: list[float] = []
        self._counts = []
        for idx, row in enumerate(data):
            nums = parse_numbers(_body(row, idx), idx)
            self._counts.append(len(nums))
            values.extend(nums)
        # All requests of the batch go through the model as one (N, 1) tensor.
        return torch.tensor(values, dtype=torch.float32, device=self.device).unsqueeze(1)

    def postprocess(self, data: Any) -> list[Any]:
        flat = data.squeeze(1).tolist()
        results: list[list[float]] = []
        pos = 0
        for n in self._counts:
            results.append(flat[pos : pos + n])
            pos += n
        return results
