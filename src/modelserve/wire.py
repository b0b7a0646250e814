"""Frontend <-> worker frames over a Unix socket.

A frame is ``u32 length | u8 kind | u32 header length | header (JSON) | blobs``. The header is a
small JSON object whose ``b`` list gives the length of each blob; request and response bodies
travel as those raw blobs, never re-encoded. ``length`` counts everything after itself.
"""
from __future__ import annotations

import socket
import struct
from enum import IntEnum
from typing import Any, Iterator, Sequence

import orjson

_PREFIX = struct.Struct("!IBI")
PREFIX_SIZE = _PREFIX.size
MAX_FRAME = 1 << 31


class Kind(IntEnum):
    BATCH = 1  # frontend -> worker: requests of one batch
    RESULT = 2  # worker -> frontend: final results of one batch
    PARTIAL = 3  # worker -> frontend: intermediate (streamed) results
    PING = 4
    PONG = 5
    LOADED = 6  # worker -> frontend: model loaded, or the load error
    DESCRIBE = 7  # frontend -> worker: ask for describe_handle()
    DESCRIBED = 8
    METRICS = 9  # worker -> frontend: handler metric records
    STOP = 10  # frontend -> worker: exit after the batches already sent
    CANCEL = 11  # frontend -> worker: {"ids": [...]}: skip these requests if their batch has not started


def encode(kind: Kind, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One whole frame, ready to write."""
    if blobs:
        header["b"] = [len(b) for b in blobs]
    head = orjson.dumps(header)
    size = 5 + len(head) + sum(len(b) for b in blobs)
    if size >= MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is too large")
    return b"".join((_PREFIX.pack(size, kind, len(head)), head, *blobs))


def split_blobs(header: dict[str, Any], payload: memoryview) -> list[memoryview]:
    """The blobs of a frame, as views into its payload (no copies)."""
    out = []
    pos = 0
    for n in header.get("b", ()):
        out.append(payload[pos:pos + n])
        pos += n
    return out


class FrameDecoder:
    """Incremental decoder for the asyncio side: feed bytes, get whole frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[Kind, dict[str, Any], memoryview]]:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        frames = []
        with memoryview(buf) as view:  # one copy per frame: the body, out of the receive buffer
            while end - pos >= PREFIX_SIZE:
                size, kind, hlen = _PREFIX.unpack_from(view, pos)
                if end - pos - 4 < size:
                    break
                start = pos + PREFIX_SIZE
                header = orjson.loads(view[start:start + hlen])
                body = view[start + hlen:pos + 4 + size].tobytes()
                frames.append((Kind(kind), header, memoryview(body)))
                pos += 4 + size
        if pos:
            del buf[:pos]
        return iter(frames)


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("peer closed the socket")
        got += k
    return buf


def read_frame(sock: socket.socket) -> tuple[Kind, dict[str, Any], memoryview]:
    """Blocking read of one frame (the worker side)."""
    size, kind, hlen = _PREFIX.unpack(recv_exact(sock, PREFIX_SIZE))
    rest = recv_exact(sock, size - 5)
    header = orjson.loads(bytes(rest[:hlen]))
    return Kind(kind), header, memoryview(rest)[hlen:]
