"""A node whose PostgreSQL store is frozen (no byte passes, nothing closes) or cut (connections
closed, new ones refused), on real processes: it answers every request that needs the store with
``unavailable`` within ``database.timeout_s``, ``/readyz`` answers within a second, it recovers
within seconds of the store's return (not the kernel's TCP timers), and it says so in one log
line per change of state.

Measured numbers (time from heal to the first acknowledged post) are printed with ``-s``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from chatserver.client import Client
from chatserver.pool.local import LocalPool
from chatserver.store import users as user_store
from chatserver.store.db import Database
from chatserver.testing import PostgresCluster
from tests.conftest import PASSWORD, scaled
from tests.pool.test_pool import new_database, seed
from tests.store.faults import (
    STATIC,
    StoreProxy,
    describe,
    errors_and_tracebacks,
    lines_with,
    management_url,
    node_env,
    start_single,
    timed,
)

TIMEOUT_S = 3.0  # database.timeout_s of the nodes under test
# What a request that needs the store may take during a fault: the bound, and some slack for a
# slow machine (a login waits for its password hash too).
BOUND_S = TIMEOUT_S + 3
# A post may first wait for the group commit ahead of it (docs/operations.md).
POST_BOUND_S = 2 * TIMEOUT_S + 3


async def _admin_get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {STATIC}"}
    async with http.get(path, headers=headers) as response:
        return response.status, await response.json()


async def _readyz(http: aiohttp.ClientSession) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with http.get("/readyz", timeout=aiohttp.ClientTimeout(total=10)) as response:
        body = await response.json()
    return response.status, body, time.monotonic() - started


async def _until_ready(http: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(scaled(10)):
        while True:
            status, _, _ = await _readyz(http)
            if status == 200:
                return
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("fault", ["freeze", "drop", "cut"])
async def test_a_node_cut_from_its_store_answers_and_recovers(
    pg_cluster: PostgresCluster, fault: str
) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob"], ["lobby", "other"])
    lobby, other = ids["lobby"], ids["other"]
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    node = await start_single(
        node_env(proxy.url(url), CHATSERVER_DATABASE_TIMEOUT_S=str(TIMEOUT_S))
    )
    clients: list[Client] = []
    try:
        alice = await Client.connect_tcp(*node.tcp)
        clients.append(alice)
        await alice.login("alice", PASSWORD)
        await alice.call("join", room=lobby)
        await alice.call("post", room=lobby, text="before", cid="before")
        # a connection serves its requests in order: one connection per request below
        reader = await Client.connect_tcp(*node.tcp)
        joiner = await Client.connect_tcp(*node.tcp)
        clients += [reader, joiner]
        for client in (reader, joiner):
            await client.login("alice", PASSWORD)
        await reader.call("join", room=lobby)
        async with aiohttp.ClientSession(management_url(node)) as http:
            status, _, _ = await _readyz(http)
            assert status == 200
            mark = len(node.lines)

            # -- the fault ----------------------------------------------------------------
            if fault == "cut":
                proxy.cut()
            else:
                proxy.freeze(drop=fault == "drop")

            async def post(cid: str) -> dict[str, Any]:
                return await alice.request("post", room=lobby, text=cid, cid=cid)

            async def login_bob() -> dict[str, Any]:
                bob = await Client.connect_tcp(*node.tcp)
                clients.append(bob)
                await bob.call("hello", protocol=1, client="test")
                return await bob.request("auth", user="bob", password=PASSWORD)

            async def readyz_until_503() -> list[tuple[int, float]]:
                seen: list[tuple[int, float]] = []
                while not seen or seen[-1][0] == 200:
                    status, _, took = await _readyz(http)
                    seen.append((status, took))
                    await asyncio.sleep(0.2)
                return seen

            async def posts_meanwhile() -> list[tuple[dict[str, Any], float]]:
                # posts all through the fault: several group-commit batches fail
                sent = []
                for i in range(20):
                    sent.append(asyncio.ensure_future(timed(post(f"burst-{i}"))))
                    await asyncio.sleep(0.2)
                return list(await asyncio.gather(*sent))

            requests = {
                "post": timed(post("during")),
                "history": timed(reader.request("history", room=lobby, after=0, limit=10)),
                "join": timed(joiner.request("join", room=other)),
                "auth": timed(login_bob()),
                "admin": timed(_admin_get(http, "/api/v1/users")),
                "readyz": timed(readyz_until_503()),
                "burst": timed(posts_meanwhile()),
            }
            results = dict(zip(requests, await asyncio.gather(*requests.values()), strict=True))
            for name in ("post", "history", "join", "auth"):
                reply, took = results[name]
                assert reply.get("error", {}).get("code") == "unavailable", (name, reply)
                assert took <= scaled(BOUND_S), (name, took)
            (status, body), took = results["admin"]
            assert status == 503 and body["error"]["code"] == "unavailable", body
            assert took <= scaled(BOUND_S), ("admin", took)
            burst, _ = results["burst"]
            assert all(r["error"]["code"] == "unavailable" for r, _ in burst), burst
            assert all(took <= scaled(POST_BOUND_S) for _, took in burst), burst
            ready, ready_after = results["readyz"]
            assert all(took <= scaled(1) for _, took in ready), ready
            assert ready_after <= scaled(BOUND_S), ready
            slowest = max(
                [t for name, (_, t) in results.items() if name not in ("burst", "readyz")]
                + [t for _, t in burst]
            )
            times = {name: round(t, 2) for name, (_, t) in results.items()}
            times["slowest post of the burst"] = round(max(t for _, t in burst), 2)
            print(f"\n{fault}: seconds to answer: {times}")
            print(
                f"{fault}: every request answered `unavailable` within {slowest:.2f} s;"
                f" /readyz 503 after {ready_after:.2f} s, each answer within"
                f" {max(t for _, t in ready):.3f} s"
            )

            # -- the store returns --------------------------------------------------------
            proxy.heal() if fault == "cut" else proxy.thaw()
            healed = time.monotonic()
            first_ack = None
            async with asyncio.timeout(scaled(30)):
                while first_ack is None:
                    reply = await post("after")
                    if reply.get("ok"):
                        first_ack = time.monotonic() - healed
                    else:
                        assert reply["error"]["code"] == "unavailable", reply
                        await asyncio.sleep(0.1)
            print(f"{fault}: first acknowledged post {first_ack:.2f} s after the store returned")
            assert first_ack <= scaled(10), first_ack
            # the post answered `unavailable` is stored once when retried with its cid (its
            # statement may have reached the store when the freeze was lifted: then the retry
            # gets the seq it was stored with)
            again = await alice.call("post", room=lobby, text="during", cid="during")
            page = await alice.call("history", room=lobby, after=0, limit=100)
            seqs = {m["text"]: m["seq"] for m in page["messages"]}
            texts = [m["text"] for m in page["messages"]]
            assert texts.count("during") == 1 and texts[0] == "before", texts
            assert again["seq"] == seqs["during"], (again, page)
            await _until_ready(http)
            # the other room, and a new sign-in, work again
            await alice.call("join", room=other)
            bob = await Client.connect_tcp(*node.tcp)
            clients.append(bob)
            await bob.login("bob", PASSWORD)

        # -- the log: one line per change of state, no tracebacks -----------------------------
        await asyncio.sleep(0.5)
        log = describe(node)
        assert len(lines_with(node, "store unavailable", mark)) == 1, log
        assert len(lines_with(node, "store available again", mark)) == 1, log
        assert len(lines_with(node, "storing posts failed", mark)) == 1, log
        assert len(lines_with(node, "posts are stored again", mark)) == 1, log
        errors = errors_and_tracebacks(node, mark)
        assert len(errors) <= 1 and all("storing posts failed" in e for e in errors), log
    finally:
        for client in clients:
            await client.close()
        await proxy.close()
        await node.stop()


async def test_readyz_answers_within_a_second_while_the_store_is_frozen(
    pg_cluster: PostgresCluster,
) -> None:
    """Asked all through a freeze, every answer comes within a second: 200 while the last probe
    is fresh, then 503 (never a wait on the store)."""
    url = await new_database(pg_cluster)
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    node = await start_single(
        node_env(proxy.url(url), CHATSERVER_DATABASE_TIMEOUT_S=str(TIMEOUT_S))
    )
    try:
        async with aiohttp.ClientSession(management_url(node)) as http:
            proxy.freeze()
            answers = []
            end = time.monotonic() + scaled(TIMEOUT_S * 2 + 2)
            while time.monotonic() < end:
                status, body, took = await _readyz(http)
                answers.append((status, round(took, 3), body["store"]))
                await asyncio.sleep(0.1)
            print(f"\n/readyz during a freeze: slowest answer {max(a[1] for a in answers)} s")
            assert all(took <= scaled(1) for _, took, _ in answers), answers
            assert answers[-1][0] == 503 and answers[-1][2].startswith("unreachable"), answers
            proxy.thaw()
            await _until_ready(http)
    finally:
        await proxy.close()
        await node.stop()


async def test_nodes_started_together_on_a_fresh_store_agree_on_one_administrator(
    pg_cluster: PostgresCluster,
) -> None:
    """Three pooled nodes started at once on a fresh store, three times: every node starts, one
    creates ``admin``, and the administrator can sign in with CHATSERVER_ADMIN_PASSWORD."""
    from chatserver.pool.local import NodeProcess

    for trial in range(3):
        url = await new_database(pg_cluster)
        pool = LocalPool(url, env={"CHATSERVER_ADMIN_PASSWORD": PASSWORD})
        nodes = [NodeProcess(f"node{i}", pool.node_env(i)) for i in (1, 2, 3)]
        pool.nodes = nodes
        try:
            await asyncio.gather(*(n.start() for n in nodes))
            results = await asyncio.gather(
                *(n.started(scaled(60)) for n in nodes), return_exceptions=True
            )
            failed = [
                (n.name, "".join(n.lines[-5:]))
                for n, r in zip(nodes, results, strict=True)
                if r is not None
            ]
            assert not failed, f"trial {trial}: {failed}"
            created = [n.name for n in nodes if lines_with(n, "created administrator 'admin'")]
            assert len(created) == 1, (trial, created)
            client = await Client.connect_tcp(*nodes[0].tcp)
            try:
                await client.login("admin", PASSWORD)
            finally:
                await client.close()
            db = Database(url)
            try:
                assert await user_store.count_admins(db) == 1
            finally:
                await db.close()
        finally:
            await pool.stop()


def _faketime_library() -> str | None:
    for path in (
        os.environ.get("CHATSERVER_TEST_FAKETIME_LIB", ""),
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ):
        if path and os.path.exists(path):
            return path
    return None


async def test_a_node_ten_minutes_slow_clears_and_expires_on_the_stores_clock(
    pg_cluster: PostgresCluster,
) -> None:
    """A node whose clock is 10 minutes behind (libfaketime) and one on time share a store.
    ``room clear --until T`` on the slow node removes what was posted up to T, keeps what came
    after, and nothing at or below the ``through_seq`` it announces stays; a token the slow node
    issued (10 minutes is longer than its time to live) is valid on the other node, and the
    other node's token on the slow one."""
    library = _faketime_library()
    if library is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    lobby = ids["lobby"]
    ttl = {"CHATSERVER_CHAT_SESSION_TTL_S": "300"}
    slow_env = node_env(url, "slow", **ttl)
    slow_env.update(
        LD_PRELOAD=library, FAKETIME="-10m", FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_NO_CACHE="1"
    )
    slow = await start_single(slow_env, "slow")
    right = await start_single(node_env(url, "right", **ttl), "right")
    clients: list[Client] = []
    try:
        on_slow = await Client.connect_tcp(*slow.tcp)
        clients.append(on_slow)
        await on_slow.login("alice", PASSWORD)
        on_right = await Client.connect_tcp(*right.tcp)
        clients.append(on_right)
        await on_right.login("alice", PASSWORD)
        await on_slow.call("join", room=lobby)
        await on_right.call("join", room=lobby)

        # the slow node's messages carry the store's time, not its own
        first = await on_slow.call("post", room=lobby, text="before T", cid="1")
        assert abs(first["ts"] - time.time() * 1000) < 60_000, first
        await asyncio.sleep(0.05)
        until = int(time.time() * 1000)
        await asyncio.sleep(0.05)
        await on_right.call("post", room=lobby, text="after T, on time", cid="2")
        await on_slow.call("post", room=lobby, text="after T, slow node", cid="3")
        async with aiohttp.ClientSession(management_url(slow)) as http:
            headers = {"Authorization": f"Bearer {STATIC}"}
            async with http.post(
                f"/api/v1/rooms/{lobby}/clear", json={"until": until}, headers=headers
            ) as response:
                cleared = await response.json()
                assert response.status == 200, cleared
        assert cleared == {"removed": 1, "through_seq": first["seq"]}, cleared
        page = await on_right.call("history", room=lobby, after=0, limit=100)
        kept = [(m["seq"], m["text"]) for m in page["messages"]]
        assert [text for _, text in kept] == ["after T, on time", "after T, slow node"], kept
        assert all(seq > cleared["through_seq"] for seq, _ in kept), (kept, cleared)

        # tokens: issued on one clock, honoured on the other
        slow_token, right_token = on_slow.token, on_right.token
        for node, token in ((right, slow_token), (slow, right_token)):
            client = await Client.connect_tcp(*node.tcp)
            clients.append(client)
            await client.call("hello", protocol=1, client="test")
            reply = await client.request("auth", token=token)
            assert reply.get("ok"), (node.name, reply)
    finally:
        for client in clients:
            await client.close()
        await slow.stop()
        await right.stop()


async def test_the_pool_heartbeat_recovers_within_seconds_of_a_freeze(
    pg_cluster: PostgresCluster,
) -> None:
    """A pooled node's heartbeat is written again within seconds of its store returning (it
    does not wait on a connection whose statement was lost in the partition)."""
    from chatserver.pool import registry
    from tests.pool.test_pool import FAST

    url = await new_database(pg_cluster)
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    pool = LocalPool(proxy.url(url), env={**FAST, "CHATSERVER_DATABASE_TIMEOUT_S": str(TIMEOUT_S)})
    db = Database(url)
    try:
        await pool.start(1)
        mark = len(pool.nodes[0].lines)
        proxy.freeze(drop=True)
        await asyncio.sleep(scaled(TIMEOUT_S * 2))
        proxy.thaw()
        thawed = time.monotonic()
        async with asyncio.timeout(scaled(20)):
            while True:
                rows, now = await registry.list_nodes_at(db)
                ages = [now - r.heartbeat_ms for r in rows if r.name == "node1"]
                if ages and ages[0] < 1000:
                    break
                await asyncio.sleep(0.1)
        recovered = time.monotonic() - thawed
        print(f"\nheartbeat written again {recovered:.2f} s after the freeze was lifted")
        assert recovered <= scaled(10), recovered
        # one log line when the beats start failing, one when they work again
        node = pool.nodes[0]
        await node.wait_for("heartbeat written again", scaled(5), start=mark)
        assert len(lines_with(node, "heartbeat failed", mark)) == 1, node.lines[mark:]
    finally:
        await db.close()
        await pool.stop()
        await proxy.close()


# -- one Database, in this process ----------------------------------------------------------


def _socket_options(sock: Any) -> tuple[int, int, int]:
    import socket

    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    )


async def test_every_store_connection_has_tcp_keepalive(pg_cluster: PostgresCluster) -> None:
    """Both pools' connections: SO_KEEPALIVE, the idle time from ``keepalive_s``, and
    TCP_USER_TIMEOUT (the kernel drops a connection whose data goes unacknowledged)."""
    url = await new_database(pg_cluster)
    db = Database(url, timeout_s=5, keepalive_s=7)
    try:
        async with db.read() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            engine_side = _socket_options(driver._transport.get_extra_info("socket"))
        pool = await db.pg_pool()
        async with pool.acquire() as raw:
            fast_side = _socket_options(raw._con._transport.get_extra_info("socket"))
    finally:
        await db.close()
    assert engine_side == fast_side == (1, 7, 14_000), (engine_side, fast_side)


async def test_a_use_of_a_lost_store_fails_within_its_bound_and_the_connection_is_replaced(
    pg_cluster: PostgresCluster,
) -> None:
    """Statements whose bytes are lost: both pools raise ``unavailable`` at ``timeout_s``; once
    the network is back, the next use works at once on a new connection."""
    from chatserver.store.health import StoreUnavailable

    url = await new_database(pg_cluster)
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    db = Database(proxy.url(url), timeout_s=1)
    try:
        pool = await db.pg_pool()
        async with db.read() as conn:  # one connection in each pool, idle in it
            await conn.execute(text("SELECT 1"))
        await pool.fetch("SELECT 1")
        proxy.freeze(drop=True)

        async def engine_read() -> None:
            async with db.read() as conn:
                await conn.execute(text("SELECT 1"))

        for use in (engine_read, lambda: pool.fetch("SELECT 1")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="did not answer within 1 s"):
                await asyncio.wait_for(use(), scaled(5))
            assert time.monotonic() - started <= scaled(2)
        assert not db.health.available
        proxy.thaw()
        (_, took) = await timed(engine_read())
        (rows, took_fast) = await timed(pool.fetch("SELECT 2 AS two"))
        assert rows[0]["two"] == 2
        assert took <= scaled(1) and took_fast <= scaled(1), (took, took_fast)
        assert db.health.available
    finally:
        await db.close()
        await proxy.close()


# -- a long outage under load (--run-slow) --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["drop", "cut"])
async def test_a_thirty_second_store_outage_under_a_posting_load(
    pg_cluster: PostgresCluster, fault: str
) -> None:
    """Four clients post all through a 30 s outage (default ``timeout_s``), retrying each post
    with its cid after ``unavailable``: every request is answered within the bound, every
    acknowledged post is stored once with no gap, and the outage makes a handful of log lines."""
    timeout = 5.0
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    lobby = ids["lobby"]
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    node = await start_single(node_env(proxy.url(url)))
    clients: list[Client] = []
    acked: dict[str, int] = {}
    ack_times: list[float] = []
    slowest = 0.0
    refused = 0
    stop = asyncio.Event()

    async def poster(i: int, client: Client) -> None:
        nonlocal slowest, refused
        k = 0
        while not stop.is_set():
            cid = f"{i}-{k}"
            async with asyncio.timeout(scaled(2 * timeout + 5)):  # silence fails the test
                reply, took = await timed(client.request("post", room=lobby, text=cid, cid=cid))
            slowest = max(slowest, took)
            if reply.get("ok"):
                acked[cid] = reply["seq"]
                ack_times.append(time.monotonic())
                k += 1
            else:
                assert reply["error"]["code"] == "unavailable", reply
                refused += 1
                await asyncio.sleep(0.05)

    try:
        for _ in range(4):
            client = await Client.connect_tcp(*node.tcp)
            await client.login("alice", PASSWORD)
            clients.append(client)
        tasks = [asyncio.ensure_future(poster(i, c)) for i, c in enumerate(clients)]
        await asyncio.sleep(3)
        mark = len(node.lines)
        proxy.cut() if fault == "cut" else proxy.freeze(drop=True)
        await asyncio.sleep(30)
        proxy.heal() if fault == "cut" else proxy.thaw()
        healed = time.monotonic()
        await asyncio.sleep(scaled(10))
        stop.set()
        await asyncio.gather(*tasks)
        first_ack = min(t for t in ack_times if t >= healed) - healed
        outage_log = node.lines[mark:]
        print(
            f"\n{fault} 30 s under load: {len(acked)} posts acknowledged, {refused} answered"
            f" `unavailable`, slowest answer {slowest:.2f} s, first ack {first_ack:.2f} s after"
            f" the store returned, {len(outage_log)} log lines:\n" + "".join(outage_log)
        )
        assert first_ack <= scaled(10), first_ack
        assert slowest <= scaled(2 * timeout + 3), slowest
        assert len(lines_with(node, "store unavailable", mark)) == 1
        errors = errors_and_tracebacks(node, mark)
        assert len(errors) <= 1 and all("storing posts failed" in e for e in errors), errors
        reader = clients[0]
        seen: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await reader.call("history", room=lobby, after=after, limit=500)
            seen.extend(page["messages"])
            if not page["more"]:
                break
            after = seen[-1]["seq"]
        seqs = [m["seq"] for m in seen]
        assert seqs == list(range(1, len(seqs) + 1))  # no gap
        texts = [m["text"] for m in seen]
        assert len(texts) == len(set(texts))  # nothing twice
        assert set(acked) <= set(texts) and all(acked[m["text"]] == m["seq"] for m in seen)
    finally:
        stop.set()
        for client in clients:
            await client.close()
        await proxy.close()
        await node.stop()
