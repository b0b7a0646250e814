"""Request inputs -> handler values, and handler outputs -> response bytes (worker side)."""
from __future__ import annotations

from typing import Any, Optional

import orjson

_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class InputError(ValueError):
    """A request input that cannot be decoded for its content type (answered 400)."""


def decode_input(content_type: str, data: memoryview, name: str = "") -> Any:
    """JSON bodies arrive parsed, ``text/*`` as str, OIP tensors as ``InferTensor``, anything else as bytes."""
    ct = content_type.lower()
    if ct.startswith("application/x-oip-tensor"):
        from .tensors import decode_tensor

        return decode_tensor(name, content_type, data)
    if ct.startswith("application/json") or (ct.startswith("application/") and ct.split(";")[0].endswith("+json")):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"Invalid JSON in request body: {exc}") from None
    if ct.startswith("text/"):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(data)
    return bytes(data)


def _default(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    if isinstance(obj, (set, tuple, frozenset)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def encode_output(item: Any, content_type: Optional[str]) -> tuple[str, bytes]:
    """Bytes go as they are, str as UTF-8 text, anything else as JSON (tensors as lists)."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return content_type or "application/octet-stream", bytes(item)
    if isinstance(item, str):
        return content_type or "text/plain; charset=utf-8", item.encode("utf-8")
    return content_type or "application/json", orjson.dumps(item, default=_default, option=_JSON_OPTS)
