"""Built-in ``base_handler``: a JSON array in, the model's output for it out.

Input, per request: a JSON array (any shape) as the body (``application/json``, or a text body
holding JSON), or a JSON object with the array under ``data``. It becomes a tensor of
``handler.dtype`` (default ``float32``); same-shaped requests are stacked into one batch
``[N, *shape]`` and run in one forward pass (requests of different shapes run as separate batches).

Output, per request: that request's row of the model output as nested lists -- for a dict of
tensors a dict of rows, for a tuple/list of tensors a list of rows.

model-config.yaml, under ``handler:``: ``dtype`` (float32, float64, float16, bfloat16, int64, int32,
bool).
"""
from __future__ import annotations

import json
from typing import Any

from ._common import BatchHandler, RequestError, request_payload

DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")


def _row(value: Any, i: int) -> Any:
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        return value[i].tolist()
    if isinstance(value, dict):
        return {k: _row(v, i) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_row(v, i) for v in value]
    raise TypeError(f"cannot split a model output of type {type(value).__name__} into per-request rows")


class DefaultHandler(BatchHandler):
    handler_name = "base_handler"

    def initialize(self, context: Any) -> None:
        import torch

        super().initialize(context)
        name = str(self.option("dtype", "float32"))
        if name not in DTYPES:
            raise ValueError(f"handler.dtype must be one of {DTYPES}, got {name!r}")
        self.dtype = getattr(torch, name)

    def preprocess_one(self, row: Any, idx: int) -> Any:
        import torch

        value = request_payload(row)
        if isinstance(value, (bytes, bytearray)):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError("request body must be a JSON array") from None
        if isinstance(value, str):
            if not value.strip():
                raise RequestError("empty request body: expected a JSON array")
            try:
                value = json.loads(value)
            except ValueError:
                raise RequestError("request body must be a JSON array") from None
        if isinstance(value, dict) and "data" in value:
            value = value["data"]
        if not isinstance(value, (list, int, float)) or isinstance(value, bool) and self.dtype is not torch.bool:
            raise RequestError(f"expected a JSON array of numbers, got {type(value).__name__}")
        try:
            return torch.tensor(value, dtype=self.dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise RequestError(f"expected a rectangular JSON array of numbers: {exc}") from None

    def postprocess(self, data: Any) -> list[Any]:
        n = self._batch_rows(data)
        return [_row(data, i) for i in range(n)]

    @staticmethod
    def _batch_rows(data: Any) -> int:
        while isinstance(data, (dict, tuple, list)):
            data = next(iter(data.values())) if isinstance(data, dict) else data[0]
        return int(data.shape[0])
