"""Outgoing replies and events, encoded at most once per wire format.

Fan-out sends the same event to many connections; :class:`Outgoing` encodes it lazily, once for
each format in use (a TCP frame, a WebSocket binary frame, a WebSocket text frame), and every
subscriber on that format gets the same ``bytes`` object. Server-to-client WebSocket frames are not
masked, so the frame bytes are identical for every WebSocket subscriber.
"""

from __future__ import annotations

import struct
from typing import Any

from .codec import encode_json, encode_msgpack, tcp_frame

TCP = 0
WS_BINARY = 1
WS_TEXT = 2


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final WebSocket frame (RFC 6455 section 5.2)."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 65536:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


class Outgoing:
    """One reply or event and its encodings."""

    __slots__ = ("_encoded", "obj")

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self._encoded: list[bytes | None] = [None, None, None]

    def encoded(self, fmt: int) -> bytes:
        data = self._encoded[fmt]
        if data is None:
            if fmt == TCP:
                data = tcp_frame(encode_msgpack(self.obj))
            elif fmt == WS_BINARY:
                data = ws_frame(0x2, encode_msgpack(self.obj))
            else:
                data = ws_frame(0x1, encode_json(self.obj))
            self._encoded[fmt] = data
        return data


def reply(request_id: int | None, **fields: Any) -> dict[str, Any]:
    return {"re": request_id, "ok": True, **fields}


def error_reply(request_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"re": request_id, "ok": False, "error": {"code": code, "message": message}}
