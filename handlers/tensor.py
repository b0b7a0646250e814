"""Built-in ``tensor`` handler: a TorchScript (or eager) model on the Open Inference Protocol, no code.

The model's tensors are declared in model-config.yaml::

    batchSize: 8
    maxBatchDelay: 5
    inputs:
      - {name: INPUT0, datatype: FP32, shape: [-1, 4]}
      - {name: TEXT, datatype: BYTES, shape: [-1]}
    outputs:
      - {name: OUTPUT0, datatype: FP32, shape: [-1, 2]}

``forward`` receives the inputs positionally, in declared order (undeclared: in request order):
numeric tensors as torch tensors, BYTES as ``List[str]``. It returns one tensor (or ``List[str]``),
a tuple/list of them (named by the declared outputs in order, else ``OUTPUT__0``, ``OUTPUT__1``...),
or a dict name -> tensor.

Batching: when every declared input has a leading -1 (batch) dimension (and model-config.yaml does
not say ``maxBatchSize: 0``), the requests of a batch
are concatenated along that dimension, run in one forward pass and split back by each request's
size. Requests whose shapes cannot be concatenated, or models without a batch dimension, run one
forward pass per request.

The same model also answers TorchServe's ``/predictions`` and KServe v1 (one instance per
request): a JSON value (or a JSON object keyed by input name) is one example without the batch
dimension; the answer is the output row (a dict of rows when the model has several outputs).
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional

from modelserve.handler import BaseHandler, Context, PredictionException

_TORCH_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "INT16": "int16", "INT32": "int32",
                 "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64", "BF16": "bfloat16"}


def _is_oip(value: Any) -> bool:
    return hasattr(value, "datatype") and hasattr(value, "shape") and hasattr(value, "data")


def _rows(value: Any) -> int:
    return len(value) if isinstance(value, list) else (int(value.shape[0]) if value.dim() else 1)


class TensorHandler(BaseHandler):
    """Named tensors in, ``forward``, named tensors out; batched along the first dimension."""

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        if self.model is None:
            raise ValueError("the tensor handler needs a model: archive a TorchScript file (--serialized-file) "
                             "or a model file with its weights")
        cfg = context.model_yaml_config or {}
        self.inputs: list[dict[str, Any]] = list(cfg.get("inputs") or [])
        self.outputs: list[dict[str, Any]] = list(cfg.get("outputs") or [])
        self.batching = cfg.get("maxBatchSize", 1) != 0 and all(
            list(i.get("shape") or [None])[0] == -1 for i in self.inputs)

    # -- requests -> positional inputs -------------------------------------------------------------
    def _datatype(self, name: str, position: int) -> Optional[str]:
        for i, spec in enumerate(self.inputs):
            if spec.get("name") == name or (name == "" and i == position):
                return str(spec.get("datatype", "")).upper() or None
        return None

    def _oip_inputs(self, item: dict[str, Any]) -> list[Any]:
        names = [str(s["name"]) for s in self.inputs] or list(item)
        values = []
        for name in names:
            t = item.get(name)
            if t is None:
                raise PredictionException(f"missing input '{name}'", 400)
            if t.datatype == "BYTES":
                try:
                    values.append([b.decode("utf-8") for b in t.data])
                except UnicodeDecodeError:
                    raise PredictionException(f"input '{name}': BYTES elements must be UTF-8 text for "
                                              "a TorchScript model", 400) from None
            else:
                values.append(t.data.to(self.device) if t.data.device != self.device else t.data)
        return values

    def _plain_inputs(self, item: dict[str, Any]) -> list[Any]:
        """A /predictions or KServe v1 request: one example, given the batch dimension here."""
        import torch

        payload: Any = item.get("data", item.get("body", item))
        if isinstance(payload, (bytes, bytearray)):
            try:
                payload = json.loads(payload)
            except (UnicodeDecodeError, ValueError):
                raise PredictionException("the tensor handler expects a JSON value", 400) from None
        names = [str(s["name"]) for s in self.inputs]
        if isinstance(payload, dict) and names and all(n in payload for n in names):
            pairs = [(n, payload[n]) for n in names]
        elif len(names) <= 1:
            pairs = [(names[0] if names else "", payload)]
        else:
            raise PredictionException(f"the model takes {len(names)} inputs: send a JSON object with "
                                      f"{', '.join(names)}", 400)
        values = []
        for pos, (name, value) in enumerate(pairs):
            dt = self._datatype(name, pos)
            if dt == "BYTES":
                values.append([value] if isinstance(value, str) else [str(v) for v in value])
                continue
            try:
                dtype = getattr(torch, _TORCH_DTYPES[dt]) if dt in _TORCH_DTYPES else None
                values.append(torch.as_tensor(value, dtype=dtype, device=self.device).unsqueeze(0))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise PredictionException(f"input '{name or 'data'}': {exc}", 400) from None
        return values

    # -- forward, batched --------------------------------------------------------------------------
    def _forward(self, inputs: list[Any]) -> list[tuple[str, Any]]:
        import torch

        with torch.inference_mode():
            out = self.model(*inputs)
        names = [str(s["name"]) for s in self.outputs]
        if isinstance(out, dict):
            return [(str(k), v) for k, v in out.items()]
        if isinstance(out, torch.Tensor) or (isinstance(out, list) and all(isinstance(x, str) for x in out)):
            out = [out]
        return [(names[i] if i < len(names) else f"OUTPUT__{i}", v) for i, v in enumerate(out)]

    def _run(self, rows: list[list[Any]]) -> list[list[tuple[str, Any]]]:
        """Forward the rows (each a list of positional inputs); one named-output list per row."""
        import torch

        if len(rows) > 1 and self.batching:
            sizes = [_rows(r[0]) if r else 1 for r in rows]
            try:
                joined = []
                for k in range(len(rows[0])):
                    parts = [r[k] for r in rows]
                    if isinstance(parts[0], list):
                        joined.append([x for p in parts for x in p])
                    else:
                        joined.append(torch.cat(parts, dim=0))
            except (RuntimeError, TypeError, IndexError):
                joined = None
            if joined is not None:
                outputs = self._forward(joined)
                total = sum(sizes)
                split: list[list[tuple[str, Any]]] = [[] for _ in rows]
                for name, value in outputs:
                    n = len(value) if isinstance(value, list) else (value.shape[0] if value.dim() else 0)
                    if n != total:
                        raise PredictionException(
                            f"output '{name}' has {n} rows for a batch of {total}: the model must keep the "
                            "batch dimension first", 500)
                    start = 0
                    for i, size in enumerate(sizes):
                        split[i].append((name, value[start:start + size]))
                        start += size
                return split
        return [self._forward(r) for r in rows]

    # -- named outputs -----------------------------------------------------------------------------
    def _oip_answer(self, outputs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for name, value in outputs:
            if isinstance(value, list):
                out.append({"name": name, "datatype": "BYTES", "shape": self._bytes_shape(name, len(value)),
                            "data": [v.encode("utf-8") for v in value]})
            else:
                out.append({"name": name, "data": value})
        return out

    def _bytes_shape(self, name: str, n: int) -> list[int]:
        """A BYTES output's shape: ``[n]``, or the declared trailing dimensions (e.g. ``[-1, 1]``)."""
        for spec in self.outputs:
            if spec.get("name") == name:
                tail = [int(d) for d in list(spec.get("shape") or [])[1:]]
                inner = 1
                for d in tail:
                    inner *= d
                if tail and all(d > 0 for d in tail) and n % inner == 0:
                    return [n // inner, *tail]
        return [n]

    @staticmethod
    def _plain_answer(outputs: list[tuple[str, Any]]) -> Any:
        rows = {name: (value[0] if isinstance(value, list) else value[0].tolist()) for name, value in outputs}
        return next(iter(rows.values())) if len(rows) == 1 else rows

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        self.context = context
        start = time.perf_counter()
        oip = [bool(item) and all(_is_oip(v) for v in item.values()) for item in data]
        rows = [self._oip_inputs(item) if o else self._plain_inputs(item) for item, o in zip(data, oip)]
        results = self._run(rows)
        out = [self._oip_answer(r) if o else self._plain_answer(r) for r, o in zip(results, oip)]
        metrics = getattr(context, "metrics", None)
        if metrics is not None and hasattr(metrics, "add_time"):
            metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return out
