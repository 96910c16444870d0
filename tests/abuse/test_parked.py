"""Item 2 of issue 14: frames parked after login.

Logged-in connections could each hold 1 MiB - 1 of an unfinished frame for ever (60 of them kept
60 MiB). Now a frame must complete within ``limits.frame_timeout_s`` of its first byte (``bye``
``frame_timeout``), and a connection whose unfinished frame grows while the node-wide total of
such bytes is above ``limits.max_buffered_input_bytes`` is closed (``bye`` ``overloaded``).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ..conftest import Harness, node_config, scaled, start_node
from .helpers import MIB, Raw, RawWebSocket, tcp_frame, ws_client_frame
from .sqlite_only import sqlite_url


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    """SQLite only: these attacks exercise the transports, not the store (sqlite_only.py)."""
    return await sqlite_url(tmp_path)


TIMEOUT_S = 0.5


@pytest.fixture
async def quick(db_url: str) -> AsyncIterator[Harness]:
    """A node with a half-second frame deadline and room for two unfinished 1 MiB frames."""
    limits = {"frame_timeout_s": TIMEOUT_S, "max_buffered_input_bytes": 2 * MIB + MIB // 2}
    h = Harness(await start_node(node_config(db_url, limits=limits)))
    try:
        for name in ("alice", "bob", "carol"):
            await h.user(name)
        yield h
    finally:
        await h.close()


async def logged_in(h: Harness, name: str) -> Raw:
    raw = await Raw.connect(h.node.addresses["tcp"])
    assert (await raw.login(name))["ok"]
    return raw


async def test_a_frame_left_unfinished_after_login_is_closed_at_its_deadline(
    quick: Harness,
) -> None:
    attacker = await logged_in(quick, "alice")
    started = time.perf_counter()
    attacker.send(struct.pack(">I", MIB) + b"\0" * (MIB // 2))
    await attacker.closed()
    elapsed = time.perf_counter() - started
    assert attacker.bye() == "frame_timeout"
    assert TIMEOUT_S * 0.9 < elapsed < scaled(TIMEOUT_S + 2), elapsed
    assert quick.node.connections.buffered_input == 0


async def test_a_frame_trickled_slower_than_the_deadline_is_closed(quick: Harness) -> None:
    """Bytes that keep arriving do not extend the deadline: it counts from the frame's start."""
    attacker = await logged_in(quick, "alice")
    started = time.perf_counter()
    attacker.send(struct.pack(">I", 1000))
    while attacker.bye() is None and time.perf_counter() - started < scaled(5):
        attacker.send(b"x")
        try:
            await asyncio.wait_for(attacker.until(lambda m: m.get("ev") == "bye"), 0.05)
        except TimeoutError:
            pass
    assert attacker.bye() == "frame_timeout"
    assert time.perf_counter() - started < scaled(TIMEOUT_S + 2)
    attacker.close()


async def test_frames_that_complete_in_time_are_not_timed_out(quick: Harness) -> None:
    """Each frame gets its own deadline: a client that keeps sending frames, each split over
    reads and each completing in time, stays connected far beyond one deadline."""
    client = await logged_in(quick, "alice")
    deadline = time.perf_counter() + 3 * TIMEOUT_S
    rid = 10
    while time.perf_counter() < deadline:
        frame = tcp_frame({"op": "ping", "id": rid})
        client.send(frame[:3])
        await asyncio.sleep(TIMEOUT_S / 3)
        client.send(frame[3:])
        assert (await client.until(lambda m, rid=rid: m.get("re") == rid))["ok"]
        rid += 1
    assert client.bye() is None
    client.close()


async def test_unfinished_input_is_bounded_per_node(quick: Harness) -> None:
    """Three connections each park 1 MiB - 1: the one that takes the node's unfinished input
    past 2.5 MiB is closed; the others, and connections sending whole frames, carry on."""
    parked = [await logged_in(quick, name) for name in ("alice", "bob", "carol")]
    body = b"\0" * (MIB - 1)
    for raw in parked[:2]:
        raw.send(struct.pack(">I", MIB) + body)
    await asyncio.sleep(0.1)
    assert quick.node.connections.buffered_input == 2 * (MIB + 3)
    parked[2].send(struct.pack(">I", MIB) + body)
    await parked[2].closed()
    assert parked[2].bye() == "overloaded"
    assert (
        quick.node.connections.buffered_input <= quick.node.config.limits.max_buffered_input_bytes
    )
    for raw in parked[:2]:  # finishing their frames is fine (a 1 MiB ping)
        raw.send(b"\0")
        error = await raw.until(lambda m: m.get("re", 0) is None)
        assert error["error"]["code"] == "bad_request"  # a body of zeros is not a map
        assert raw.bye() is None
        raw.close()
    await asyncio.sleep(0.05)
    assert quick.node.connections.buffered_input == 0


async def test_websocket_frame_left_unfinished_is_closed_at_its_deadline(quick: Harness) -> None:
    ws = await RawWebSocket.connect(quick.node.addresses["websocket"])
    assert ws.status == 101
    hello = ws_client_frame(b'{"op":"hello","id":1,"protocol":1}', 0x1)
    auth = b'{"op":"auth","id":2,"user":"alice","password":"correct horse battery"}'
    ws.send(hello + ws_client_frame(auth, 0x1))
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    ws.send(ws_client_frame(b"x" * 100_000, 0x2)[:50_000])
    code, data = await ws.closed()
    assert b'"reason":"frame_timeout"' in data or b"frame_timeout" in data
    assert code == 1001
    assert time.perf_counter() - started < scaled(TIMEOUT_S + 2)


async def test_websocket_fragments_never_finished_are_closed(quick: Harness) -> None:
    """A message begun in fragments and kept open with pings does not escape the deadline."""
    ws = await RawWebSocket.connect(quick.node.addresses["websocket"])
    ws.send(ws_client_frame(b'{"op":"hello","id":1,"protocol":1}', 0x1))
    started = time.perf_counter()
    ws.send(ws_client_frame(b'{"op":', 0x1, fin=False))
    closed = asyncio.ensure_future(ws.closed())
    for _ in range(int(3 * TIMEOUT_S / 0.1)):
        await asyncio.sleep(0.1)
        if closed.done():
            break
        ws.send(ws_client_frame(b"", 0x0, fin=False) + ws_client_frame(b"", 0x9))
    code, data = await closed
    assert code == 1001
    assert b"frame_timeout" in data
    assert time.perf_counter() - started < scaled(TIMEOUT_S + 2)
