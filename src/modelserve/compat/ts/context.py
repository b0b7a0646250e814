"""``ts.context``: the handler's ``Context`` is modelserve's own class."""
from __future__ import annotations

from typing import Any, Optional

from modelserve.handler import Context

__all__ = ["Context", "RequestProcessor"]


class RequestProcessor:
    """TorchServe's per-request holder of headers and response status (for code that builds one).

    modelserve's ``Context.request_processor`` is a list of plain header dicts instead; use the
    ``Context`` accessors (``get_request_header``, ``set_response_status`` ...) in handlers.
    """

    def __init__(self, request_header: dict[str, Any]) -> None:
        self._status_code = 200
        self._reason_phrase: Optional[str] = None
        self._response_header: dict[str, str] = {}
        self._request_header = request_header

    def get_request_property(self, key: str) -> Optional[Any]:
        return self._request_header.get(key)

    def get_request_properties(self) -> dict[str, Any]:
        return self._request_header

    def report_status(self, code: int, reason_phrase: Optional[str] = None) -> None:
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> Optional[str]:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_header

    def get_response_header(self, key: str) -> Optional[str]:
        return self._response_header.get(key)
