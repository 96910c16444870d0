"""Read markers and mentions across a pool of two real nodes (issue 17)."""

from __future__ import annotations

import asyncio

from chatserver.store import rooms as room_store
from chatserver.store.db import Database
from chatserver.testing import PostgresCluster
from tests.conftest import scaled
from tests.pool.test_pool import login, new_database, running_pool, seed


async def test_mentions_and_read_markers_cross_nodes(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob"], ["lobby"])
    db = Database(url)
    try:
        secret = (await room_store.create_room(db, "hidden", privacy="secret")).id
    finally:
        await db.close()
    lobby = ids["lobby"]
    async with running_pool(url, 2) as pool:
        n1, n2 = pool.nodes
        alice = await login(n1, "alice")
        bob_here = await login(n1, "bob")
        bob_there = await login(n2, "bob")
        admin = await login(n1, "admin")
        try:
            # Stored on node 1, bob hears of it on both nodes without having joined.
            await alice.call("post", room=lobby, text="morning @bob", cid="1")
            for client in (bob_here, bob_there):
                event = await client.next_event("mention", timeout=scaled(10))
                assert (event["room"], event["seq"], event["sender"]["name"]) == (
                    lobby,
                    1,
                    "alice",
                )
            # A mention in a secret room bob may not read: no event on either node.
            await admin.call("post", room=secret, text="@bob secret", cid="s")
            await alice.call("post", room=lobby, text="@bob again", cid="2")
            for client in (bob_here, bob_there):
                event = await client.next_event("mention", timeout=scaled(10))
                assert (event["room"], event["seq"]) == (lobby, 2), event
            rooms = {r["id"]: r for r in (await bob_there.call("rooms"))["rooms"]}
            assert (rooms[lobby]["unread"], rooms[lobby]["mentions"]) == (2, 2)
            assert secret not in rooms
            # A marker set on node 1 reaches bob's session on node 2, and its counts at once
            # (before node 1 has written it).
            await bob_here.call("read", room=lobby, seq=1)
            event = await bob_there.next_event("read", timeout=scaled(10))
            assert (event["room"], event["seq"]) == (lobby, 1)
            joined = await bob_there.call("join", room=lobby)
            assert (joined["unread"], joined["mentions"]) == (1, 1)
            # Once written, every node reads it from the store.
            await asyncio.sleep(scaled(2.5))
            rooms = {r["id"]: r for r in (await bob_there.call("rooms"))["rooms"]}
            assert (rooms[lobby]["unread"], rooms[lobby]["mentions"]) == (1, 1)
            page = await bob_there.call("mentions")
            assert [m["seq"] for m in page["mentions"]] == [2, 1]
        finally:
            for c in (alice, bob_here, bob_there, admin):
                await c.close()
