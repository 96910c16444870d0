"""Slowloris before login: many connections that trickle a frame that never completes, and never
authenticate, are closed by the authentication timeout (issue 14, the abuse suite).

docs/protocol.md section 5: a connection not authenticated ``limits.auth_timeout_s`` after it
was accepted gets ``bye`` ``auth_timeout`` and is closed; the time includes the WebSocket
handshake, and one that has not finished its handshake is closed without the ``bye``. Trickling
bytes does not extend it. The node here runs with a 2 s timeout so that the test is short.

Measured on the shared 2-core test machine (SQLite store), 50 connections per round, each
sending a byte every 0.2 s: see the module's output (``pytest -s``); the bystander's ping p99
stayed under 6 ms and the node's RSS moved by less than 1 MiB.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from websockets.frames import Close, Opcode

from tests.abuse.attack import Cost, Watch, scaled, watched_node
from tests.rawclients import RawTcp, RawWebSocket

AUTH_TIMEOUT_S = 2.0
TRICKLE_S = 0.2  # one byte this often
PING_P99_MS = 50  # measured: < 6 ms (see test_malformed.py for the bound's reasoning)
# Issue 14 item 3 caps the unauthenticated connections of one address (64 by default): stay
# under it, so that what is tested here is the timeout, not the cap.
TCP, WEBSOCKET, HANDSHAKE = 20, 15, 15


@pytest.fixture(scope="module")
async def watch(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Watch]:
    directory = tmp_path_factory.mktemp("slowloris")
    async with watched_node(
        directory, CHATSERVER_LIMITS_AUTH_TIMEOUT_S=str(AUTH_TIMEOUT_S)
    ) as watch:
        yield watch


class Trickler:
    """One connection that sends ``data`` a byte at a time until the node closes it; it records
    when that happened and what the node said."""

    def __init__(
        self, writer: asyncio.StreamWriter, data: bytes, cost: Cost, opened: float
    ) -> None:
        self.writer = writer
        self.data = data
        self.cost = cost
        self.opened = opened  # when the connection was opened (before the node accepted it)
        self.closed_after: float | None = None

    async def trickle(self, done: asyncio.Future[Any]) -> None:
        for i in range(len(self.data)):
            if done.done() or self.writer.is_closing():
                return
            self.writer.write(self.data[i : i + 1])
            self.cost.bytes_sent += 1
            try:
                await self.writer.drain()
            except ConnectionError:
                return
            try:
                await asyncio.wait_for(asyncio.shield(done), TRICKLE_S)
            except TimeoutError:
                pass
        raise AssertionError("the node let a connection trickle its whole frame")

    async def run(self, read: Any) -> Any:
        """Trickle while ``read()`` reads what the node says until it closes; its result."""
        reading = asyncio.ensure_future(read())
        await self.trickle(reading)
        said = await asyncio.wait_for(reading, scaled(AUTH_TIMEOUT_S + 5))
        self.closed_after = time.monotonic() - self.opened
        self.writer.close()
        return said


async def tcp_slowloris(watch: Watch, cost: Cost, hello: bool) -> tuple[float, list[Any]]:
    """A frame announcing 1,000 bytes, trickled (after a ``hello``, when asked)."""
    opened = time.monotonic()
    client = await RawTcp.connect(*watch.node.tcp)
    trickler = Trickler(client.writer, struct.pack(">I", 1000) + b"\x81" * 1000, cost, opened)
    if hello:
        hi = msgpack.packb({"op": "hello", "id": 1, "protocol": 1})
        client.writer.write(struct.pack(">I", len(hi)) + hi)
        cost.bytes_sent += 4 + len(hi)
    said = await trickler.run(client.read_to_end)
    assert trickler.closed_after is not None
    return trickler.closed_after, said


async def websocket_slowloris(watch: Watch, cost: Cost) -> tuple[float, list[Any]]:
    """After the handshake, a binary frame announcing 1,000 bytes, trickled."""
    opened = time.monotonic()
    client = await RawWebSocket.connect(*watch.node.websocket)
    head = bytes([0x82, 0x80 | 126]) + struct.pack(">H", 1000) + b"\0\0\0\0"
    trickler = Trickler(client.writer, head + b"\x81" * 1000, cost, opened)

    async def read() -> list[Any]:
        out: list[Any] = []
        try:
            while True:
                frame = await client.next_frame()
                if frame.opcode is Opcode.CLOSE:
                    out.append(Close.parse(frame.data))
                elif frame.opcode is Opcode.BINARY:
                    out.append(msgpack.unpackb(frame.data))
        except (EOFError, ConnectionError):
            return out

    said = await trickler.run(read)
    assert trickler.closed_after is not None
    return trickler.closed_after, said


async def handshake_slowloris(watch: Watch, cost: Cost) -> tuple[float, bytes]:
    """A WebSocket handshake whose header lines never end."""
    host, port = watch.node.websocket
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n".encode() + b"X-Slow: a\r\n" * 100
    trickler = Trickler(writer, request, cost, opened)

    async def read() -> bytes:
        try:
            return await reader.read()
        except ConnectionError:
            return b""

    said = await trickler.run(read)
    assert trickler.closed_after is not None
    return trickler.closed_after, said


async def test_slowloris_before_login_is_closed_by_the_auth_timeout(watch: Watch) -> None:
    """50 connections trickle a byte every 0.2 s and never authenticate: 20 TCP (half of them
    after ``hello``) inside a frame, 15 WebSocket inside a frame, 15 inside the WebSocket
    handshake. Each is closed between ``auth_timeout_s`` and 1.5 s after it (TCP and WebSocket
    with ``bye`` ``auth_timeout``, the WebSocket ones then with close code 1001; the handshake
    without a word); twice.

    Would catch: a timeout that trickled bytes extend, or that does not cover a frame under way
    or the handshake (each would trickle its 1,000 bytes: 200 s); a connection closed without
    its reason; the node slowed for others, or keeping the connections' memory."""

    async def wave(cost: Cost) -> None:
        tcp = [tcp_slowloris(watch, cost, hello=i % 2 == 1) for i in range(TCP)]
        ws = [websocket_slowloris(watch, cost) for _ in range(WEBSOCKET)]
        hs = [handshake_slowloris(watch, cost) for _ in range(HANDSHAKE)]
        results = await asyncio.gather(*tcp, *ws, *hs)
        tcp_said = results[:TCP]
        ws_said = results[TCP : TCP + WEBSOCKET]
        hs_said = results[TCP + WEBSOCKET :]
        # The node's timers run on its loop's cached clock, which may lag real time by a few
        # milliseconds: a timeout can seem to fire that much early.
        early = AUTH_TIMEOUT_S - 0.05
        late = scaled(AUTH_TIMEOUT_S + 1.5)
        for i, (after, said) in enumerate(tcp_said):
            assert early <= after < late, (after, said)
            expected = [{"ev": "bye", "reason": "auth_timeout"}]
            if i % 2 == 1:
                assert said[0]["re"] == 1 and said[0]["ok"], said
                said = said[1:]
            assert said == expected, said
        for after, said in ws_said:
            assert early <= after < late, (after, said)
            assert said[0] == {"ev": "bye", "reason": "auth_timeout"}, said
            assert said[1:] == [Close(1001, "auth_timeout")], said
        for after, said in hs_said:
            assert early <= after < late, (after, said)
            assert said == b"", said

    rounds = await watch.rounds(
        f"slowloris before login, {TCP + WEBSOCKET + HANDSHAKE} connections", wave, max_waves=1
    )
    rounds.check(p99_ms=PING_P99_MS)
