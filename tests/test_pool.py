"""A pool of real ``chatserver run`` processes sharing one real PostgreSQL database.

Each scenario of issue 5 runs here at a small scale; ``--run-slow`` runs longer variants.
Measured numbers (failover time) are printed with ``-s``, never asserted as benchmarks.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
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


# -- concurrency ----------------------------------------------------------------------------


async def posters_everywhere(pool: LocalPool, rooms: list[int], per_poster: int) -> None:
    """Two posters per node into every room at once; a subscriber per node and room."""
    subscribers: list[tuple[str, Client]] = []
    posters: list[Client] = []
    try:
        for node in pool.nodes:
            sub = await login(node, "reader")
            for room in rooms:
                await sub.call("join", room=room)
            subscribers.append((node.name, sub))
            posters += [await login(node, "writer") for _ in range(2)]
        acked: dict[str, tuple[int, int]] = {}

        async def post_all(index: int, client: Client) -> None:
            pending = []
            for k in range(per_poster):
                room = rooms[k % len(rooms)]
                cid = f"p{index}-{k}"
                pending.append((cid, room, client.call("post", room=room, text=cid, cid=cid)))
            replies = await asyncio.gather(*(call for _, _, call in pending))  # pipelined
            for (cid, room, _), reply in zip(pending, replies, strict=True):
                assert not reply["duplicate"]
                acked[cid] = (room, reply["seq"])

        await asyncio.wait_for(
            asyncio.gather(*(post_all(i, c) for i, c in enumerate(posters))), scaled(60)
        )
        total = len(posters) * per_poster
        assert len(acked) == total
        for room in rooms:
            seqs = sorted(seq for r, seq in acked.values() if r == room)
            assert seqs == list(range(1, len(seqs) + 1)), f"room {room}: seq has gaps"
        expected = {
            room: {seq: cid for cid, (r, seq) in acked.items() if r == room} for room in rooms
        }
        for name, sub in subscribers:
            got: dict[int, list[dict[str, Any]]] = {room: [] for room in rooms}
            async with asyncio.timeout(scaled(30)):
                while sum(len(v) for v in got.values()) < total:
                    event = await sub.events.get()
                    if event["ev"] == "message":
                        got[event["room"]].append(event)
            for room in rooms:
                seqs = [m["seq"] for m in got[room]]
                assert seqs == list(range(1, len(expected[room]) + 1)), f"{name}: room {room}"
                assert {m["seq"]: m["cid"] for m in got[room]} == expected[room]
        stored = await history(subscribers[0][1], rooms[0])
        assert len({m["cid"] for m in stored}) == len(stored) == len(expected[rooms[0]])
    finally:
        for _, client in subscribers:
            await client.close()
        for client in posters:
            await client.close()


async def test_concurrent_posters_on_every_node(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["reader", "writer"], ["r1", "r2"])
    async with running_pool(url, 3) as pool:
        await posters_everywhere(pool, [ids["r1"], ids["r2"]], per_poster=40)


@pytest.mark.slow
async def test_concurrent_posters_on_every_node_long(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["reader", "writer"], ["r1", "r2", "r3"])
    async with running_pool(url, 4) as pool:
        await posters_everywhere(pool, [ids["r1"], ids["r2"], ids["r3"]], per_poster=1500)


# -- kill -9 --------------------------------------------------------------------------------


async def kill_under_traffic(pool: LocalPool, room: int, seconds: float) -> list[float]:
    """Posters and subscribers (PoolClient) on every node; kill -9 the last node mid-traffic.

    Returns the failover times (loss of the node to every room rejoined) of its clients.
    """
    victim = pool.nodes[-1]
    order = [*pool.nodes]
    clients: list[PoolClient] = []
    try:
        for node in order:  # each client starts on ``node``, and knows every node
            addresses = [node.tcp] + [n.tcp for n in order if n is not node]
            for _ in range(2):
                c = await PoolClient.connect(addresses, "writer", PASSWORD)
                await c.join(room)
                clients.append(c)
        on_victim = [c for c in clients if c.node == victim.name]
        assert on_victim
        acked: dict[str, int] = {}
        stop = asyncio.Event()

        async def post_steadily(i: int, c: PoolClient) -> None:
            k = 0
            while not stop.is_set():
                cid = f"k{i}-{k}"
                reply = await c.post(room, cid, cid=cid)
                acked[cid] = reply["seq"]
                k += 1
                await asyncio.sleep(0.01)

        tasks = [asyncio.ensure_future(post_steadily(i, c)) for i, c in enumerate(clients)]
        await asyncio.sleep(seconds / 2)
        await victim.kill()
        await asyncio.sleep(seconds / 2)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), scaled(30))
        last = max(acked.values())
        reader = await login(pool.nodes[0], "writer")
        stored = await history(reader, room)
        await reader.close()
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
        by_cid = {m["cid"]: m["seq"] for m in stored}
        assert len(by_cid) == len(stored), "a post was stored twice"
        for cid, seq in acked.items():
            assert by_cid.get(cid) == seq, f"acknowledged {cid} (seq {seq}) lost"
        for c in clients:
            got = await messages_until(c, room, last, timeout=30)
            assert [m["seq"] for m in got] == list(range(got[0]["seq"], last + 1))
            assert got[0]["seq"] == 1
            assert c.duplicates_dropped == 0
        for c in on_victim:
            assert c.node != victim.name and len(c.failovers) == 1
        return [t for c in on_victim for t in c.failovers]
    finally:
        for c in clients:
            await c.close()


async def test_kill_9_a_node_under_traffic(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    async with running_pool(url, 3) as pool:
        times = await kill_under_traffic(pool, ids["lobby"], seconds=3)
    print(f"\nfailover times after kill -9 (s): {[round(t, 3) for t in times]}")


@pytest.mark.slow
async def test_kill_9_a_node_under_traffic_long(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    async with running_pool(url, 4) as pool:
        times = await kill_under_traffic(pool, ids["lobby"], seconds=20)
    print(f"\nfailover times after kill -9 (s): {[round(t, 3) for t in times]}")


# -- SIGSTOP --------------------------------------------------------------------------------


async def stop_and_continue(pool: LocalPool, room: int, stopped_s: float) -> None:
    n1, n2, n3 = pool.nodes[:3]
    subs = {n.name: await login(n, "writer") for n in (n1, n2, n3)}
    p1, p2 = await login(n1, "writer"), await login(n2, "writer")
    try:
        for sub in subs.values():
            await sub.call("join", room=room)
        seq = 0
        for k in range(10):
            seq = (await (p1 if k % 2 else p2).call("post", room=room, text=f"a{k}", cid=f"a{k}"))[
                "seq"
            ]
        mark = len(n3.lines)
        n3.signal(signal.SIGSTOP)
        deadline = time.monotonic() + stopped_s
        k = 0
        while time.monotonic() < deadline:  # traffic on the other nodes meanwhile
            reply = await (p1 if k % 2 else p2).call("post", room=room, text=f"b{k}", cid=f"b{k}")
            seq, k = reply["seq"], k + 1
            await asyncio.sleep(0.05)
        n3.signal(signal.SIGCONT)
        for k in range(10):
            seq = (await (p1 if k % 2 else p2).call("post", room=room, text=f"c{k}", cid=f"c{k}"))[
                "seq"
            ]
        for name, sub in subs.items():
            got = await messages_until(sub, room, seq, timeout=30)
            assert [m["seq"] for m in got] == list(range(1, seq + 1)), name
        # It rejoins cleanly: links back, registered again, and it serves new clients.
        await n3.wait_for(r"peer link node1 up", scaled(20), start=mark)
        await n3.wait_for(r"peer link node2 up", scaled(20), start=mark)
        fresh = await login(n3, "writer")
        joined = await fresh.call("join", room=room, since=seq - 5)
        assert [m["seq"] for m in joined["messages"]] == list(range(seq - 4, seq + 1))
        await fresh.call("post", room=room, text="back", cid="back")
        for sub in subs.values():
            assert (await messages_until(sub, room, seq + 1))[-1]["text"] == "back"
        await fresh.close()
    finally:
        for c in [*subs.values(), p1, p2]:
            await c.close()


async def test_sigstop_then_sigcont(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    async with running_pool(url, 3) as pool:
        await stop_and_continue(pool, ids["lobby"], stopped_s=5)  # > dead_after_s (3 s)


@pytest.mark.slow
async def test_sigstop_20_s_then_sigcont(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    async with running_pool(url, 3, CHATSERVER_POOL_DEAD_AFTER_S="10") as pool:
        await stop_and_continue(pool, ids["lobby"], stopped_s=20)
