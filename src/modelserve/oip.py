"""The Open Inference Protocol (KServe v2, Triton layouts) on the frontend side; torch- and numpy-free.

Tensors cross the frontend as bytes and never become arrays here:

* a request's input tensor becomes one ``Param`` named after the tensor, with content type
  ``application/x-oip-tensor; datatype=FP32; shape=2,3`` and its data either as little-endian,
  row-major bytes (binary extension, gRPC ``raw_input_contents``; BYTES elements each prefixed with
  their u32 LE length), or, with ``; encoding=json``, as the JSON of the request's ``data`` field
  (the worker converts it: JSON inputs cost the frontend one ``orjson.dumps``);
* the worker answers an OIP request with ``application/x-oip-tensors``: ``u32 LE header length``,
  a JSON header ``[{"name", "datatype", "shape", "size"}, ...]``, then each output's raw bytes.
  Those bytes go out unchanged as gRPC ``raw_output_contents`` and binary REST outputs; only JSON
  REST outputs are turned into lists (with ``array``, at C speed).

This module also holds what REST and gRPC share: the model's declared tensors (model-config.yaml's
top-level ``inputs:``/``outputs:``), model metadata and config in Triton's shapes, per-version
inference statistics, and ``infer()``, the one request path both adapters call.
"""
from __future__ import annotations

import array
import struct
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import orjson

from . import __version__
from .errors import BadRequestError, InternalError, ModelServeError
from .types import Param, Result

TENSOR_CT = "application/x-oip-tensor"
TENSORS_CT = "application/x-oip-tensors"

SERVER_NAME = "modelserve"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")

# Bytes per element; 0 for BYTES (variable-length elements).
ITEMSIZE = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
    "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2, "BYTES": 0,
}
TRITON_TYPE = {dt: "TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}" for dt in ITEMSIZE}
_FROM_TRITON = {v: k for k, v in TRITON_TYPE.items()}


def _code(size: int, signed: bool) -> str:
    for c in ("bhilq" if signed else "BHILQ"):
        if array.array(c).itemsize == size:
            return c
    raise RuntimeError(f"no array typecode of {size} bytes")


_ARRAY = {
    "BOOL": "B", "UINT8": "B", "INT8": "b", "UINT16": _code(2, False), "INT16": _code(2, True),
    "UINT32": _code(4, False), "INT32": _code(4, True), "UINT64": _code(8, False), "INT64": _code(8, True),
    "FP32": "f", "FP64": "d",
}
_SWAP = sys.byteorder != "little"
_U32 = struct.Struct("<I")


def normalize_datatype(value: Any) -> str:
    """``FP32``, ``fp32`` or Triton's ``TYPE_FP32`` -> ``FP32``; raise ValueError otherwise."""
    dt = str(value).strip().upper()
    dt = _FROM_TRITON.get(dt, dt)
    if dt not in ITEMSIZE:
        raise ValueError(f"unknown datatype {value!r} (one of {', '.join(ITEMSIZE)})")
    return dt


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --- BYTES elements ---------------------------------------------------------------------------------

def serialize_bytes(items: Iterable[Any]) -> bytes:
    """BYTES elements as one buffer: each as u32 LE length + bytes (str is UTF-8 encoded)."""
    parts = []
    for item in items:
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview) -> list[bytes]:
    out = []
    view = memoryview(raw)
    pos, end = 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise ValueError("truncated BYTES element length")
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise ValueError("BYTES element runs past the end of its buffer")
        out.append(bytes(view[pos:pos + n]))
        pos += n
    return out


# --- raw bytes <-> flat lists (JSON outputs, gRPC typed contents) ----------------------------------

def raw_to_list(datatype: str, raw: bytes) -> list[Any]:
    """Little-endian row-major bytes -> a flat list of Python values (BYTES: UTF-8 text)."""
    if datatype == "BYTES":
        return [b.decode("utf-8", errors="replace") for b in deserialize_bytes(raw)]
    if datatype == "FP16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    if datatype == "BF16":
        wide = array.array(_ARRAY["UINT32"], (0,)) * (len(raw) // 2)
        halves = array.array(_ARRAY["UINT16"])
        halves.frombytes(raw)
        if _SWAP:
            halves.byteswap()
        for i, h in enumerate(halves):
            wide[i] = h << 16
        return array.array("f", wide.tobytes()).tolist()
    arr = array.array(_ARRAY[datatype])
    arr.frombytes(raw)
    if _SWAP:
        arr.byteswap()
    values = arr.tolist()
    return [bool(v) for v in values] if datatype == "BOOL" else values


def values_to_raw(datatype: str, values: Iterable[Any]) -> bytes:
    """A flat sequence of values -> little-endian bytes (for gRPC's typed ``contents``)."""
    if datatype == "BYTES":
        return serialize_bytes(values)
    if datatype == "FP16":
        vals = list(values)
        return struct.pack(f"<{len(vals)}e", *vals)
    if datatype == "BF16":
        f32 = array.array("f", values)
        if _SWAP:
            f32.byteswap()
        words = array.array(_ARRAY["UINT32"])
        words.frombytes(f32.tobytes())
        return array.array(_ARRAY["UINT16"], (w >> 16 for w in words)).tobytes()
    arr = array.array(_ARRAY[datatype], (bool(v) for v in values) if datatype == "BOOL" else values)
    if _SWAP:
        arr.byteswap()
    return arr.tobytes()


# --- tensors in flight ------------------------------------------------------------------------------

@dataclass(slots=True)
class InTensor:
    """One request input: raw bytes (``raw``) or the JSON ``data`` of a REST request."""

    name: str
    datatype: str
    shape: list[int]
    raw: Optional[bytes] = None
    data: Any = None


@dataclass(slots=True)
class OutTensor:
    name: str
    datatype: str
    shape: list[int]
    raw: bytes


def tensor_param(t: InTensor) -> Param:
    ct = f"{TENSOR_CT}; datatype={t.datatype}; shape={','.join(str(d) for d in t.shape)}"
    if t.raw is not None:
        return Param(t.name, ct, t.raw)
    return Param(t.name, ct + "; encoding=json", orjson.dumps(t.data))


def parse_tensor_ct(content_type: str) -> tuple[str, list[int], str]:
    """``application/x-oip-tensor; datatype=..; shape=..[; encoding=json]`` -> (datatype, shape, encoding)."""
    fields = {}
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        fields[key] = value
    shape_text = fields.get("shape", "")
    shape = [int(d) for d in shape_text.split(",")] if shape_text else []
    return fields.get("datatype", ""), shape, fields.get("encoding", "raw")


def encode_tensors(outputs: Sequence[tuple[str, str, Sequence[int], bytes]]) -> bytes:
    """The worker's answer to an OIP request: header length, JSON header, raw bytes of each output."""
    header = orjson.dumps([{"name": n, "datatype": dt, "shape": list(s), "size": len(raw)} for n, dt, s, raw in outputs])
    return b"".join((_U32.pack(len(header)), header, *(raw for *_, raw in outputs)))


def decode_tensors(body: bytes) -> list[OutTensor]:
    (n,) = _U32.unpack_from(body, 0)
    header = orjson.loads(body[4:4 + n])
    out = []
    pos = 4 + n
    for h in header:
        size = h["size"]
        out.append(OutTensor(h["name"], h["datatype"], h["shape"], body[pos:pos + size]))
        pos += size
    return out


def result_tensors(result: Result, spec: "ModelSpec") -> list[OutTensor]:
    """The output tensors of a worker's Result; a non-tensor body becomes one BYTES element."""
    if result.content_type.startswith(TENSORS_CT):
        return decode_tensors(result.body) if result.body else []
    if not result.body:
        return []
    name = spec.outputs[0].name if spec.outputs else "output"
    return [OutTensor(name, "BYTES", [1], serialize_bytes([result.body]))]


# --- what a model declares ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def as_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    """A model version's declared tensors and the Triton-facing facts derived from its config."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: bool  # every declared input has a leading -1 (batch) dimension
    max_batch_size: int
    platform: str
    backend: str
    error: str = ""  # set when model-config.yaml's declaration is invalid

    def output_names(self) -> set[str]:
        return {o.name for o in self.outputs}


def _tensor_specs(entries: Any, key: str) -> tuple[TensorSpec, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ValueError(f"{key} must be a list of {{name, datatype, shape}}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "name" not in e:
            raise ValueError(f"{key}[{i}] must be a mapping with name, datatype and shape")
        try:
            dt = normalize_datatype(e.get("datatype", e.get("data_type", "")))
            shape = tuple(int(d) for d in (e.get("shape", e.get("dims")) or ()))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}[{i}] ({e.get('name')}): {exc}") from None
        out.append(TensorSpec(str(e["name"]), dt, shape, bool(e.get("optional", False))))
    return tuple(out)


_SPECS: "weakref.WeakKeyDictionary[Any, ModelSpec]" = weakref.WeakKeyDictionary()


def model_spec(mv: Any) -> ModelSpec:
    """The declared tensors of a ``ModelVersion`` (cached per version object)."""
    spec = _SPECS.get(mv)
    if spec is not None:
        return spec
    yaml = mv.config.yaml or {}
    error = ""
    try:
        inputs = _tensor_specs(yaml.get("inputs"), "inputs")
        outputs = _tensor_specs(yaml.get("outputs"), "outputs")
    except ValueError as exc:
        inputs, outputs, error = (), (), f"model-config.yaml: {exc}"
    try:
        max_batch = int(yaml.get("maxBatchSize", max(mv.config.batch_size, 1)))
    except (TypeError, ValueError):
        max_batch = max(mv.config.batch_size, 1)
    # A leading -1 on every input is the batch dimension, unless maxBatchSize: 0 says there is none.
    batching = max_batch > 0 and bool(inputs) and all(s.shape and s.shape[0] == -1 for s in inputs)
    if not batching:
        max_batch = 0
    tensor = mv.handler in ("tensor", "modelserve_handlers.tensor")
    spec = ModelSpec(inputs, outputs, batching, max_batch,
                     str(yaml.get("platform") or ("pytorch_libtorch" if tensor else "python")),
                     str(yaml.get("backend") or ("pytorch" if tensor else "python")), error)
    _SPECS[mv] = spec
    return spec


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def _checked_spec(mv: Any) -> ModelSpec:
    spec = model_spec(mv)
    if spec.error:
        raise InternalError(spec.error)
    return spec


def model_metadata(mv: Any, versions: Sequence[str]) -> dict[str, Any]:
    spec = _checked_spec(mv)
    return {"name": mv.name, "versions": list(versions), "platform": spec.platform,
            "inputs": [s.as_metadata() for s in spec.inputs], "outputs": [s.as_metadata() for s in spec.outputs]}


def model_config(mv: Any) -> dict[str, Any]:
    """Triton's model configuration JSON (the subset modelserve can state truthfully)."""
    spec = _checked_spec(mv)
    batched = spec.max_batch_size > 0

    def dims(s: TensorSpec) -> list[int]:  # without the batch dimension when the model batches
        return list(s.shape[1:] if batched and s.shape and s.shape[0] == -1 else s.shape)

    cfg = mv.config
    gpu = cfg.device_type == "gpu" or any(w.gpu is not None for w in mv.pool.workers())
    out: dict[str, Any] = {
        "name": mv.name,
        "platform": spec.platform,
        "backend": spec.backend,
        "max_batch_size": spec.max_batch_size,
        "input": [{"name": s.name, "data_type": TRITON_TYPE[s.datatype], "format": "FORMAT_NONE",
                   "dims": dims(s), "is_shape_tensor": False, "allow_ragged_batch": False,
                   "optional": s.optional} for s in spec.inputs],
        "output": [{"name": s.name, "data_type": TRITON_TYPE[s.datatype], "dims": dims(s),
                    "label_filename": "", "is_shape_tensor": False} for s in spec.outputs],
        "instance_group": [{"name": mv.name, "kind": "KIND_GPU" if gpu else "KIND_CPU",
                            "count": max(len(mv.pool), mv.min_workers), "gpus": list(cfg.device_ids or ())}],
        "parameters": {},
    }
    if cfg.batch_size > 1:
        out["dynamic_batching"] = {"preferred_batch_size": [cfg.batch_size],
                                   "max_queue_delay_microseconds": int(cfg.max_batch_delay) * 1000}
    return out


# --- statistics -------------------------------------------------------------------------------------

class InferStats:
    """Triton-style counters of one model version, fed by the OIP and KServe adapters."""

    __slots__ = ("success", "success_ns", "fail", "fail_ns", "inference_count", "execution_count",
                 "last_inference", "__weakref__")

    def __init__(self) -> None:
        self.success = self.success_ns = self.fail = self.fail_ns = 0
        self.inference_count = self.execution_count = 0
        self.last_inference = 0

    def record(self, ok: bool, ns: int, items: int = 1) -> None:
        if ok:
            self.success += 1
            self.success_ns += ns
            self.inference_count += items
            self.execution_count += 1
        else:
            self.fail += 1
            self.fail_ns += ns
        self.last_inference = int(time.time() * 1000)

    def as_dict(self, name: str, version: str, shared: Any = None) -> dict[str, Any]:
        zero = {"count": 0, "ns": 0}
        # Queue and compute times come from the version's frontend counters (every transport);
        # compute is the batch time charged to each request of the batch.
        queue = dict(zero)
        infer = dict(zero)
        if shared is not None:
            queue = {"count": shared.queue_wait.count, "ns": int(shared.queue_us * 1000)}
            infer = {"count": shared.queue_wait.count, "ns": int(shared.compute_us * 1000)}
        return {
            "name": name, "version": version, "last_inference": self.last_inference,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {
                "success": {"count": self.success, "ns": self.success_ns},
                "fail": {"count": self.fail, "ns": self.fail_ns},
                "queue": queue, "compute_input": dict(zero), "compute_infer": infer,
                "compute_output": dict(zero), "cache_hit": dict(zero), "cache_miss": dict(zero),
            },
            "batch_stats": [], "memory_usage": [],
        }


_STATS: "weakref.WeakKeyDictionary[Any, InferStats]" = weakref.WeakKeyDictionary()


def stats_of(mv: Any) -> InferStats:
    stats = _STATS.get(mv)
    if stats is None:
        stats = _STATS[mv] = InferStats()
    return stats


def statistics(registry: Any, name: str = "", version: str = "") -> dict[str, Any]:
    """``{"model_stats": [...]}`` for one version, every version of one model, or every model."""
    if name:
        mvs = [registry.get(name, version)] if version else registry.versions(name)
    else:
        mvs = registry.all_versions()
    return {"model_stats": [stats_of(mv).as_dict(mv.name, mv.version, getattr(mv, "stats", None)) for mv in mvs]}


def repository_index(registry: Any) -> list[dict[str, Any]]:
    out = []
    for name in sorted(registry.models):
        for mv in registry.versions(name):
            ready = mv.pool.live_workers() > 0
            out.append({"name": name, "version": mv.version, "state": "READY" if ready else "UNAVAILABLE",
                        "reason": "" if ready else (mv.pool.last_error() or "no live worker")})
    return out


# --- requests ---------------------------------------------------------------------------------------

def validate_inputs(spec: ModelSpec, inputs: Sequence[InTensor], model: str) -> None:
    """Check names, datatypes, shapes and raw sizes against the declaration; 400 on a mismatch."""
    if spec.error:
        raise InternalError(spec.error)
    seen = set()
    declared = {s.name: s for s in spec.inputs}
    for t in inputs:
        if t.name in seen:
            raise BadRequestError(f"input '{t.name}' appears more than once")
        seen.add(t.name)
        if t.datatype not in ITEMSIZE:
            raise BadRequestError(f"input '{t.name}': unknown datatype {t.datatype!r}")
        if any(d < 0 for d in t.shape):
            raise BadRequestError(f"input '{t.name}': negative dimension in shape {t.shape}")
        if t.raw is not None and t.datatype != "BYTES":
            expected = numel(t.shape) * ITEMSIZE[t.datatype]
            if len(t.raw) != expected:
                raise BadRequestError(f"input '{t.name}': expected {expected} bytes for {t.datatype} shape "
                                      f"{t.shape}, got {len(t.raw)}")
        s = declared.get(t.name)
        if s is None:
            if declared:
                raise BadRequestError(f"unexpected inference input '{t.name}' for model '{model}'; "
                                      f"expected {', '.join(declared)}")
            continue
        if t.datatype != s.datatype:
            raise BadRequestError(f"input '{t.name}': datatype {t.datatype} does not match the model's {s.datatype}")
        if s.shape and (len(t.shape) != len(s.shape)
                        or any(want != -1 and want != got for want, got in zip(s.shape, t.shape))):
            raise BadRequestError(f"input '{t.name}': shape {t.shape} does not match the model's {list(s.shape)}")
    missing = [s.name for s in spec.inputs if s.name not in seen and not s.optional]
    if missing:
        raise BadRequestError(f"model '{model}' expects input(s) {', '.join(missing)}")


def select_outputs(outputs: list[OutTensor], requested: Sequence[str]) -> list[OutTensor]:
    if not requested:
        return outputs
    by_name = {o.name: o for o in outputs}
    missing = [n for n in requested if n not in by_name]
    if missing:
        raise BadRequestError(f"requested output(s) {', '.join(missing)} not produced by the model; "
                              f"it produced {', '.join(by_name) or 'none'}")
    return [by_name[n] for n in requested]


async def _final(answer: Any) -> Result:
    """The tensors-bearing answer of a request: the final Result, or the last non-empty chunk."""
    if isinstance(answer, Result):
        return answer
    last: Optional[Result] = None
    while True:
        item = await answer.get()
        if isinstance(item, BaseException):
            raise item if isinstance(item, ModelServeError) else InternalError(str(item))
        if item.body or last is None:
            last = item
        if item.final:
            return last


async def infer(service: Any, model: str, version: Optional[str], inputs: list[InTensor],
                requested: Sequence[str], headers: list[str], request_id: str,
                timeout: Optional[float]) -> tuple[Any, list[OutTensor]]:
    """Run one OIP request through the service layer; return (model version, output tensors)."""
    mv, answer, start = await submit(service, model, version, inputs, requested, headers, request_id, timeout)
    try:
        result = await _final(answer)
        outputs = select_outputs(result_tensors(result, model_spec(mv)), requested)
    except ModelServeError:
        record(mv, start, False, inputs)
        raise
    record(mv, start, True, inputs)
    return mv, outputs


async def submit(service: Any, model: str, version: Optional[str], inputs: list[InTensor],
                 requested: Sequence[str], headers: list[str], request_id: str,
                 timeout: Optional[float]) -> tuple[Any, Any, int]:
    """Validate and queue one OIP request: (model version, Result or chunk queue, start in ns).

    Failures after the model was found count in its statistics; the caller records the outcome.
    """
    mv = service.registry.get(model, version or None)
    spec = model_spec(mv)
    start = time.monotonic_ns()
    try:
        validate_inputs(spec, inputs, model)
        if requested and spec.outputs:
            unknown = [n for n in requested if n not in spec.output_names()]
            if unknown:
                raise BadRequestError(f"unexpected inference output(s) {', '.join(unknown)} for model '{model}'")
        answer = await service.predict(mv.name, mv.version, [tensor_param(t) for t in inputs], headers,
                                       request_id, timeout)
    except ModelServeError:
        record(mv, start, False, inputs)
        raise
    return mv, answer, start


def record(mv: Any, start_ns: int, ok: bool, inputs: Sequence[InTensor] = (), items: Optional[int] = None) -> None:
    """Count one request's outcome; ``items`` (default: from the inputs) are its batch items."""
    if items is None:
        items = _items(model_spec(mv), inputs)
    stats_of(mv).record(ok, time.monotonic_ns() - start_ns, items)


def _items(spec: ModelSpec, inputs: Sequence[InTensor]) -> int:
    """Batch items of a request as Triton counts them: its first dimension when the model batches."""
    if spec.batching and inputs and inputs[0].shape:
        return max(1, inputs[0].shape[0])
    return 1


# --- REST (JSON and the binary tensor data extension) -----------------------------------------------

@dataclass
class RestInferRequest:
    id: Optional[str]
    parameters: dict[str, Any]
    inputs: list[InTensor]
    outputs: list[dict[str, Any]] = field(default_factory=list)


def _obj(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError(f"{what} must be a JSON object")
    return value


def parse_rest_request(body: bytes, header_length: Optional[int]) -> RestInferRequest:
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadRequestError(f"Inference-Header-Content-Length {header_length} is outside the body "
                              f"({len(body)} bytes)")
    head = body if header_length is None else body[:header_length]
    try:
        req = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"malformed inference request JSON: {exc}") from None
    if not isinstance(req, dict):
        raise BadRequestError("the inference request must be a JSON object")
    raw_inputs = req.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequestError("the inference request must have a non-empty 'inputs' list")
    pos = len(head)
    inputs = []
    for i, inp in enumerate(raw_inputs):
        if not isinstance(inp, dict):
            raise BadRequestError(f"inputs[{i}] must be a JSON object")
        name = inp.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError(f"inputs[{i}] has no name")
        try:
            dt = normalize_datatype(inp.get("datatype", ""))
        except ValueError as exc:
            raise BadRequestError(f"input '{name}': {exc}") from None
        shape = inp.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise BadRequestError(f"input '{name}': shape must be a list of integers")
        params = _obj(inp.get("parameters"), f"input '{name}' parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if header_length is None:
                raise BadRequestError(f"input '{name}' has binary_data_size but the request has no "
                                      "Inference-Header-Content-Length header")
            if not isinstance(size, int) or size < 0 or pos + size > len(body):
                raise BadRequestError(f"input '{name}': binary_data_size {size} runs past the request body")
            inputs.append(InTensor(name, dt, shape, raw=body[pos:pos + size]))
            pos += size
        else:
            if "data" not in inp:
                raise BadRequestError(f"input '{name}' has neither data nor binary_data_size")
            inputs.append(InTensor(name, dt, shape, data=inp["data"]))
    if pos != len(body) and header_length is not None:
        raise BadRequestError(f"the request body has {len(body) - pos} bytes no input claims")
    outputs = req.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise BadRequestError("'outputs' must be a list of objects with a name")
    for o in outputs:
        if _obj(o.get("parameters"), f"output '{o['name']}' parameters").get("classification"):
            raise BadRequestError("the classification extension is not supported")
    rid = req.get("id")
    return RestInferRequest(None if rid is None else str(rid), _obj(req.get("parameters"), "parameters"),
                            inputs, outputs)


def timeout_of(parameters: dict[str, Any]) -> Optional[float]:
    """The request's ``timeout`` parameter (microseconds, as Triton) in seconds."""
    value = parameters.get("timeout")
    if value is None or isinstance(value, bool):
        return None
    try:
        us = float(value)
    except (TypeError, ValueError):
        raise BadRequestError(f"parameter timeout must be a number of microseconds, got {value!r}") from None
    return us / 1e6 if us > 0 else None


def build_rest_response(model: str, version: str, request: RestInferRequest,
                        outputs: list[OutTensor]) -> tuple[bytes, Optional[int]]:
    """The response body and, when outputs go binary, its JSON header length."""
    binary_default = bool(request.parameters.get("binary_data_output", False))
    wants = {o["name"]: (o.get("parameters") or {}).get("binary_data") for o in request.outputs}
    blobs = []
    out_json = []
    for t in outputs:
        want = wants.get(t.name)
        binary = binary_default if want is None else bool(want)
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary:
            entry["parameters"] = {"binary_data_size": len(t.raw)}
            blobs.append(t.raw)
        else:
            entry["data"] = raw_to_list(t.datatype, t.raw)
        out_json.append(entry)
    resp: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": out_json}
    if request.id is not None:
        resp["id"] = request.id
    head = orjson.dumps(resp)
    if not blobs:
        return head, None
    return b"".join((head, *blobs)), len(head)


__all__ = [
    "TENSOR_CT", "TENSORS_CT", "ITEMSIZE", "InTensor", "OutTensor", "ModelSpec", "TensorSpec", "InferStats",
    "build_rest_response", "decode_tensors", "deserialize_bytes", "encode_tensors", "infer", "model_config",
    "model_metadata", "model_spec", "normalize_datatype", "parse_rest_request", "parse_tensor_ct",
    "raw_to_list", "repository_index", "result_tensors", "serialize_bytes", "server_metadata", "statistics",
    "record", "stats_of", "submit", "tensor_param", "timeout_of", "validate_inputs", "values_to_raw",
]
