"""Topic feeds (issue 17): saved queries whose new matches arrive live as ``feed`` events, paged
back like a room, following the user to every connection and every node of a pool — and never
a hit from a room the user may not read right now."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chatserver.client import Client
from chatserver.feed_metrics import FeedsCollector
from chatserver.rooms.feedindex import Entry, FeedIndex
from chatserver.rooms.query import parse
from chatserver.store.messages import Message
from chatserver.testing import PostgresCluster
from tests.conftest import Harness, node_config, scaled, start_node
from tests.pool.test_pool import login, new_database, running_pool, seed
from tests.rooms.test_governance import EVERYONE, admin_client, make_user, new_category, new_room
from tests.rooms.test_governance import user as principal


@pytest.fixture
async def harness(db_url: str) -> AsyncIterator[Harness]:
    node = await start_node(
        node_config(db_url, search={"per_user_per_s": 1000, "max_feeds_per_user": 3})
    )
    h = Harness(node)
    try:
        yield h
    finally:
        await h.close()


async def no_event(client: Client, ev: str, wait: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        await client.next_event(ev, timeout=scaled(wait))


async def test_feed_hits_arrive_live_and_page_back(harness: Harness) -> None:
    admin = await admin_client(harness)
    await make_user(harness, "bob")
    lobby = await harness.room("lobby")
    other = await harness.room("other")
    bob = await harness.login("bob")
    second = await harness.login("bob", "websocket")  # the same user, another device
    feed = (await bob.call("feed.add", name="deploys", query='deploy* "prod db"'))["feed"]
    assert feed["name"] == "deploys" and feed["query"] == 'deploy* "prod db"'
    # The other device hears of the change.
    update = await second.next_event("feeds", timeout=scaled(5))
    assert [f["id"] for f in update["feeds"]] == [feed["id"]]
    # Not joined to the room: the hit arrives all the same, on both connections.
    await admin.call("post", room=lobby, text="deploying the prod db now", cid="1")
    await admin.call("post", room=lobby, text="prod db is fine", cid="2")  # no deploy*
    await admin.call("post", room=other, text="deployment of prod  DB", cid="3")
    for client in (bob, second):
        first = await client.next_event("feed", timeout=scaled(5))
        assert (first["feed"], first["name"]) == (feed["id"], "deploys")
        assert (first["hit"]["room"], first["hit"]["seq"]) == (lobby, 1)
        text = first["hit"]["snippet"]
        assert [text[a:b] for a, b in first["hit"]["highlights"]] == ["deploying", "prod", "db"]
        nxt = await client.next_event("feed", timeout=scaled(5))
        assert (nxt["hit"]["room"], nxt["hit"]["seq"]) == (other, 1)
    await no_event(bob, "feed")
    scraped = {m.name: m.samples[0].value for m in FeedsCollector(harness.node.feeds).collect()}
    assert scraped["chatserver_feeds_indexed"] == 1
    assert scraped["chatserver_feed_hits"] == 2  # once per message and feed, for both sessions
    # Paged back like a room: a search with the feed's query.
    page = await bob.call("feed.history", feed=feed["id"], limit=1)
    assert [(h["room"], h["seq"]) for h in page["hits"]] == [(other, 1)] and page["cursor"]
    rest = await bob.call("feed.history", feed=feed["id"], cursor=page["cursor"])
    assert [(h["room"], h["seq"]) for h in rest["hits"]] == [(lobby, 1)]
    assert (await bob.call("feed.list"))["feeds"] == [feed]
    await bob.call("feed.remove", feed=feed["id"])
    await admin.call("post", room=lobby, text="deploy prod db again", cid="4")
    await no_event(bob, "feed")
    assert (await bob.call("feed.list"))["feeds"] == []


async def test_a_feed_never_hits_in_a_room_the_user_may_not_read(harness: Harness) -> None:
    admin = await admin_client(harness)
    carol = await make_user(harness, "carol")
    pub = await new_category(admin, "pub", allowed=(EVERYONE,))
    blocked = await new_category(admin, "blocked", allowed=(EVERYONE,), denied=(principal(carol),))
    rooms = {
        "lobby": await new_room(admin, pub, "lobby", "open"),
        "club": await new_room(admin, pub, "club", "closed"),
        "vault": await new_room(admin, pub, "vault", "secret"),
        "dark": await new_room(admin, blocked, "dark", "open"),
        "was": await new_room(admin, pub, "was", "closed", members=[principal(carol)]),
    }
    client = await harness.login("carol")
    await client.call("feed.add", name="z", query="zebra")
    await client.call("feed.add", name="by-root", query="from:root")
    await admin.call("room.members", room=rooms["was"], remove={"members": [principal(carol)]})
    for name, rid in rooms.items():
        await admin.call("post", room=rid, text=f"zebra in {name}", cid=name)
    got = []
    with pytest.raises(TimeoutError):
        while True:
            got.append(await client.next_event("feed", timeout=scaled(1)))
    assert sorted((e["name"], e["hit"]["room"]) for e in got) == [
        ("by-root", rooms["lobby"]),
        ("z", rooms["lobby"]),
    ]
    assert harness.node.feeds.refused == 8  # two feeds x four rooms, each asked and refused


async def test_feed_limits_and_errors(harness: Harness) -> None:
    await make_user(harness, "dan")
    await make_user(harness, "eve")
    dan = await harness.login("dan")
    eve = await harness.login("eve")
    ids = [
        (await dan.call("feed.add", name=f"f{i}", query=f"word{i}"))["feed"]["id"] for i in range(3)
    ]

    async def code(client: Client, op: str, **fields: Any) -> str:
        reply = await client.request(op, **fields)
        assert reply["ok"] is False, reply
        return str(reply["error"]["code"])

    assert await code(dan, "feed.add", name="f3", query="more") == "too_large"
    await dan.call("feed.remove", feed=ids[0])
    assert await code(dan, "feed.add", name="f1", query="again") == "conflict"
    assert await code(dan, "feed.add", name="x", query="has:file") == "bad_request"
    assert await code(dan, "feed.add", name="x", query="after:2020-01-01") == "bad_request"
    assert await code(dan, "feed.add", name="x", query="q" * 300) == "too_large"
    # Another user's feed does not exist for eve.
    assert await code(eve, "feed.remove", feed=ids[1]) == "not_found"
    assert await code(eve, "feed.history", feed=ids[1]) == "not_found"
    assert await code(dan, "feed.remove", feed=ids[0]) == "not_found"


def test_the_index_checks_candidates_not_every_feed() -> None:
    index = FeedIndex()

    def q(text: str) -> Any:
        return parse(text, max_chars=256, max_terms=8)

    for i in range(1000):
        index.add(Entry(i, 10_000 + i, f"f{i}", q(f"topic{i} news")))
    index.add(Entry(5000, 1, "pre", q("deplo*")))
    index.add(Entry(5001, 1, "who", q("from:Ann")))
    index.add(Entry(5003, 1, "phrase", q('"red alert"')))

    def hits(text: str, sender: str = "bob", room: int = 1) -> list[int]:
        message = Message(room, 1, 0, 1, sender, text, "c")
        return sorted(e.feed_id for e in index.candidates(message))

    assert hits("topic7 news today") == [7]
    assert hits("topic7 only") == []
    assert hits("we DEPLOYED it") == [5000]
    assert hits("hello", sender="ann") == [5001]
    assert hits("hello") == []
    assert hits("alert red") == [] and hits("a red alert!") == [5003]
    index.add(Entry(5002, 1, "where", q("in:ops")))
    index.add(Entry(5004, 1, "where-id", q("in:7")))
    assert hits("hello") == [5002]  # in:ops: the caller checks the room's name
    assert hits("hello", room=7) == [5002, 5004]
    index.remove_user(1)
    assert hits("we deployed it red alert", sender="ann") == []
    assert len(index) == 1000


async def test_feeds_follow_the_user_across_a_pool(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob"], ["lobby"])
    async with running_pool(url, 2) as pool:
        n1, n2 = pool.nodes
        alice = await login(n1, "alice")
        bob1 = await login(n1, "bob")
        bob2 = await login(n2, "bob")
        try:
            # Saved on node 2; bob's session on node 1 hears of it and matches on node 1.
            feed = (await bob2.call("feed.add", name="k", query="kiwi"))["feed"]
            update = await bob1.next_event("feeds", timeout=scaled(10))
            assert [f["id"] for f in update["feeds"]] == [feed["id"]]
            # Posted on node 1: hits on node 1 (stored here) and node 2 (from the peer).
            await alice.call("post", room=ids["lobby"], text="a kiwi for you", cid="k1")
            for client in (bob1, bob2):
                event = await client.next_event("feed", timeout=scaled(10))
                assert (event["feed"], event["hit"]["seq"]) == (feed["id"], 1)
            await bob1.call("feed.remove", feed=feed["id"])
            await bob2.next_event("feeds", timeout=scaled(10))
            await alice.call("post", room=ids["lobby"], text="kiwi again", cid="k2")
            await asyncio.sleep(scaled(1))
            for client in (bob1, bob2):
                await no_event(client, "feed", 0.2)
        finally:
            for client in (alice, bob1, bob2):
                await client.close()
