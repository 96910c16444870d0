"""A client that stops reading: the node bounds what it holds for it, and closes it.

``limits.output_buffer_bytes`` bounds the output a connection may leave unsent
(``chatserver/transport/connection.py``): past it the connection is told ``resync`` for every
room and gets no more live events; if it then does not drain within ``DRAIN_TIMEOUT_S``, or
its backlog grows by another limit (its own requests' replies), it is aborted. Meanwhile every
other client is served as usual. The stalled clients here are raw sockets that never read.

The node's view comes from ``/metrics`` (resyncs, live subscriptions, deliveries, connections).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatserver.client import Client
from chatserver.store.migrate import upgrade
from chatserver.transport import connection
from tests.conftest import PASSWORD, Harness, node_config, scaled, start_node
from tests.rawclients import RawTcp, RawWebSocket

LIMIT = 65_536  # limits.output_buffer_bytes: the smallest the configuration allows
TEXT = 60_000  # characters per post: a few posts pass the limit
TOKEN = "backpressure-test-token-0123456789"
RCVBUF = 4096  # the stalled client's kernel receive buffer (the kernel doubles it)
TRANSPORTS = ["tcp", "websocket"]
Metrics = dict[tuple[str, str], float]  # (sample name, transport label) -> value


@dataclass
class Node:
    h: Harness
    http: aiohttp.ClientSession
    room: int
    raw: list[RawTcp | RawWebSocket] = field(default_factory=list)

    async def metrics(self) -> Metrics:
        async with self.http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
            text = await r.text()
        return {
            (s.name, s.labels.get("transport", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def wait_for(
        self, what: str, check: Callable[[Metrics], bool], timeout: float = 10.0
    ) -> None:
        """Poll /metrics until ``check(metrics)`` holds."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:  # the node's counters have no event to wait on: poll them
                    if check(await self.metrics()):
                        return
                    await asyncio.sleep(0.02)
        except TimeoutError:
            shown = ("connections", "joined_rooms", "resyncs_total", "deliveries_total")
            seen = {k: v for k, v in (await self.metrics()).items() if k[0][11:] in shown}
            pytest.fail(f"{what}: not within {timeout}s; metrics: {seen}")

    async def stalled(self, transport: str) -> RawTcp | RawWebSocket:
        """A logged-in client in the room that will read nothing more."""
        kind = RawTcp if transport == "tcp" else RawWebSocket
        client = await kind.connect(*self.h.node.addresses[transport], rcvbuf=RCVBUF)
        self.raw.append(client)
        assert (await client.request("hello", protocol=1, client="stalled"))["ok"]
        assert (await client.request("auth", user="stalled", password=PASSWORD))["ok"]
        assert (await client.request("join", room=self.room))["ok"]
        return client


@pytest.fixture
async def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Node]:
    """A node on SQLite (this is about the transport, not the store) with the smallest output
    limit and big posts allowed, users poster / fast / stalled and one room."""
    monkeypatch.setattr(connection, "DRAIN_TIMEOUT_S", 0.5)
    url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, url)
    config = node_config(
        url,
        limits={"output_buffer_bytes": LIMIT},
        chat={"max_message_chars": TEXT},
        management={"token": TOKEN},
    )
    h = Harness(await start_node(config))
    host, port = h.node.management.address  # type: ignore[union-attr,misc]
    try:
        for name in ("poster", "fast", "stalled"):
            await h.user(name)
        room = await h.room()
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            node = Node(h, http, room)
            try:
                yield node
            finally:
                for client in node.raw:
                    await client.close()
    finally:
        await h.close()


async def _service_goes_on(node: Node, poster: Client, fast: Client, posted: int) -> None:
    """The others were never held up, and the node takes new clients as before."""
    seqs = [(await fast.next_event("message", timeout=scaled(10)))["seq"] for _ in range(posted)]
    assert seqs == list(range(1, posted + 1))
    newcomer = await node.h.login("poster", "websocket")
    await newcomer.call("join", room=node.room)
    ack = await poster.call("post", room=node.room, text="after", cid="after")
    assert ack["seq"] == posted + 1
    for client in (fast, newcomer):
        event = await client.next_event("message", timeout=scaled(5))
        assert (event["seq"], event["text"]) == (posted + 1, "after")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_subscriber_that_stops_reading_is_cut_off_then_closed(
    node: Node, transport: str
) -> None:
    poster = await node.h.login("poster")
    fast = await node.h.login("fast")
    await fast.call("join", room=node.room)
    stalled = await node.stalled(transport)
    before = await node.metrics()
    assert before[("chatserver_connections", transport)] >= 1
    assert before[("chatserver_joined_rooms", "")] == 2

    # Post until the node gives up on it: once the socket buffers are full (a few MB on
    # loopback) its output passes the limit, and it is told to resync (a connection that does
    # not read cannot be told more) and taken out of the room.
    posted = 0
    while (await node.metrics())[("chatserver_resyncs_total", "")] == 0:
        assert posted < 400, "24 MB posted and the stalled client never fell behind"
        for _ in range(10):
            text = f"{posted:05}" + "x" * (TEXT - 5)
            await poster.call("post", room=node.room, text=text, cid=str(posted))
            posted += 1
    cut_off = await node.metrics()
    assert cut_off[("chatserver_joined_rooms", "")] == 1  # only the fast reader's
    to_stalled = cut_off[("chatserver_deliveries_total", "")] - posted  # the rest went to "fast"
    assert 0 < to_stalled <= posted

    # Nothing more is queued for it, however much more is posted: what it holds is bounded.
    for _ in range(20):
        await poster.call("post", room=node.room, text="y" * TEXT, cid=str(posted))
        posted += 1
    total = posted + to_stalled  # every one of them to "fast", none to the stalled client
    await node.wait_for("delivered", lambda m: m[("chatserver_deliveries_total", "")] >= total)
    assert (await node.metrics())[("chatserver_deliveries_total", "")] == total

    # Then closed, since it never drained: the socket ends (reset) after what the kernel held.
    await node.wait_for(
        "closed",
        lambda m: (
            m[("chatserver_connections", transport)]
            == before[("chatserver_connections", transport)] - 1
        ),
        timeout=5,
    )
    async with asyncio.timeout(scaled(10)):
        got = await stalled.read_to_end()
    seqs = [m["seq"] for m in got if m.get("ev") == "message"]
    assert seqs == list(range(1, len(seqs) + 1))  # in order, without a gap, then the end
    assert len(seqs) <= to_stalled

    await _service_goes_on(node, poster, fast, posted)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_replies_piling_up_unread_close_the_connection_at_once(
    node: Node, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that keeps asking and never reads: its backlog grows past the limit again, and
    it is aborted then, without waiting for the drain timeout."""
    monkeypatch.setattr(connection, "DRAIN_TIMEOUT_S", 60.0)
    poster = await node.h.login("poster")
    fast = await node.h.login("fast")
    await fast.call("join", room=node.room)
    posted = 20
    for i in range(posted):
        await poster.call("post", room=node.room, text=f"{i:05}" + "x" * (TEXT - 5), cid=str(i))
    await fast.call("ping")
    stalled = await node.stalled(transport)  # it read its join reply: 1.2 MB
    before = await node.metrics()

    # Twenty history pages of 1.2 MB each, asked for at once, none read: 24 MB if all were kept.
    for i in range(20):
        request = {"op": "history", "id": 100 + i, "room": node.room, "after": 0, "limit": 20}
        await stalled.send(request)

    await node.wait_for(
        "closed",
        lambda m: (
            m[("chatserver_connections", transport)]
            == before[("chatserver_connections", transport)] - 1
        ),
        timeout=5,
    )
    async with asyncio.timeout(scaled(10)):
        got = await stalled.read_to_end()
    assert len([m for m in got if m.get("re", 0) >= 100]) < 20  # it never had them all
    await _service_goes_on(node, poster, fast, posted)
