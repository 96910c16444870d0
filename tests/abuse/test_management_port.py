"""The management port (issue 14, item 7), from the outside with raw sockets.

Before: aiohttp's defaults held a connection that sent nothing, or one header byte a second, for
its keep-alive timeout of 3,630 s, and there was no cap on connections, so 300 trickling and 50
silent connections (and a low open-files limit) locked chat clients out. Now a connection must
send its first request's head within ``[management] header_timeout_s``, a body within
``body_timeout_s``, and is closed ``keepalive_timeout_s`` after a response; more than
``max_connections`` at once are answered 503 and closed, and the chat port is not affected.

These tests need no store semantics: they run on SQLite only, with limits of about a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatserver.client import Client
from chatserver.config import ConfigError, load_config
from chatserver.store.migrate import upgrade
from tests.conftest import Harness, node_config, scaled, start_node

STATIC = "static-token-for-the-management-tests"
AUTH = f"Authorization: Bearer {STATIC}\r\n"


@asynccontextmanager
async def node_with(tmp_path: Path, **management: object) -> AsyncIterator[Harness]:
    url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, url)
    node = await start_node(node_config(url, management={"token": STATIC, **management}))
    harness = Harness(node)
    try:
        yield harness
    finally:
        await harness.close()


def address(h: Harness) -> tuple[str, int]:
    assert h.node.management is not None and h.node.management.address is not None
    return h.node.management.address


async def connect(h: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address(h)
    return await asyncio.open_connection(host, port)


async def until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Read until the server closes the connection: (seconds it took, what it sent)."""
    started = time.monotonic()
    data = b""
    async with asyncio.timeout(limit):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return time.monotonic() - started, data


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send ``data`` a byte at a time, ``every`` seconds apart, until the server closes."""
    for byte in data:
        if writer.is_closing():
            return
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


async def ping_until(client: Client, stop: asyncio.Event) -> list[float]:
    """Ping until ``stop`` is set (at least once); the round trips, in seconds."""
    times = []
    while not times or not stop.is_set():
        started = time.monotonic()
        await client.call("ping")
        times.append(time.monotonic() - started)
        await asyncio.sleep(0.01)
    return times


# -- slow and silent clients ----------------------------------------------------------------

HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"


async def test_a_trickling_head_is_cut_off_at_the_header_timeout(tmp_path: Path) -> None:
    """One header byte every 0.1 s: before, the connection was held for 3,630 s; now it gets
    408 and is closed once header_timeout_s (1 s here) has passed since it connected."""
    async with node_with(tmp_path, header_timeout_s=1, keepalive_timeout_s=30) as h:
        reader, writer = await connect(h)
        sender = asyncio.ensure_future(trickle(writer, HEAD, 0.1))
        took, response = await until_closed(reader, scaled(10))
        await sender
        writer.close()
        assert 0.9 <= took < 1 + scaled(1.5), took
        assert status(response) == 408
        assert b"no complete request head within 1 s" in response


async def test_a_silent_connection_is_closed_at_the_header_timeout(tmp_path: Path) -> None:
    async with node_with(tmp_path, header_timeout_s=0.5, keepalive_timeout_s=30) as h:
        opened = [await connect(h) for _ in range(20)]
        results = await asyncio.gather(*(until_closed(r, scaled(10)) for r, _ in opened))
        for took, response in results:
            assert 0.4 <= took < 0.5 + scaled(1.5), took
            assert status(response) == 408
        for _, writer in opened:
            writer.close()
        assert h.node.management is not None and h.node.management.guard is not None
        assert h.node.management.guard.timed_out == 20
        assert h.node.management.guard.open_connections == 0


async def test_an_idle_keep_alive_connection_is_closed_at_the_keep_alive_timeout(
    tmp_path: Path,
) -> None:
    """After a response the connection waits keepalive_timeout_s for the next request, and
    the next request's head must be complete by then too (trickling it does not help)."""
    async with node_with(tmp_path, header_timeout_s=30, keepalive_timeout_s=1) as h:
        for then in ("nothing", "trickle"):
            reader, writer = await connect(h)
            writer.write(HEAD)
            head = await reader.readuntil(b"\r\n\r\n")
            assert status(head) == 200 and b"keep-alive" not in head.lower()
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            sender = None
            if then == "trickle":
                sender = asyncio.ensure_future(trickle(writer, HEAD, 0.1))
            took, rest = await until_closed(reader, scaled(10))
            if sender is not None:
                await sender
            writer.close()
            assert 0.9 <= took < 1 + scaled(1.5), (then, took)
            assert rest == b"", then
        # a connection that keeps asking is served as long as it asks in time
        reader, writer = await connect(h)
        for _ in range(4):
            writer.write(HEAD)
            head = await reader.readuntil(b"\r\n\r\n")
            assert status(head) == 200
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(0.6)
        writer.close()


async def test_a_trickling_body_gets_408_at_the_body_timeout(tmp_path: Path) -> None:
    async with node_with(tmp_path, header_timeout_s=30, body_timeout_s=1) as h:
        body = json.dumps({"name": "slow", "description": "x" * 100}).encode()
        reader, writer = await connect(h)
        writer.write(
            b"POST /api/v1/groups HTTP/1.1\r\nHost: x\r\n"
            + AUTH.encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        sender = asyncio.ensure_future(trickle(writer, body, 0.1))
        took, response = await until_closed(reader, scaled(10))
        await sender
        writer.close()
        assert 0.9 <= took < 1 + scaled(3.5), took  # the body timeout, then at most LINGER_S
        assert status(response) == 408
        assert b"the body did not arrive within 1 s" in response
        assert b"connection: close" in response.lower()
        async with aiohttp.ClientSession() as http:
            host, port = address(h)
            async with http.get(
                f"http://{host}:{port}/api/v1/groups",
                headers={"Authorization": f"Bearer {STATIC}"},
            ) as r:
                assert "slow" not in [g["name"] for g in await r.json()]


# -- the connection cap ---------------------------------------------------------------------


async def test_connections_over_the_cap_get_503_and_the_chat_port_keeps_serving(
    tmp_path: Path,
) -> None:
    async with node_with(tmp_path, max_connections=5, header_timeout_s=30) as h:
        await h.user("pinger")
        stop = asyncio.Event()
        pinging = asyncio.ensure_future(ping_until(await h.login("pinger"), stop))
        held = [await connect(h) for _ in range(5)]
        management = h.node.management
        assert management is not None and management.guard is not None
        try:
            for _ in range(50):
                reader, writer = await connect(h)
                writer.write(HEAD)
                took, response = await until_closed(reader, scaled(5))
                writer.close()
                assert took < scaled(1), took
                # the 503, or a reset when the request arrived before the close
                assert status(response) in (503, 0), response
                if response:
                    assert b"holds its maximum of 5 connections" in response
            assert management.guard.refused == 50
            assert management.guard.open_connections == 5
        finally:
            stop.set()
            for _, w in held:
                w.close()
        pings = await pinging
        assert max(pings) < scaled(0.5), max(pings)
        # the five are gone: a new connection is served
        for _ in range(100):
            if management.guard.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        reader, writer = await connect(h)
        writer.write(HEAD)
        head = await reader.readuntil(b"\r\n\r\n")
        assert status(head) == 200
        writer.close()
        metrics = await _metrics(h)
        assert 'chatserver_management_connections_refused_total{reason="full"} 50.0' in metrics


async def _metrics(h: Harness) -> str:
    host, port = address(h)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://{host}:{port}/metrics", headers={"Authorization": f"Bearer {STATIC}"}
        ) as r,
    ):
        return await r.text()


async def test_the_limits_have_sensible_defaults() -> None:
    config = load_config(env={})
    m = config.management
    assert (m.max_connections, m.header_timeout_s, m.body_timeout_s, m.keepalive_timeout_s) == (
        64,
        10,
        30,
        15,
    )
    with pytest.raises(ConfigError, match=r"management\.max_connections"):
        load_config(env={"CHATSERVER_MANAGEMENT_MAX_CONNECTIONS": "0"})


# -- what the requests carry ----------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Harness, aiohttp.ClientSession]]:
    async with node_with(tmp_path) as h:
        host, port = address(h)
        async with aiohttp.ClientSession(
            f"http://{host}:{port}", headers={"Authorization": f"Bearer {STATIC}"}
        ) as http:
            yield h, http


async def _send(
    http: aiohttp.ClientSession, method: str, path: str, data: bytes, content_type: str | None
) -> tuple[int, Any]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with http.request(method, path, data=data, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else None
        return r.status, body


async def test_a_body_must_be_sent_as_json(
    api: tuple[Harness, aiohttp.ClientSession],
) -> None:
    """Before, any Content-Type was read as JSON; now only application/json (UTF-8) is."""
    _h, http = api
    body = b'{"name": "g"}'
    for content_type in (
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-16",
        "multipart/form-data; boundary=x",
    ):
        got, out = await _send(http, "POST", "/api/v1/groups", body, content_type)
        assert got == 415, content_type
        assert out["error"]["code"] == "bad_request"
        assert "Content-Type: application/json" in out["error"]["message"]
    got, _ = await _send(http, "POST", "/api/v1/groups", body, "application/json; charset=UTF-8")
    assert got == 201
    groups = [g["name"] for g in (await (await http.get("/api/v1/groups")).json())]
    assert groups == ["g"]


async def test_a_key_given_twice_is_refused(api: tuple[Harness, aiohttp.ClientSession]) -> None:
    """Before, the last of the duplicates won, silently (a filter in front of the API may have
    checked the first); now the body is refused."""
    _h, http = api
    for path, data in (
        ("/api/v1/groups", b'{"name": "a", "name": "b"}'),
        ("/api/v1/rooms", b'{"name": "r", "members": [{"kind": "user", "id": 1, "id": 2}]}'),
        (
            "/api/v1/users",
            b'{"name": "u", "password": "12345678", "is_admin": false, "is_admin": true}',
        ),
    ):
        got, out = await _send(http, "POST", path, data, "application/json")
        assert got == 400, path
        assert "more than once" in out["error"]["message"], out
    assert (await (await http.get("/api/v1/groups")).json()) == []
    users = await (await http.get("/api/v1/users")).json()
    assert "u" not in [u["name"] for u in users]


async def test_search_text_is_literal(api: tuple[Harness, aiohttp.ClientSession]) -> None:
    """``_`` and ``%`` are LIKE wildcards: before, ``query=_`` matched every user. Now a search
    matches the text as written, in the users' and the rooms' searches alike."""
    h, http = api
    for name in ("alice", "bob", "under_score", "fifty%off", "back\\slash"):
        await h.user(name)
    for name in ("plain", "room_one", "100%"):
        out = await http.post("/api/v1/rooms", json={"name": name, "privacy": "open"})
        assert out.status == 201

    async def users(query: str) -> list[str]:
        async with http.get("/api/v1/users", params={"query": query}) as r:
            assert r.status == 200
            return sorted(u["name"] for u in await r.json())

    async def rooms(contains: str) -> list[str]:
        async with http.get("/api/v1/rooms", params={"contains": contains}) as r:
            assert r.status == 200
            return sorted(room["name"] for room in (await r.json())["rooms"])

    assert await users("_") == ["under_score"]
    assert await users("%") == ["fifty%off"]
    assert await users("\\") == ["back\\slash"]
    assert await users("R_S") == ["under_score"]  # any case, still literal
    assert await users("a") == ["admin", "alice", "back\\slash"]
    assert await rooms("_") == ["room_one"]
    assert await rooms("%") == ["100%"]
    # the client protocol's room search and user list take the same literal text
    await h.user("root", admin=True)
    client = await h.login("root")
    found = await client.call("rooms", query="_")
    assert [r["name"] for r in found["rooms"]] == ["room_one"]
    listed = await client.call("users", query="_")
    assert [u["name"] for u in listed["users"]] == ["under_score"]


async def test_node_names_follow_the_rule_of_node_name(
    api: tuple[Harness, aiohttp.ClientSession],
) -> None:
    """Before, a per-node override was stored for the node ``..`` (or any 128 characters but
    NUL and "/"); now a node name in a path follows ``[node] name``'s rule, and the
    configuration refuses such a name too."""
    _h, http = api
    for name in ("..", ".", "-x", "a b", "caf%C3%A9", "a%00b", "n" * 129, "%2E%2E"):
        async with http.patch(f"/api/v1/config/nodes/{name}", json={"max_file_size_kb": 5}) as r:
            assert r.status in (400, 404), name
            if r.status == 400:
                assert "a letter or a digit" in (await r.json())["error"]["message"]
    async with http.get("/api/v1/config") as r:
        assert (await r.json())["nodes"] == {}
    async with http.patch("/api/v1/config/nodes/chat-2.example", json={"max_file_size_kb": 5}) as r:
        assert r.status == 200
        assert (await r.json())["nodes"] == {"chat-2.example": {"max_file_size_kb": 5}}
    for bad in ("..", "a/b", "a b", "", "-lead"):
        with pytest.raises(ConfigError, match=r"node\.name"):
            load_config(env={"CHATSERVER_NODE_NAME": bad})
