"""Frames no client should send: too large, not MessagePack or JSON, not a map, nested too deep,
invalid UTF-8, keys that are not strings (issue 14, the abuse suite: cases that held before).

Each attack runs against a node in its own process while a bystander in a third process pings
it, and asserts three things: the node's answer (docs/protocol.md sections 1 and 2: ``too_large``
then ``bye`` ``frame_too_large`` for an oversized TCP header, close code 1009 for an oversized
WebSocket message, ``bad_request`` with ``"re": null`` for a bad frame, the connection living on);
that the bystander's ping p99 stayed under :data:`PING_P99_MS`; and that the node's resident
memory came back to within :data:`RSS_SLACK_MIB` of where it was.

Every attack runs twice (:meth:`~tests.abuse.attack.Watch.twice`) and prints what each round
cost (``pytest -s``): bytes sent, the node's RSS before, at its peak and after, its largest
event-loop lag, and the bystander's ping p50/p99/max. Measured on the shared 2-core test
machine (SQLite store): no attack here moved the bystander's p99 above 6 ms (idle: 0.5 ms) or
the loop lag above 3 ms; RSS rose by less than 0.5 MiB per round, except for the two cases
marked ``xfail`` below, which keep memory after the connections are gone.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.abuse.attack import PASSWORD, Cost, Watch, packed, scaled, tcp_bytes, watched_node
from tests.rawclients import RawTcp, RawWebSocket

# The bystander's ping p99 during an attack. The issue asks for 50 ms; on this machine an idle
# node answers in 0.2-0.5 ms at p99 and every attack below stayed under 15 ms, so 50 ms holds
# with a margin (and a stall like issue 14's item 1, ~1 s per frame, breaks it at once).
PING_P99_MS = 50
MAX_FRAME = 1_048_576  # limits.max_frame_bytes, the default
USERS = 4  # the attackers' accounts: at most 20 connections each (issue 14 item 3 caps them)


@pytest.fixture(scope="module")
async def watch(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Watch]:
    directory = tmp_path_factory.mktemp("malformed")
    async with watched_node(directory) as watch:
        for i in range(USERS):
            await watch.node.add_user(f"mallory{i}")
        yield watch


async def tcp(watch: Watch, *, login: int | None) -> RawTcp:
    """A raw TCP connection; logged in as ``mallory<login>`` unless ``login`` is None."""
    client = await RawTcp.connect(*watch.node.tcp)
    if login is not None:
        await log_in(client, f"mallory{login % USERS}")
    return client


async def websocket(watch: Watch, *, login: int | None, text: bool = False) -> RawWebSocket:
    client = await RawWebSocket.connect(*watch.node.websocket)
    if login is not None:
        await log_in(client, f"mallory{login % USERS}", text=text)
    return client


async def log_in(client: RawTcp | RawWebSocket, user: str, *, text: bool = False) -> None:
    if isinstance(client, RawWebSocket):
        await client.send({"op": "hello", "id": 1, "protocol": 1}, text=text)
        await client.send({"op": "auth", "id": 2, "user": user, "password": PASSWORD}, text=text)
        while (reply := await client.recv()).get("re") != 2:
            pass
    else:
        await client.request("hello", protocol=1)
        reply = await client.request("auth", user=user, password=PASSWORD)
    assert reply.get("ok"), reply


def logged_in_or_not(i: int) -> int | None:
    return i if i % 2 else None


def too_large(replies: list[dict[str, Any]]) -> None:
    """What the node answers an oversized TCP header: the error, ``bye``, and nothing more."""
    assert len(replies) == 2, replies
    error, bye = replies
    assert error["re"] is None and error["ok"] is False, error
    assert error["error"]["code"] == "too_large", error
    assert bye == {"ev": "bye", "reason": "frame_too_large"}


# -- too large ---------------------------------------------------------------------------------


async def test_oversized_tcp_header_closes_with_a_reason(watch: Watch) -> None:
    """A header announcing more than max_frame_bytes, before and after login: ``too_large``,
    ``bye`` ``frame_too_large``, close, for each of 40 connections at once.

    Would catch: a node that waits for (and buffers) the announced body, answers nothing, drops
    the connection without a reason, or stalls the others meanwhile."""

    async def attack(cost: Cost) -> None:
        clients = [await tcp(watch, login=logged_in_or_not(i)) for i in range(40)]
        for i, client in enumerate(clients):
            # the largest header there is, and one byte over the limit
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

    rounds = await watch.twice("oversized TCP headers, 40 connections", attack)
    rounds.check(p99_ms=PING_P99_MS)


@pytest.mark.xfail(
    reason="issue 14: the error of an oversized TCP frame keeps the read that carried it"
    " (through its traceback) until the cyclic GC collects the closed connection; fixed on"
    " branch abuse-frames (9707526). Remove this mark when that is merged. Not strict: a cyclic"
    " collection during a round, which the node's own allocations may start, frees it.",
    strict=False,
)
async def test_oversized_tcp_body_is_never_kept(watch: Watch) -> None:
    """40 logged-in connections each send a header one byte over max_frame_bytes followed by the
    whole 1 MiB body (40 MiB in all), without reading; twice.

    Would catch: a node that reads the body of a frame it refused (the peak RSS would grow
    towards the 40 MiB sent), keeps serving a stream it can no longer trust, or keeps what it
    read after the connection is gone: before the fix each closed connection kept its last read
    (~256 KiB) until a cyclic collection, +10 MiB in every round."""
    body = random.Random(14).randbytes(MAX_FRAME + 1)

    async def attack(cost: Cost) -> None:
        clients = [await tcp(watch, login=i) for i in range(40)]
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

    rounds = await watch.twice("oversized TCP body, 40 x 1 MiB", attack)
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
    """A WebSocket message one byte over max_frame_bytes in one frame (binary and text, before
    and after login), on 20 connections at once, twice: half of them send the frame's head
    only, the others its 1 MiB payload too. Close code 1009, nothing else.

    Would catch: a node that reads the payload of a frame whose head is already too long (the
    peak RSS would grow towards the 10 MiB of payload sent), answers it, or keeps the
    connection open. A client still sending its payload may see a reset instead of the close
    frame (the node closes with input unread): for those the code is checked when it comes."""
    payload = b"\xa1" * (MAX_FRAME + 1)

    async def attack(cost: Cost) -> None:
        clients = [await websocket(watch, login=logged_in_or_not(i)) for i in range(20)]
        for i, client in enumerate(clients):
            head = ws_header(0x1 if i % 4 >= 2 else 0x2, len(payload))
            client.writer.write(head if i < 10 else head + payload)
            cost.bytes_sent += len(head) + (0 if i < 10 else len(payload))
        codes = await asyncio.wait_for(
            asyncio.gather(*(close_code(c) for c in clients)), scaled(10)
        )
        for client in clients:
            await client.close()
        assert codes[:10] == [1009] * 10, codes
        assert set(codes[10:]) <= {1009, None}, codes

    rounds = await watch.twice("oversized WebSocket messages, 20 x 1 MiB", attack)
    assert rounds.peak_mib() < 8, rounds.first.line()
    rounds.check(p99_ms=PING_P99_MS)


@pytest.mark.xfail(
    reason="the fragments of a WebSocket message closed with 1009 stay with the closed"
    " connection (in a cycle with its session) until the cyclic GC runs: +23 MiB for every 20"
    " connections, repeatedly (measured). WebSocketConnection should drop _fragments when the"
    " connection is lost. Remove this mark when fixed. Not strict: a cyclic collection during"
    " a round frees it.",
    strict=False,
)
async def test_oversized_fragmented_websocket_message_is_not_kept(watch: Watch) -> None:
    """A WebSocket message in 64 KiB fragments whose sum is one byte over max_frame_bytes,
    before and after login, binary and text: close code 1009 on 20 connections at once; twice.

    Assembling the fragments up to the limit is allowed (1 MiB per connection at the peak);
    keeping them after the connection is gone is not. Would catch: a node that answers or keeps
    the connection open, or keeps the fragments of closed connections (measured before a fix:
    RSS 105 -> 128 -> 151 -> 174 -> 197 MiB over four rounds)."""
    payload = b"\xa1" * (MAX_FRAME + 1)
    pieces = [payload[at : at + 65536] for at in range(0, len(payload), 65536)]

    async def attack(cost: Cost) -> None:
        clients = [await websocket(watch, login=logged_in_or_not(i)) for i in range(20)]
        for i, client in enumerate(clients):
            await client.send_fragments(pieces, text=i % 4 >= 2)
            cost.bytes_sent += len(payload)
        closes = await asyncio.wait_for(
            asyncio.gather(*(c.close_received() for c in clients)), scaled(10)
        )
        for client in clients:
            await client.close()
        assert [close.code for close in closes] == [1009] * len(clients), closes

    rounds = await watch.twice("oversized WebSocket messages in fragments, 20 x 1 MiB", attack)
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

# What the error's message says, for each kind (one of these): the decoder's own words for a
# malformed frame ("malformed MessagePack: int is not allowed for map key …"), or the node's.
EXPECTED_MESSAGES = {
    "garbage": ("malformed", "must hold a map"),  # random bytes can hold a scalar
    "not a map": ("must hold a map",),
    "deep nesting": ("nesting deeper than 16 levels", "malformed"),
    "invalid UTF-8": ("malformed", "Unicode"),
    "non-string keys": ("map keys must be strings", "malformed"),
}


def expect_bad_request(name: str, errors: list[dict[str, Any]], count: int) -> None:
    """``count`` error replies with ``"re": null`` and ``bad_request``, each naming the fault."""
    assert len(errors) == count, (name, len(errors), count, errors[:3])
    for error in errors:
        assert error["re"] is None and error["ok"] is False, error
        assert error["error"]["code"] == "bad_request", (name, error)
        message = error["error"]["message"]
        assert any(part in message for part in EXPECTED_MESSAGES[name]), (name, message)


async def until_reply(client: RawTcp | RawWebSocket, rid: int) -> list[dict[str, Any]]:
    """Everything the node sent up to and including the reply to request ``rid``."""
    out = []
    while True:
        obj = await client.recv()
        out.append(obj)
        if obj.get("re") == rid:
            return out


REPEAT = 40  # each bad frame is sent this many times on each connection


@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_bad_frames_get_bad_request_and_the_connection_lives(watch: Watch, name: str) -> None:
    """Every bad frame of one kind, :data:`REPEAT` times over, on TCP and WebSocket (binary, and
    text for JSON), before and after login: one ``bad_request`` error with ``"re": null`` per
    frame, no ``bye``, and then a ``ping`` on the same connection is answered.

    Would catch: a decoder that raises something other than its protocol error (the node
    would close the connection or log an internal error), a frame that kills the connection or
    is silently dropped (the count of errors), an error that does not name the fault, or a
    decode that stalls the node (the bystander)."""
    msgpack_bodies, json_texts = BAD_FRAMES[name]

    async def attack(cost: Cost) -> None:
        plans: list[tuple[RawTcp | RawWebSocket, list[tuple[bytes, bool]]]] = []
        for login in (None, 1):
            msgpack_frames = [(b, False) for b in msgpack_bodies]
            plans.append((await tcp(watch, login=login), msgpack_frames))
            plans.append((await websocket(watch, login=login), msgpack_frames))
            if json_texts:
                client = await websocket(watch, login=login, text=True)
                plans.append((client, [(t, True) for t in json_texts]))

        async def run(client: RawTcp | RawWebSocket, frames: list[tuple[bytes, bool]]) -> None:
            for _ in range(REPEAT):
                for data, text in frames:
                    if isinstance(client, RawTcp):
                        client.writer.write(tcp_bytes(data))
                    else:
                        await client.send_fragments([data], text=text)
                    cost.bytes_sent += len(data)
            ping = {"op": "ping", "id": 999}
            if isinstance(client, RawTcp):
                await client.send(ping)
            else:
                await client.send(ping, text=frames[-1][1])
            said = await asyncio.wait_for(until_reply(client, 999), scaled(20))
            assert said[-1] == {"re": 999, "ok": True}, said[-1]
            assert not [m for m in said if "ev" in m], [m for m in said if "ev" in m]
            expect_bad_request(name, said[:-1], REPEAT * len(frames))
            await client.close()

        await asyncio.gather(*(run(client, frames) for client, frames in plans))

    rounds = await watch.twice(f"bad frames: {name}", attack)
    rounds.check(p99_ms=PING_P99_MS)
