"""Administration without the right to it (issue 14, the abuse suite): the administrators' ops
of the client protocol tried by a user who is not one, and every management API route tried
without credentials (and with a non-administrator's token).

The answers: docs/protocol.md section 6.19 — ``forbidden`` ``only administrators may do this``
for every administrators' op, whether or not its target exists (and ``unauthenticated`` before
login); chatserver/admin/server.py — 401 with ``WWW-Authenticate`` and no data for every route
without credentials, 403 for a valid user who is not an administrator. In every case nothing
changes.

Measured on the shared 2-core test machine (SQLite store), per round: ~2,750 refused
administrators' ops (9 waves, 146 kB), and ~1,500 refused API requests (4 waves of 8 ways of
asking 47 routes); the bystander's ping p99 1.5-5.3 ms (once 21 ms), the node's RSS +0.1-1 MiB.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatserver.admin.routes import ROUTES
from chatserver.client import Client
from tests.abuse.attack import PASSWORD, Cost, Watch, scaled, watched_node
from tests.rawclients import RawTcp, RawWebSocket

PING_P99_MS = 50  # measured: < 6 ms, once 21 ms (see test_malformed.py for the bound's reasoning)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EVERYONE = {"kind": "everyone", "id": 0}
MISSING = 10**6


@dataclass
class World:
    watch: Watch
    admin_id: int
    bob_id: int
    mallory_id: int
    group: int
    room: int

    @property
    def node(self) -> Any:
        return self.watch.node


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    directory = tmp_path_factory.mktemp("privileges")
    async with watched_node(directory) as watch:
        node = watch.node
        bob_id = await node.add_user("bob")
        mallory_id = await node.add_user("mallory")
        await watch.token("mallory")
        admin = await Client.connect_tcp(*node.tcp)
        await admin.login("admin", PASSWORD)
        assert admin.user is not None
        group = (await admin.call("group.create", name="staff"))["group"]["id"]
        await admin.call("group.members", group=group, add=[{"kind": "user", "id": bob_id}])
        room = (await admin.call("room.create", name="Board", privacy="open"))["room"]["id"]
        await admin.close()
        yield World(watch, admin.user["id"], bob_id, mallory_id, group, room)


# -- the administrators' ops of the client protocol ------------------------------------------


def admin_requests(w: World) -> list[dict[str, Any]]:
    """Each administrators' op with valid fields, aimed at things that exist and that do not."""
    me = {"kind": "user", "id": w.mallory_id}
    return [
        {"op": "room.delete", "room": w.room},
        {"op": "room.delete", "room": MISSING},
        {"op": "category.create", "name": "Mallory's own"},
        {"op": "category.update", "category": 1, "name": "pwned", "add": {"creators": [me]}},
        {"op": "category.update", "category": MISSING, "description": "x"},
        {"op": "category.delete", "category": 1},
        {"op": "category.delete", "category": MISSING},
        {"op": "group.create", "name": "mallory-admins"},
        {"op": "group.members", "group": w.group, "add": [me]},
        {"op": "group.members", "group": w.group, "remove": [{"kind": "user", "id": w.bob_id}]},
        {"op": "group.delete", "group": w.group},
        {"op": "group.delete", "group": MISSING},
        {"op": "user.policy", "user": w.admin_id, "persistent_chat_enabled": False},
        {"op": "user.policy", "user": w.bob_id, "persistent_chat_enabled": False},
        {"op": "user.policy", "user": MISSING, "persistent_chat_enabled": False},
        {"op": "users"},
        {"op": "users", "query": "a"},
    ]


def documented_admin_ops() -> set[str]:
    """The "administrators only" row of docs/protocol.md's table of ops."""
    row = next(line for line in DOCS.read_text().splitlines() if "| administrators only |" in line)
    return set(re.findall(r"`([a-z.]+)`", row))


def test_every_documented_administrators_op_is_attacked() -> None:
    """Would catch: an administrators' op added to the documentation but not to this suite."""
    w = World(None, 1, 2, 3, 4, 5)  # type: ignore[arg-type]
    assert {r["op"] for r in admin_requests(w)} == documented_admin_ops()


async def state(node: Any) -> dict[str, Any]:
    """What the administrators' ops could change, as the administrator sees it."""
    admin = await Client.connect_tcp(*node.tcp)
    await admin.login("admin", PASSWORD)
    seen = {
        "categories": (await admin.call("categories"))["categories"],
        "users": (await admin.call("users"))["users"],
        "rooms": (await admin.call("rooms", limit=500))["rooms"],
    }
    await admin.close()
    seen["groups"] = await node.api("GET", "/api/v1/groups")
    return seen


async def ask(
    client: RawTcp | RawWebSocket, request: dict[str, Any], cost: Cost, *, text: bool = False
) -> dict[str, Any]:
    """Send ``request`` (a fresh id is added) and return its reply."""
    cost.bytes_sent += len(repr(request))
    if isinstance(client, RawWebSocket):
        client._ids += 1
        await client.send({**request, "id": client._ids}, text=text)
        while (reply := await client.recv()).get("re") != client._ids:
            assert "ev" not in reply, reply
        return reply
    fields = {k: v for k, v in request.items() if k != "op"}
    return await client.request(request["op"], **fields)


TRANSPORTS = ("tcp", "websocket", "websocket-json")


async def test_administrators_ops_are_forbidden_to_others(world: World) -> None:
    """Mallory (not an administrator) sends every administrators' op — room.delete,
    category.create/update/delete, group.create/members/delete, user.policy, users — on TCP,
    WebSocket binary and WebSocket JSON: before login (``unauthenticated``) and, 5 times each,
    after it (``forbidden`` ``only administrators may do this``), in waves for 0.5 s; twice.

    Would catch: an administrators' op that checks the right late, not at all, or only when
    its target exists (``not_found`` or ``conflict`` before ``forbidden`` tells Mallory what
    exists); one that makes its change before refusing; or a refusal that is slow for others."""
    before = await state(world.node)
    requests = admin_requests(world)

    forbidden = {"code": "forbidden", "message": "only administrators may do this"}
    unauthenticated = {"code": "unauthenticated", "message": "authenticate first"}

    async def run(transport: str, user: str | None, cost: Cost) -> None:
        text = transport == "websocket-json"
        client: RawTcp | RawWebSocket
        if transport == "tcp":
            client = await world.watch.tcp(user)
        else:
            client = await world.watch.websocket(user, text=text)
        if user is None:
            assert (await ask(client, {"op": "hello", "protocol": 1}, cost, text=text))["ok"]
        for _ in range(5 if user else 1):
            for request in requests:
                reply = await asyncio.wait_for(ask(client, request, cost, text=text), scaled(10))
                assert reply["ok"] is False, (request, reply)
                assert reply["error"] == (forbidden if user else unauthenticated), (request, reply)
        await client.close()

    async def wave(cost: Cost) -> None:
        await asyncio.gather(
            *(run(t, user, cost) for t in TRANSPORTS for user in (None, "mallory"))
        )

    rounds = await world.watch.rounds("administrators' ops by a non-administrator", wave)
    rounds.check(p99_ms=PING_P99_MS)
    assert await state(world.node) == before
    bob = await Client.connect_tcp(*world.node.tcp)
    await bob.login("bob", PASSWORD)  # his policy is still on
    await bob.close()


# -- the management API without credentials --------------------------------------------------

NO_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Basic"},
    {"Authorization": "Digest username=admin"},
    {"Authorization": "admin:" + PASSWORD},
]


def concrete(path: str, w: World) -> str:
    """A route's path with its parameters filled in with things that exist."""
    values = {
        "user_id": w.bob_id,
        "group_id": w.group,
        "category_id": 1,
        "room_id": w.room,
        "addin_id": 1,
        "hold_id": 1,
        "file_id": 1,
        "node_name": "abuse-node",
    }
    return re.sub(r"{(\w+)}", lambda m: str(values[m.group(1)]), path)


def every_route(w: World) -> list[tuple[str, str]]:
    routes = [(r.method, concrete(r.path, w)) for r in ROUTES]
    return [*routes, ("GET", "/metrics"), ("GET", "/openapi.json")]


async def test_every_management_route_needs_credentials(world: World) -> None:
    """Every route of the route table (chatserver.admin.routes.ROUTES, and /metrics and
    /openapi.json), with each of seven ways of sending no credentials, 8 at a time, then with
    Mallory's valid client-protocol token; twice. 401 (with ``WWW-Authenticate``) and 403, and
    nothing but the error in the body.

    Would catch: a route registered without the authentication wrapper (a new handler module,
    a route added by hand), one that does its work or reads its body before checking, one that
    tells anything but "no", and a change made all the same (the administrator's view of
    users, groups, categories, rooms, add-ins and settings is compared before and after)."""
    routes = every_route(world)
    assert len(routes) >= 40, routes
    paths = ["/api/v1/users", "/api/v1/groups", "/api/v1/categories", "/api/v1/rooms"]
    paths += ["/api/v1/addins", "/api/v1/config", "/api/v1/sessions"]
    before = [await world.node.api("GET", p) for p in paths]

    token = await world.watch.token("mallory")  # she is not an administrator

    async def wave(cost: Cost) -> None:
        limit = asyncio.Semaphore(8)
        async with aiohttp.ClientSession(world.node.management) as http:

            async def call(method: str, path: str, headers: dict[str, str], status: int) -> None:
                body = {} if method in ("POST", "PUT", "PATCH") else None
                async with (
                    limit,
                    http.request(method, path, json=body, headers=headers) as response,
                ):
                    answer = await response.json()
                    cost.bytes_sent += len(method) + len(path) + 40
                assert response.status == status, (method, path, headers, answer)
                assert set(answer) == {"error"}, (method, path, answer)
                assert set(answer["error"]) == {"code", "message"}, answer
                if status == 401:
                    assert answer["error"]["code"] == "unauthenticated", answer
                    assert "Bearer" in response.headers["WWW-Authenticate"]
                else:
                    assert answer["error"]["code"] == "forbidden", answer

            calls = [
                call(method, path, headers, 401)
                for headers in NO_CREDENTIALS
                for method, path in routes
            ]
            calls += [
                call(method, path, {"Authorization": f"Bearer {token}"}, 403)
                for method, path in routes
            ]
            await asyncio.gather(*calls)

    rounds = await world.watch.rounds("management API without credentials", wave)
    rounds.check(p99_ms=PING_P99_MS)
    assert [await world.node.api("GET", p) for p in paths] == before
