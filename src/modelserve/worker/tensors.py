"""Open Inference Protocol tensors in the worker: request inputs -> torch, handler outputs -> bytes.

A handler receives each OIP request as one item of its batch: ``{input name: InferTensor}``, where
``InferTensor.data`` is a torch tensor of the request's shape (BYTES: a flat list of ``bytes``).
It answers each request with its named outputs, in any of these forms:

* ``{"OUTPUT0": tensor, "OUTPUT1": [...]}`` -- name -> torch tensor, numpy array, (nested) list or
  scalar; lists of ``str``/``bytes`` are BYTES;
* ``[{"name": "OUTPUT0", "data": ..., "datatype": "FP32", "shape": [2, 3]}, ...]`` (datatype and
  shape optional) or a list of ``InferTensor``;
* any single value: one output, named after the model's first declared output (else ``output``).

Outputs declared in model-config.yaml (``outputs:``) are cast to their declared datatype.
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional, Sequence

import orjson

from ..oip import ITEMSIZE, TENSORS_CT, deserialize_bytes, encode_tensors, normalize_datatype, numel, \
    parse_tensor_ct, serialize_bytes
from ..oip import TENSOR_CT as OIP_TENSOR
from .codec import InputError

__all__ = ["OIP_TENSOR", "InferTensor", "decode_tensor", "encode_outputs", "preload_torch"]

_DTYPES: dict[str, Any] = {}
_NAMES: dict[Any, str] = {}


def _maps() -> tuple[dict[str, Any], dict[Any, str]]:
    if not _DTYPES:
        import torch

        table = {"BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16,
                 "INT32": torch.int32, "INT64": torch.int64, "FP16": torch.float16, "FP32": torch.float32,
                 "FP64": torch.float64, "BF16": torch.bfloat16}
        for name in ("UINT16", "UINT32", "UINT64"):
            dt = getattr(torch, name.lower(), None)
            if dt is not None:
                table[name] = dt
        _DTYPES.update(table)
        _NAMES.update({v: k for k, v in table.items()})
    return _DTYPES, _NAMES


def preload_torch(model_yaml: dict[str, Any]) -> None:
    """Import torch at load when the model declares OIP tensors, so its first request does not wait."""
    if model_yaml.get("inputs") or model_yaml.get("outputs"):
        _maps()


class InferTensor:
    """One named tensor of an OIP request or response."""

    __slots__ = ("name", "datatype", "shape", "data", "parameters")

    def __init__(self, name: str, datatype: str, shape: Sequence[int], data: Any,
                 parameters: Optional[dict[str, Any]] = None) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = list(shape)
        self.data = data
        self.parameters = parameters or {}

    def __repr__(self) -> str:
        return f"InferTensor(name={self.name!r}, datatype={self.datatype}, shape={self.shape})"


# --- inputs ------------------------------------------------------------------------------------------

def _flatten(value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        return [value]
    out: list[Any] = []
    stack = [iter(value)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, (list, tuple)):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def decode_tensor(name: str, content_type: str, blob: memoryview) -> InferTensor:
    """One ``application/x-oip-tensor`` param -> an InferTensor holding a torch tensor."""
    import torch

    try:
        datatype, shape, encoding = parse_tensor_ct(content_type)
    except ValueError as exc:
        raise InputError(f"input '{name}': malformed tensor description: {exc}") from None
    count = numel(shape)
    if datatype == "BYTES":
        try:
            if encoding == "json":
                items = [v.encode("utf-8") if isinstance(v, str) else _bytes_of(v)
                         for v in _flatten(orjson.loads(blob))]
            else:
                items = deserialize_bytes(blob)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise InputError(f"input '{name}': invalid BYTES data: {exc}") from None
        if len(items) != count:
            raise InputError(f"input '{name}': {len(items)} elements do not fill shape {shape}")
        return InferTensor(name, datatype, shape, items)
    dtypes, _ = _maps()
    dtype = dtypes.get(datatype)
    if dtype is None:
        raise InputError(f"input '{name}': datatype {datatype} is not supported by this torch build")
    if encoding == "json":
        try:
            tensor = torch.tensor(orjson.loads(blob), dtype=dtype)
        except (ValueError, TypeError, RuntimeError, orjson.JSONDecodeError) as exc:
            raise InputError(f"input '{name}': invalid {datatype} data: {exc}") from None
        if tensor.numel() != count:
            raise InputError(f"input '{name}': {tensor.numel()} elements do not fill shape {shape}")
        return InferTensor(name, datatype, shape, tensor.reshape(shape))
    if len(blob) != count * ITEMSIZE[datatype]:
        raise InputError(f"input '{name}': {len(blob)} bytes do not fill {datatype} shape {shape}")
    if count == 0:
        return InferTensor(name, datatype, shape, torch.empty(shape, dtype=dtype))
    tensor = torch.frombuffer(bytearray(blob), dtype=dtype).reshape(shape)
    return InferTensor(name, datatype, shape, tensor)


def _bytes_of(v: Any) -> bytes:
    if isinstance(v, (bool, int, float)):
        return str(v).encode("utf-8")
    raise TypeError(f"cannot make BYTES of {type(v).__name__}")


# --- outputs -----------------------------------------------------------------------------------------

def _tensor_bytes(t: Any) -> bytes:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    n = t.numel() * t.element_size()
    return ctypes.string_at(t.data_ptr(), n) if n else b""


def _nested_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, (list, tuple)):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _is_text(x: Any) -> bool:
    return isinstance(x, (str, bytes, bytearray, memoryview))


def _output(name: str, value: Any, datatype: Optional[str], shape: Optional[Sequence[int]],
            declared: dict[str, str]) -> tuple[str, str, list[int], bytes]:
    """One named output value -> (name, datatype, shape, raw little-endian bytes)."""
    import torch

    dtypes, names = _maps()
    want = datatype or declared.get(name)
    if isinstance(value, InferTensor):
        return _output(name, value.data, datatype or value.datatype, shape or value.shape, declared)
    if type(value).__module__ == "numpy":
        if getattr(value, "dtype", None) is not None and value.dtype.kind in "OSU":
            shape = shape or list(value.shape)
            value = value.reshape(-1).tolist()
        else:
            value = torch.from_numpy(value.copy() if not value.flags.c_contiguous else value)
    if not isinstance(value, torch.Tensor):
        leaf = _flatten(value)
        if want == "BYTES" or (leaf and all(_is_text(x) for x in leaf)):
            items = [bytes(x) if not isinstance(x, str) else x for x in leaf]
            if not all(_is_text(x) for x in items):
                raise TypeError(f"output '{name}': BYTES elements must be str or bytes")
            shp = list(shape) if shape is not None else (_nested_shape(value) if isinstance(value, (list, tuple))
                                                          else [1])
            if numel(shp) != len(items):
                raise TypeError(f"output '{name}': {len(items)} elements do not fill shape {shp}")
            return name, "BYTES", shp, serialize_bytes(items)
        value = torch.tensor(value, dtype=dtypes[want] if want in dtypes else None)
    if want is not None and want != "BYTES":
        target = dtypes.get(want)
        if target is None:
            raise TypeError(f"output '{name}': datatype {want} is not supported by this torch build")
        if value.dtype != target:
            value = value.to(target)
    dt = names.get(value.dtype)
    if dt is None:
        raise TypeError(f"output '{name}': torch dtype {value.dtype} has no OIP datatype")
    if shape is not None and list(shape) != list(value.shape):
        if numel(shape) != value.numel():
            raise TypeError(f"output '{name}': {value.numel()} elements do not fill shape {list(shape)}")
        value = value.reshape(list(shape))
    return name, dt, list(value.shape), _tensor_bytes(value)


def encode_outputs(item: Any, declared_outputs: Sequence[dict[str, Any]]) -> tuple[str, bytes]:
    """A handler's answer to one OIP request -> (``application/x-oip-tensors``, body).

    Raises TypeError when the answer cannot be expressed as tensors.
    """
    try:
        return TENSORS_CT, _encode_outputs(item, declared_outputs)
    except TypeError:
        raise
    except (ValueError, KeyError, RuntimeError, OverflowError) as exc:
        raise TypeError(f"{type(exc).__name__}: {exc}") from None


def _encode_outputs(item: Any, declared_outputs: Sequence[dict[str, Any]]) -> bytes:
    declared: dict[str, str] = {}
    for d in declared_outputs or ():
        try:
            declared[str(d["name"])] = normalize_datatype(d.get("datatype", d.get("data_type", "")))
        except (KeyError, TypeError, ValueError):
            continue
    default_name = str(declared_outputs[0]["name"]) if declared_outputs else "output"
    outs: list[tuple[str, str, list[int], bytes]] = []
    if item is None or (isinstance(item, (bytes, bytearray)) and not item):
        pass  # no outputs (e.g. the empty final answer of a streaming handler)
    elif isinstance(item, dict) and not _is_spec(item):
        for name, value in item.items():
            outs.append(_output(str(name), value, None, None, declared))
    elif isinstance(item, dict) or (isinstance(item, (list, tuple)) and item
                                    and all(_is_spec(x) or isinstance(x, InferTensor) for x in item)):
        for x in ([item] if isinstance(item, dict) else item):
            if isinstance(x, InferTensor):
                outs.append(_output(x.name, x.data, x.datatype, x.shape, declared))
            else:
                dt = normalize_datatype(x["datatype"]) if x.get("datatype") else None
                outs.append(_output(str(x["name"]), x["data"], dt, x.get("shape"), declared))
    else:
        outs.append(_output(default_name, item, None, None, declared))
    return encode_tensors(outs)


def _is_spec(x: Any) -> bool:
    return isinstance(x, dict) and isinstance(x.get("name"), str) and "data" in x
