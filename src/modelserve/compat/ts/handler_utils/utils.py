"""``ts.handler_utils.utils``: streaming intermediate responses."""
from __future__ import annotations

import os
from typing import Any


def send_intermediate_predict_response(ret: list[Any], req_id_map: dict[int, str], message: str,
                                       code: int, context: Any) -> None:
    """Send ``ret`` (one item per request of the batch) to the clients now, as a partial response.

    The handler's final return value ends each response, as in TorchServe.
    """
    if str(os.getenv("LOCAL_RANK", "0")) != "0":
        return None
    try:
        from modelserve import handler_utils as _ms_utils  # type: ignore[attr-defined]
    except ImportError:
        _ms_utils = None
    fn = getattr(_ms_utils, "send_intermediate_predict_response", None)
    if fn is not None:
        return fn(ret, req_id_map, message, code, context)
    send = getattr(context, "_send_partial", None)
    if send is None:
        raise RuntimeError("intermediate responses can only be sent from a handler running in a modelserve worker")
    send(list(ret), dict(req_id_map or {}), message or "", int(code))
    return None
