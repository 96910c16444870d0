"""A pool of real ``chatserver run`` processes sharing one real PostgreSQL database.

Each scenario of issue 5 runs here at a small scale; ``--run-slow`` runs longer variants.
Measured numbers (failover time) are printed with ``-s``, never asserted as benchmarks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from chatserver.client import Client, PoolClient, RequestFailed
from chatserver.passwords import hash_password
from chatserver.pool.catchup import SUSPECT_ROUNDS
from chatserver.pool.local import LocalPool, NodeProcess
from chatserver.pool.protocol import Command, PeerProtocol
from chatserver.store import rooms as room_store
from chatserver.store import users as user_store
from chatserver.store.db import Database
from chatserver.testing import PostgresCluster
from tests.conftest import PASSWORD, scaled

_numbers = itertools.count(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
            # New members are invited live, on node 2 (bob) and node 1 (alice) alike.
            for member in (alice, bob):
                invited = await member.next_event("invited", timeout=scaled(5))
                assert invited["room"]["id"] == lobby and invited["by"]["name"] == "admin"
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
        # Restarted at once under its name (its old row is still fresh): it takes its place.
        victim = pool.nodes[-1]
        await victim.start()
        await victim.started()
        await wait_mesh(pool.nodes)
        client = await login(victim, "writer")
        assert (await client.call("join", room=ids["lobby"]))["last_seq"] > 0
        await client.close()
    print(f"\nfailover times after kill -9 (s): {[round(t, 3) for t in times]}")


@pytest.mark.slow
async def test_kill_9_a_node_under_traffic_long(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    async with running_pool(url, 4) as pool:
        times = await kill_under_traffic(pool, ids["lobby"], seconds=20)
    print(f"\nfailover times after kill -9 (s): {[round(t, 3) for t in times]}")


# -- a stalled store ------------------------------------------------------------------------


def cluster_processes(cluster: PostgresCluster) -> list[int]:
    """The postmaster and its children (backends and background workers)."""
    master = int((cluster.data / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == master:
            pids.append(int(stat.parent.name))
    return pids


async def test_a_stalled_store_does_not_close_peer_links(pg_cluster: PostgresCluster) -> None:
    """Nodes whose store stops answering are slow, not dead: they keep pinging each other (the
    keep-alive does not wait for the store), so no link closes and nothing is re-read."""
    url = await new_database(pg_cluster)
    timeout = float(FAST["CHATSERVER_POOL_LINK_TIMEOUT_S"])
    async with running_pool(url, 2, CHATSERVER_POOL_DEAD_AFTER_S="60") as pool:
        marks = [len(node.lines) for node in pool.nodes]
        stopped = cluster_processes(pg_cluster)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(3 * timeout)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(timeout)
        for node, mark in zip(pool.nodes, marks, strict=True):
            later = node.lines[mark:]
            assert not [line for line in later if "silent" in line or "link" in line], later


async def test_a_store_stall_longer_than_dead_after_expires_nobody(
    pg_cluster: PostgresCluster,
) -> None:
    """No node can write its heartbeat for twice dead_after_s, but the peer links stay healthy:
    nobody is expired, no link closes, and every post (also those sent during the stall) is
    delivered on every node afterwards."""
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    room = ids["lobby"]
    dead_after = float(FAST["CHATSERVER_POOL_DEAD_AFTER_S"])
    async with running_pool(url, 2) as pool:
        subs = [await login(node, "writer") for node in pool.nodes]
        posters = [await login(node, "writer") for node in pool.nodes]
        try:
            for sub in subs:
                await sub.call("join", room=room)
            await posters[0].call("post", room=room, text="before", cid="before")
            marks = [len(node.lines) for node in pool.nodes]
            stopped = cluster_processes(pg_cluster)
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            try:
                calls = [
                    asyncio.ensure_future(p.request("post", room=room, text=f"d{i}", cid=f"d{i}"))
                    for i, p in enumerate(posters)
                ]
                await asyncio.sleep(2 * dead_after)
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
            replies = await asyncio.wait_for(asyncio.gather(*calls), scaled(30))
            # Acknowledged, or refused as unavailable (the store did not answer within
            # database.timeout_s). A refused post may still be stored (its statement reached the
            # store before the node gave up on it): its retry with the same cid gets its seq.
            assert all(r["error"]["code"] == "unavailable" for r in replies if "error" in r)
            for i, (poster, reply) in enumerate(zip(posters, replies, strict=True)):
                if "error" in reply:
                    await poster.call("post", room=room, text=f"d{i}", cid=f"d{i}")
            await asyncio.sleep(dead_after)  # every node has beaten (and judged) again
            last = (await posters[1].call("post", room=room, text="after", cid="after"))["seq"]
            assert last == 2 + len(posters)
            for sub in subs:
                got = await messages_until(sub, room, last)
                assert [m["seq"] for m in got] == list(range(1, last + 1))
            for node, mark in zip(pool.nodes, marks, strict=True):
                later = node.lines[mark:]
                assert not [line for line in later if "expired" in line or "link" in line], later
        finally:
            for c in [*subs, *posters]:
                await c.close()


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
        await stop_and_continue(pool, ids["lobby"], stopped_s=4)  # > dead_after_s (3 s)


@pytest.mark.slow
async def test_sigstop_20_s_then_sigcont(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    async with running_pool(url, 3, CHATSERVER_POOL_DEAD_AFTER_S="10") as pool:
        await stop_and_continue(pool, ids["lobby"], stopped_s=20)


async def posts_made_while_stopped(pool: LocalPool, room: int, stopped_s: float) -> float:
    """Clients of node3 post while it is SIGSTOPped (the frames wait in its socket buffers);
    after SIGCONT each post must reach the subscribers on node1 and node2 within the delivery
    bound after its acknowledgement. Returns the longest delay seen."""
    n1, n2, n3 = pool.nodes[:3]
    interval = float(pool.extra["CHATSERVER_POOL_CATCHUP_INTERVAL_S"])
    subs = {n.name: await login(n, "writer") for n in (n1, n2)}
    posters = [await login(n3, "writer") for _ in range(2)]
    arrived: dict[str, dict[str, float]] = {name: {} for name in subs}
    acked: dict[str, float] = {}
    progress = asyncio.Event()

    async def record(name: str, sub: Client) -> None:
        while True:
            event = await sub.events.get()
            if event["ev"] == "message" and event["room"] == room:
                arrived[name][event["cid"]] = time.monotonic()
                progress.set()

    async def until(done: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                progress.clear()
                await progress.wait()

    recorders = [asyncio.ensure_future(record(name, sub)) for name, sub in subs.items()]
    try:
        for sub in subs.values():
            await sub.call("join", room=room)
        await posters[0].call("post", room=room, text="before", cid="before")
        await until(lambda: all("before" in got for got in arrived.values()), scaled(5))
        n3.signal(signal.SIGSTOP)
        calls = []
        for k in range(20):  # spread over the stop, without waiting for replies
            cid = f"stopped{k}"
            call = asyncio.ensure_future(posters[k % 2].call("post", room=room, text=cid, cid=cid))
            call.add_done_callback(lambda _f, cid=cid: acked.setdefault(cid, time.monotonic()))
            calls.append(call)
            await asyncio.sleep(stopped_s / 20)
        n3.signal(signal.SIGCONT)
        replies = await asyncio.wait_for(asyncio.gather(*calls), scaled(20))
        assert len({r["seq"] for r in replies}) == len(calls)
        bound = interval + scaled(0.5)
        await until(lambda: all(len(got) > len(calls) for got in arrived.values()), scaled(60))
        delays = {
            (name, cid): got[cid] - acked[cid] for name, got in arrived.items() for cid in acked
        }
        worst = max(delays.values())
        print(
            f"\nstopped {stopped_s} s: posts acknowledged after SIGCONT reached the other nodes"
            f" at most {worst:.3f} s later (bound {bound:.2f} s)"
        )
        late = {key: round(d, 3) for key, d in delays.items() if d > bound}
        assert not late, f"delivered later than {bound:.2f} s after the ack: {late}"
        return worst
    finally:
        for task in recorders:
            task.cancel()
        for c in [*subs.values(), *posters]:
            await c.close()


@pytest.mark.slow
async def test_posts_made_while_stopped_are_delivered_within_the_bound(
    pg_cluster: PostgresCluster,
) -> None:
    """Stopped longer than link_timeout_s (1.5 s) and than a dial's handshake timeout (5 s),
    not as long as dead_after_s: the peers closed their links but still list the node."""
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    async with running_pool(url, 3, CHATSERVER_POOL_DEAD_AFTER_S="30") as pool:
        await posts_made_while_stopped(pool, ids["lobby"], stopped_s=8)


async def test_posts_made_while_stopped_and_expired_are_delivered_within_the_bound(
    pg_cluster: PostgresCluster,
) -> None:
    """Stopped longer than dead_after_s (3 s) and than a dial's handshake timeout (5 s): the
    peers expired the node meanwhile and stopped dialling it."""
    url = await new_database(pg_cluster)
    ids = await seed(url, ["writer"], ["lobby"])
    async with running_pool(url, 3) as pool:
        await posts_made_while_stopped(pool, ids["lobby"], stopped_s=9)


# -- peer link cut --------------------------------------------------------------------------


class Blackhole:
    """A TCP proxy that can stop passing bytes (a partition: nothing arrives, nothing closes)."""

    def __init__(self, target: tuple[str, int] | None) -> None:
        self.target = target
        self.cut = False
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.target is None:
                raise OSError("no target yet")
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_w]

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    if not self.cut:  # during a cut the bytes are dropped
                        w.write(data)
                        await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    def heal(self) -> None:
        """Stop dropping; links broken by the cut are closed so that they are made anew."""
        for w in self.writers:
            w.close()
        self.writers.clear()
        self.cut = False

    async def close(self) -> None:
        self.heal()
        if self.server is not None:
            self.server.close()


async def test_peer_link_cut_and_heal(pg_cluster: PostgresCluster) -> None:
    await cut_and_heal(pg_cluster, rounds=2)


@pytest.mark.slow
async def test_peer_link_cut_long(pg_cluster: PostgresCluster) -> None:
    await cut_and_heal(pg_cluster, rounds=40)


async def cut_and_heal(pg_cluster: PostgresCluster, rounds: int) -> None:
    """node3's peer links pass a proxy (node1 and node2 dial node3, names sort that way)."""
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "carol", "dave"], ["lobby", "quiet"])
    lobby, quiet = ids["lobby"], ids["quiet"]
    pool = LocalPool(url, env=FAST)
    proxy = Blackhole(None)  # its target is known once node3 listens
    proxied = await proxy.start()
    clients: list[Client] = []
    try:
        n1, _n2 = await pool.start(2)
        n3 = await pool.add(
            CHATSERVER_LISTEN_PEER="127.0.0.1:0",
            CHATSERVER_POOL_ADVERTISE_PEER=f"127.0.0.1:{proxied}",
        )
        proxy.target = n3.peer
        await wait_mesh(pool.nodes)
        alice, carol = await login(n1, "alice"), await login(n3, "carol")
        clients += [alice, carol]
        for c in (alice, carol):
            await c.call("join", room=lobby)
        await alice.call("post", room=lobby, text="before", cid="before")
        assert (await messages_until(carol, lobby, 1))[0]["text"] == "before"
        await carol.call("join", room=quiet)  # node3 now holds quiet's cache, idle after leave
        await carol.call("leave", room=quiet)

        mark1, mark3 = len(n1.lines), len(n3.lines)
        proxy.cut = True
        await n3.wait_for(r"peer link node1 down", scaled(10), start=mark3)  # link_timeout_s
        # During the cut every message still arrives within the documented bound: one
        # catch-up interval (1 s here) after it is stored, plus the poll's own query.
        bound = 1.0 + 1.0
        for k in range(rounds):
            started = time.monotonic()
            seq = (await alice.call("post", room=lobby, text=f"cut{k}", cid=f"cut{k}"))["seq"]
            got = await messages_until(carol, lobby, seq, timeout=10)
            assert got[-1]["text"] == f"cut{k}"
            assert time.monotonic() - started < scaled(bound), "late beyond catchup_interval_s"
            started = time.monotonic()
            seq = (await carol.call("post", room=lobby, text=f"back{k}", cid=f"back{k}"))["seq"]
            got = await messages_until(alice, lobby, seq, timeout=10)
            assert [m["text"] for m in got][-1] == f"back{k}"
            assert time.monotonic() - started < scaled(bound)
            await messages_until(carol, lobby, seq)  # carol's own post, for the next round

        # A policy turned off on node1 during the cut: node3 never hears the disconnect, and
        # re-checks its users' policies when the link comes back.
        dave = await login(n3, "dave")
        admin = await login(n1, "admin")
        clients += [dave, admin]
        await admin.call("user.policy", user=ids["dave"], persistent_chat_enabled=False)

        # A room nobody on node3 follows: a join there answers with what was posted meanwhile.
        await alice.call("post", room=quiet, text="hush", cid="hush")
        await asyncio.sleep(bound)
        joined = await carol.call("join", room=quiet)
        assert [m["text"] for m in joined["messages"]] == ["hush"]

        proxy.heal()
        await n1.wait_for(r"peer link node3 up", scaled(15), start=mark1)
        await n3.wait_for(r"peer link node1 up", scaled(15), start=mark3)
        await n3.wait_for(r"peer link node2 up", scaled(15), start=mark3)
        seq = (await alice.call("post", room=lobby, text="healed", cid="healed"))["seq"]
        assert (await messages_until(carol, lobby, seq))[-1]["text"] == "healed"
        assert (await dave.next_event("bye", timeout=scaled(10)))["reason"] == "disabled"
    finally:
        for c in clients:
            await c.close()
        await pool.stop()
        await proxy.close()


# -- peer authentication --------------------------------------------------------------------


async def handshake(
    address: tuple[str, int], frames: list[bytes], wait: float = 1.0
) -> tuple[list[Command], bool]:
    """Send ``frames`` one by one; return what came back and whether the node closed."""
    reader, writer = await asyncio.open_connection(*address)
    listener = PeerProtocol("connector", "listener", "")
    listener.state = "open"  # only to decode frames
    received: list[Command] = []
    decoder = FrameReader()
    closed = False
    try:
        for frame in frames:
            writer.write(frame)
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                continue
            if not data:
                closed = True
                break
            received += decoder.feed(data)
        if not closed:
            try:
                closed = not await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                closed = False
    finally:
        writer.close()
    return received, closed


class FrameReader:
    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[Command]:
        import msgpack

        self.buffer += data
        out = []
        while len(self.buffer) >= 4:
            size = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < 4 + size:
                break
            obj = msgpack.unpackb(self.buffer[4 : 4 + size], raw=False)
            self.buffer = self.buffer[4 + size :]
            out.append(Command(obj.pop("cmd"), obj))
        return out


async def test_a_node_refuses_pool_settings_that_cannot_work(tmp_path: Any) -> None:
    from chatserver.server import StartupError
    from tests.conftest import node_config, start_node

    config = node_config(f"sqlite:///{tmp_path}/var/chat.db", pool={"enabled": True})
    with pytest.raises(StartupError, match="PostgreSQL"):
        await start_node(config)
    assert not (tmp_path / "var").exists()


async def test_a_pool_on_sqlite_is_refused_before_the_store_is_touched(tmp_path: Path) -> None:
    """``chatserver run`` with pool.enabled and the default SQLite URL: the start-up error, exit
    code 2, and neither ./var/chat.db nor a registry error."""
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env.update(
        CHATSERVER_POOL_ENABLED="true",
        CHATSERVER_LISTEN_PEER="127.0.0.1:0",
        PYTHONPATH=ROOT,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatserver",
        "run",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), scaled(30))
    assert proc.returncode == 2, (out, err)
    assert b"chatserver: pool.enabled needs a PostgreSQL store" in err
    assert b"registry" not in out + err and b"Traceback" not in out + err
    assert os.listdir(tmp_path) == []


# -- active and standby ---------------------------------------------------------------------


async def test_standby_swap_and_drain(pg_cluster: PostgresCluster) -> None:
    from tests.test_cli import chatserver

    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 3, CHATSERVER_POOL_MAX_ACTIVE="2") as pool:
        n1, n2, n3 = pool.nodes
        assert "joined as standby" in "".join(n3.lines)
        # A standby node refuses new clients, naming the active ones.
        raw = await Client.connect_tcp(*n3.tcp)
        refused = await raw.request("hello", protocol=1)
        assert refused["error"]["code"] == "unavailable"
        assert {n["node"] for n in refused["active"]} == {"node1", "node2"}
        await raw.closed.wait()
        await raw.close()
        # The failover client given only the standby's address lands on an active node.
        moving = await PoolClient.connect([n3.tcp], "alice", PASSWORD)
        assert moving.node in ("node1", "node2")
        staying = await login(n1, "alice")
        await staying.call("join", room=lobby)

        env = {**n1.env}
        code, out, err = await chatserver("pool", "swap", "node1", "node3", env=env)
        assert code == 0, err
        assert "node1" in out and "standby" in out
        await n1.wait_for(r"is now standby", scaled(5))
        await n3.wait_for(r"is now active", scaled(5))
        # node3 takes clients now; node1 refuses new ones but keeps the one it has.
        on3 = await login(n3, "alice")
        await on3.call("join", room=lobby)
        raw = await Client.connect_tcp(*n1.tcp)
        assert (await raw.request("hello", protocol=1))["error"]["code"] == "unavailable"
        await raw.close()
        seq = (await on3.call("post", room=lobby, text="after swap", cid="s1"))["seq"]
        assert (await messages_until(staying, lobby, seq))[-1]["text"] == "after swap"
        await staying.call("post", room=lobby, text="still here", cid="s2")
        assert (await messages_until(on3, lobby, seq + 1))[-1]["text"] == "still here"

        # Drain node2: its clients are told to move (the failover client does), then it stops.
        on2 = await PoolClient.connect([n2.tcp], "alice", PASSWORD)
        await on2.join(lobby)
        code, out, err = await chatserver("pool", "drain", "node2", env=env)
        assert code == 0, err
        assert n2.proc is not None
        await asyncio.wait_for(n2.proc.wait(), scaled(15))
        reply = await on2.post(lobby, "moved on")
        assert on2.node == "node3" and on2.failovers
        got = await messages_until(on2, lobby, reply["seq"])
        assert got[-1]["text"] == "moved on"
        code, out, err = await chatserver("pool", "nodes", "--json", env=env)
        assert code == 0, err
        import json

        states = {n["name"]: n["state"] for n in json.loads(out)["nodes"]}
        assert states == {"node1": "standby", "node3": "active"}
        code, out, err = await chatserver("pool", "nodes", env=env)
        assert code == 0, err
        assert f"management {n3.env['CHATSERVER_LISTEN_MANAGEMENT']}" in out, out
        for c in (moving, on2):
            await c.close()
        for c2 in (staying, on3):
            await c2.close()


async def chatserver_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    from tests.test_cli import chatserver

    return await chatserver(*args, env=env)


async def audit_log(node: NodeProcess, action: str) -> list[dict[str, Any]]:
    """The audit entries of ``action``, oldest first, through ``node``'s management API."""
    import base64

    import aiohttp

    base = "http://" + node.env["CHATSERVER_LISTEN_MANAGEMENT"]
    auth = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as http:
        async with http.get(f"{base}/api/v1/audit?limit=50&action={action}") as response:
            assert response.status == 200, await response.text()
            return list(reversed(await response.json()))


async def test_auto_promote_replaces_a_dead_active_node_with_one_standby(
    pg_cluster: PostgresCluster,
) -> None:
    """max_active 2, two standbys, pool.auto_promote on: kill -9 an active node and exactly one
    standby becomes active within dead_after_s + 2 heartbeat_s, serves clients, and the change
    is audited as the system's."""
    url = await new_database(pg_cluster)
    await seed(url, ["alice"], [])
    env = {"CHATSERVER_POOL_MAX_ACTIVE": "2", "CHATSERVER_POOL_AUTO_PROMOTE": "true"}
    async with running_pool(url, 4, **env) as pool:
        n1, n2, n3, n4 = pool.nodes
        assert ["joined as standby" in "".join(n.lines) for n in pool.nodes] == [
            False,
            False,
            True,
            True,
        ]
        marks = [len(n.lines) for n in pool.nodes]
        killed = time.monotonic()
        await n1.kill()
        bound = float(FAST["CHATSERVER_POOL_DEAD_AFTER_S"]) + 2 * float(
            FAST["CHATSERVER_POOL_HEARTBEAT_S"]
        )
        await n3.wait_for(r"is now active", bound + scaled(2), start=marks[2])
        took = time.monotonic() - killed
        print(f"\nstandby active {took:.2f} s after kill -9 of an active node (bound {bound} s)")
        assert took <= bound + scaled(0.5)
        client = await login(n3, "alice")  # it takes clients now
        await client.close()
        await asyncio.sleep(2 * bound)  # every node has seen the death by now
        assert not [line for line in n4.lines[marks[3] :] if "is now" in line]
        raw = await Client.connect_tcp(*n4.tcp)
        refused = await raw.request("hello", protocol=1)
        assert refused["error"]["code"] == "unavailable"
        assert {n["node"] for n in refused["active"]} == {"node2", "node3"}
        await raw.close()
        promotions = [line for n in (n2, n3, n4) for line in n.lines if "promoted standby" in line]
        assert len(promotions) == 1 and "node3" in promotions[0], promotions
        entries = await audit_log(n2, "pool.promote")
        assert [(e["actor"], e["target"]) for e in entries] == [("system", "node:node3")]
        before = {n["name"]: n["state"] for n in entries[0]["before"]["nodes"]}
        after = {n["name"]: n["state"] for n in entries[0]["after"]["nodes"]}
        assert before == {
            "node1": "active",
            "node2": "active",
            "node3": "standby",
            "node4": "standby",
        }
        assert after == {"node2": "active", "node3": "active", "node4": "standby"}


async def test_an_expired_active_node_that_comes_back_finds_its_place_taken(
    pg_cluster: PostgresCluster,
) -> None:
    """SIGSTOP an active node past dead_after_s: a standby takes its place; resumed, it
    re-registers as standby (never more than max_active active) and keeps working."""
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    env = {"CHATSERVER_POOL_MAX_ACTIVE": "2", "CHATSERVER_POOL_AUTO_PROMOTE": "true"}
    async with running_pool(url, 3, **env) as pool:
        n1, n2, n3 = pool.nodes
        on1 = await login(n1, "alice")
        on2 = await login(n2, "alice")
        try:
            await on2.call("join", room=ids["lobby"])
            marks = [len(n.lines) for n in pool.nodes]
            n1.signal(signal.SIGSTOP)
            await n3.wait_for(r"is now active", scaled(10), start=marks[2])
            n1.signal(signal.SIGCONT)
            await n1.wait_for(r"is now standby \(was active\)", scaled(10), start=marks[0])
            await wait_mesh(pool.nodes)
            code, out, err = await chatserver_cli("pool", "nodes", "--json", env=n2.env)
            assert code == 0, err
            states = {n["name"]: n["state"] for n in json.loads(out)["nodes"]}
            assert states == {"node1": "standby", "node2": "active", "node3": "active"}
            # Its client stays, and what it posts reaches the others.
            reply = await on1.call("post", room=ids["lobby"], text="still here", cid="h")
            assert (await messages_until(on2, ids["lobby"], reply["seq"]))[-1]["cid"] == "h"
        finally:
            await on1.close()
            await on2.close()


async def test_without_auto_promote_a_standby_stays_standby(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    async with running_pool(url, 3, CHATSERVER_POOL_MAX_ACTIVE="2") as pool:
        n1, n2, n3 = pool.nodes
        mark = len(n3.lines)
        await n1.kill()
        waits = [  # whichever notices first expires it
            asyncio.ensure_future(n.wait_for(r"expired stale nodes node1", scaled(10)))
            for n in (n2, n3)
        ]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        assert any(task.exception() is None for task in done)
        await asyncio.sleep(1)
        assert not [line for line in n3.lines[mark:] if "is now" in line]
        assert await audit_log(n2, "pool.promote") == []


async def test_pool_control_through_the_management_api(pg_cluster: PostgresCluster) -> None:
    """Set the active list, swap and drain through node1's management API; each change is
    audited with the pool before and after."""
    import base64

    import aiohttp

    url = await new_database(pg_cluster)
    async with running_pool(url, 2, CHATSERVER_POOL_MAX_ACTIVE="1") as pool:
        n1, n2 = pool.nodes
        base = "http://" + n1.env["CHATSERVER_LISTEN_MANAGEMENT"]
        auth = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()

        def states(view: dict[str, Any]) -> dict[str, str]:
            return {n["name"]: n["state"] for n in view["nodes"]}

        async with aiohttp.ClientSession(headers={"Authorization": auth}) as http:

            async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                async with http.request(method, base + path, json=body) as response:
                    return response.status, await response.json()

            status, view = await call("GET", "/api/v1/pool")
            assert status == 200 and view["pooled"] is True
            assert states(view) == {"node1": "active", "node2": "standby"}
            status, body = await call("PUT", "/api/v1/pool/active", {"nodes": ["node1", "node2"]})
            assert status == 400 and "max_active" in body["error"]["message"]
            status, body = await call("PUT", "/api/v1/pool/active", {"nodes": ["node9"]})
            assert status == 404

            status, view = await call("PUT", "/api/v1/pool/active", {"nodes": ["node2"]})
            assert status == 200 and states(view) == {"node1": "standby", "node2": "active"}
            await n2.wait_for(r"is now active", scaled(5))
            status, view = await call(
                "POST", "/api/v1/pool/swap", {"active": "node2", "standby": "node1"}
            )
            assert status == 200 and states(view) == {"node1": "active", "node2": "standby"}
            status, body = await call(
                "POST", "/api/v1/pool/swap", {"active": "node2", "standby": "node1"}
            )
            assert status == 409
            await n1.wait_for(r"is now active", scaled(5))

            status, view = await call("POST", "/api/v1/pool/nodes/node2/drain")
            assert status == 200 and states(view)["node2"] == "draining"
            assert n2.proc is not None
            await asyncio.wait_for(n2.proc.wait(), scaled(15))
            status, body = await call("POST", "/api/v1/pool/nodes/node1/drain")
            assert status == 409 and "last active" in body["error"]["message"]

            status, audit = await call("GET", "/api/v1/audit?limit=10")
            assert status == 200
            entries = [e for e in reversed(audit) if e["action"].startswith("pool.")]
            assert [(e["action"], e["target"], e["actor"]) for e in entries] == [
                ("pool.active", "pool", "admin"),
                ("pool.swap", "node:node2", "admin"),
                ("pool.drain", "node:node2", "admin"),
            ]
            assert states(entries[0]["before"]) == {"node1": "active", "node2": "standby"}
            assert states(entries[0]["after"]) == {"node1": "standby", "node2": "active"}
            assert states(entries[1]["after"]) == {"node1": "active", "node2": "standby"}
            assert states(entries[2]["after"])["node2"] == "draining"

            # The same through the command line.
            from tests.test_cli import chatserver

            status, token = await call("POST", "/api/v1/tokens")
            assert status == 201
            env = {
                **n1.env,
                "CHATSERVER_ADMIN_URL": base,
                "CHATSERVER_ADMIN_TOKEN": token["token"],
            }
            code, out, err = await chatserver("admin", "pool", "activate", "node9", env=env)
            assert code == 1 and "404" in err
            code, out, err = await chatserver("admin", "pool", "show", "--json", env=env)
            assert code == 0, err
            assert {n["name"]: n["state"] for n in json.loads(out)}["node1"] == "active"
            # Each node's row names its management address (advertised like the others).
            assert {n["name"]: n["management"] for n in json.loads(out)} == {
                "node1": n1.env["CHATSERVER_LISTEN_MANAGEMENT"]
            }
            code, out, err = await chatserver("admin", "pool", "show", env=env)
            assert code == 0 and n1.env["CHATSERVER_LISTEN_MANAGEMENT"] in out, out


# -- chatserver pool up ---------------------------------------------------------------------


async def test_pool_up_starts_postgresql_and_nodes_and_stops_on_ctrl_c() -> None:
    import re
    import sys
    import tempfile

    import aiohttp

    # As root, PostgreSQL runs as "postgres", which must be able to reach the data directory.
    data = Path(tempfile.mkdtemp(prefix="chatserver-pool-up-"))
    os.chmod(data, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env.update(CHATSERVER_ADMIN_PASSWORD=PASSWORD, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatserver",
        "pool",
        "up",
        "--nodes",
        "2",
        "--standby",
        "1",
        "--free-ports",
        "--data",
        str(data),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(scaled(60)):
            while not lines or "Ctrl-C stops every node" not in lines[-1]:
                line = (await proc.stdout.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
        text = "".join(lines)
        assert "the store was empty: created the room 'lobby'" in text  # a first room to join
        nodes = re.findall(r"(node\d)\s+(active|standby)\s+tcp ([\d.]+):(\d+)", text)
        management = re.findall(r"(node\d)\s+.* management ([\d.]+:\d+)$", text, re.M)
        assert [n for n, _ in management] == ["node1", "node2", "node3"]
        for _, address in management:  # each is a management API that answers
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{address}/healthz") as response:
                    assert response.status == 200
        assert [(n, s) for n, s, _, _ in nodes] == [
            ("node1", "active"),
            ("node2", "active"),
            ("node3", "standby"),
        ]
        client = await PoolClient.connect(
            [(h, int(p)) for _, _, h, p in reversed(nodes)], "admin", PASSWORD
        )
        assert client.node in ("node1", "node2")
        await client.close()
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stdout.read(), scaled(30))
        assert await proc.wait() == 0, text + rest.decode()
        assert (data / "postgres" / "data" / "PG_VERSION").exists()  # kept for the next run
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(data, ignore_errors=True)


# -- caches and sessions on every node ------------------------------------------------------


async def test_admin_changes_on_one_node_reach_every_node(pg_cluster: PostgresCluster) -> None:
    """Message replace/remove, run-time settings and disconnects made through node 1's
    management API take effect on node 2 (live events, join backchat, sessions)."""
    import aiohttp

    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 2) as pool:
        n1, n2 = pool.nodes
        api = (await n1.wait_for(r"management API on (http://[\d.]+:\d+)/")).group(1)
        poster = await login(n1, "admin")
        alice = await login(n2, "alice")
        bearer = {"Authorization": f"Bearer {poster.token}"}
        async with aiohttp.ClientSession(headers=bearer) as http:

            async def admin(method: str, path: str, body: Any = None) -> Any:
                async with http.request(method, api + path, json=body) as response:
                    assert response.status < 300, await response.text()
                    return await response.json() if response.status != 204 else None

            try:
                await alice.call("join", room=lobby)
                for text in ("one", "secret two", "three", "four"):
                    await poster.call("post", room=lobby, text=text, cid=text)
                await messages_until(alice, lobby, 4)
                # Replace on node 1: node 2's subscriber is told, and its cache changes.
                await admin(
                    "POST",
                    "/api/v1/messages/replace",
                    {"room": lobby, "keywords": ["secret"], "text": "[redacted]"},
                )
                changed = await alice.next_event("message.changed", timeout=scaled(5))
                assert (changed["seq"], changed["text"]) == (2, "[redacted]")
                await admin(
                    "POST", "/api/v1/messages/remove", {"room": lobby, "keywords": ["three"]}
                )
                removed = await alice.next_event("message.changed", timeout=scaled(5))
                assert (removed["seq"], removed["state"]) == (3, "removed")
                again = await login(n2, "alice")
                backchat = (await again.call("join", room=lobby))["messages"]
                assert [(m["seq"], m["text"]) for m in backchat] == [
                    (1, "one"),
                    (2, "[redacted]"),
                    (4, "four"),
                ]
                # A run-time setting changed on node 1 is applied on node 2.
                await admin("PATCH", "/api/v1/config", {"default_chat_history": 2})
                async with asyncio.timeout(scaled(5)):
                    while True:
                        third = await login(n2, "alice")
                        backchat = (await third.call("join", room=lobby))["messages"]
                        await third.close()
                        if len(backchat) == 2:
                            break
                        await asyncio.sleep(0.1)
                # node 2's metrics count what its peer sent it.
                api2 = (await n2.wait_for(r"management API on (http://[\d.]+:\d+)/")).group(1)
                async with http.get(api2 + "/metrics") as response:
                    metrics = await response.text()
                assert "chatserver_pool_links 1.0" in metrics
                assert 'chatserver_pool_events_received_total{type="msg"} 4.0' in metrics
                assert 'chatserver_pool_state{state="active"} 1.0' in metrics
                # With every peer linked the catch-up does not poll the store every interval
                # (once the intervals that follow the links' opening at start are over).
                interval = float(FAST["CHATSERVER_POOL_CATCHUP_INTERVAL_S"])
                await asyncio.sleep((SUSPECT_ROUNDS + 1) * interval)
                async with http.get(api2 + "/metrics") as response:
                    metrics = await response.text()
                polls = re.compile(r"^chatserver_pool_catch_up_polls_total (\S+)$", re.M)
                before = float(polls.search(metrics).group(1))  # type: ignore[union-attr]
                await asyncio.sleep(3.5 * interval)
                async with http.get(api2 + "/metrics") as response:
                    later = float(polls.search(await response.text()).group(1))  # type: ignore[union-attr]
                assert later - before <= 1  # at most the every-15-intervals safety poll
                # Disconnecting a user on node 1 closes their sessions on node 2.
                await admin("DELETE", f"/api/v1/users/{ids['alice']}/sessions")
                bye = await alice.next_event("bye", timeout=scaled(5))
                assert bye["reason"] == "disconnected"
                await again.close()
            finally:
                await poster.close()
                await alice.close()


@pytest.mark.slow
async def test_a_fifth_node_is_standby_until_promoted(pg_cluster: PostgresCluster) -> None:
    from tests.test_cli import chatserver

    url = await new_database(pg_cluster)
    await seed(url, ["alice"], [])
    async with running_pool(url, 5) as pool:  # max_active = 4, the default
        fifth = pool.nodes[4]
        assert "joined as standby" in "".join(fifth.lines)
        raw = await Client.connect_tcp(*fifth.tcp)
        refused = await raw.request("hello", protocol=1)
        assert refused["error"]["code"] == "unavailable"
        assert len(refused["active"]) == 4
        await raw.close()
        env = pool.nodes[0].env
        code, _out, err = await chatserver(
            "pool", "activate", *[f"node{i}" for i in (1, 2, 3, 5)], env=env
        )
        assert code == 0, err
        await fifth.wait_for(r"is now active", scaled(5))
        await pool.nodes[3].wait_for(r"is now standby", scaled(5))
        client = await login(fifth, "alice")
        await client.close()
        code, _out, err = await chatserver("pool", "swap", "node5", "node4", env=env)
        assert code == 0, err
        await pool.nodes[3].wait_for(r"is now active", scaled(5))
        client = await login(pool.nodes[3], "alice")
        await client.close()
        code, _out, err = await chatserver(
            "pool", "activate", *[f"node{i}" for i in range(1, 6)], env=env
        )
        assert code == 1 and "at most 4" in err


# -- TLS on the peer port -------------------------------------------------------------------


async def test_peer_links_over_tls(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob"], ["lobby"])
    tls = {
        "CHATSERVER_TLS_CERTIFICATE": str(tmp_path / "cert.pem"),
        "CHATSERVER_TLS_KEY": str(tmp_path / "key.pem"),
        "CHATSERVER_POOL_PEER_CA": str(tmp_path / "ca.pem"),
    }
    async with running_pool(url, 2, **tls) as pool:
        n1, n2 = pool.nodes
        # A plain-TCP peer gets no handshake at all.
        got, closed = await handshake(n1.peer, [PeerProtocol("connector", "x", "").data_to_send()])
        assert got == [] and closed
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(context)
        alice = await Client.connect_tcp(*n1.tcp, ssl=context)
        bob = await Client.connect_tcp(*n2.tcp, ssl=context)
        try:
            await alice.login("alice", PASSWORD)
            await bob.login("bob", PASSWORD)
            await bob.call("join", room=ids["lobby"])
            await alice.call("post", room=ids["lobby"], text="over tls", cid="t1")
            assert (await messages_until(bob, ids["lobby"], 1))[0]["text"] == "over tls"
        finally:
            await alice.close()
            await bob.close()
