"""The pool's store state (issue 15, section 3): ``failed_over`` onto ``database.backup_url`` and
back to ``normal``, through the management API, audited, with the other nodes following.

Real clusters: a primary and its streaming replica (the backup). The primary is lost
(``stop -m immediate``), the API promotes the backup and records the state; a second node
follows on its own, a node started afterwards starts on the backup. Failing back: the old
primary's address gets a new replica of the backup (``pg_basebackup -R``), and ``normal`` with
``promote`` fences the backup, waits for the replica to catch up, promotes it, and every node
moves back. No message is lost on the way.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from chatserver.server import Node
from chatserver.store.migrate import upgrade
from chatserver.testing import PostgresCluster, ReplicaCluster
from tests.conftest import Harness, node_config, scaled, start_node

STATIC = "static-automation-token-0123456789"


class Managed:
    def __init__(self, node: Node, http: aiohttp.ClientSession) -> None:
        self.node, self.http = node, http

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = STATIC
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, path, json=body, headers=headers) as response:
            return response.status, await response.json()


@pytest.fixture
async def nodes() -> AsyncIterator[list[Harness]]:
    started: list[Harness] = []
    yield started
    for h in started:
        await h.close()


def managed(node: Node) -> Managed:
    """An HTTP session on ``node``'s management port (the caller closes ``http``)."""
    assert node.management is not None and node.management.address is not None
    host, port = node.management.address
    return Managed(node, aiohttp.ClientSession(f"http://{host}:{port}"))


async def post(h: Harness, room: int, cid: str) -> int:
    client = await h.login("alice")
    try:
        return int((await client.call("post", room=room, text=cid, cid=cid))["seq"])
    finally:
        await client.close()


async def history(h: Harness, room: int) -> list[str]:
    client = await h.login("alice")
    try:
        page = await client.call("history", room=room, after=0, limit=100)
        return [m["cid"] for m in page["messages"]]
    finally:
        await client.close()


async def until(predicate: Any, timeout: float) -> None:
    async with asyncio.timeout(scaled(timeout)):
        while not predicate():  # noqa: ASYNC110 (another node's watcher)
            await asyncio.sleep(0.05)


async def test_fail_over_onto_the_backup_and_back(
    pg_pair: tuple[PostgresCluster, ReplicaCluster], nodes: list[Harness]
) -> None:
    primary, backup = pg_pair
    await asyncio.to_thread(upgrade, primary.url())
    await backup.wait_streaming()
    main_url, backup_url = primary.url(), backup.url()

    def config() -> Any:
        return node_config(
            main_url,
            database={"backup_url": backup_url, "failover_check_s": 0.2},
            management={"token": STATIC},
        )

    a = Harness(await start_node(config()))
    nodes.append(a)
    b = Harness(await start_node(config()))
    nodes.append(b)
    await a.user("alice")
    room = await a.room()
    assert await post(a, room, "before") == 1

    api = managed(a.node)
    try:
        status, state = await api.call("GET", "/api/v1/pool/state")
        assert status == 200 and (state["state"], state["store"]) == ("normal", "main")
        # Not without a token; not onto a standby unless asked to promote it.
        status, _ = await api.call(
            "PUT", "/api/v1/pool/state", {"state": "failed_over"}, token=None
        )
        assert status == 401
        status, refused = await api.call("PUT", "/api/v1/pool/state", {"state": "failed_over"})
        assert status == 409 and "standby" in refused["error"]["message"], refused
        status, _ = await api.call("PUT", "/api/v1/pool/state", {"state": "elsewhere"})
        assert status == 400

        # The disaster: the primary is gone. Fail over, promoting the backup.
        await asyncio.to_thread(primary.crash)
        status, state = await api.call(
            "PUT",
            "/api/v1/pool/state",
            {"state": "failed_over", "promote": True, "reason": "site A lost"},
        )
        assert status == 200, state
        assert (state["state"], state["store"], state["reason"]) == (
            "failed_over",
            "backup",
            "site A lost",
        )
        assert a.node.store_failover.store == "backup"
        # The other node follows on its own; a node started now starts on the backup.
        await until(lambda: b.node.store_failover.store == "backup", 10)
        assert await post(b, room, "after-failover") == 2
        c = Harness(await start_node(config()))
        nodes.append(c)
        assert c.node.store_failover.store == "backup"
        assert await history(c, room) == ["before", "after-failover"]
        # Audited, in the store the pool is on now.
        status, audit = await api.call("GET", "/api/v1/audit?action=pool.state")
        assert status == 200
        entry = next(e for e in audit if e["action"] == "pool.state")
        assert entry["actor"] == "token"
        assert (entry["before"]["state"], entry["after"]["state"]) == ("normal", "failed_over")
        status, again = await api.call("PUT", "/api/v1/pool/state", {"state": "failed_over"})
        assert status == 409 and "already" in again["error"]["message"]

        # Failing back: site A rebuilt as a replica of the backup, on the old primary's address.
        rebuilt = ReplicaCluster(backup, synchronous=True)
        rebuilt.port = primary.port
        await asyncio.to_thread(rebuilt.start)
        try:
            await rebuilt.wait_streaming()
            status, state = await api.call(
                "PUT", "/api/v1/pool/state", {"state": "normal", "promote": True}
            )
            assert status == 200, state
            assert (state["state"], state["store"]) == ("normal", "main")
            for h in (b, c):
                await until(lambda h=h: h.node.store_failover.store == "main", 10)
            assert await post(b, room, "after-failback") == 3
            assert await history(a, room) == ["before", "after-failover", "after-failback"]
        finally:
            for h in nodes:
                await h.close()
            nodes.clear()
            await asyncio.to_thread(rebuilt.stop)
    finally:
        await api.http.close()


async def test_the_command_line_shows_and_refuses(
    pg_pair: tuple[PostgresCluster, ReplicaCluster],
) -> None:
    """``chatserver pool state`` / ``failover`` as an operator runs them (real processes)."""
    primary, backup = pg_pair
    await asyncio.to_thread(upgrade, primary.url())
    await backup.wait_streaming()
    # The main URL lists the standby first: the fence must skip it and fence the primary.
    main = f"postgresql://{primary.user}@127.0.0.1:{backup.port},127.0.0.1:{primary.port}/postgres"
    env = {
        "CHATSERVER_DATABASE_URL": main,
        "CHATSERVER_DATABASE_BACKUP_URL": backup.url(),
        "PATH": "/usr/bin:/bin",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chatserver", "pool", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(60),
        )

    shown = await asyncio.to_thread(run, "state")
    assert shown.returncode == 0 and "pool state normal on database.url" in shown.stdout
    refused = await asyncio.to_thread(run, "failover")
    assert refused.returncode == 1 and "standby" in refused.stderr
    done = await asyncio.to_thread(run, "failover", "--promote", "--reason", "drill")
    assert done.returncode == 0, done.stderr
    assert "pool state failed_over on database.backup_url" in done.stdout
    assert "drill" in done.stdout
    # A planned failover fences the old primary: it is still up, but no longer writable.
    import asyncpg

    conn = await asyncpg.connect(primary.url())
    try:
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        row = await conn.fetchrow("SELECT * FROM audit_log WHERE action = 'pool.state'")
        assert row is None  # recorded in the backup, where the pool now is
    finally:
        await conn.close()
    conn = await asyncpg.connect(backup.url())
    try:
        assert await conn.fetchval("SHOW default_transaction_read_only") == "off"
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        row = await conn.fetchrow("SELECT actor FROM audit_log WHERE action = 'pool.state'")
        assert row is not None and row["actor"].startswith("cli:")
    finally:
        await conn.close()
