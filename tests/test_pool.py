"""A pool of real ``chatserver run`` processes sharing one real PostgreSQL database.

Each scenario of issue 5 runs here at a small scale; ``--run-slow`` runs longer variants.
Measured numbers (failover time) are printed with ``-s``, never asserted as benchmarks.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from chatserver.client import Client, PoolClient, RequestFailed
from chatserver.passwords import hash_password
from chatserver.pool.local import LocalPool, NodeProcess
from chatserver.store import rooms as room_store
from chatserver.store import users as user_store
from chatserver.store.db import Database
from chatserver.testing import PostgresCluster

from .conftest import PASSWORD, scaled

_numbers = itertools.count(1)
# Fast failure detection for tests (production defaults: 1 s heartbeat, 3 s link timeout, 10 s).
FAST = {
    "CHATSERVER_POOL_HEARTBEAT_S": "0.3",
    "CHATSERVER_POOL_LINK_TIMEOUT_S": "1.5",
    "CHATSERVER_POOL_DEAD_AFTER_S": "3",
    "CHATSERVER_POOL_CATCHUP_INTERVAL_S": "1",
    "CHATSERVER_LIMITS_POSTS_PER_USER_PER_S": "100000",
    "CHATSERVER_ADMIN_PASSWORD": PASSWORD,
}


async def new_database(cluster: PostgresCluster) -> str:
    return await cluster.create_database(f"pool_{os.getpid()}_{next(_numbers)}", "postgres")


async def seed(url: str, users: list[str], rooms: list[str], **room_kw: Any) -> dict[str, int]:
    """Users (password PASSWORD) and rooms; returns their ids by name."""
    db = Database(url)
    ids: dict[str, int] = {}
    try:
        password_hash = await asyncio.to_thread(hash_password, PASSWORD)
        for name in users:
            ids[name] = (await user_store.create_user(db, name, password_hash)).id
        for name in rooms:
            ids[name] = (await room_store.create_room(db, name, **room_kw)).id
    finally:
        await db.close()
    return ids


@asynccontextmanager
async def running_pool(url: str, count: int, **env: str) -> AsyncIterator[LocalPool]:
    pool = LocalPool(url, env={**FAST, **env})
    try:
        await pool.start(count)
        await wait_mesh(pool.nodes)
        yield pool
    finally:
        await pool.stop()


async def wait_mesh(nodes: list[NodeProcess], timeout: float = 20) -> None:
    """Until every node has a link to every other (each logs ``peer link NAME up``)."""
    for node in nodes:
        for other in nodes:
            if other is not node:
                await node.wait_for(rf"peer link {other.name} up", scaled(timeout))


async def login(node: NodeProcess, name: str) -> Client:
    client = await Client.connect_tcp(*node.tcp)
    await client.login(name, PASSWORD)
    return client


async def messages_until(client: Client | PoolClient, room: int, seq: int, timeout: float = 15):
    """Every message event of ``room`` until ``seq`` (other rooms' events are kept aside)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(scaled(timeout)):
        while not out or out[-1]["seq"] < seq:
            event = await client.events.get()
            if event["ev"] == "message" and event["room"] == room:
                out.append(event)
    return out


async def history(client: Client, room: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await client.call("history", room=room, after=after, limit=500)
        out.extend(page["messages"])
        if not page["more"]:
            return out
        after = out[-1]["seq"]


# -- three nodes ----------------------------------------------------------------------------


async def test_three_nodes_chat_history_and_acl(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob", "carol"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 3) as pool:
        n1, n2, n3 = pool.nodes
        alice, bob, carol = (
            await login(n1, "alice"),
            await login(n2, "bob"),
            await login(n3, "carol"),
        )
        admin = await login(n2, "admin")
        try:
            hello = await alice.call("hello", protocol=1)  # the hello reply lists the pool
            assert {n["node"] for n in hello["pool"]["active"]} == {"node1", "node2", "node3"}
            for c in (alice, bob, carol):
                await c.call("join", room=lobby)
            # Live across nodes, in order, from every node.
            for i, (poster, who) in enumerate([(alice, "a"), (bob, "b"), (carol, "c")] * 3):
                await poster.call("post", room=lobby, text=f"{who}{i}", cid=f"{who}{i}")
            for c in (alice, bob, carol):
                got = await messages_until(c, lobby, 9)
                assert [m["seq"] for m in got] == list(range(1, 10))
                assert [m["text"] for m in got] == [f"{w}{i}" for i, w in enumerate("abc" * 3)]
            # History posted through node 1 is read through node 3.
            texts = [m["text"] for m in await history(carol, lobby)]
            assert texts == [f"{w}{i}" for i, w in enumerate("abc" * 3)]
            # A room change on node 2 is enforced on node 3 at once: carol loses the room.
            members = [{"kind": "user", "id": ids[n]} for n in ("alice", "bob")]
            await admin.call("room.members", room=lobby, add={"members": members})
            await admin.call("room.update", room=lobby, privacy="closed")  # members only
            removed = await carol.next_event("room.removed", timeout=scaled(5))
            assert removed["room"] == lobby
            with pytest.raises(RequestFailed) as failed:
                await carol.call("post", room=lobby, text="after", cid="after")
            assert failed.value.code in ("forbidden", "not_found")
            # ... and the others still get live messages, carol none.
            await alice.call("post", room=lobby, text="members only", cid="m1")
            got = await messages_until(bob, lobby, 10)
            assert got[-1]["text"] == "members only"
            await asyncio.sleep(0.5)
            while not carol.events.empty():
                event = carol.events.get_nowait()
                assert event["ev"] != "message", event
        finally:
            for c in (alice, bob, carol, admin):
                await c.close()
