"""Framing and payload decoding for the client protocol, with every read bounded.

TCP frames are a 4-byte big-endian unsigned length followed by that many bytes of MessagePack
encoding one map. A WebSocket message carries one map: MessagePack in a binary message, JSON in a
text message. The frame size is checked from the header, before the body is buffered, and decoded
maps are checked for nesting depth before anything else looks at them.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import msgpack

from .errors import FrameTooLarge, ProtocolError

HEADER = struct.Struct(">I")


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"MessagePack extension type {code} is not allowed")


_SCALARS = (str, int, float, bool, bytes, type(None))
_FLAT = frozenset(_SCALARS)  # the exact types MessagePack decodes scalars to


def _check_tree(obj: Any, limit: int, *, check_text: bool) -> None:
    """Raise unless ``obj`` is plain data: maps with string keys, lists, and scalars, nested at
    most ``limit`` deep (the top-level map is depth 1). With ``check_text``, strings must also be
    valid Unicode (JSON escapes can smuggle lone surrogates that cannot be encoded again)."""
    if not check_text and type(obj) is dict:
        # Most requests are one flat map of scalars (a post, a ping): one pass, no stack.
        for key, value in obj.items():
            if type(key) is not str or type(value) not in _FLAT:
                break
        else:
            return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                raise ProtocolError(f"nesting deeper than {limit} levels")
            for key, value in item.items():
                if not isinstance(key, str):
                    raise ProtocolError("map keys must be strings")
                if check_text:
                    _check_text(key)
                stack.append((value, depth + 1))
        elif isinstance(item, list):
            if depth > limit:
                raise ProtocolError(f"nesting deeper than {limit} levels")
            stack.extend((child, depth + 1) for child in item)
        elif not isinstance(item, _SCALARS):
            raise ProtocolError(f"values of type {type(item).__name__} are not allowed")
        elif check_text and isinstance(item, str):
            _check_text(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("strings must be valid Unicode (no lone surrogates)") from None


def decode_msgpack(payload: bytes, max_depth: int) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise ProtocolError(f"malformed MessagePack: {exc}") from None
    return _as_map(obj, max_depth)


def decode_json(payload: bytes | str, max_depth: int) -> dict[str, Any]:
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    return _as_map(obj, max_depth, check_text=True)


def _as_map(obj: Any, max_depth: int, *, check_text: bool = False) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"a frame must hold a map, not {type(obj).__name__}")
    _check_tree(obj, max_depth, check_text=check_text)
    return obj


class Packed:
    """A list whose encodings are kept: a value of a reply or event map that is spliced in,
    not encoded again (the join backchat, shared by every join of a room until it changes).

    Only a top-level value of the map may be ``Packed``.
    """

    __slots__ = ("_json", "_msgpack", "items")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self._msgpack: bytes | None = None
        self._json: bytes | None = None

    def msgpack(self) -> bytes:
        if self._msgpack is None:
            self._msgpack = msgpack.packb(self.items, use_bin_type=True)
        return self._msgpack

    def json(self) -> bytes:
        if self._json is None:
            self._json = _dumps(self.items)
        return self._json


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def encode_msgpack(obj: dict[str, Any]) -> bytes:
    if not any(type(value) is Packed for value in obj.values()):
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(obj))]
    for key, value in obj.items():
        parts.append(packer.pack(key))
        parts.append(value.msgpack() if type(value) is Packed else packer.pack(value))
    return b"".join(parts)


def encode_json(obj: dict[str, Any]) -> bytes:
    if not any(type(value) is Packed for value in obj.values()):
        return _dumps(obj)
    parts = [
        _dumps(key) + b":" + (value.json() if type(value) is Packed else _dumps(value))
        for key, value in obj.items()
    ]
    return b"{" + b",".join(parts) + b"}"


def tcp_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a TCP byte stream into frame bodies.

    ``feed`` returns the complete bodies found so far; it raises :class:`FrameTooLarge` as soon as a
    header announces more than ``max_frame_bytes``, so an oversized body is never buffered.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete frame bodies.

        Frames that precede an oversized one in the same call are returned first; the next call
        (``feed(b"")`` will do) raises :class:`FrameTooLarge`.
        """
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 4:
            (size,) = HEADER.unpack_from(buffer, offset)
            if size > self.max_frame_bytes:
                if frames:
                    break
                raise FrameTooLarge(size, self.max_frame_bytes)
            if end - offset - 4 < size:
                break
            frames.append(bytes(buffer[offset + 4 : offset + 4 + size]))
            offset += 4 + size
        if offset:
            del buffer[:offset]
        return frames
