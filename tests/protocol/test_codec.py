"""The client protocol's framing and payload decoding (pure: no sockets, no event loop)."""

from __future__ import annotations

import functools
import itertools
import json
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from chatserver.protocol.codec import (
    FrameDecoder,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    tcp_frame,
)
from chatserver.protocol.errors import BAD_REQUEST, TOO_LARGE, FrameTooLarge, ProtocolError
from chatserver.protocol.events import TCP, WS_BINARY, WS_TEXT, Outgoing, ws_frame

MAX_FRAME = 1024
DEPTH = 16

Decoder = Callable[[bytes, int], dict[str, Any]]


def assert_bad_request(decode: Decoder, payload: bytes, max_depth: int = DEPTH) -> ProtocolError:
    """``decode(payload)`` raises exactly ProtocolError with code bad_request, nothing else."""
    with pytest.raises(ProtocolError) as info:
        decode(payload, max_depth)
    assert type(info.value) is ProtocolError
    assert info.value.code == BAD_REQUEST
    assert info.value.message
    return info.value


def header(size: int) -> bytes:
    return struct.pack(">I", size)


def feed_bytewise(decoder: FrameDecoder, data: bytes) -> list[bytes]:
    out: list[bytes] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    return out


# --- FrameDecoder ------------------------------------------------------------------------------

BODIES = [b"", b"x", b"hello", bytes(range(256)), b"\x00\x00\x00\x05", b"a" * MAX_FRAME]


def test_tcp_frame_layout() -> None:
    assert tcp_frame(b"") == b"\x00\x00\x00\x00"
    assert tcp_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert tcp_frame(b"z" * 258)[:4] == b"\x00\x00\x01\x02"


def test_decoder_whole_stream() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    stream = b"".join(tcp_frame(b) for b in BODIES)
    assert decoder.feed(stream) == BODIES
    assert decoder.buffered == 0


def test_decoder_byte_by_byte() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    stream = b"".join(tcp_frame(b) for b in BODIES)
    assert feed_bytewise(decoder, stream) == BODIES
    assert decoder.buffered == 0


def test_decoder_returns_nothing_until_frame_complete() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    frame = tcp_frame(b"hello")
    for i in range(len(frame) - 1):
        assert decoder.feed(frame[i : i + 1]) == []
        assert decoder.buffered == i + 1
    assert decoder.feed(frame[-1:]) == [b"hello"]
    assert decoder.buffered == 0


def test_decoder_keeps_partial_tail() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    stream = tcp_frame(b"one") + tcp_frame(b"two")
    assert decoder.feed(stream[:-1]) == [b"one"]
    assert decoder.buffered == len(tcp_frame(b"two")) - 1
    assert decoder.feed(stream[-1:]) == [b"two"]


@settings(deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_decoder_random_splits(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(tcp_frame(b) for b in bodies)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder(MAX_FRAME)
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        out += decoder.feed(stream[start:end])
    assert out == bodies
    assert decoder.buffered == 0


@pytest.mark.parametrize("limit", [MAX_FRAME, 1_048_576])
def test_frame_exactly_at_limit_is_accepted(limit: int) -> None:
    body = b"\xab" * limit
    assert FrameDecoder(limit).feed(tcp_frame(body)) == [body]
    decoder = FrameDecoder(limit)
    assert decoder.feed(header(limit)) == []  # header alone: waits for the body
    assert decoder.feed(body[:-1]) == []
    assert decoder.feed(body[-1:]) == [body]


@pytest.mark.parametrize("limit", [MAX_FRAME, 1_048_576])
def test_frame_one_over_limit_raises_on_header(limit: int) -> None:
    decoder = FrameDecoder(limit)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(header(limit + 1))  # no body byte sent yet
    assert info.value.code == TOO_LARGE
    assert isinstance(info.value, ProtocolError)
    assert str(limit + 1) in info.value.message


def test_frame_over_limit_raises_on_fourth_header_byte() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    head = header(MAX_FRAME + 1)
    assert decoder.feed(head[:1]) == []
    assert decoder.feed(head[1:2]) == []
    assert decoder.feed(head[2:3]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(head[3:4])


def test_oversize_header_after_good_frame() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    assert decoder.feed(tcp_frame(b"ok")) == [b"ok"]
    with pytest.raises(FrameTooLarge):
        decoder.feed(header(0xFFFFFFFF))


# --- decode_msgpack / decode_json: valid input ------------------------------------------------

VALID_MAPS: list[dict[str, Any]] = [
    {},
    {"op": "ping", "id": 1},
    {"op": "post", "id": 7, "room": 3, "text": "héllo ✓ 😀", "cid": "c-1"},
    {"a": [1, 2.5, None, True, False, "s"], "b": {"c": {"d": []}}},
    {"big": 2**63 - 1, "neg": -(2**63)},
]


@pytest.mark.parametrize("obj", VALID_MAPS)
def test_valid_msgpack_map(obj: dict[str, Any]) -> None:
    assert decode_msgpack(encode_msgpack(obj), DEPTH) == obj


@pytest.mark.parametrize("obj", VALID_MAPS)
def test_valid_json_map(obj: dict[str, Any]) -> None:
    assert decode_json(encode_json(obj), DEPTH) == obj
    assert decode_json(encode_json(obj).decode(), DEPTH) == obj  # a text frame arrives as str


def test_msgpack_bin_values_are_bytes() -> None:
    assert decode_msgpack(encode_msgpack({"b": b"\x00\xff"}), DEPTH) == {"b": b"\x00\xff"}


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_valid_maps_round_trip(obj: dict[str, Any]) -> None:
    assert decode_msgpack(encode_msgpack(obj), 64) == obj
    assert decode_json(encode_json(obj), 64) == obj


# --- decode_msgpack / decode_json: invalid input ----------------------------------------------

MALFORMED_MSGPACK = {
    "empty": b"",
    "truncated map": b"\x81",
    "truncated key": b"\x81\xa3ab",
    "reserved byte 0xc1": b"\xc1",
    "reserved byte in map": b"\x81\xa1a\xc1",
    "trailing data": msgpack.packb({"a": 1}) + b"\x00",
    "two maps": msgpack.packb({"a": 1}) * 2,
    "huge map header, no body": b"\xdf\xff\xff\xff\xff",
    "huge str header, no body": b"\x81\xa1a\xdb\xff\xff\xff\xff",
}


@pytest.mark.parametrize("payload", MALFORMED_MSGPACK.values(), ids=MALFORMED_MSGPACK.keys())
def test_malformed_msgpack(payload: bytes) -> None:
    assert_bad_request(decode_msgpack, payload)


MALFORMED_JSON = {
    "empty": b"",
    "whitespace": b"  ",
    "open brace": b"{",
    "missing value": b'{"a":}',
    "missing colon": b'{"a" 1}',
    "single quotes": b"{'a': 1}",
    "unquoted key": b"{a: 1}",
    "trailing comma": b'{"a": 1,}',
    "trailing data": b'{"a": 1} x',
    "two maps": b'{"a": 1}{"a": 1}',
    "unterminated string": b'{"a": "b}',
    "bad escape": b'{"a": "\\q"}',
    "msgpack bytes": msgpack.packb({"a": 1}),
}


@pytest.mark.parametrize("payload", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
def test_malformed_json(payload: bytes) -> None:
    assert_bad_request(decode_json, payload)
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return
    assert_bad_request(decode_json, text)  # type: ignore[arg-type]


INVALID_UTF8 = {
    "lone 0xff": b"\xff",
    "truncated 2-byte sequence": b"\xc3",
    "overlong slash": b"\xc0\xaf",
    "stray continuation": b"\x80",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
}


@pytest.mark.parametrize(
    "bad",
    [
        *[pytest.param(v, id=k) for k, v in INVALID_UTF8.items()],
        pytest.param(b"\xed\xa0\x80", id="encoded surrogate"),
    ],
)
def test_json_invalid_utf8(bad: bytes) -> None:
    assert_bad_request(decode_json, b'{"a": "' + bad + b'"}')


@pytest.mark.parametrize(
    "bad",
    [
        *[pytest.param(v, id=k) for k, v in INVALID_UTF8.items()],
        pytest.param(b"\xed\xa0\x80", id="encoded surrogate"),
    ],
)
@pytest.mark.parametrize("where", ["value", "key"])
def test_msgpack_invalid_utf8(bad: bytes, where: str) -> None:
    string = bytes([0xA0 | len(bad)]) + bad  # fixstr holding invalid UTF-8
    ok = b"\xa1a"
    payload = b"\x81" + (ok + string if where == "value" else string + ok)
    assert_bad_request(decode_msgpack, payload)


NON_MAPS: dict[str, Any] = {
    "list": [1, 2],
    "empty list": [],
    "list of map": [{"op": "ping"}],
    "int": 5,
    "string": "op",
    "null": None,
    "true": True,
    "float": 1.5,
}


@pytest.mark.parametrize("value", NON_MAPS.values(), ids=NON_MAPS.keys())
def test_msgpack_non_map_top_level(value: Any) -> None:
    assert_bad_request(decode_msgpack, msgpack.packb(value))


def test_msgpack_bin_top_level() -> None:
    assert_bad_request(decode_msgpack, msgpack.packb(b"\x81\xa1a\x01", use_bin_type=True))


@pytest.mark.parametrize("value", NON_MAPS.values(), ids=NON_MAPS.keys())
def test_json_non_map_top_level(value: Any) -> None:
    assert_bad_request(decode_json, json.dumps(value).encode())


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({1: "a"}, id="int key"),
        pytest.param({-1: "a"}, id="negative int key"),
        pytest.param({None: "a"}, id="nil key"),
        pytest.param({True: "a"}, id="bool key"),
        pytest.param({1.5: "a"}, id="float key"),
        pytest.param({"a": {2: "b"}}, id="nested int key"),
        pytest.param({"a": [{3: "b"}]}, id="int key in map in list"),
        pytest.param({b"op": "ping"}, id="bytes key"),
        pytest.param({"a": {b"k": 1}}, id="nested bytes key"),
    ],
)
def test_msgpack_non_string_keys(obj: dict[Any, Any]) -> None:
    assert_bad_request(decode_msgpack, msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x81\x91\x01\xa1a", id="array key"),
        pytest.param(b"\x81\x80\xa1a", id="map key"),
    ],
)
def test_msgpack_unhashable_keys(payload: bytes) -> None:
    assert_bad_request(decode_msgpack, payload)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(msgpack.ExtType(0, b""), id="ext 0 empty"),
        pytest.param(msgpack.ExtType(5, b"x"), id="ext 5"),
        pytest.param(msgpack.ExtType(127, b"y" * 300), id="ext 127 ext16"),
        pytest.param([msgpack.ExtType(1, b"a")], id="ext in list"),
        pytest.param({"b": msgpack.ExtType(1, b"a")}, id="ext in map"),
        pytest.param(msgpack.Timestamp(1, 0), id="timestamp ext -1"),
    ],
)
def test_msgpack_ext_types(value: Any) -> None:
    assert_bad_request(decode_msgpack, msgpack.packb({"a": value}))


@pytest.mark.parametrize("code", [-5, -2, -128])
def test_msgpack_negative_ext_types(code: int) -> None:
    # msgpack-python refuses to pack reserved (negative) codes, so build fixext1 by hand.
    assert_bad_request(decode_msgpack, b"\x81\xa1a\xd4" + struct.pack("b", code) + b"z")


def test_msgpack_ext_top_level() -> None:
    assert_bad_request(decode_msgpack, msgpack.packb(msgpack.ExtType(3, b"abc")))


def test_msgpack_malformed_timestamp() -> None:
    assert_bad_request(decode_msgpack, b"\x81\xa1t\xc7\x03\xffabc")


# --- nesting depth ----------------------------------------------------------------------------


def nested_maps(depth: int) -> dict[str, Any]:
    """A map nesting ``depth`` containers in total (the top-level map counts as 1)."""
    obj: dict[str, Any] = {}
    for _ in range(depth - 1):
        obj = {"a": obj}
    return obj


def nested_lists(depth: int) -> dict[str, Any]:
    inner: Any = []
    for _ in range(depth - 2):
        inner = [inner]
    return {"a": inner}


CODECS = [
    pytest.param(decode_msgpack, encode_msgpack, id="msgpack"),
    pytest.param(decode_json, encode_json, id="json"),
]


@pytest.mark.parametrize(("decode", "encode"), CODECS)
@pytest.mark.parametrize("build", [nested_maps, nested_lists])
@pytest.mark.parametrize("limit", [2, 5, 16])
def test_depth_at_limit_accepted_one_over_rejected(
    decode: Decoder, encode: Callable[[Any], bytes], build: Callable[[int], Any], limit: int
) -> None:
    at_limit = build(limit)
    assert decode(encode(at_limit), limit) == at_limit
    error = assert_bad_request(decode, encode(build(limit + 1)), limit)
    assert str(limit) in error.message


@pytest.mark.parametrize(("decode", "encode"), CODECS)
def test_scalars_do_not_count_as_depth(decode: Decoder, encode: Callable[[Any], bytes]) -> None:
    obj = {"a": {"b": [1, "x", None]}}
    assert decode(encode(obj), 3) == obj
    assert_bad_request(decode, encode(obj), 2)


@pytest.mark.parametrize(
    ("decode", "payload"),
    [
        pytest.param(
            decode_json, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="json lists"
        ),
        pytest.param(decode_json, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="json maps"),
        pytest.param(decode_json, b"[" * 100_000, id="json unterminated"),
        pytest.param(
            decode_msgpack, b"\x81\xa1a" + b"\x91" * 100_000 + b"\x90", id="msgpack lists"
        ),
        pytest.param(decode_msgpack, b"\x81\xa1a" * 100_000 + b"\x01", id="msgpack maps"),
    ],
)
def test_very_deep_nesting(decode: Decoder, payload: bytes) -> None:
    # More values than the default budget: refused (too_large for JSON, before it is parsed;
    # MessagePack's own depth limit may come first).
    with pytest.raises(ProtocolError):
        decode(payload, DEPTH)
    # With the budget lifted, the depth check (or the parser's own) refuses it.
    assert_bad_request(functools.partial(decode, max_values=10**6), payload)


# --- arbitrary input --------------------------------------------------------------------------


@pytest.mark.parametrize("decode", [decode_msgpack, decode_json], ids=["msgpack", "json"])
@settings(deadline=None, max_examples=500)
@given(payload=st.binary(max_size=200))
def test_arbitrary_bytes_dict_or_protocol_error(decode: Decoder, payload: bytes) -> None:
    try:
        result = decode(payload, DEPTH)
    except ProtocolError as exc:
        assert type(exc) is ProtocolError
        assert exc.code == BAD_REQUEST
    else:
        assert isinstance(result, dict)


@settings(deadline=None, max_examples=300)
@given(
    payload=st.recursive(
        st.binary(max_size=10),
        lambda inner: st.lists(inner, max_size=4).map(b"".join),
        max_leaves=10,
    ).map(lambda b: b"\x81\xa1a" + b)
)
def test_arbitrary_msgpack_after_map_header(payload: bytes) -> None:
    try:
        result = decode_msgpack(payload, DEPTH)
    except ProtocolError as exc:
        assert type(exc) is ProtocolError
    else:
        assert isinstance(result, dict)


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=100))
def test_arbitrary_text_to_decode_json(text: str) -> None:
    try:
        result = decode_json(text, DEPTH)
    except ProtocolError as exc:
        assert type(exc) is ProtocolError
    else:
        assert isinstance(result, dict)


# --- WebSocket frames and Outgoing ------------------------------------------------------------


def parse_ws(data: bytes) -> Frame:
    """Parse one server-to-client frame with websockets' sans-I/O parser; all bytes must be used."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:  # pragma: no cover - the parser wanted more bytes than the frame holds
        pytest.fail("websockets parser wanted more data")
    assert not reader.buffer, "bytes left after the frame"
    return frame


WS_SIZES = [
    (0, b"\x82\x00"),
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e\x00\x7e"),
    (65535, b"\x82\x7e\xff\xff"),
    (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
]


@pytest.mark.parametrize(("size", "header"), WS_SIZES, ids=[str(s) for s, _ in WS_SIZES])
def test_ws_frame_header_layout(size: int, header: bytes) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = ws_frame(0x2, payload)
    assert data == header + payload
    frame = parse_ws(data)
    assert frame.opcode is Opcode.BINARY
    assert frame.fin
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)
    assert frame.data == payload


def test_ws_text_frame() -> None:
    data = ws_frame(0x1, "héllo".encode())
    assert data[0] == 0x81
    assert data[1] & 0x80 == 0  # server frames are not masked
    frame = parse_ws(data)
    assert frame.opcode is Opcode.TEXT
    assert frame.data.decode() == "héllo"


OBJ = {"re": 3, "ok": True, "text": "héllo ✓", "n": [1, 2, {"x": None}]}


@pytest.mark.parametrize("fmt", [TCP, WS_BINARY, WS_TEXT])
def test_outgoing_encoded_is_cached(fmt: int) -> None:
    out = Outgoing(dict(OBJ))
    first = out.encoded(fmt)
    assert out.encoded(fmt) is first
    out.obj["text"] = "changed"  # not re-encoded: every subscriber gets identical bytes
    assert out.encoded(fmt) is first


def test_outgoing_formats_are_distinct() -> None:
    out = Outgoing(OBJ)
    encodings = {out.encoded(fmt) for fmt in (TCP, WS_BINARY, WS_TEXT)}
    assert len(encodings) == 3


def test_outgoing_tcp_round_trip() -> None:
    data = Outgoing(OBJ).encoded(TCP)
    decoder = FrameDecoder(MAX_FRAME)
    (body,) = feed_bytewise(decoder, data)
    assert decoder.buffered == 0
    assert msgpack.unpackb(body, raw=False) == OBJ
    assert decode_msgpack(body, DEPTH) == OBJ


def test_outgoing_ws_binary_round_trip() -> None:
    frame = parse_ws(Outgoing(OBJ).encoded(WS_BINARY))
    assert frame.opcode is Opcode.BINARY
    assert msgpack.unpackb(frame.data, raw=False) == OBJ


def test_outgoing_ws_text_round_trip() -> None:
    frame = parse_ws(Outgoing(OBJ).encoded(WS_TEXT))
    assert frame.opcode is Opcode.TEXT
    assert json.loads(frame.data.decode()) == OBJ


def test_outgoing_large_event_uses_extended_length() -> None:
    obj = {"text": "x" * 70_000}
    data = Outgoing(obj).encoded(WS_BINARY)
    assert data[1] == 127
    assert msgpack.unpackb(parse_ws(data).data, raw=False) == obj


@given(
    items=st.lists(
        st.fixed_dictionaries(
            {"seq": st.integers(0, 2**40), "text": st.text(max_size=50), "ok": st.booleans()}
        ),
        max_size=5,
    ),
    other=st.dictionaries(
        st.sampled_from(["re", "room", "gap"]), st.integers(-(2**63), 2**63 - 1), max_size=3
    ),
)
def test_a_packed_value_encodes_like_the_plain_list(
    items: list[dict[str, Any]], other: dict[str, Any]
) -> None:
    from chatserver.protocol.codec import Packed, encode_json, encode_msgpack

    plain = {**other, "messages": items}
    packed_obj = {**other, "messages": Packed(items)}
    assert encode_msgpack(packed_obj) == encode_msgpack(plain)
    assert json.loads(encode_json(packed_obj)) == plain
    assert msgpack.unpackb(encode_msgpack(packed_obj)) == plain
