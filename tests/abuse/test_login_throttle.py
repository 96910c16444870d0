"""Password guessing (issue 14, item 4): failed sign-ins are throttled per account name and per
source address — backoff, then a temporary lockout — on TCP, WebSocket and the management port
alike, with the same answers for a name that exists and one that does not.

Each test runs on both store dialects: the throttle's state is in the store, shared by every node.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prometheus_client import generate_latest

from chatserver.client import Client
from chatserver.store import admin as admin_store
from chatserver.throttle import address_key
from tests.conftest import PASSWORD, Harness, node_config, start_node

STATIC = "static-token-for-the-throttle-tests"


@asynccontextmanager
async def node_with(db_url: str, **login: object) -> AsyncIterator[Harness]:
    node = await start_node(node_config(db_url, login=login, management={"token": STATIC}))
    harness = Harness(node)
    try:
        yield harness
    finally:
        await harness.close()


async def greeted(h: Harness, transport: str = "tcp") -> Client:
    client = await h.connect(transport)
    await client.call("hello", protocol=1)
    return client


async def auth(client: Client, user: str, password: str) -> dict[str, Any]:
    return await client.request("auth", user=user, password=password)


def code(reply: dict[str, Any]) -> str:
    return "ok" if reply["ok"] else str(reply["error"]["code"])


def metrics(h: Harness) -> str:
    return generate_latest(h.node.metrics.registry).decode()


def counter(text: str, name: str, label: str) -> float:
    match = re.search(rf"^{name}_total\{{{label}\}} (\S+)$", text, re.M)
    assert match is not None, (name, label)
    return float(match.group(1))


def basic(name: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


async def test_two_hundred_guesses_lock_the_account_and_the_right_password_waits(
    db_url: str,
) -> None:
    """The issue's attack: 200 wrong passwords in a row, then the right one. Today the right one
    worked; now the account is locked after 20 failures and every later attempt, the right
    password included, answers rate_limited with the seconds to wait."""
    async with node_with(db_url, account_free_failures=20, lockout_s=300) as h:
        await h.user("alice")
        client = await greeted(h)
        codes: Counter[str] = Counter()
        for i in range(200):
            reply = await auth(client, "alice", f"guess {i}")
            codes[code(reply)] += 1
            if i == 199:
                assert reply["retry_after"] > 250
        assert codes == {"unauthenticated": 20, "rate_limited": 180}
        right = await auth(client, "alice", PASSWORD)
        assert code(right) == "rate_limited"
        assert right["error"]["message"].startswith("too many failed sign-ins")
        assert 250 < right["retry_after"] <= 300
        # a new connection is no way around it
        other = await greeted(h, "websocket")
        assert code(await auth(other, "alice", PASSWORD)) == "rate_limited"
        # one audit entry and one metric for the lockout; every attempt is counted
        entries = await admin_store.audit_entries(h.node.db, limit=10, action="login.lockout")
        assert [(e.actor, e.target) for e in entries] == [("system", "account:alice")]
        assert entries[0].after["failures"] == 20 and entries[0].after["via"] == "tcp"
        text = metrics(h)
        assert counter(text, "chatserver_sign_in_lockouts", 'scope="account"') == 1
        assert counter(text, "chatserver_sign_in_failures", 'via="tcp"') == 20
        assert counter(text, "chatserver_sign_ins_throttled", 'via="tcp"') == 181
        assert counter(text, "chatserver_sign_ins_throttled", 'via="websocket"') == 1


async def test_backoff_doubles_and_a_success_forgets_the_failures(db_url: str) -> None:
    async with node_with(
        db_url,
        account_free_failures=2,
        account_lockout_failures=0,
        backoff_base_s=0.2,
        backoff_max_s=0.4,
    ) as h:
        await h.user("alice")
        client = await greeted(h)
        assert code(await auth(client, "alice", "x1")) == "unauthenticated"
        assert code(await auth(client, "alice", "x2")) == "unauthenticated"
        # now each attempt waits 0.2 s, then 0.4 s, after the failure before it
        waited = await auth(client, "alice", PASSWORD)
        assert code(waited) == "rate_limited" and waited["retry_after"] == 1
        await asyncio.sleep(0.25)
        assert code(await auth(client, "alice", "x3")) == "unauthenticated"
        await asyncio.sleep(0.25)
        assert code(await auth(client, "alice", PASSWORD)) == "rate_limited"  # 0.4 s now
        await asyncio.sleep(0.2)
        ok = await auth(client, "alice", PASSWORD)
        assert ok["ok"] is True
        # the success forgot the account's failures: two free ones again
        again = await greeted(h)
        assert code(await auth(again, "alice", "x4")) == "unauthenticated"
        assert code(await auth(again, "alice", "x5")) == "unauthenticated"
        assert code(await auth(again, "alice", "x6")) == "rate_limited"


async def test_a_name_that_exists_and_one_that_does_not_answer_alike(db_url: str) -> None:
    """Same replies, same retry_after, same audit entries: the throttle counts names, not
    users, and an unknown name is checked against a dummy hash (same time as a wrong
    password)."""
    async with node_with(
        db_url,
        account_free_failures=3,
        account_lockout_failures=3,
        lockout_s=120,
    ) as h:
        await h.user("alice")
        answers: dict[str, list[dict[str, Any]]] = {}
        times: dict[str, list[float]] = {}
        for name in ("alice", "nobody"):
            client = await greeted(h)
            answers[name] = []
            times[name] = []
            for i in range(5):
                started = time.perf_counter()
                reply = await auth(client, name, f"wrong {i}")
                times[name].append(time.perf_counter() - started)
                del reply["re"]
                if "retry_after" in reply:
                    assert 100 < reply.pop("retry_after") <= 120
                answers[name].append(reply)
        assert answers["alice"] == answers["nobody"]
        assert [a["error"]["code"] for a in answers["alice"]] == [
            "unauthenticated",
            "unauthenticated",
            "unauthenticated",
            "rate_limited",
            "rate_limited",
        ]
        # a checked failure (scrypt) costs the same for both; the refused ones are cheap for both
        checked = {name: sorted(t[:3])[1] for name, t in times.items()}
        assert checked["nobody"] > checked["alice"] / 3, checked
        assert checked["alice"] > checked["nobody"] / 3, checked
        entries = await admin_store.audit_entries(h.node.db, limit=10, action="login.lockout")
        assert sorted(e.target for e in entries) == ["account:alice", "account:nobody"]


async def test_one_address_guessing_many_names_is_throttled(db_url: str) -> None:
    """Password spraying: one guess for each of many names, from one address. The address is
    throttled; then even a right password from it waits, while a valid token still signs in
    (tokens cannot be guessed; a client behind the same NAT keeps working)."""
    async with node_with(
        db_url, address_free_failures=3, address_lockout_failures=0, backoff_base_s=30
    ) as h:
        await h.user("alice")
        holder = await h.login("alice")  # a token issued before the attack
        client = await greeted(h)
        for name in ("ann", "bob", "carol"):
            assert code(await auth(client, name, "123456")) == "unauthenticated"
        refused = await auth(client, "dave", "123456")
        assert code(refused) == "rate_limited" and 25 < refused["retry_after"] <= 30
        assert code(await auth(client, "alice", PASSWORD)) == "rate_limited"
        ws = await greeted(h, "websocket-json")
        assert code(await auth(ws, "alice", PASSWORD)) == "rate_limited"
        # a valid token is never refused; an unknown one is, while the address waits
        assert code(await ws.request("auth", token="not-a-token")) == "rate_limited"
        assert holder.token is not None
        resumed = await ws.request("auth", token=holder.token)
        assert resumed["ok"] is True and resumed["user"]["name"] == "alice"
        text = metrics(h)
        assert counter(text, "chatserver_sign_in_failures", 'via="tcp"') == 3
        assert counter(text, "chatserver_sign_ins_throttled", 'via="websocket"') == 2


async def test_unknown_tokens_count_against_the_address(db_url: str) -> None:
    async with node_with(db_url, address_free_failures=2, backoff_base_s=30) as h:
        client = await greeted(h)
        for _ in range(2):
            reply = await client.request("auth", token="guessed-token")
            assert reply["error"] == {
                "code": "unauthenticated",
                "message": "the token is unknown or expired",
            }
        assert code(await client.request("auth", token="guessed-token")) == "rate_limited"
        await h.user("alice")
        assert code(await auth(client, "alice", PASSWORD)) == "rate_limited"


async def test_every_transport_and_the_management_port_share_the_count(db_url: str) -> None:
    """Failures over TCP, WebSocket (binary and JSON) and the management port's Basic
    authentication count together; the management port answers 429 with Retry-After (today it
    answered 401/403 without limit: a password oracle)."""
    async with node_with(db_url, account_free_failures=4, backoff_base_s=30) as h:
        await h.user("root", admin=True)
        assert h.node.management is not None and h.node.management.address is not None
        host, port = h.node.management.address
        for transport in ("tcp", "websocket", "websocket-json"):
            client = await greeted(h, transport)
            assert code(await auth(client, "root", "wrong")) == "unauthenticated"
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.get("/api/v1/users", headers=basic("root", "wrong")) as response:
                assert response.status == 401
            for name, password in (("root", PASSWORD), ("root", "wrong")):
                async with http.get("/api/v1/users", headers=basic(name, password)) as response:
                    assert response.status == 429
                    assert 25 < int(response.headers["Retry-After"]) <= 30
                    body = await response.json()
                    assert body["error"]["code"] == "rate_limited"
            # a name that does not exist answers the same way after the same failures
            for _ in range(4):
                async with http.get("/api/v1/users", headers=basic("nobody", "x")) as response:
                    assert response.status == 401
            async with http.get("/api/v1/users", headers=basic("nobody", "x")) as response:
                assert response.status == 429 and "Retry-After" in response.headers
            # the static token and valid session tokens are not throttled
            async with http.get(
                "/metrics", headers={"Authorization": f"Bearer {STATIC}"}
            ) as response:
                assert response.status == 200
                text = await response.text()
        # and the client protocol waits too
        client = await greeted(h)
        assert code(await auth(client, "root", PASSWORD)) == "rate_limited"
        for via, count in (("tcp", 1), ("websocket", 2), ("management", 5)):
            assert counter(text, "chatserver_sign_in_failures", f'via="{via}"') == count
        assert counter(text, "chatserver_sign_ins_throttled", 'via="management"') == 3


async def test_nodes_sharing_a_store_share_the_count(db_url: str) -> None:
    """The throttle's state is in the store: failures on one node hold on another (a pool)."""
    async with (
        node_with(db_url, account_free_failures=2, backoff_base_s=30) as one,
        node_with(db_url, account_free_failures=2, backoff_base_s=30) as two,
    ):
        await one.user("alice")
        client = await greeted(one)
        for _ in range(2):
            assert code(await auth(client, "alice", "wrong")) == "unauthenticated"
        elsewhere = await greeted(two)
        assert code(await auth(elsewhere, "alice", PASSWORD)) == "rate_limited"


def test_the_address_key() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    # one host commonly holds a whole IPv6 /64
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("not an address") == "not an address"
    assert len(address_key("x" * 1000)) == 256
