"""Value types shared by the service layer, the batcher, the pool and the adapters; stdlib only."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Optional, Sequence


@dataclass(slots=True)
class Param:
    """One named input of a request: a raw body is ``body``; multipart fields keep their names."""

    name: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class Result:
    """One request's answer from a worker."""

    status: int
    content_type: str
    body: bytes
    headers: Optional[dict[str, str]] = None
    message: str = ""
    final: bool = True


@dataclass(slots=True, eq=False)
class InferenceRequest:
    """A transport-agnostic inference request, queued until a worker takes it."""

    request_id: str
    params: list[Param]
    headers: Sequence[str]  # flat [name, value, ...], names lower-cased
    arrival: float
    future: asyncio.Future
    deadline: Optional[float] = None
    # Set when the handler streams: intermediate Results, then the final Result or error, arrive
    # here, and ``future`` resolves to this queue instead of a Result.
    stream: Optional[asyncio.Queue] = None
    size: int = 0
    dispatched: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.future.done()
