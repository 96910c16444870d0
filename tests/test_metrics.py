"""/metrics: Prometheus text that parses, and values that move as the traffic they count happens."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatserver.client import Client
from chatserver.store.migrate import upgrade
from tests.conftest import PASSWORD, Harness, node_config, scaled, start_node

TOKEN = "metrics-test-token-0123456789"


class Scraper:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.types: dict[str, str] = {}

    async def scrape(self) -> Scraper:
        async with self.http.get(
            "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        self.samples = {}
        self.types = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                assert key not in self.samples, f"{key} twice"
                self.samples[key] = sample.value
        return self

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]


async def _node(url: str, **sections: dict[str, object]) -> Harness:
    sections["management"] = {"token": TOKEN}
    return Harness(await start_node(node_config(url, **sections)))


@pytest.fixture
async def rate_limited(db_url: str) -> AsyncIterator[tuple[Harness, Scraper]]:
    """A node (on each dialect) where each user may post once per second."""
    h = await _node(db_url, limits={"posts_per_user_per_s": 1})
    host, port = h.node.management.address  # type: ignore[union-attr,misc]
    try:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            yield h, Scraper(http)
    finally:
        await h.close()


async def test_metrics_move_with_traffic(rate_limited: tuple[Harness, Scraper]) -> None:
    h, m = rate_limited
    await m.scrape()
    assert all(name.startswith("chatserver_") for name in m.types), sorted(m.types)
    assert all(name.startswith("chatserver_") for name, _labels in m.samples)
    assert m.types["chatserver_group_commit_batch_size"] == "histogram"
    assert m.types["chatserver_group_commit_seconds"] == "histogram"
    assert m.types["chatserver_posts_received"] == "counter"
    assert m.types["chatserver_connections"] == "gauge"
    assert m("chatserver_event_loop_lag_seconds") >= 0
    # A collection in the node's process is observed (the test runs in that process).
    before = sum(v for (n, _), v in m.samples.items() if n == "chatserver_gc_pause_seconds_count")
    gc.collect()
    await m.scrape()
    assert m.types["chatserver_gc_pause_seconds"] == "histogram"
    assert m("chatserver_gc_pause_seconds_count", generation="2") >= 1
    after = sum(v for (n, _), v in m.samples.items() if n == "chatserver_gc_pause_seconds_count")
    assert after > before
    assert m("chatserver_connections", transport="tcp") == 0
    assert m("chatserver_connections", transport="websocket") == 0
    assert m("chatserver_authenticated_users") == 0
    assert m("chatserver_joined_rooms") == 0
    assert m("chatserver_posts_received_total") == 0
    assert m("chatserver_posts_stored_total") == 0
    assert m("chatserver_group_commit_batch_size_count") == 0
    # labels have a small fixed set of values, present from the start
    assert m("chatserver_store_errors_total", operation="group_commit") == 0

    from chatserver.store.rooms import create_room

    room = await h.room("lobby")  # open
    secret = (await create_room(h.node.db, "secret", privacy="secret")).id
    for name in ("ann", "bob", "cat"):
        await h.user(name)

    # connections by transport; authentication
    ann = await h.connect("tcp")
    await ann.call("hello", protocol=1, client="t")
    await m.scrape()
    assert m("chatserver_connections", transport="tcp") == 1
    assert m("chatserver_authenticated_users") == 0
    await ann.call("auth", user="ann", password=PASSWORD)
    bob = await h.connect("websocket")
    await bob.login("bob", PASSWORD)
    cat = await h.login("cat")
    await m.scrape()
    assert m("chatserver_connections", transport="tcp") == 2
    assert m("chatserver_connections", transport="websocket") == 1
    assert m("chatserver_authenticated_users") == 3

    # joined rooms
    await ann.call("join", room=room)
    await bob.call("join", room=room)
    await m.scrape()
    assert m("chatserver_joined_rooms") == 2

    # posts received and stored, deliveries (2 subscribers), group-commit histograms
    for client in (ann, bob, cat):
        await client.call("post", room=room, text="hello", cid="1")
    for client in (ann, bob):
        for _ in range(3):
            await client.next_event("message", timeout=scaled(5))
    await m.scrape()
    assert m("chatserver_posts_received_total") == 3
    assert m("chatserver_posts_stored_total") == 3
    assert m("chatserver_deliveries_total") == 6
    batches = m("chatserver_group_commit_batch_size_count")
    assert 1 <= batches <= 3
    assert m("chatserver_group_commit_batch_size_sum") == 3
    assert m("chatserver_group_commit_seconds_count") == batches
    assert m("chatserver_group_commit_seconds_sum") > 0
    assert m("chatserver_group_commit_batch_size_bucket", le="+Inf") == batches

    # rejected posts, by reason
    async def refused(client: Client, **fields: Any) -> str:
        reply = await client.request("post", **fields)
        assert not reply["ok"], reply
        return str(reply["error"]["code"])

    assert await refused(ann, room=room, text="again", cid="2") == "rate_limited"
    assert await refused(bob, room=99999, text="x", cid="3") == "not_found"
    assert await refused(cat, room=secret, text="x", cid="4") == "not_found"
    assert await refused(cat, room=room, text="x" * 9000, cid="5") == "too_large"
    await m.scrape()
    assert m("chatserver_posts_rejected_total", reason="rate_limited") == 1
    assert m("chatserver_rate_limited_requests_total") == 1
    assert m("chatserver_posts_rejected_total", reason="not_found") == 2
    assert m("chatserver_posts_rejected_total", reason="too_large") == 1
    assert m("chatserver_posts_received_total") == 7
    assert m("chatserver_posts_stored_total") == 3  # nothing more stored
    # a duplicate (same cid) is received, not stored again, not delivered again
    await asyncio.sleep(1.1)  # ann's bucket refills
    reply = await ann.call("post", room=room, text="hello", cid="1")
    assert reply["duplicate"] is True
    await m.scrape()
    assert m("chatserver_posts_received_total") == 8
    assert m("chatserver_posts_stored_total") == 3
    assert m("chatserver_deliveries_total") == 6

    # leaving and disconnecting bring the gauges back down
    await ann.call("leave", room=room)
    await m.scrape()
    assert m("chatserver_joined_rooms") == 1
    await bob.close()
    await cat.close()
    await ann.close()
    async with asyncio.timeout(scaled(5)):
        while True:
            await m.scrape()
            if m("chatserver_connections", transport="tcp") == 0 and (
                m("chatserver_connections", transport="websocket") == 0
            ):
                break
            await asyncio.sleep(0.02)
    assert m("chatserver_authenticated_users") == 0
    assert m("chatserver_joined_rooms") == 0


async def test_resyncs_are_counted(tmp_path: Path) -> None:
    """A reader that stops reading falls behind: a resync (too_slow), counted."""
    url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, url)
    h = await _node(url, limits={"output_buffer_bytes": 65536})
    host, port = h.node.management.address  # type: ignore[union-attr,misc]
    try:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            m = Scraper(http)
            room = await h.room()
            for name in ("poster", "slow"):
                await h.user(name)
            poster = await h.login("poster")
            slow = await h.login("slow")
            await slow.call("join", room=room)
            assert (await m.scrape())("chatserver_resyncs_total") == 0
            slow._reader.cancel()  # type: ignore[union-attr]
            slow._w.transport.pause_reading()  # type: ignore[attr-defined]
            text = "x" * 8000
            posted = 0
            while posted < 6000:
                await asyncio.gather(
                    *(
                        poster.call("post", room=room, text=text, cid=f"{posted + j}")
                        for j in range(20)
                    )
                )
                posted += 20
                if (await m.scrape())("chatserver_resyncs_total") >= 1:
                    break
            assert m("chatserver_resyncs_total") == 1
            assert m("chatserver_joined_rooms") == 0
    finally:
        await h.close()
