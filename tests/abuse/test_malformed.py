"""Frames no client should send: too large, not MessagePack or JSON, not a map, nested too deep,
invalid UTF-8, keys that are not strings (issue 14, the abuse suite: cases that held before).

Each attack runs against a node in its own process while a bystander in a third process pings
it (:mod:`tests.abuse.attack`), in two rounds of waves lasting at least 0.5 s each, and asserts
three things: the node's answer (docs/protocol.md sections 1 and 2: ``too_large`` then ``bye``
``frame_too_large`` for an oversized TCP header, close code 1009 for an oversized WebSocket
message, ``bad_request`` with ``"re": null`` for a bad frame, the connection living on); that
the bystander's ping p99 stayed under :data:`PING_P99_MS`; and that the node's resident memory
came back (:meth:`~tests.abuse.attack.Rounds.check`).

What each round cost is printed (``pytest -s``): bytes sent, the node's RSS before, at its
peak and after, its largest event-loop lag, and the bystander's ping p50/p99/max. The numbers
measured on the shared 2-core test machine are in the docstring of each test.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.abuse.attack import Cost, Watch, packed, scaled, tcp_bytes, watched_node
from tests.rawclients import RawTcp, RawWebSocket

# The bystander's ping p99 during an attack. The issue asks for 50 ms; on this machine an idle
# node answers in 0.2-0.5 ms at p99 and no attack below took it above ~15 ms, so 50 ms holds
# with a margin (and a stall like issue 14's item 1, ~1 s per frame, breaks it at once).
PING_P99_MS = 50
MAX_FRAME = 1_048_576  # limits.max_frame_bytes, the default
USERS = 4  # the attackers' accounts (issue 14 item 3 caps the connections of one user)


@pytest.fixture(scope="module")
async def watch(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Watch]:
    directory = tmp_path_factory.mktemp("malformed")
    async with watched_node(directory) as watch:
        for i in range(USERS):
            await watch.node.add_user(f"mallory{i}")
            await watch.token(f"mallory{i}")
        yield watch


def user(i: int) -> str | None:
    """The odd connections of a wave are signed in (as one of the attackers), the even not."""
    return f"mallory{i % USERS}" if i % 2 else None


def too_large(replies: list[dict[str, Any]]) -> None:
    """What the node answers an oversized TCP header: the error, ``bye``, and nothing more."""
    assert len(replies) == 2, replies
    error, bye = replies
    assert error["re"] is None and error["ok"] is False, error
    assert error["error"]["code"] == "too_large", error
    assert bye == {"ev": "bye", "reason": "frame_too_large"}


# -- too large ---------------------------------------------------------------------------------


async def test_oversized_tcp_header_closes_with_a_reason(watch: Watch) -> None:
    """Waves of 10 connections, half of them signed in, each sending a header that announces
    more than max_frame_bytes (the largest there is, or one byte over): ``too_large``, ``bye``
    ``frame_too_large``, close.

    Would catch: a node that waits for (and buffers) the announced body, answers nothing, drops
    the connection without a reason, or stalls the others meanwhile.

    Measured: 25 waves (250 connections) per round; ping p99 1.3-3.4 ms; loop lag <= 1 ms;
    RSS +1.4 then +0.6 MiB (closed connections wait for the cyclic collector, ~3 KiB each)."""

    async def wave(cost: Cost) -> None:
        clients = await asyncio.gather(*(watch.tcp(user(i)) for i in range(10)))
        for i, client in enumerate(clients):
            header = (0xFFFFFFFF if i % 4 < 2 else MAX_FRAME + 1).to_bytes(4, "big")
            client.writer.write(header)
            cost.bytes_sent += 4
        answers = await asyncio.wait_for(
            asyncio.gather(*(c.read_to_end() for c in clients)), scaled(10)
        )
        for client in clients:
            await client.close()
        for replies in answers:
            too_large(replies)

    rounds = await watch.rounds("oversized TCP headers", wave)
    rounds.check(p99_ms=PING_P99_MS)


async def test_oversized_tcp_body_is_never_kept(watch: Watch) -> None:
    """Waves of 10 signed-in connections, each sending a header one byte over max_frame_bytes
    followed by the whole 1 MiB body without reading (at most 8 waves, 80 MiB, a round).

    Would catch: a node that reads the body of a frame it refused (the peak RSS would grow by
    the 10 MiB of a wave), keeps serving a stream it can no longer trust, or keeps what it read
    after the connection is gone: before 9707526 each closed connection kept its last read
    (~256 KiB, through the error's traceback) until a cyclic collection, +2.5 MiB a wave
    (measured: RSS 89 -> 103 -> 112 MiB over two rounds; since: 91 -> 92.1 -> 92.3).

    Measured: 8 waves (84 MB sent) per round; ping p99 5-14 ms; RSS peak +1 MiB, after
    +0.9 then +0.2 MiB."""
    body = random.Random(14).randbytes(MAX_FRAME + 1)

    async def wave(cost: Cost) -> None:
        clients = await asyncio.gather(*(watch.tcp(f"mallory{i % USERS}") for i in range(10)))
        for client in clients:
            client.writer.write(tcp_bytes(body))
            cost.bytes_sent += 4 + len(body)
        answers = await asyncio.wait_for(
            asyncio.gather(*(c.read_to_end() for c in clients)), scaled(10)
        )
        for client in clients:
            await client.close()
        for replies in answers:
            if len(replies) == 2:
                too_large(replies)
            else:  # reset before the answer arrived (a client still sending may get one)
                assert replies in ([], replies[:1]), replies
                assert all(r["error"]["code"] == "too_large" for r in replies)

    rounds = await watch.rounds("oversized TCP body, 10 x 1 MiB a wave", wave, max_waves=8)
    assert rounds.peak_mib() < 16, rounds.first.line()
    rounds.check(p99_ms=PING_P99_MS)


def ws_header(opcode: int, size: int) -> bytes:
    """The head of a client's unfragmented WebSocket frame of ``size`` bytes (masked with a
    zero key, so the payload that follows is sent as it is)."""
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", size) + b"\0\0\0\0"


async def close_code(client: RawWebSocket) -> int | None:
    """The code of the node's close frame; None if the connection was reset first."""
    try:
        return (await client.close_received()).code
    except ConnectionResetError:
        return None


async def test_oversized_websocket_message_closes_1009(watch: Watch) -> None:
    """Waves of 10 WebSocket connections (half signed in), each sending a message one byte over
    max_frame_bytes in one frame, binary or text: 5 send the frame's head only, 5 its 1 MiB
    payload too. Close code 1009, nothing else.

    Would catch: a node that reads the payload of a frame whose head is already too long (the
    peak RSS would grow by the 5 MiB of payload of a wave), answers it, or keeps the connection
    open. A client still sending its payload may see a reset instead of the close frame (the
    node closes with input unread): for those the code is checked when it comes.

    Measured: 25 waves (131 MB sent) per round; ping p99 2-5 ms; RSS peak +1.5-1.7 MiB."""
    payload = b"\xa1" * (MAX_FRAME + 1)

    async def wave(cost: Cost) -> None:
        clients = await asyncio.gather(*(watch.websocket(user(i)) for i in range(10)))
        for i, client in enumerate(clients):
            head = ws_header(0x1 if i % 4 >= 2 else 0x2, len(payload))
            client.writer.write(head if i < 5 else head + payload)
            cost.bytes_sent += len(head) + (0 if i < 5 else len(payload))
        codes = await asyncio.wait_for(
            asyncio.gather(*(close_code(c) for c in clients)), scaled(10)
        )
        for client in clients:
            await client.close()
        assert codes[:5] == [1009] * 5, codes
        assert set(codes[5:]) <= {1009, None}, codes

    rounds = await watch.rounds("oversized WebSocket messages", wave)
    assert rounds.peak_mib() < 4, rounds.first.line()
    rounds.check(p99_ms=PING_P99_MS)


async def test_oversized_fragmented_websocket_message_is_not_kept(watch: Watch) -> None:
    """Waves of 10 WebSocket connections (half signed in), each sending a message in 64 KiB
    fragments whose sum is one byte over max_frame_bytes, binary or text: close code 1009 (at
    most 4 waves a round).

    Assembling the fragments up to the limit is allowed (1 MiB per connection at the peak);
    keeping them after the connection is gone is not. Would catch: a node that answers or keeps
    the connection open, or keeps the fragments of closed connections (measured before a fix:
    RSS 105 -> 128 -> 151 -> 174 -> 197 MiB over four rounds of 20 connections)."""
    payload = b"\xa1" * (MAX_FRAME + 1)
    pieces = [payload[at : at + 65536] for at in range(0, len(payload), 65536)]

    async def wave(cost: Cost) -> None:
        clients = await asyncio.gather(*(watch.websocket(user(i)) for i in range(10)))
        for i, client in enumerate(clients):
            await client.send_fragments(pieces, text=i % 4 >= 2)
            cost.bytes_sent += len(payload)
        closes = await asyncio.wait_for(
            asyncio.gather(*(c.close_received() for c in clients)), scaled(10)
        )
        for client in clients:
            await client.close()
        assert [close.code for close in closes] == [1009] * len(clients), closes

    rounds = await watch.rounds("oversized WebSocket messages in fragments", wave, max_waves=4)
    rounds.check(p99_ms=PING_P99_MS)


# -- bad frames: answered with bad_request, the connection lives on ---------------------------


def nested_msgpack(depth: int) -> bytes:
    """A map whose value nests ``depth`` - 1 arrays (the whole is ``depth`` levels deep)."""
    return b"\x81\xa1a" + b"\x91" * (depth - 2) + b"\x90"


def nested_json(depth: int) -> bytes:
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def fixstr(data: bytes) -> bytes:
    assert len(data) < 32
    return bytes([0xA0 | len(data)]) + data


_garbage = random.Random(14)
INVALID_UTF8 = (b"\xff", b"\xc3", b"\xc0\xaf", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80")

# name -> (MessagePack bodies, JSON texts)
BAD_FRAMES: dict[str, tuple[list[bytes], list[bytes]]] = {
    "garbage": (
        [b"", b"\xc1", b"\x81", b"\x81\xa3ab", packed({"a": 1}) + b"\x00", packed({"a": 1}) * 2]
        + [_garbage.randbytes(n) for n in (1, 7, 100, 3000)],
        [b"", b"{", b'{"a":}', b"{'a': 1}", b'{"a": 1} x', packed({"a": 1})],
    ),
    "not a map": (
        [packed(v) for v in ([1, 2], [], "op", 5, None, True, 1.5, b"\x81\xa1a\x01")],
        [json.dumps(v).encode() for v in ([1, 2], [], "op", 5, None, True, 1.5)],
    ),
    "deep nesting": (
        [nested_msgpack(17), nested_msgpack(100), nested_msgpack(10_000)],
        # (at most 16 KiB each: the frame limit before login, once issue 14's item 1 is in)
        [nested_json(17), nested_json(100), nested_json(5_000)],
    ),
    "invalid UTF-8": (
        [b"\x81" + fixstr(b"a") + fixstr(bad) for bad in INVALID_UTF8]
        + [b"\x81" + fixstr(b"\xff\xfe") + b"\x01"],  # in a key
        [b'{"a": "\xff"}', b'{"a": "\xc3"}', b'{"\xed\xa0\x80": 1}', b'{"a": "\\ud800"}'],
    ),
    "non-string keys": (
        [
            packed({1: "a"}),
            packed({None: "a"}),
            packed({True: "a"}),
            packed({1.5: "a"}),
            packed({b"op": "ping"}),
            packed({"a": {2: "b"}}),
            packed({"a": [{b"k": 1}]}),
            b"\x81\x91\x01\xa1a",  # an array as a key
            b"\x81\x80\xa1a",  # a map as a key
        ],
        [],  # JSON has no other keys
    ),
}

# The answers to each kind of bad frame (one of these): ``bad_request`` with the decoder's own
# words for a malformed frame ("malformed MessagePack: int is not allowed for map key …") or the
# node's; or ``too_large`` when a frame holds more values than the node decodes (before login:
# 256, so the 5,000-deep JSON; limits.max_frame_values after).
EXPECTED: dict[str, list[tuple[str, str]]] = {
    "garbage": [("bad_request", "malformed"), ("bad_request", "must hold a map")],
    "not a map": [("bad_request", "must hold a map")],
    "deep nesting": [
        ("bad_request", "nesting deeper than 16 levels"),
        ("bad_request", "malformed"),
        ("too_large", "frame holds more than"),
    ],
    "invalid UTF-8": [("bad_request", "malformed"), ("bad_request", "Unicode")],
    "non-string keys": [("bad_request", "map keys must be strings"), ("bad_request", "malformed")],
}


def expect_rejected(name: str, errors: list[dict[str, Any]], count: int) -> None:
    """``count`` error replies with ``"re": null``, each naming the fault."""
    assert len(errors) == count, (name, len(errors), count, errors[:3])
    for error in errors:
        assert error["re"] is None and error["ok"] is False, error
        code, message = error["error"]["code"], error["error"]["message"]
        assert any(code == c and part in message for c, part in EXPECTED[name]), (name, error)


async def until_reply(client: RawTcp | RawWebSocket, rid: int) -> list[dict[str, Any]]:
    """Everything the node sent up to and including the reply to request ``rid``."""
    out = []
    while True:
        obj = await client.recv()
        out.append(obj)
        if obj.get("re") == rid:
            return out


REPEAT = 10  # each bad frame is sent this many times on each connection of a wave


@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_bad_frames_get_bad_request_and_the_connection_lives(watch: Watch, name: str) -> None:
    """Waves in which every bad frame of one kind is sent :data:`REPEAT` times on TCP and
    WebSocket (binary, and text for JSON), before and after login: one error with ``"re":
    null`` per frame (``bad_request``; ``too_large`` for too many values), no ``bye``, and then
    a ``ping`` on the same connection is answered.

    Would catch: a decoder that raises something other than its protocol error (the node
    would close the connection or log an internal error), a frame that kills the connection or
    is silently dropped (the count of errors), an error that does not name the fault, or a
    decode that stalls the node (the bystander).

    Measured: 19-25 waves (34 kB to 15 MB sent) per round; ping p99 2-8 ms; loop lag <= 3 ms;
    RSS +0.0-0.4 MiB."""
    msgpack_bodies, json_texts = BAD_FRAMES[name]
    plan: list[tuple[str, str | None, list[tuple[bytes, bool]]]] = []
    for login in (None, "mallory1"):
        plan.append(("tcp", login, [(b, False) for b in msgpack_bodies]))
        plan.append(("websocket", login, [(b, False) for b in msgpack_bodies]))
        if json_texts:
            plan.append(("websocket", login, [(t, True) for t in json_texts]))

    async def run(
        transport: str, login: str | None, frames: list[tuple[bytes, bool]], cost: Cost
    ) -> None:
        client: RawTcp | RawWebSocket
        text = frames[0][1]
        if transport == "tcp":
            client = await watch.tcp(login)
        else:
            client = await watch.websocket(login, text=text)
        for _ in range(REPEAT):
            for data, is_text in frames:
                if isinstance(client, RawTcp):
                    client.writer.write(tcp_bytes(data))
                else:
                    await client.send_fragments([data], text=is_text)
                cost.bytes_sent += len(data)
        ping = {"op": "ping", "id": 999}
        if isinstance(client, RawTcp):
            await client.send(ping)
        else:
            await client.send(ping, text=text)
        said = await asyncio.wait_for(until_reply(client, 999), scaled(20))
        assert said[-1] == {"re": 999, "ok": True}, said[-1]
        assert not [m for m in said if "ev" in m], [m for m in said if "ev" in m]
        expect_rejected(name, said[:-1], REPEAT * len(frames))
        await client.close()

    async def wave(cost: Cost) -> None:
        await asyncio.gather(*(run(t, login, frames, cost) for t, login, frames in plan))

    rounds = await watch.rounds(f"bad frames: {name}", wave)
    rounds.check(p99_ms=PING_P99_MS)
