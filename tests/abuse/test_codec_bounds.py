"""The codec bounds its work per frame before doing it (pure: bytes in, no sockets)."""

from __future__ import annotations

import json
import time

import msgpack
import pytest

from chatserver.protocol.codec import FrameDecoder, decode_json, decode_msgpack, tcp_frame
from chatserver.protocol.errors import BAD_REQUEST, TOO_LARGE, FrameTooLarge, ProtocolError

MIB = 1 << 20


def empty_arrays_msgpack(size: int = MIB) -> bytes:
    """A map of about ``size`` bytes: one array holding ~``size`` empty arrays (1 byte each)."""
    return msgpack.packb({"op": "ping", "id": 1, "x": [[]] * (size - 32)})


def empty_arrays_json(size: int = MIB) -> bytes:
    return json.dumps({"op": "ping", "id": 1, "x": [[]] * (size // 3)}).encode()


def nested_arrays_msgpack(width: int, count: int) -> bytes:
    """``count`` arrays of ``width`` empty arrays: each container within any per-array cap."""
    return msgpack.packb({"op": "ping", "id": 1, "x": [[[]] * width] * count})


def nested_chain_msgpack(width: int, depth: int) -> bytes:
    """Arrays of ``width`` empty arrays, each holding the next as its last item: no array is
    complete until the innermost is, so counting only completed items would see almost nothing."""
    inner: list[object] = []
    for _ in range(depth):
        inner = [*([[]] * width), inner]
    return msgpack.packb({"op": "ping", "id": 1, "x": inner})


ATTACKS = [
    pytest.param(decode_msgpack, nested_chain_msgpack(30_000, 34), id="msgpack-chain"),
    pytest.param(decode_msgpack, empty_arrays_msgpack(), id="msgpack-one-array"),
    pytest.param(decode_msgpack, nested_arrays_msgpack(1000, 1000), id="msgpack-1000x1000"),
    pytest.param(decode_msgpack, nested_arrays_msgpack(10, 100_000), id="msgpack-100000x10"),
    pytest.param(decode_json, empty_arrays_json(), id="json-one-array"),
    pytest.param(decode_json, b'{"x":[' + b"1," * 500_000 + b"1]}", id="json-ints"),
]


@pytest.mark.parametrize(("decode", "payload"), ATTACKS)
def test_a_million_values_are_refused_before_they_are_built(decode, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    with pytest.raises(ProtocolError) as info:
        decode(payload, 16)  # the default budget, 32,768
    elapsed = time.perf_counter() - started
    assert info.value.code == TOO_LARGE
    assert "32768 values" in info.value.message
    # Before the bound these took 0.3-2 s per frame on the 2-core test machine (and returned);
    # now 1-20 ms. The margin is for a machine shared with other work.
    assert elapsed < 0.25, elapsed


@pytest.mark.parametrize("decode", [decode_msgpack, decode_json], ids=["msgpack", "json"])
def test_the_budget_counts_every_array_item_and_map_entry(decode) -> None:  # type: ignore[no-untyped-def]
    encode = (
        (lambda o: msgpack.packb(o))
        if decode is decode_msgpack
        else (lambda o: json.dumps(o).encode())
    )
    # 3 containers (two maps, one array) + 3 entries + 2 items + 2 entries = 10.
    obj = {"op": "x", "id": 1, "a": [1, {"k": 1, "l": 2}]}
    assert decode(encode(obj), 16, 10) == obj
    # The short-frame shortcut (a frame shorter than the budget cannot exceed it) is exact too.
    assert decode(encode(obj), 16, 1000) == obj
    with pytest.raises(ProtocolError) as info:
        decode(encode({**obj, "b": 2}), 16, 10)
    assert info.value.code == TOO_LARGE


def test_a_legitimate_maximal_request_fits_the_default_budget() -> None:
    """category.update with six full principal lists (1000 each) is the largest request."""
    principals = [{"kind": "user", "id": i} for i in range(1, 1001)]
    lists = {"allowed": principals, "denied": principals, "creators": principals}
    obj = {"op": "category.update", "id": 1, "category": 2, "add": lists, "remove": lists}
    assert decode_msgpack(msgpack.packb(obj), 16) == obj
    assert decode_json(json.dumps(obj).encode(), 16) == obj


def test_json_counts_marks_inside_strings() -> None:
    """The cheap count cannot tell a comma in a string from one between values (documented)."""
    text = "," * 40_000
    with pytest.raises(ProtocolError) as info:
        decode_json(json.dumps({"op": "post", "id": 1, "text": text}), 16)
    assert info.value.code == TOO_LARGE
    assert decode_msgpack(msgpack.packb({"op": "post", "id": 1, "text": text}), 16)["text"] == text


def test_a_container_header_claiming_more_than_the_frame_holds_is_malformed() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_msgpack(b"\x81\xa1a\xdd\xff\xff\xff\xff", 16, 4)
    assert info.value.code == BAD_REQUEST


def test_frame_decoder_limit_can_be_raised_and_names_its_setting() -> None:
    decoder = FrameDecoder(16_384, "max_unauthenticated_frame_bytes")
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(tcp_frame(b"x" * 16_385))
    assert "max_unauthenticated_frame_bytes=16384" in info.value.message
    decoder = FrameDecoder(16_384, "max_unauthenticated_frame_bytes")
    decoder.limit(MIB, "max_frame_bytes")
    body = b"y" * 100_000
    assert decoder.feed(tcp_frame(body)) == [body]
