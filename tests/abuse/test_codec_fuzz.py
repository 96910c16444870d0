"""Fuzzing both codecs and the TCP framing: whatever arrives, the decoders return a map within
the bounds they were given or raise the protocol's own error, never anything else.

The default run tries 100-300 inputs per property (a few seconds); ``--run-slow`` runs the same
properties with 3,000 inputs each (``test_long_fuzz``).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatserver.protocol.codec import FrameDecoder, decode_json, decode_msgpack, tcp_frame
from chatserver.protocol.errors import TOO_LARGE, FrameTooLarge, ProtocolError

BUDGETS = st.integers(min_value=1, max_value=200)
DEPTHS = st.integers(min_value=1, max_value=8)


def measure(obj: Any, depth: int = 1) -> tuple[int, int]:
    """(arrays and maps plus their items and entries, nesting depth) of a decoded value."""
    if isinstance(obj, dict):
        counts = [measure(v, depth + 1) for v in obj.values()]
        return 1 + len(obj) + sum(c for c, _ in counts), max([depth, *(d for _, d in counts)])
    if isinstance(obj, list):
        counts = [measure(v, depth + 1) for v in obj]
        return 1 + len(obj) + sum(c for c, _ in counts), max([depth, *(d for _, d in counts)])
    return 0, depth - 1


def check_result(result: Any, max_values: int, max_depth: int) -> None:
    assert isinstance(result, dict)
    count, depth = measure(result)
    assert count <= max_values, (count, max_values)
    assert depth <= max_depth, (depth, max_depth)


def decode_or_error(decode: Any, payload: bytes | str, max_depth: int, max_values: int) -> Any:
    try:
        result = decode(payload, max_depth, max_values)
    except ProtocolError as exc:
        assert type(exc) is ProtocolError  # never FrameTooLarge from a payload decoder
        assert exc.message
        return exc
    check_result(result, max_values, max_depth)
    return result


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=30,
)
maps = st.dictionaries(st.text(max_size=6), trees, max_size=6)


def properties(examples: int) -> Any:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# --- random bytes ---------------------------------------------------------------------------


def _random_bytes(decode: Any, payload: bytes, depth: int, budget: int) -> None:
    decode_or_error(decode, payload, depth, budget)


@pytest.mark.parametrize("decode", [decode_msgpack, decode_json], ids=["msgpack", "json"])
@properties(300)
@given(payload=st.binary(max_size=400), depth=DEPTHS, budget=BUDGETS)
def test_random_bytes(decode: Any, payload: bytes, depth: int, budget: int) -> None:
    _random_bytes(decode, payload, depth, budget)


# --- random structures ----------------------------------------------------------------------


def _structures(obj: dict[str, Any], depth: int, budget: int) -> None:
    count, nesting = measure(obj)
    within = count <= budget and nesting <= depth
    packed = msgpack.packb(obj, use_bin_type=True)
    result = decode_or_error(decode_msgpack, packed, depth, budget)
    if within:
        assert result == obj  # MessagePack's count is exact: within the bounds, always accepted
    else:
        assert isinstance(result, ProtocolError)
        if count > budget and nesting <= depth:
            assert result.code == TOO_LARGE
    text = json.dumps(obj)
    result = decode_or_error(decode_json, text, depth, budget)
    if not within:
        assert isinstance(result, ProtocolError)
    elif not isinstance(result, ProtocolError):
        assert json.dumps(result) == text
    else:
        # JSON's count is conservative: marks inside strings count too.
        assert result.code == TOO_LARGE
        assert 2 * (text.count("[") + text.count("{")) + text.count(",") > budget


@properties(100)
@given(obj=maps, depth=DEPTHS, budget=BUDGETS)
def test_random_structures(obj: dict[str, Any], depth: int, budget: int) -> None:
    _structures(obj, depth, budget)


def _mutated(obj: dict[str, Any], flips: list[tuple[int, int]], depth: int, budget: int) -> None:
    for payload in (msgpack.packb(obj, use_bin_type=True), json.dumps(obj).encode()):
        data = bytearray(payload)
        for position, value in flips:
            data[position % len(data)] = value
        for decode in (decode_msgpack, decode_json):
            decode_or_error(decode, bytes(data), depth, budget)


@properties(100)
@given(
    obj=maps,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    depth=DEPTHS,
    budget=BUDGETS,
)
def test_mutated_encodings(
    obj: dict[str, Any], flips: list[tuple[int, int]], depth: int, budget: int
) -> None:
    _mutated(obj, flips, depth, budget)


# --- TCP framing ----------------------------------------------------------------------------


def _framing(bodies: list[bytes], junk: bytes, cuts: list[int], limit: int) -> None:
    stream = b"".join(tcp_frame(b) for b in bodies) + junk
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder(limit)
    out: list[bytes] = []
    try:
        for start, end in itertools.pairwise(points):
            out += decoder.feed(stream[start:end])
            # What is held is one unfinished frame: its header and part of its body; or an
            # oversized header came after the frames just returned, and the next call says so.
            if decoder.buffered >= 4 + limit:
                with pytest.raises(FrameTooLarge):
                    decoder.feed(b"")
                raise FrameTooLarge(0, limit)
    except FrameTooLarge as exc:
        assert exc.code == TOO_LARGE
    assert all(len(body) <= limit for body in out)
    # The junk after the bodies may itself hold whole frames (four zero bytes are an empty one).
    assert out[: len(bodies)] == bodies[: len(out)]
    if all(len(b) <= limit for b in bodies):
        assert out[: len(bodies)] == bodies  # (and any frames the junk holds)


@properties(300)
@given(
    bodies=st.lists(st.binary(max_size=80), max_size=6),
    junk=st.binary(max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000), max_size=12),
    limit=st.integers(min_value=0, max_value=100),
)
def test_random_framing(bodies: list[bytes], junk: bytes, cuts: list[int], limit: int) -> None:
    _framing(bodies, junk, cuts, limit)


# --- the long run ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_long_fuzz() -> None:
    """The properties above with 3,000 inputs each (``--run-slow``; about two minutes here;
    20,000 each took 8 minutes and found nothing)."""
    long = properties(3_000)
    long(
        given(
            decode=st.sampled_from([decode_msgpack, decode_json]),
            payload=st.binary(max_size=2000),
            depth=DEPTHS,
            budget=BUDGETS,
        )(_random_bytes)
    )()
    long(given(obj=maps, depth=DEPTHS, budget=BUDGETS)(_structures))()
    long(
        given(
            obj=maps,
            flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
            depth=DEPTHS,
            budget=BUDGETS,
        )(_mutated)
    )()
    long(
        given(
            bodies=st.lists(st.binary(max_size=300), max_size=10),
            junk=st.binary(max_size=20),
            cuts=st.lists(st.integers(min_value=0, max_value=5_000), max_size=30),
            limit=st.integers(min_value=0, max_value=400),
        )(_framing)
    )()
