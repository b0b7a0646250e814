"""Helpers for handlers, with TorchServe's names and signatures."""
from __future__ import annotations

from typing import Any

from .handler import Context


def send_intermediate_predict_response(ret_list: list[Any], request_ids: dict[int, str], msg: str, code: int,
                                       context: Context) -> bool:
    """Send one intermediate (streamed) response per request of the current batch.

    ``ret_list[i]`` answers the batch's request ``i`` (``None`` skips it); ``request_ids`` is
    ``context.request_ids``. Items are encoded like a handler's final results (bytes as they are,
    str as UTF-8, else JSON; named tensors for Open Inference Protocol requests). The chunk leaves
    the worker at once: over REST as one HTTP chunk, over gRPC as one stream message. The handler's
    return value is the request's last chunk.
    """
    send = getattr(context, "_send_partial", None)
    if send is None:
        raise RuntimeError("send_intermediate_predict_response works only inside a modelserve worker")
    send(ret_list, request_ids, msg, code)
    return True
