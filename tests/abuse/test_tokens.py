"""Session tokens can be revoked (issue 14, item 5): logout, an administrator's disconnect and
password reset, a user's password change — each takes effect at once: the token stops working,
and the connections using it are closed with ``bye``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import delete

from chatserver.client import Client
from chatserver.pool.events import decode, encode
from chatserver.rooms.changes import TokensRevoked
from chatserver.store import admin as admin_store
from chatserver.store import users as user_store
from chatserver.store.schema import sessions
from tests.conftest import PASSWORD, Harness, node_config, scaled, start_node
from tests.test_cli import chatserver

STATIC = "static-token-for-the-token-tests"
NEW_PASSWORD = "a new password 42"


class Node:
    """A node with its management port and an HTTP session on it."""

    def __init__(self, harness: Harness, http: aiohttp.ClientSession, url: str) -> None:
        self.h = harness
        self.http = http
        self.url = url

    async def api(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        headers = {"Authorization": f"Bearer {STATIC}"}
        async with self.http.request(method, path, json=body, headers=headers) as response:
            data = await response.json()
            assert response.status == status, (method, path, response.status, data)
            return data

    async def user(self, name: str) -> int:
        await self.h.user(name)
        found = await user_store.credentials(self.h.node.db, name)
        assert found is not None
        return found[0].id

    async def resume(self, token: str) -> dict[str, Any]:
        client = await self.h.connect()
        await client.call("hello", protocol=1)
        return await client.request("auth", token=token)


@pytest.fixture
async def node(db_url: str) -> AsyncIterator[Node]:
    started = await start_node(node_config(db_url, management={"token": STATIC}))
    harness = Harness(started)
    assert started.management is not None and started.management.address is not None
    host, port = started.management.address
    url = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession(url) as http:
            yield Node(harness, http, url)
    finally:
        await harness.close()


async def bye(client: Client) -> str:
    event = await client.next_event("bye", timeout=scaled(5))
    await asyncio.wait_for(client.closed.wait(), scaled(5))
    return str(event["reason"])


async def still_open(client: Client) -> None:
    assert (await client.call("ping"))["ok"] is True


async def test_logout_revokes_the_token_and_closes_its_connections(node: Node) -> None:
    await node.user("alice")
    first = await node.h.login("alice")
    assert first.token is not None
    same_token = await node.h.connect("websocket")
    await same_token.resume(first.token)
    other = await node.h.login("alice")  # another token of the same user
    reply = await first.request("logout")
    assert reply["ok"] is True
    assert await bye(first) == "logged_out"
    assert await bye(same_token) == "revoked"
    await still_open(other)
    refused = await node.resume(first.token)
    assert refused["error"]["code"] == "unauthenticated"
    assert other.token is not None
    assert (await node.resume(other.token))["ok"] is True


async def test_disconnecting_a_user_revokes_their_tokens(node: Node) -> None:
    """``DELETE /api/v1/users/{id}/sessions``: today the token still worked after it."""
    alice = await node.user("alice")
    client = await node.h.login("alice")
    assert client.token is not None
    out = await node.api("DELETE", f"/api/v1/users/{alice}/sessions")
    assert out == {"disconnected": 1}
    assert await bye(client) == "disconnected"
    refused = await node.resume(client.token)
    assert refused["error"] == {
        "code": "unauthenticated",
        "message": "the token is unknown or expired",
    }
    # the management port takes the same tokens: an administrator's is revoked there too
    await node.h.user("root", admin=True)
    root = await node.h.login("root")
    found = await user_store.credentials(node.h.node.db, "root")
    assert found is not None and root.token is not None
    bearer = {"Authorization": f"Bearer {root.token}"}
    async with node.http.get("/api/v1/users", headers=bearer) as response:
        assert response.status == 200
    await node.api("DELETE", f"/api/v1/users/{found[0].id}/sessions")
    async with node.http.get("/api/v1/users", headers=bearer) as response:
        assert response.status == 401


async def test_a_password_change_revokes_the_users_other_tokens(node: Node) -> None:
    await node.user("alice")
    mine = await node.h.login("alice")
    elsewhere = await node.h.login("alice", "websocket")
    assert mine.token is not None and elsewhere.token is not None
    wrong = await mine.request("password.change", password="not it", new_password=NEW_PASSWORD)
    assert wrong["error"] == {"code": "forbidden", "message": "the password is wrong"}
    short = await mine.request("password.change", password=PASSWORD, new_password="short")
    assert short["error"]["code"] == "bad_request"
    changed = await mine.request("password.change", password=PASSWORD, new_password=NEW_PASSWORD)
    assert changed["ok"] is True
    assert await bye(elsewhere) == "revoked"
    await still_open(mine)
    assert (await node.resume(mine.token))["ok"] is True
    assert (await node.resume(elsewhere.token))["error"]["code"] == "unauthenticated"
    client = await node.h.connect()
    await client.call("hello", protocol=1)
    old = await client.request("auth", user="alice", password=PASSWORD)
    assert old["error"]["code"] == "unauthenticated"
    assert (await client.request("auth", user="alice", password=NEW_PASSWORD))["ok"] is True


async def test_guessing_the_old_password_is_throttled(db_url: str) -> None:
    """``password.change`` checks a password: a stolen token must not make it a free oracle."""
    started = await start_node(node_config(db_url, login={"account_free_failures": 3}))
    h = Harness(started)
    try:
        await h.user("alice")
        client = await h.login("alice")
        for i in range(3):
            reply = await client.request(
                "password.change", password=f"guess {i}", new_password=NEW_PASSWORD
            )
            assert reply["error"]["code"] == "forbidden"
        refused = await client.request(
            "password.change", password=PASSWORD, new_password=NEW_PASSWORD
        )
        assert refused["error"]["code"] == "rate_limited" and refused["retry_after"] >= 1
        other = await h.connect()
        await other.call("hello", protocol=1)
        again = await other.request("auth", user="alice", password=PASSWORD)
        assert again["error"]["code"] == "rate_limited"
    finally:
        await h.close()


async def test_an_administrators_password_reset_revokes_every_token(node: Node) -> None:
    alice = await node.user("alice")
    one = await node.h.login("alice")
    two = await node.h.login("alice", "websocket-json")
    await node.api("PUT", f"/api/v1/users/{alice}/password", {"password": "x"}, status=400)
    out = await node.api("PUT", f"/api/v1/users/{alice}/password", {"password": NEW_PASSWORD})
    assert out == {"disconnected": 2}
    assert await bye(one) == "revoked"
    assert await bye(two) == "revoked"
    assert one.token is not None
    assert (await node.resume(one.token))["error"]["code"] == "unauthenticated"
    client = await node.h.connect()
    await client.call("hello", protocol=1)
    assert (await client.request("auth", user="alice", password=PASSWORD))["ok"] is False
    assert (await client.request("auth", user="alice", password=NEW_PASSWORD))["ok"] is True
    entries = await admin_store.audit_entries(node.h.node.db, limit=5, action="user.password_reset")
    assert [(e.actor, e.target, e.before, e.after) for e in entries] == [
        ("token", f"user:{alice}", None, {"disconnected": 2})
    ]
    await node.api("PUT", "/api/v1/users/99999/password", {"password": NEW_PASSWORD}, status=404)


async def test_the_command_line_resets_a_password(node: Node) -> None:
    alice = await node.user("alice")
    client = await node.h.login("alice")
    env = {
        "PATH": "/usr/bin:/bin",
        "CHATSERVER_ADMIN_URL": node.url,
        "CHATSERVER_ADMIN_TOKEN": STATIC,
    }
    code, out, err = await chatserver(
        "admin",
        "users",
        "password",
        str(alice),
        "--password-stdin",
        "--json",
        env=env,
        stdin=NEW_PASSWORD + "\n",
    )
    assert code == 0, err
    assert '"disconnected": 1' in out
    assert await bye(client) == "revoked"
    again = await node.h.connect()
    await again.call("hello", protocol=1)
    assert (await again.request("auth", user="alice", password=NEW_PASSWORD))["ok"] is True


async def test_a_revoked_token_missed_while_a_link_was_down_is_caught_up(node: Node) -> None:
    """After a peer link comes up, each node re-checks the tokens of its sessions (a
    ``revoked`` event may have been lost): one deleted from the store closes its session."""
    await node.user("alice")
    client = await node.h.login("alice")
    kept = await node.h.login("alice")
    assert client.token is not None
    async with node.h.node.db.write() as conn:
        await conn.execute(
            delete(sessions).where(sessions.c.token_hash == user_store.token_hash(client.token))
        )
    await node.h.node.enforcement.recheck_tokens()
    assert await bye(client) == "revoked"
    await still_open(kept)


def test_the_peer_event_round_trips_and_is_checked() -> None:
    h = "ab" * 32
    for change in (
        TokensRevoked(7, token=h),
        TokensRevoked(7, keep=h),
        TokensRevoked(7, reason="disconnected"),
    ):
        assert decode(encode(change)) == change
    with pytest.raises(ValueError):
        decode({"t": "revoked", "user": 7, "token": "short"})
    with pytest.raises(ValueError):
        decode({"t": "revoked", "user": "7"})
    assert TokensRevoked(7, token=h).ends(h) and not TokensRevoked(7, token=h).ends("x" * 64)
    assert TokensRevoked(7, keep=h).ends("x" * 64) and not TokensRevoked(7, keep=h).ends(h)
    assert TokensRevoked(7).ends(None) and TokensRevoked(7).ends(h)


@pytest.mark.postgres
async def test_revocation_closes_sessions_on_every_node_of_a_pool(pg_cluster: Any) -> None:
    """Two nodes of a pool: a logout on one node closes the connections using that token on
    the other at once, and an administrator's reset through one node closes the user's
    connections on both."""
    from chatserver.testing import PostgresCluster

    assert isinstance(pg_cluster, PostgresCluster)
    url = await pg_cluster.create_database("abuse_tokens_pool", template="postgres")
    pool = {
        "enabled": True,
        "secret": "tokens-test-pool-secret-0123456789abcdef",
        "heartbeat_s": 0.2,
        "link_timeout_s": 2,
        "catchup_interval_s": 1,
    }
    nodes = []
    for name in ("tokens-a", "tokens-b"):
        config = node_config(url, pool=pool, management={"token": STATIC})
        config = config.model_copy(
            update={
                "node": config.node.model_copy(update={"name": name}),
                "listen": config.listen.model_copy(update={"peer": "127.0.0.1:0"}),
            }
        )
        nodes.append(await start_node(config))
    a, b = (Harness(n) for n in nodes)
    try:
        async with asyncio.timeout(scaled(10)):
            while True:  # until the peer link is up
                if all(n.pool is not None and n.pool.links for n in nodes):
                    break
                await asyncio.sleep(0.05)
        await a.user("alice")
        on_a = await a.login("alice")
        assert on_a.token is not None
        on_b = await b.connect()
        await on_b.resume(on_a.token)  # the same token on the other node
        other_on_b = await b.login("alice")
        assert (await on_a.request("logout"))["ok"] is True
        assert await bye(on_a) == "logged_out"
        assert await bye(on_b) == "revoked"
        await still_open(other_on_b)
        found = await user_store.credentials(a.node.db, "alice")
        assert found is not None and a.node.management is not None
        assert a.node.management.address is not None
        host, port = a.node.management.address
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.put(
                f"/api/v1/users/{found[0].id}/password",
                json={"password": NEW_PASSWORD},
                headers={"Authorization": f"Bearer {STATIC}"},
            ) as response:
                assert response.status == 200, await response.text()
                assert await response.json() == {"disconnected": 0}  # none on node a
        assert await bye(other_on_b) == "revoked"
    finally:
        await a.close()
        await b.close()


async def test_the_failover_client_signs_in_again_when_its_token_is_revoked(node: Node) -> None:
    """``PoolClient`` resumed with its token forever; a revoked token must send it back to the
    password (a client retrying a dead token would only feed the login throttle)."""
    from chatserver.client import PoolClient

    alice = await node.user("alice")
    room = await node.h.room()
    client = await PoolClient.connect([node.h.node.addresses["tcp"]], "alice", PASSWORD)
    try:
        await client.request("join", room=room)
        old = client.token
        await node.api("DELETE", f"/api/v1/users/{alice}/sessions")
        reply = await asyncio.wait_for(
            client.request("post", room=room, text="still here", cid="c1"), scaled(10)
        )
        assert reply["ok"] is True
        assert client.token is not None and client.token != old
    finally:
        await client.close()
