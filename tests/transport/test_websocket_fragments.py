"""WebSocket messages split across continuation frames (RFC 6455 §5.4).

A client may send one message in any number of frames, a control frame between them; the server
must answer exactly as if the message came in one frame, and must refuse (close 1009) a message
whose fragments add up to more than ``limits.max_frame_bytes`` even if each fragment is small.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import CloseCode, Frame, Opcode

from chatserver.store.migrate import upgrade
from tests.conftest import PASSWORD, Harness, node_config, scaled, start_node
from tests.rawclients import RawWebSocket, encode

Connect = Callable[[], Awaitable[RawWebSocket]]
MAX_MESSAGE = 2048  # limits.max_frame_bytes: the most one message may hold, however split


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """A node on SQLite (framing does not touch the store) with a small message limit."""
    url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, url)
    h = Harness(await start_node(node_config(url, limits={"max_frame_bytes": MAX_MESSAGE})))
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture
async def connect(harness: Harness) -> AsyncIterator[Connect]:
    """Open raw WebSocket connections to the node; all are closed at the end, pass or fail."""
    opened: list[RawWebSocket] = []

    async def _connect() -> RawWebSocket:
        opened.append(await RawWebSocket.connect(*harness.node.addresses["websocket"]))
        return opened[-1]

    yield _connect
    for ws in opened:
        await ws.close()


def _split(data: bytes, size: int) -> list[bytes]:
    """Pieces of ``size`` bytes, and an empty fragment in the middle (legal, and easy to get
    wrong)."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return [*pieces[:1], b"", *pieces[1:]]


def _same(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply without what differs between two sessions of the same user (and the server's
    clock, which a join reply carries)."""
    return {k: v for k, v in reply.items() if k not in ("token", "ts", "now")}


@pytest.mark.parametrize("text", [False, True], ids=["msgpack", "json"])
@pytest.mark.parametrize("size", [1, 7, 100])
async def test_fragmented_requests_get_the_same_answers(
    harness: Harness, connect: Connect, text: bool, size: int
) -> None:
    await harness.user("alice")
    room = await harness.room()
    whole = await connect()
    split = await connect()

    async def both(request: dict[str, Any], *, ping_after: int | None = None) -> None:
        await whole.send(request, text=text)
        await split.send_fragments(
            _split(encode(request, text), size), text=text, ping_after=ping_after
        )
        a, b = await whole.recv(), await split.recv()
        assert a.get("re") == b.get("re") == request.get("id")
        assert _same(a) == _same(b), request["op"]

    await both({"op": "hello", "id": 1, "protocol": 1, "client": "fragments"})
    await both({"op": "auth", "id": 2, "user": "alice", "password": PASSWORD})
    await both({"op": "join", "id": 3, "room": room}, ping_after=0)
    await both({"op": "no.such.op", "id": 4})  # an error reply, the same both ways
    await both({"op": "join", "id": 5})  # a missing field: bad_request both ways

    # A post split inside a multi-byte character: both sessions see the text as sent.
    post = {"op": "post", "id": 6, "room": room, "text": "héllo wörld €", "cid": "f"}
    await split.send_fragments(_split(encode(post, text), size), text=text)
    seen = [await split.recv(), await split.recv(), await whole.recv()]
    ack = next(m for m in seen[:2] if m.get("re") == 6)
    assert ack["ok"] and ack["seq"] == 1
    for event in (next(m for m in seen[:2] if m.get("ev")), seen[2]):
        assert event["ev"] == "message" and event["text"] == "héllo wörld €"
    await both({"op": "history", "id": 7, "room": room, "after": 0})


async def test_fragments_adding_up_to_the_limit_are_served(connect: Connect) -> None:
    ws = await connect()
    request = {"op": "hello", "id": 1, "protocol": 1, "client": ""}
    while len(data := encode(request, False)) < MAX_MESSAGE:
        request["client"] += "x"
    assert len(data) == MAX_MESSAGE
    await ws.send_fragments(_split(data, 500))
    async with asyncio.timeout(scaled(5)):
        reply = await ws.recv()
    assert reply["re"] == 1  # served (whatever the server thinks of so long a client name)


async def test_fragments_adding_up_to_more_than_the_limit_close_1009(
    harness: Harness, connect: Connect
) -> None:
    ws = await connect()
    bystander = await harness.connect("websocket")
    data = encode({"op": "ping", "id": 1, "pad": "x" * MAX_MESSAGE}, False)
    pieces = _split(data, 500)
    assert all(len(p) < MAX_MESSAGE for p in pieces) and len(data) > MAX_MESSAGE
    await ws.send_fragments(pieces)
    async with asyncio.timeout(scaled(5)):
        close = await ws.close_received()
        rest = await ws.read_to_end()  # then the server ends the TCP connection
    assert close.code == CloseCode.MESSAGE_TOO_BIG
    assert rest == []  # the request was never served
    assert (await bystander.call("ping"))["ok"]  # nobody else noticed


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param("cont-first", id="continuation-without-a-start"),
        pytest.param("new-message", id="new-message-before-the-last-fragment"),
    ],
)
async def test_fragments_out_of_order_close_1002(connect: Connect, frames: str) -> None:
    ws = await connect()
    data = encode({"op": "ping", "id": 1}, False)
    if frames == "cont-first":
        sent = [Frame(Opcode.CONT, data)]
    else:
        sent = [Frame(Opcode.BINARY, data[:3], fin=False), Frame(Opcode.BINARY, data)]
    # By hand: the library's own sending side refuses to build these.
    ws.writer.write(b"".join(frame.serialize(mask=True) for frame in sent))
    async with asyncio.timeout(scaled(5)):
        close = await ws.close_received()
        rest = await ws.read_to_end()
    assert close.code == CloseCode.PROTOCOL_ERROR
    assert rest == []
