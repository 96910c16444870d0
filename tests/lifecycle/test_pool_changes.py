"""Edits, deletes, reactions and replies across a pool of real ``chatserver run`` processes on
one PostgreSQL database: a reader on another node gets each change after its message, and a
reader resuming on a third node gets what changed while it was away."""

from __future__ import annotations

import asyncio
from typing import Any

from chatserver.client import Client
from chatserver.testing import PostgresCluster
from tests.conftest import scaled
from tests.pool.test_pool import login, new_database, running_pool, seed


async def _until(client: Client, room: int, check: Any, timeout: float = 15) -> dict[str, Any]:
    async with asyncio.timeout(scaled(timeout)):
        while True:
            event = await client.events.get()
            if event.get("room") == room and check(event):
                return event


async def test_changes_cross_the_pool_in_order(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob", "carol"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 3) as pool:
        n1, n2, n3 = pool.nodes
        alice, bob = await login(n1, "alice"), await login(n2, "bob")
        try:
            await alice.call("join", room=lobby)
            await bob.call("join", room=lobby)
            carol = await login(n3, "carol")
            start = await carol.call("join", room=lobby, changes=0)
            await carol.close()
            first = (await alice.call("post", room=lobby, text="draft", cid="p1"))["seq"]
            await alice.call("message.edit", room=lobby, seq=first, text="final", cid="e1")
            got = await _until(bob, lobby, lambda e: e["ev"] == "message.changed")
            assert got["seq"] == first and got["text"] == "final" and got["state"] == "edited"
            reply = await bob.call("post", room=lobby, text="ok", cid="b1", reply_to=first)
            await bob.call("reaction.add", room=lobby, seq=first, emoji="👍", cid="r1")
            got = await _until(alice, lobby, lambda e: "reaction" in e)
            assert got["reactions"] == {"👍": 1} and got["text"] == "final"
            await alice.call("message.delete", room=lobby, seq=first, cid="d1")
            got = await _until(bob, lobby, lambda e: e.get("state") == "deleted")
            assert got["seq"] == first and "text" not in got
            # Carol resumes on node 3: the reply is new, the deleted first message a change.
            carol = await login(n3, "carol")
            back = await carol.call(
                "join", room=lobby, since=start["last_seq"], changes=start["change_no"]
            )
            assert [(m["seq"], m.get("reply_to")) for m in back["messages"]] == [
                (first, None),
                (reply["seq"], first),
            ]
            assert back["messages"][0]["state"] == "deleted"
            thread = await carol.call("thread", room=lobby, seq=first)
            assert [m["text"] for m in thread["replies"]] == ["ok"]
            await carol.close()
        finally:
            await alice.close()
            await bob.close()
