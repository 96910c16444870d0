"""Framing and payload decoding for the client protocol, with every read bounded.

TCP frames are a 4-byte big-endian unsigned length followed by that many bytes of MessagePack
encoding one map. A WebSocket message carries one map: MessagePack in a binary message, JSON in a
text message.

Every bound is applied before the work it bounds is done:

- the frame size, from the header, before the body is buffered (:class:`FrameDecoder`; the
  WebSocket library does the same from each frame's length);
- the number of values in a frame (its arrays and maps, plus their items and entries), while
  the payload is decoded: MessagePack's per-container lengths are capped and, in a frame long
  enough to hold more values than allowed, every container is counted as it is completed and
  decoding stops at the first one over the budget; JSON's ``[``, ``{`` and ``,`` are counted
  before it is parsed. So a frame of a million empty arrays costs a count, not a million objects;
- the nesting depth and the value types, on the decoded map, before anything else looks at it.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import msgpack

from .errors import TOO_LARGE, FrameTooLarge, ProtocolError

HEADER = struct.Struct(">I")
# The largest integer a JSON client in a browser holds exactly (Number.MAX_SAFE_INTEGER): JSON
# request ids beyond it are refused.
MAX_JSON_INT = 2**53 - 1


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


# How many values a frame may hold when the caller does not say (limits.max_frame_values).
MAX_VALUES = 32_768
# Extension payloads are refused; the longest one MessagePack itself decodes is a 12-byte
# timestamp (refused after decoding, with a message that names it).
_MAX_EXT_LEN = 12
# How msgpack reports a container header above max_array_len / max_map_len.
_OVERLONG = re.compile(r"(\d+) exceeds max_(?:array|map)_len")


def _too_many(max_values: int) -> ProtocolError:
    return ProtocolError(f"frame holds more than {max_values} values", TOO_LARGE)


class _Budget:
    """Counts the containers MessagePack has built, each as one plus its length (so a frame's
    count is its arrays and maps plus their items and entries); raises past the budget. Each
    container is counted when it is complete, so at most ``max_values`` of them are ever built,
    however they nest."""

    __slots__ = ("left", "max_values")

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self.left = max_values

    def take(self, container: Any) -> Any:
        self.left -= 1 + len(container)
        if self.left < 0:
            raise _too_many(self.max_values)
        return container


def decode_msgpack(payload: bytes, max_depth: int, max_values: int = MAX_VALUES) -> dict[str, Any]:
    """Decode one MessagePack map nested at most ``max_depth`` deep, whose arrays and maps plus
    their items and entries number at most ``max_values``.

    Raises :class:`ProtocolError`: ``too_large`` past ``max_values``, ``bad_request`` otherwise.
    """
    size = len(payload)
    hooks: dict[str, Any] = {}
    if 2 * size > max_values:  # a value takes at least a byte: shorter frames cannot overrun
        take = _Budget(max_values).take
        hooks = {"list_hook": take, "object_hook": take}
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=max_values,
            max_map_len=max_values,
            max_ext_len=_MAX_EXT_LEN,
            **hooks,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        declared = _OVERLONG.match(str(exc))
        if declared is not None and int(declared.group(1)) <= size:
            # A container longer than the budget (one that claims more entries than the frame
            # has bytes is merely malformed).
            raise _too_many(max_values) from None
        raise ProtocolError(f"malformed MessagePack: {exc}") from None
    return _as_map(obj, max_depth)


def decode_json(
    payload: bytes | str, max_depth: int, max_values: int = MAX_VALUES
) -> dict[str, Any]:
    """Decode one JSON map nested at most ``max_depth`` deep, with at most ``max_values``
    arrays, maps, items and entries.

    They are bounded before parsing, from the characters that open arrays and maps (each counts
    two: the container and, at most, its first item) and the commas (one more item or entry),
    those inside strings included: a frame whose text holds more than ``max_values`` of them
    in this count is refused (``too_large``).
    """
    if 2 * len(payload) > max_values:
        if isinstance(payload, bytes):
            opened = payload.count(b"[") + payload.count(b"{")
            marks = 2 * opened + payload.count(b",")
        else:
            marks = 2 * (payload.count("[") + payload.count("{")) + payload.count(",")
        if marks > max_values:
            raise _too_many(max_values)
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if type(rid) is int and not -MAX_JSON_INT <= rid <= MAX_JSON_INT:
            raise ProtocolError(
                f"field 'id' must be from 0 to {MAX_JSON_INT} in JSON (2^53-1: larger integers"
                " do not survive a browser's JSON)"
            )
        try:
            return _as_map(obj, max_depth, check_text=True)
        except ProtocolError as exc:
            # Parsed, so the request's id is known: answer it (a page that trimmed text in the
            # middle of a surrogate pair must learn which request failed).
            if type(rid) is int and 0 <= rid:
                exc.request_id = rid
            raise
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
    ``setting`` names the limit in that error (the transport lowers it before authentication).
    """

    def __init__(self, max_frame_bytes: int, setting: str = "max_frame_bytes") -> None:
        self.max_frame_bytes = max_frame_bytes
        self.setting = setting
        self._buffer = bytearray()

    def limit(self, max_frame_bytes: int, setting: str) -> None:
        """Apply ``max_frame_bytes`` to every header not yet read (a header already accepted
        stays accepted)."""
        self.max_frame_bytes = max_frame_bytes
        self.setting = setting

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (after ``feed`` returned)."""
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
                raise FrameTooLarge(size, self.max_frame_bytes, self.setting)
            if end - offset - 4 < size:
                break
            frames.append(bytes(buffer[offset + 4 : offset + 4 + size]))
            offset += 4 + size
        if offset:
            del buffer[:offset]
        return frames
