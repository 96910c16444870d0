"""The management API through a real HTTP client against a running node, on both dialects."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import io
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatserver.admin.models import DEFAULT_REPLACEMENT
from chatserver.admin.routes import ROUTES
from chatserver.client import Client
from chatserver.store import admin as admin_store
from chatserver.store import holds as hold_store
from chatserver.testing import PostgresCluster
from chatserver.transfer.exporter import ExportOptions
from tests.conftest import PASSWORD, Harness, node_config, scaled, start_node
from tests.lifecycle.audit_scenarios import scenarios as lifecycle_scenarios

STATIC = "static-automation-token-0123456789"


class Api:
    """A running node, an HTTP session on its management port, and helpers."""

    def __init__(self, harness: Harness, http: aiohttp.ClientSession) -> None:
        self.h = harness
        self.http = http
        self.users: dict[str, int] = {}

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        status: int | None = None,
        token: str | None = STATIC,
        headers: dict[str, str] | None = None,
    ) -> Any:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, path, json=body, params=params, headers=sent
        ) as response:
            data = await response.json() if response.content_type == "application/json" else None
            if status is not None:
                assert response.status == status, (method, path, response.status, data)
            elif response.status >= 300:
                raise AssertionError(f"{method} {path} -> {response.status}: {data}")
            return data

    async def user(self, name: str, *, admin: bool = False) -> int:
        out = await self.call(
            "POST", "/api/v1/users", {"name": name, "password": PASSWORD, "is_admin": admin}
        )
        self.users[name] = out["id"]
        return int(out["id"])

    async def room(self, name: str, **fields: Any) -> dict[str, Any]:
        out: dict[str, Any] = await self.call("POST", "/api/v1/rooms", {"name": name, **fields})
        return out

    async def audit(self, **params: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self.call("GET", "/api/v1/audit", params=params)
        return out

    async def login(self, name: str) -> Client:
        return await self.h.login(name)


@pytest.fixture
async def api(db_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    transfer = {"directory": str(tmp_path / "transfer")}  # exports and imports (issue 18)
    node = await start_node(node_config(db_url, management={"token": STATIC}, transfer=transfer))
    harness = Harness(node)
    await harness.user("root", admin=True)
    assert node.management is not None and node.management.address is not None
    host, port = node.management.address
    try:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            yield Api(harness, http)
    finally:
        await harness.close()


def user(uid: int) -> dict[str, Any]:
    return {"kind": "user", "id": uid}


def group(gid: int) -> dict[str, Any]:
    return {"kind": "group", "id": gid}


_cids = itertools.count(1)


async def post(client: Client, room: int, text: str) -> dict[str, Any]:
    return await client.call("post", room=room, text=text, cid=f"c{next(_cids)}")


async def history(client: Client, room: int) -> list[dict[str, Any]]:
    reply = await client.call("history", room=room, limit=500)
    messages: list[dict[str, Any]] = reply["messages"]
    return messages


async def backchat(api: Api, name: str, room: int) -> list[dict[str, Any]]:
    """A fresh connection's join reply (then it leaves)."""
    client = await api.login(name)
    try:
        reply = await client.call("join", room=room)
        messages: list[dict[str, Any]] = reply["messages"]
        return messages
    finally:
        await client.close()


# -- users, groups, categories --------------------------------------------------------------


async def test_users_and_policy(api: Api) -> None:
    alice = await api.user("alice")
    got = await api.call("GET", f"/api/v1/users/{alice}")
    assert got == {
        "id": alice,
        "name": "alice",
        "display_name": "alice",
        "is_admin": False,
        "persistent_chat_enabled": True,
        "policy": None,
        "source": "local",
        "disabled": False,
    }
    await api.call("POST", "/api/v1/users", {"name": "alice", "password": PASSWORD}, status=409)
    await api.call("POST", "/api/v1/users", {"name": "x", "password": "short"}, status=400)
    await api.user("bob")
    names = [u["name"] for u in await api.call("GET", "/api/v1/users")]
    assert {"admin", "alice", "bob"} <= set(names)
    found = await api.call("GET", "/api/v1/users", params={"query": "ali"})
    assert [u["name"] for u in found] == ["alice"]
    await api.call("GET", "/api/v1/users/999999", status=404)

    out = await api.call("PUT", f"/api/v1/users/{alice}/policy", {"persistent_chat_enabled": False})
    assert out["policy"] is False and out["persistent_chat_enabled"] is False
    client = await api.h.connect()
    await client.call("hello", protocol=1, client="t")
    refused = await client.request("auth", user="alice", password=PASSWORD)
    assert not refused["ok"] and refused["error"]["code"] == "forbidden"
    out = await api.call("PUT", f"/api/v1/users/{alice}/policy", {"persistent_chat_enabled": None})
    assert out["policy"] is None and out["persistent_chat_enabled"] is True
    await api.login("alice")


async def test_groups_and_members(api: Api) -> None:
    alice, bob = await api.user("alice"), await api.user("bob")
    outer = await api.call("POST", "/api/v1/groups", {"name": "outer", "description": "o"})
    inner = await api.call("POST", "/api/v1/groups", {"name": "inner"})
    assert outer["members"] == [] and outer["description"] == "o"
    await api.call("POST", "/api/v1/groups", {"name": "inner"}, status=409)
    out = await api.call(
        "PATCH",
        f"/api/v1/groups/{outer['id']}/members",
        {"add": [user(alice), group(inner["id"])]},
    )
    assert sorted(map(str, out["members"])) == sorted(map(str, [user(alice), group(inner["id"])]))
    await api.call("PATCH", f"/api/v1/groups/{inner['id']}/members", {"add": [user(bob)]})
    # a cycle is refused
    await api.call(
        "PATCH",
        f"/api/v1/groups/{inner['id']}/members",
        {"add": [group(outer["id"])]},
        status=409,
    )
    out = await api.call(
        "PATCH", f"/api/v1/groups/{outer['id']}/members", {"remove": [user(alice)]}
    )
    assert out["members"] == [group(inner["id"])]
    got = await api.call("GET", f"/api/v1/groups/{inner['id']}")
    assert got["members"] == [user(bob)] and got["name"] == "inner"
    listed = await api.call("GET", "/api/v1/groups")
    assert [g["name"] for g in listed] == ["inner", "outer"]
    await api.call("DELETE", f"/api/v1/groups/{outer['id']}", status=204)
    await api.call("GET", f"/api/v1/groups/{outer['id']}", status=404)
    await api.call("DELETE", f"/api/v1/groups/{outer['id']}", status=404)


async def test_categories_and_eligible_principals(api: Api) -> None:
    alice, bob, carol, dave = [await api.user(n) for n in ("alice", "bob", "carol", "dave")]
    team = await api.call("POST", "/api/v1/groups", {"name": "team"})
    sub = await api.call("POST", "/api/v1/groups", {"name": "sub"})
    await api.call(
        "PATCH", f"/api/v1/groups/{team['id']}/members", {"add": [user(alice), group(sub["id"])]}
    )
    await api.call(
        "PATCH", f"/api/v1/groups/{sub['id']}/members", {"add": [user(bob), user(carol)]}
    )
    cat = await api.call(
        "POST",
        "/api/v1/categories",
        {
            "name": "Research",
            "description": "walled",
            "chat_history": True,
            "allowed": [group(team["id"])],
            "denied": [user(carol)],
            "creators": [user(alice)],
        },
    )
    assert cat["allowed"] == [group(team["id"])]
    assert cat["denied"] == [user(carol)] and cat["creators"] == [user(alice)]
    got = await api.call("GET", f"/api/v1/categories/{cat['id']}")
    assert got == cat
    assert cat["id"] in [c["id"] for c in await api.call("GET", "/api/v1/categories")]
    await api.call("POST", "/api/v1/categories", {"name": "Research"}, status=409)
    # all or nothing: a category whose lists cannot be set is not created
    await api.call(
        "POST", "/api/v1/categories", {"name": "Half", "allowed": [group(9999)]}, status=404
    )
    assert "Half" not in [c["name"] for c in await api.call("GET", "/api/v1/categories")]
    # the audit log says what happened: created, then removed again
    half = [e for e in await api.audit() if (e["after"] or e["before"] or {}).get("name") == "Half"]
    assert [e["action"] for e in reversed(half)] == ["category.create", "category.delete"]
    assert half[0]["target"] == half[1]["target"]

    # groups expanded (nested too), the denial wins over the group grant
    eligible = await api.call("GET", f"/api/v1/categories/{cat['id']}/eligible")
    assert sorted(u["name"] for u in eligible) == ["alice", "bob"]

    room = await api.room("lab", category=cat["id"], privacy="closed", members=[group(sub["id"])])
    eligible = await api.call("GET", f"/api/v1/rooms/{room['id']}/eligible")
    names = sorted(u["name"] for u in eligible)
    assert "bob" in names and "carol" not in names and "dave" not in names
    assert "alice" not in names  # in the category, but no role in this closed room
    # an open room: every user the category allows
    await api.call("PATCH", f"/api/v1/rooms/{room['id']}", {"privacy": "open"})
    eligible = await api.call("GET", f"/api/v1/rooms/{room['id']}/eligible")
    names = sorted(u["name"] for u in eligible)
    assert "alice" in names and "bob" in names and "carol" not in names and "dave" not in names

    out = await api.call(
        "PATCH",
        f"/api/v1/categories/{cat['id']}",
        {
            "description": "changed",
            "add": {"allowed": [user(dave)]},
            "remove": {"denied": [user(carol)]},
        },
    )
    assert out["description"] == "changed" and out["denied"] == []
    eligible = await api.call("GET", f"/api/v1/categories/{cat['id']}/eligible")
    assert sorted(u["name"] for u in eligible) == ["alice", "bob", "carol", "dave"]
    # a principal the category does not allow cannot get a role in its rooms
    await api.call(
        "PATCH",
        f"/api/v1/categories/{cat['id']}",
        {"remove": {"allowed": [user(dave)]}},
    )
    await api.call(
        "PATCH",
        f"/api/v1/rooms/{room['id']}",
        {"add": {"member": [user(dave)]}},
        status=403,
    )
    # all or nothing: a move whose role change is refused leaves the room as it was
    plain = await api.room("plain", description="d")
    await api.call(
        "PATCH",
        f"/api/v1/rooms/{plain['id']}",
        {"category": cat["id"], "name": "renamed", "add": {"member": [user(dave)]}},
        status=403,
    )
    assert await api.call("GET", f"/api/v1/rooms/{plain['id']}") == plain
    # each step made and undone is in the audit log, and the last one leaves it as it was
    steps = list(reversed(await api.audit(target=f"room:{plain['id']}")))
    assert [e["action"] for e in steps] == [
        "room.create",
        "room.move",
        "room.update",
        "room.move",
        "room.update",
    ]
    assert steps[-1]["after"] == {k: v for k, v in plain.items() if k != "last_seq"}
    await api.call("DELETE", f"/api/v1/rooms/{plain['id']}", status=204)
    # a category with rooms is not removed; an empty one is
    await api.call("DELETE", f"/api/v1/categories/{cat['id']}", status=409)
    await api.call("DELETE", f"/api/v1/rooms/{room['id']}", status=204)
    await api.call("DELETE", f"/api/v1/categories/{cat['id']}", status=204)
    await api.call("GET", f"/api/v1/categories/{cat['id']}", status=404)
    await api.call("GET", f"/api/v1/categories/{cat['id']}/eligible", status=404)


# -- rooms ----------------------------------------------------------------------------------


async def test_rooms_crud_and_every_filter(api: Api) -> None:
    alice, bob = await api.user("alice"), await api.user("bob")
    crew = await api.call("POST", "/api/v1/groups", {"name": "crew"})
    other = await api.call(
        "POST", "/api/v1/categories", {"name": "Other", "allowed": [{"kind": "everyone"}]}
    )
    other_id = other["id"]
    addin = await api.call(
        "POST", "/api/v1/addins", {"name": "board", "url": "https://example.com/board"}
    )
    a = await api.room("Alpha", description="the FIRST room", privacy="open", members=[user(alice)])
    b = await api.room(
        "beta", privacy="secret", type="auditorium", managers=[user(bob)], addin=addin["id"]
    )
    c = await api.room("gamma", category=other_id, members=[group(crew["id"])])
    d = await api.room("delta", description="50%_off")
    assert a["privacy"] == "open" and a["members"] == [user(alice)] and a["last_seq"] == 0
    assert b["type"] == "auditorium" and b["addin"] == addin["id"]
    assert b["managers"] == [user(bob)] and c["category"] == other_id
    assert await api.call("GET", f"/api/v1/rooms/{a['id']}") == a
    await api.call("POST", "/api/v1/rooms", {"name": "Alpha"}, status=409)
    await api.call("POST", "/api/v1/rooms", {"name": "x", "category": 9999}, status=404)
    await api.call("POST", "/api/v1/rooms", {"name": "x", "addin": 9999}, status=404)
    await api.call("POST", "/api/v1/rooms", {"name": "x", "privacy": "public"}, status=400)
    await api.call("GET", "/api/v1/rooms/999999", status=404)

    # a long text in beta for content_exceeds_mb; in gamma, 1200 characters of 2 bytes each
    admin = await api.login("root")
    await post(admin, b["id"], "x" * 3000)
    await post(admin, a["id"], "short")
    await post(admin, c["id"], "é" * 1200)

    async def ids(**params: Any) -> list[int]:
        text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
        page = await api.call("GET", "/api/v1/rooms", params=text)
        return [r["id"] for r in page["rooms"]]

    everything = await ids()
    assert everything == sorted(everything)
    assert {a["id"], b["id"], c["id"], d["id"]} <= set(everything)
    assert await ids(category=other_id) == [c["id"]]
    assert a["id"] in await ids(category=1) and c["id"] not in await ids(category=1)
    assert await ids(privacy="open") == [a["id"]]
    assert await ids(privacy="secret") == [b["id"]]
    assert await ids(type="auditorium") == [b["id"]]
    assert await ids(member=f"user:{alice}") == [a["id"]]
    assert await ids(member=f"group:{crew['id']}") == [c["id"]]
    assert await ids(manager=f"user:{bob}") == [b["id"]]
    assert await ids(manager=f"user:{alice}") == []
    assert await ids(addin=addin["id"]) == [b["id"]]
    assert await ids(contains="first") == [a["id"]]  # the description, any case
    assert await ids(contains="ALPHA") == [a["id"]]  # the name
    assert await ids(contains="%_") == [d["id"]]  # LIKE wildcards are literal
    assert await ids(content_exceeds_mb=0.0025) == [b["id"]]  # > 2621 bytes
    # > 2202 bytes: gamma's 1200 characters are 2400 bytes in UTF-8
    assert await ids(content_exceeds_mb=0.0021) == [b["id"], c["id"]]
    assert await ids(content_exceeds_mb=0.01) == []
    assert set(await ids(content_exceeds_mb=0)) == {a["id"], b["id"], c["id"]}
    assert await ids(privacy="secret", type="normal") == []
    page = await api.call("GET", "/api/v1/rooms", params={"limit": "2"})
    assert len(page["rooms"]) == 2 and page["next"] == page["rooms"][1]["id"]
    rest = await ids(after=page["next"], limit=1000)
    assert [r["id"] for r in page["rooms"]] + rest == everything
    await api.call("GET", "/api/v1/rooms", params={"member": "alice"}, status=400)
    await api.call("GET", "/api/v1/rooms", params={"bogus": "1"}, status=400)
    await api.call("GET", "/api/v1/rooms", params={"disabled": "yes"}, status=400)
    await api.call("GET", "/api/v1/rooms?privacy=open&privacy=secret", status=400)

    # disable / enable, and the disabled filter
    watcher = await api.login("alice")
    await watcher.call("join", room=a["id"])
    out = await api.call("POST", f"/api/v1/rooms/{a['id']}/disable")
    assert out["disabled"] is True
    removed = await watcher.next_event("room.removed", timeout=scaled(5))
    assert removed["room"] == a["id"] and removed["reason"] == "disabled"
    assert await ids(disabled=True) == [a["id"]]
    assert a["id"] not in await ids(disabled=False)
    refused = await watcher.request("join", room=a["id"])
    assert not refused["ok"]
    out = await api.call("POST", f"/api/v1/rooms/{a['id']}/enable")
    assert out["disabled"] is False and await ids(disabled=True) == []
    await watcher.call("join", room=a["id"])

    # update: settings, roles, add-in detach; move to another category
    out = await api.call(
        "PATCH",
        f"/api/v1/rooms/{b['id']}",
        {
            "name": "beta2",
            "description": "now open",
            "privacy": "open",
            "type": "normal",
            "detach_addin": True,
            "add": {"member": [user(alice)]},
            "remove": {"manager": [user(bob)]},
        },
    )
    assert (out["name"], out["description"], out["privacy"], out["type"]) == (
        "beta2",
        "now open",
        "open",
        "normal",
    )
    assert out["addin"] is None and out["managers"] == [] and out["members"] == [user(alice)]
    assert out["last_seq"] == 1
    await api.call(
        "PATCH",
        f"/api/v1/rooms/{b['id']}",
        {"addin": addin["id"], "detach_addin": True},
        status=400,
    )
    out = await api.call("PATCH", f"/api/v1/rooms/{d['id']}", {"category": other_id})
    assert out["category"] == other_id
    assert set(await ids(category=other_id)) == {c["id"], d["id"]}
    await api.call("PATCH", f"/api/v1/rooms/{d['id']}", {"category": 9999}, status=404)

    # delete: gone, with its history
    await api.call("DELETE", f"/api/v1/rooms/{d['id']}", status=204)
    await api.call("GET", f"/api/v1/rooms/{d['id']}", status=404)
    assert d["id"] not in await ids()
    await api.call("DELETE", f"/api/v1/rooms/{d['id']}", status=404)


# -- clearing, replacing, removing messages -------------------------------------------------


async def _post_spaced(client: Client, room: int, texts: list[str]) -> list[dict[str, Any]]:
    """Post one at a time, each in its own millisecond."""
    replies = []
    for text in texts:
        replies.append(await post(client, room, text))
        await asyncio.sleep(0.005)
    return replies


async def test_clear_room_up_to_a_date(api: Api) -> None:
    await api.user("alice")
    room = await api.room("lobby", privacy="open")
    rid = room["id"]
    alice = await api.login("alice")
    await alice.call("join", room=rid)
    replies = await _post_spaced(alice, rid, ["one", "two", "three", "four"])
    # on or before: "two" was posted at exactly this instant
    until = replies[1]["ts"]
    assert replies[2]["ts"] > until
    out = await api.call("POST", f"/api/v1/rooms/{rid}/clear", {"until": until})
    assert out == {"removed": 2, "through_seq": replies[1]["seq"]}
    event = await alice.next_event("room.cleared", timeout=scaled(5))
    assert event == {"ev": "room.cleared", "room": rid, "through_seq": replies[1]["seq"]}
    texts = [m["text"] for m in await backchat(api, "alice", rid)]
    assert texts == ["three", "four"]
    assert [m["text"] for m in await history(alice, rid)] == ["three", "four"]
    got = await api.call("GET", f"/api/v1/rooms/{rid}")
    assert got["last_seq"] == 4  # seq never goes back

    # clearing again up to the same date removes nothing more
    again = await api.call("POST", f"/api/v1/rooms/{rid}/clear", {"until": until})
    assert again["removed"] == 0
    # an ISO date-time (UTC) after the last message clears the rest
    iso = dt.datetime.fromtimestamp((replies[3]["ts"] + 1) / 1000, dt.UTC).isoformat()
    out = await api.call("POST", f"/api/v1/rooms/{rid}/clear", {"until": iso})
    assert out == {"removed": 2, "through_seq": 4}
    assert await backchat(api, "alice", rid) == []
    await api.call("POST", f"/api/v1/rooms/{rid}/clear", {"until": "yesterday"}, status=400)
    # a bare date means the whole day: today's messages are on or before today
    today_room = (await api.room("today", privacy="open"))["id"]
    await post(alice, today_room, "posted today")
    today = dt.datetime.now(dt.UTC).date()
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    out = await api.call("POST", f"/api/v1/rooms/{today_room}/clear", {"until": yesterday})
    assert out["removed"] == 0
    out = await api.call("POST", f"/api/v1/rooms/{today_room}/clear", {"until": today.isoformat()})
    assert out == {"removed": 1, "through_seq": 1}
    await api.call("POST", "/api/v1/rooms/99999/clear", {"until": until}, status=404)
    # new posts continue after the cleared ones
    reply = await post(alice, rid, "five")
    assert reply["seq"] == 5


async def test_replace_and_remove_messages(api: Api) -> None:
    alice_id, bob_id = await api.user("alice"), await api.user("bob")
    room = await api.room("lobby", privacy="open")
    other = await api.room("other", privacy="open")
    rid = room["id"]
    alice, bob = await api.login("alice"), await api.login("bob")
    await bob.call("join", room=rid)
    texts = [
        "The quick brown fox",  # 1 alice
        "a lazy dog",  # 2 bob
        "quick DOG",  # 3 alice
        "Quick",  # 4 bob
        "quick",  # 5 alice
        "nothing here",  # 6 bob
    ]
    for i, text in enumerate(texts):
        await post(alice if i % 2 == 0 else bob, rid, text)
        await asyncio.sleep(0.003)
    await post(alice, other["id"], "quick in another room")

    async def search(**flt: Any) -> list[tuple[int, int]]:
        out = await api.call("POST", "/api/v1/messages/search", {"room": rid, **flt})
        return [(m["room"], m["seq"]) for m in out["messages"]]

    def seqs(found: list[tuple[int, int]]) -> list[int]:
        return [seq for _room, seq in found]

    assert seqs(await search(keywords=["quick"])) == [1, 3, 4, 5]
    assert seqs(await search(keywords=["quick"], case_sensitive=True)) == [1, 3, 5]
    assert seqs(await search(keywords=["quick", "dog"])) == [3]  # match all (default)
    assert seqs(await search(keywords=["quick", "dog"], match="any")) == [1, 2, 3, 4, 5]
    assert seqs(await search(keywords=["quick"], match="exact")) == [4, 5]
    assert seqs(await search(keywords=["quick"], match="exact", case_sensitive=True)) == [5]
    assert seqs(await search(user=bob_id)) == [2, 4, 6]
    all_found = await api.call("POST", "/api/v1/messages/search", {"keywords": ["quick"]})
    assert (other["id"], 1) in [(m["room"], m["seq"]) for m in all_found["messages"]]

    # a date range: messages 2..4 by their timestamps
    full = await api.call("POST", "/api/v1/messages/search", {"room": rid})
    ts = {m["seq"]: m["ts"] for m in full["messages"]}
    assert seqs(await search(since=ts[2], until=ts[4])) == [2, 3, 4]
    today = dt.datetime.fromtimestamp(ts[1] / 1000, dt.UTC).date()
    assert (
        seqs(await search(since=today.isoformat(), until=today.isoformat()))
        == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]
        or today != dt.datetime.fromtimestamp(ts[6] / 1000, dt.UTC).date()
    )  # midnight passed
    assert seqs(await search(until=(today - dt.timedelta(days=1)).isoformat())) == []

    # replace with the default text, by room + user + keyword
    out = await api.call(
        "POST",
        "/api/v1/messages/replace",
        {"room": rid, "user": alice_id, "keywords": ["QUICK"]},
    )
    assert out["changed"] == 3
    assert [(m["seq"], m["text"]) for m in out["messages"]] == [
        (1, "The quick brown fox"),
        (3, "quick DOG"),
        (5, "quick"),
    ]
    for seq in (1, 3, 5):
        event = await bob.next_event("message.changed", timeout=scaled(5))
        assert event == {
            "ev": "message.changed",
            "room": rid,
            "seq": seq,
            "state": "replaced",
            "text": DEFAULT_REPLACEMENT,
        }
    expected = [
        DEFAULT_REPLACEMENT,
        "a lazy dog",
        DEFAULT_REPLACEMENT,
        "Quick",
        DEFAULT_REPLACEMENT,
        "nothing here",
    ]
    joined = await backchat(api, "bob", rid)
    assert [m["seq"] for m in joined] == [1, 2, 3, 4, 5, 6]
    assert [m["text"] for m in joined] == expected
    assert [m["text"] for m in await history(alice, rid)] == expected
    # the other room is untouched (the filter's room)
    assert [m["text"] for m in await history(alice, other["id"])] == ["quick in another room"]

    # replace with a chosen text, by a date range
    out = await api.call(
        "POST",
        "/api/v1/messages/replace",
        {"room": rid, "since": ts[2], "until": ts[2], "text": "[redacted]"},
    )
    assert out["changed"] == 1 and out["messages"][0]["text"] == "a lazy dog"
    event = await bob.next_event("message.changed", timeout=scaled(5))
    assert event["seq"] == 2 and event["text"] == "[redacted]"
    assert (await backchat(api, "alice", rid))[1]["text"] == "[redacted]"

    # remove by user and keyword: gone from history and the backchat, the seq stays taken
    out = await api.call(
        "POST",
        "/api/v1/messages/remove",
        {"user": bob_id, "keywords": ["quick", "nothing"], "match": "any"},
    )
    assert out["changed"] == 2 and [m["seq"] for m in out["messages"]] == [4, 6]
    for seq in (4, 6):
        event = await bob.next_event("message.changed", timeout=scaled(5))
        assert event == {"ev": "message.changed", "room": rid, "seq": seq, "state": "removed"}
    assert [m["seq"] for m in await history(alice, rid)] == [1, 2, 3, 5]
    assert [m["seq"] for m in await backchat(api, "alice", rid)] == [1, 2, 3, 5]
    assert seqs(await search(user=bob_id)) == [2]
    assert (await post(bob, rid, "after"))["seq"] == 7
    # remove by room and date range: from message 5 on (6 is gone already, 7 is newer)
    out = await api.call("POST", "/api/v1/messages/remove", {"room": rid, "since": ts[5]})
    assert [m["seq"] for m in out["messages"]] == [5, 7]
    assert [m["seq"] for m in await history(alice, rid)] == [1, 2, 3]

    # the selection must name a room or a user
    await api.call("POST", "/api/v1/messages/remove", {"keywords": ["x"]}, status=400)
    await api.call("POST", "/api/v1/messages/replace", {"room": 99999}, status=404)
    await api.call("POST", "/api/v1/messages/remove", {"room": rid, "match": "some"}, status=400)


# -- what the store cannot hold is refused, not a server error -------------------------------


async def test_bad_input_is_refused_with_400(api: Api) -> None:
    """Values PostgreSQL cannot store (NUL characters, over-long node names) and JSON of the
    wrong type are refused as bad requests on both dialects, never a 500."""
    bad: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/users", {"name": "a\u0000b", "password": PASSWORD}),
        ("POST", "/api/v1/groups", {"name": "g", "description": "nul\u0000"}),
        ("POST", "/api/v1/rooms", {"name": "nul\u0000room"}),
        ("POST", "/api/v1/categories", {"name": "\u0000"}),
        ("POST", "/api/v1/addins", {"name": "a", "url": "https://x.y/\u0000"}),
        ("POST", "/api/v1/messages/replace", {"room": 1, "text": "\u0000"}),
        ("POST", "/api/v1/messages/search", {"keywords": ["\u0000"]}),
        ("PATCH", "/api/v1/config/nodes/" + "n" * 129, {"max_file_size_kb": 5}),
        ("POST", "/api/v1/rooms", {"name": "r", "category": "1"}),
        ("POST", "/api/v1/rooms", {"name": "r", "category": True}),
        ("POST", "/api/v1/rooms/1/clear", {"until": True}),
        ("PATCH", "/api/v1/config", {"default_chat_history": "5"}),
        ("POST", "/api/v1/messages/remove", {}),
        ("POST", "/api/v1/messages/remove", {"room": None, "user": None}),
    ]
    for method, path, body in bad:
        await api.call(method, path, body, status=400)
    for params in ({"query": "\u0000"}, {"contains": "\u0000"}):
        path = "/api/v1/users" if "query" in params else "/api/v1/rooms"
        await api.call("GET", path, params=params, status=400)
    # a lone surrogate is not text either
    async with api.http.post(
        "/api/v1/groups",
        data=b'{"name": "\\ud800"}',
        headers={"Authorization": f"Bearer {STATIC}", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
    # a body above 1 MiB
    big = json.dumps({"name": "g", "description": "x" * 1_100_000}).encode()
    async with api.http.post(
        "/api/v1/groups",
        data=io.BytesIO(big),
        headers={"Authorization": f"Bearer {STATIC}", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "too_large"
    # whole numbers written as 5.0 are integers (JSON Schema says so)
    out = await api.call("PATCH", "/api/v1/config", {"default_chat_history": 5.0})
    assert out["global"] == {"default_chat_history": 5}
    out = await api.call("PATCH", "/api/v1/config/nodes/" + "n" * 128, {"max_file_size_kb": 5})
    assert out["nodes"] == {"n" * 128: {"max_file_size_kb": 5}}
    assert {e["action"] for e in await api.audit(actor="token")} == {"config.update"}


async def test_text_the_store_cannot_hold_is_refused_naming_the_field(api: Api) -> None:
    """Every string of every request model goes through protocol.text: a NUL character
    anywhere (a field, a list item, a nested model, a query parameter) is a 400 that names the
    field, and nothing is changed."""
    await api.user("alice")
    room = await api.room("lobby", privacy="open")
    rid = room["id"]
    client = await api.login("alice")
    await post(client, rid, "hello")
    cases: list[tuple[str, str, Any, str]] = [
        ("PATCH", f"/api/v1/rooms/{rid}", {"description": "a\u0000b"}, "description"),
        (
            "POST",
            "/api/v1/messages/replace",
            {"room": rid, "text": "new\u0000text"},
            "text",
        ),
        ("POST", "/api/v1/messages/remove", {"room": rid, "keywords": ["\u0000"]}, "keywords"),
        ("POST", "/api/v1/users", {"name": "bob", "password": "pass\u0000word"}, "password"),
        ("POST", "/api/v1/groups", {"name": "g", "description": "\u0000"}, "description"),
        (
            "POST",
            "/api/v1/rooms",
            {"name": "r", "members": [{"kind": "user\u0000", "id": 1}]},
            "members.0.kind",
        ),
        ("POST", "/api/v1/messages/search", {"since": "2026-01-01\u0000"}, "since"),
        ("PUT", "/api/v1/pool/active", {"nodes": ["n\u0000"]}, "nodes"),
    ]
    newest = (await api.audit(limit="1"))[0]["id"]
    for method, path, body, field in cases:
        out = await api.call(method, path, body, status=400)
        assert out["error"]["code"] == "bad_request", (path, out)
        message = out["error"]["message"]
        assert message.startswith(f"{field}: ") and "NUL" in message, (path, message)
    for path, params, field in (
        ("/api/v1/users", {"query": "a\u0000"}, "query"),
        ("/api/v1/rooms", {"contains": "\u0000"}, "contains"),
        ("/api/v1/audit", {"actor": "\u0000"}, "actor"),
    ):
        out = await api.call("GET", path, params=params, status=400)
        assert out["error"]["message"].startswith(f"{field}: "), out
        assert "NUL" in out["error"]["message"], out
    assert (await api.call("GET", f"/api/v1/rooms/{rid}")) == room | {"last_seq": 1}
    assert [m["text"] for m in await history(client, rid)] == ["hello"]
    assert (await api.audit(limit="1"))[0]["id"] == newest


async def test_backchat_stays_full_after_removing_cached_messages(api: Api) -> None:
    """Removing messages the node holds in its recent-message cache must not shorten the
    backchat of later joins: it is as long as one read from the store."""
    await api.user("alice")
    rid = (await api.room("lobby", privacy="open"))["id"]
    alice = await api.login("alice")
    await alice.call("join", room=rid)  # the room stays cached while alice is joined
    for i in range(10):
        await post(alice, rid, f"m{i}")
    await api.call("PATCH", "/api/v1/config", {"default_chat_history": 5})
    assert [m["text"] for m in await backchat(api, "alice", rid)] == [f"m{i}" for i in range(5, 10)]
    await api.call(
        "POST", "/api/v1/messages/remove", {"room": rid, "keywords": ["m9", "m7"], "match": "any"}
    )
    expected = ["m3", "m4", "m5", "m6", "m8"]
    assert [m["text"] for m in await backchat(api, "alice", rid)] == expected
    # live delivery goes on after the cache was reloaded
    await post(alice, rid, "m10")
    seqs = [(await alice.next_event("message", timeout=scaled(5)))["seq"] for _ in range(11)]
    assert seqs == list(range(1, 12))
    assert [m["text"] for m in await backchat(api, "alice", rid)] == [*expected[1:], "m10"]


# -- add-ins, sessions, configuration, pool -------------------------------------------------


async def test_addins_attached_to_rooms(api: Api) -> None:
    for url in ("ftp://example.com/x", "javascript:alert(1)", "https://", "http:/x.y", "x" * 9):
        await api.call("POST", "/api/v1/addins", {"name": "bad", "url": url}, status=400)
    board = await api.call(
        "POST", "/api/v1/addins", {"name": "board", "url": "https://example.com/board?x=1"}
    )
    assert board["url"] == "https://example.com/board?x=1" and board["created"] > 0
    await api.call("POST", "/api/v1/addins", {"name": "board", "url": "http://a.b/"}, status=409)
    wiki = await api.call("POST", "/api/v1/addins", {"name": "wiki", "url": "http://wiki.local/"})
    assert [x["name"] for x in await api.call("GET", "/api/v1/addins")] == ["board", "wiki"]
    assert await api.call("GET", f"/api/v1/addins/{board['id']}") == board
    out = await api.call("PATCH", f"/api/v1/addins/{wiki['id']}", {"url": "https://wiki.local/"})
    assert out["url"] == "https://wiki.local/" and out["name"] == "wiki"
    await api.call("PATCH", f"/api/v1/addins/{wiki['id']}", {"url": "file:///etc"}, status=400)
    await api.call("PATCH", f"/api/v1/addins/{wiki['id']}", {"name": "board"}, status=409)

    room = await api.room("lobby", addin=board["id"])
    assert room["addin"] == board["id"]
    await api.login("root")  # the room object clients see carries the add-in too
    admin = await api.login("root")
    listed = await admin.call("rooms")
    assert [r["addin"] for r in listed["rooms"] if r["id"] == room["id"]] == [board["id"]]
    await api.call("DELETE", f"/api/v1/addins/{board['id']}", status=409)
    out = await api.call("PATCH", f"/api/v1/rooms/{room['id']}", {"addin": wiki["id"]})
    assert out["addin"] == wiki["id"]
    await api.call("DELETE", f"/api/v1/addins/{board['id']}", status=204)
    await api.call("GET", f"/api/v1/addins/{board['id']}", status=404)
    await api.call("PATCH", f"/api/v1/rooms/{room['id']}", {"addin": board["id"]}, status=404)


async def test_sessions_and_disconnect(api: Api) -> None:
    alice_id = await api.user("alice")
    await api.user("bob")
    room = await api.room("lobby", privacy="open")
    alice_tcp = await api.login("alice")
    alice_ws = await api.h.connect("websocket")
    await alice_ws.login("alice", PASSWORD)
    bob = await api.login("bob")
    await alice_tcp.call("join", room=room["id"])
    unauthenticated = await api.h.connect()
    await unauthenticated.call("hello", protocol=1, client="t")

    out = await api.call("GET", "/api/v1/sessions")
    assert out["node"] == "test-node"
    seen = sorted((s["user"]["name"], s["transport"], s["rooms"]) for s in out["sessions"])
    assert seen == [("alice", "tcp", 1), ("alice", "websocket", 0), ("bob", "tcp", 0)]
    assert all(s["peer"].startswith("127.0.0.1") for s in out["sessions"])

    out = await api.call("DELETE", f"/api/v1/users/{alice_id}/sessions")
    assert out == {"disconnected": 2}
    for client in (alice_tcp, alice_ws):
        bye = await client.next_event("bye", timeout=scaled(5))
        assert bye["reason"] == "disconnected"
        await asyncio.wait_for(client.closed.wait(), scaled(5))  # the server closed it
    await bob.call("ping")
    out = await api.call("GET", "/api/v1/sessions")
    assert [s["user"]["name"] for s in out["sessions"]] == ["bob"]
    assert await api.call("DELETE", f"/api/v1/users/{alice_id}/sessions") == {"disconnected": 0}
    again = await api.login("alice")  # disconnected, not locked out
    await again.call("join", room=room["id"])
    await api.call("DELETE", "/api/v1/users/99999/sessions", status=404)


async def test_config_global_and_per_node(api: Api) -> None:
    await api.user("alice")
    room = await api.room("lobby", privacy="open")
    alice = await api.login("alice")
    for i in range(12):
        await post(alice, room["id"], f"m{i}")
    assert len(await backchat(api, "alice", room["id"])) == 12  # the default (30) holds them all

    out = await api.call("GET", "/api/v1/config")
    assert out["node"] == "test-node" and out["global"] == {} and out["nodes"] == {}
    assert out["effective"] == out["defaults"] and out["defaults"]["default_chat_history"] == 30

    out = await api.call(
        "PATCH",
        "/api/v1/config",
        {"default_chat_history": 5, "room_management_url": "https://rooms.example/"},
    )
    assert out["global"] == {
        "default_chat_history": 5,
        "room_management_url": "https://rooms.example/",
    }
    assert out["effective"]["default_chat_history"] == 5
    joined = await backchat(api, "alice", room["id"])
    assert [m["text"] for m in joined] == [f"m{i}" for i in range(7, 12)]

    out = await api.call("PATCH", "/api/v1/config/nodes/test-node", {"default_chat_history": 3})
    assert out["nodes"] == {"test-node": {"default_chat_history": 3}}
    assert out["effective"]["default_chat_history"] == 3
    assert len(await backchat(api, "alice", room["id"])) == 3
    # another node's override does not apply here
    out = await api.call("PATCH", "/api/v1/config/nodes/elsewhere", {"default_chat_history": 1})
    assert out["effective"]["default_chat_history"] == 3
    assert len(await backchat(api, "alice", room["id"])) == 3

    # null clears an override: back to the global value, then to the default
    out = await api.call("PATCH", "/api/v1/config/nodes/test-node", {"default_chat_history": None})
    assert "test-node" not in out["nodes"] and out["effective"]["default_chat_history"] == 5
    assert len(await backchat(api, "alice", room["id"])) == 5
    out = await api.call("PATCH", "/api/v1/config", {"default_chat_history": None})
    assert out["effective"]["default_chat_history"] == 30
    assert len(await backchat(api, "alice", room["id"])) == 12

    for bad in (
        {"default_chat_history": 0},
        {"default_chat_history": 501},
        {"max_file_size_kb": 0},
        {"room_management_url": "ftp://x"},
        {"room_management_url": "javascript:alert(1)"},
        {"room_management_url": "//evil.example/"},
        {"unknown": 1},
    ):
        await api.call("PATCH", "/api/v1/config", bad, status=400)
    out = await api.call("PATCH", "/api/v1/config", {"max_file_size_kb": 2048})
    assert out["effective"]["max_file_size_kb"] == 2048


async def test_pool_view_and_compliance(api: Api) -> None:
    out = await api.call("GET", "/api/v1/pool")
    node = api.h.node
    tcp, mgmt = node.addresses["tcp"], node.management.address  # type: ignore[union-attr]
    assert out["pooled"] is False
    assert out["nodes"] == [
        {
            "name": "test-node",
            "tcp": f"{tcp[0]}:{tcp[1]}",
            "websocket": "{}:{}".format(*node.addresses["websocket"]),
            "peer": "",
            "management": f"{mgmt[0]}:{mgmt[1]}",
            "state": "active",
            "heartbeat_age_s": None,
            "this_node": True,
            "linked": None,
        }
    ]
    out = await api.call("GET", "/api/v1/compliance")
    assert out["enabled"] is False


# -- reads change nothing -------------------------------------------------------------------


async def test_every_read_changes_nothing(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every route that does not change state (each GET, and the message search), called with
    the ids of a small world: the governance facts keep their generation, the audit log gets
    no entry, nothing is published to the pool, the hub keeps its cached rooms, and a member
    subscribed to a room hears nothing."""
    node = api.h.node
    alice = await api.user("alice")
    gid = (await api.call("POST", "/api/v1/groups", {"name": "legal"}))["id"]
    await api.call("PATCH", f"/api/v1/groups/{gid}/members", {"add": [user(alice)]})
    cid = (
        await api.call("POST", "/api/v1/categories", {"name": "Deals", "allowed": [group(gid)]})
    )["id"]
    aid = (await api.call("POST", "/api/v1/addins", {"name": "board", "url": "https://x.y/"}))["id"]
    rid = (await api.room("merger", category=cid, members=[group(gid)], addin=aid))["id"]
    client = await api.login("alice")
    await client.call("join", room=rid)
    await post(client, rid, "hello")
    await client.next_event("message")  # its own post, live
    hold = await hold_store.place(node.db, "read test", [alice], [rid], None, None, "test")
    ids = {"user_id": alice, "group_id": gid, "category_id": cid, "room_id": rid, "addin_id": aid}
    ids["hold_id"] = hold.id
    ids["file_id"] = 1  # no file in this world: the held-file read answers 404, changing nothing

    published: list[Any] = []
    for publisher in {
        id(p): p for p in (node.governance._publisher, node.settings._publisher)
    }.values():
        monkeypatch.setattr(publisher, "publish", published.append)
        monkeypatch.setattr(publisher, "publish_messages", published.append)
    assert client.events.empty()
    generation = node.facts.generation
    entries = len(await admin_store.audit_entries(node.db, limit=1000))
    loaded = {room: node.hub._rooms[room] for room in node.hub.loaded_rooms()}
    assert rid in loaded

    reads = [r for r in ROUTES if not r.mutating]
    assert {r.method for r in reads} == {"GET", "POST"}  # POST: the message search
    for r in reads:
        missing = set(r.path_params) - set(ids)
        assert not missing, f"{r.method} {r.path}: give the read test an id for {missing}"
        path = r.path.format(**ids)
        body = {"room": rid} if r.path.endswith("/search") else {} if r.method == "POST" else None
        # no file in this world; no [directory] (tests/userdir reads its status against slapd)
        refused = 404 if "{file_id}" in r.path else 409 if "/directory/" in r.path else None
        await api.call(r.method, path, body, status=refused)
    for params in (
        {"category": str(cid), "member": f"group:{gid}", "addin": str(aid)},
        {"contains": "merg", "content_exceeds_mb": "0", "disabled": "false"},
    ):
        assert (await api.call("GET", "/api/v1/rooms", params=params))["rooms"]
    await api.call("GET", "/api/v1/users", params={"query": "ali"})
    await api.call("GET", "/api/v1/audit", params={"target": f"room:{rid}"})

    assert node.facts.generation == generation
    assert len(await admin_store.audit_entries(node.db, limit=1000)) == entries
    assert published == []
    for room, state in loaded.items():
        assert node.hub._rooms.get(room) is state, f"room {room} dropped from the hub"
    await history(client, rid)  # a round trip: any event sent before it has arrived
    assert client.events.empty(), client.events.get_nowait()


# -- the audit log: every mutating route ----------------------------------------------------


# A scenario's entry: (target, before, after) under the route's action, or several entries
# (action, target, before, after), oldest first, for a request that makes several changes.
Entry = tuple[str, str, Any, Any]
Scenario = Callable[[Api, dict[str, Any]], Awaitable[tuple[str, Any, Any] | list[Entry]]]


def state(view: dict[str, Any] | None) -> dict[str, Any] | None:
    """A resource as an audit entry holds it: the API's view without what is not its state
    (a room's last_seq, a user's effective policy, where a user comes from and whether they are
    disabled — no route here changes those)."""
    if view is None:
        return None
    derived = {"last_seq", "persistent_chat_enabled"}
    if "is_admin" in view:  # a user
        derived |= {"source", "disabled"}
    return {k: v for k, v in view.items() if k not in derived}


async def test_every_mutating_route_is_audited(api: Api) -> None:
    """Each mutating route runs once; its audit entry names the actor, the action, the target
    and the state before and after. A mutating route without a scenario here fails the test.

    Governance writes the entries of the changes it makes (as for the client protocol), one per
    change: a request that makes several (a room with its members) has an entry for each."""
    s: dict[str, Any] = {}
    alice = await api.user("alice")
    s["alice"] = alice
    adm = await api.login("root")

    async def create_user(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        out = await a.call("POST", "/api/v1/users", {"name": "bob", "password": PASSWORD})
        s["bob"] = out["id"]
        return f"user:{out['id']}", None, state(out)

    async def set_policy(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        before = await a.call("GET", f"/api/v1/users/{alice}")
        out = await a.call(
            "PUT", f"/api/v1/users/{alice}/policy", {"persistent_chat_enabled": True}
        )
        assert before["policy"] is None and out["policy"] is True
        return f"user:{alice}", state(before), state(out)

    async def disconnect(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        await a.login("alice")
        out = await a.call("DELETE", f"/api/v1/users/{alice}/sessions")
        assert out == {"disconnected": 1}
        return f"user:{alice}", None, out

    async def reset_password(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        await a.h.login("bob")
        out = await a.call("PUT", f"/api/v1/users/{s['bob']}/password", {"password": "n" * 8})
        assert out == {"disconnected": 1}
        return f"user:{s['bob']}", None, out

    async def create_group(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        out = await a.call("POST", "/api/v1/groups", {"name": "g"})
        s["group"] = out["id"]
        return f"group:{out['id']}", None, out

    async def group_members(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        gid = s["group"]
        before = await a.call("GET", f"/api/v1/groups/{gid}")
        out = await a.call("PATCH", f"/api/v1/groups/{gid}/members", {"add": [user(alice)]})
        assert out["members"] == [user(alice)]
        return f"group:{gid}", before, out

    async def delete_group(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        gid = s["group"]
        before = await a.call("GET", f"/api/v1/groups/{gid}")
        await a.call("DELETE", f"/api/v1/groups/{gid}", status=204)
        return f"group:{gid}", before, None

    async def create_category(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        out = await a.call("POST", "/api/v1/categories", {"name": "c", "allowed": [user(alice)]})
        s["category"] = out["id"]
        target, created = f"category:{out['id']}", {**out, "allowed": []}
        return [
            ("category.create", target, None, created),
            ("category.update", target, created, out),
        ]

    async def update_category(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        cid = s["category"]
        before = await a.call("GET", f"/api/v1/categories/{cid}")
        out = await a.call(
            "PATCH", f"/api/v1/categories/{cid}", {"name": "c2", "add": {"creators": [user(alice)]}}
        )
        return f"category:{cid}", before, out

    async def delete_category(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        cid = s["category"]
        before = await a.call("GET", f"/api/v1/categories/{cid}")
        await a.call("DELETE", f"/api/v1/categories/{cid}", status=204)
        return f"category:{cid}", before, None

    async def create_room(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        out = await a.room("r", privacy="open", members=[user(alice)])
        s["room"] = out["id"]
        target, created = f"room:{out['id']}", state({**out, "members": []})
        return [
            ("room.create", target, None, created),
            ("room.members", target, created, state(out)),
        ]

    async def update_room(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        rid = s["room"]
        before = await a.call("GET", f"/api/v1/rooms/{rid}")
        out = await a.call("PATCH", f"/api/v1/rooms/{rid}", {"description": "new"})
        return f"room:{rid}", state(before), state(out)

    async def disable_room(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        rid = s["room"]
        before = await a.call("GET", f"/api/v1/rooms/{rid}")
        out = await a.call("POST", f"/api/v1/rooms/{rid}/disable")
        return f"room:{rid}", state(before), state(out)

    async def enable_room(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        rid = s["room"]
        before = await a.call("GET", f"/api/v1/rooms/{rid}")
        out = await a.call("POST", f"/api/v1/rooms/{rid}/enable")
        return f"room:{rid}", state(before), state(out)

    async def clear_room(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        rid = s["room"]
        reply = await post(adm, rid, "to be cleared")
        out = await a.call("POST", f"/api/v1/rooms/{rid}/clear", {"until": reply["ts"]})
        assert out["removed"] == 1
        return f"room:{rid}", {"until_ms": reply["ts"]}, out

    async def replace_messages(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        rid = s["room"]
        await post(adm, rid, "secret plans")
        body = {"room": rid, "keywords": ["secret"], "text": "gone"}
        out = await a.call("POST", "/api/v1/messages/replace", body)
        assert out["changed"] == 1
        entry = (await a.audit(action="messages.replace"))[0]
        flt = entry["before"]["filter"]
        assert flt["room"] == rid and flt["keywords"] == ["secret"]
        return (
            f"room:{rid}",
            {"filter": flt, "messages": out["messages"]},
            {"changed": 1, "text": "gone"},
        )

    async def remove_messages(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        rid = s["room"]
        await post(adm, rid, "remove me")
        out = await a.call(
            "POST",
            "/api/v1/messages/remove",
            {"user": s["root"], "keywords": ["remove me"]},
        )
        assert out["changed"] == 1 and out["messages"][0]["text"] == "remove me"
        entry = (await a.audit(action="messages.remove"))[0]
        return (
            f"user:{s['root']}",
            {"filter": entry["before"]["filter"], "messages": out["messages"]},
            {"changed": 1, "text": None},
        )

    async def create_addin(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        out = await a.call("POST", "/api/v1/addins", {"name": "ai", "url": "https://x.y/"})
        s["addin"] = out["id"]
        return f"addin:{out['id']}", None, out

    async def update_addin(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        aid = s["addin"]
        before = await a.call("GET", f"/api/v1/addins/{aid}")
        out = await a.call("PATCH", f"/api/v1/addins/{aid}", {"url": "https://x.y/z"})
        return f"addin:{aid}", before, out

    async def delete_addin(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        aid = s["addin"]
        before = await a.call("GET", f"/api/v1/addins/{aid}")
        await a.call("DELETE", f"/api/v1/addins/{aid}", status=204)
        return f"addin:{aid}", before, None

    async def delete_room(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        rid = s["room"]
        before = await a.call("GET", f"/api/v1/rooms/{rid}")
        await a.call("DELETE", f"/api/v1/rooms/{rid}", status=204)
        return f"room:{rid}", state(before), None

    async def update_config(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        before = await a.call("GET", "/api/v1/config")
        out = await a.call("PATCH", "/api/v1/config", {"default_chat_history": 7})
        assert out["global"] == {"default_chat_history": 7}
        return "config:global", before, out

    async def update_node_config(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        before = await a.call("GET", "/api/v1/config")
        out = await a.call("PATCH", "/api/v1/config/nodes/test-node", {"max_file_size_kb": 9})
        return "config:node:test-node", before, out

    async def create_token(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        basic = base64.b64encode(f"alice2:{PASSWORD}".encode()).decode()
        out = await a.call(
            "POST", "/api/v1/tokens", token=None, headers={"Authorization": f"Basic {basic}"}
        )
        s["token_actor"] = "alice2"
        return f"user:{out['user']['id']}", None, None

    async def export_all(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        out = await a.call("POST", "/api/v1/exports", {"file": "audit.jsonl.gz"})
        assert out["file"] == "audit.jsonl.gz" and out["bytes"] > 0
        return "file:audit.jsonl.gz", dataclasses.asdict(ExportOptions()), out

    async def import_again(a: Api, s: dict[str, Any]) -> tuple[str, Any, Any]:
        body = {"file": "audit.jsonl.gz", "on_conflict": "skip"}
        out = await a.call("POST", "/api/v1/imports", body)
        return "file:audit.jsonl.gz", None, out

    scenarios: dict[tuple[str, str], tuple[str, Scenario]] = {
        ("POST", "/api/v1/users"): ("user.create", create_user),
        ("PUT", "/api/v1/users/{user_id}/policy"): ("user.policy", set_policy),
        ("DELETE", "/api/v1/users/{user_id}/sessions"): ("user.disconnect", disconnect),
        ("PUT", "/api/v1/users/{user_id}/password"): ("user.password_reset", reset_password),
        ("POST", "/api/v1/groups"): ("group.create", create_group),
        ("PATCH", "/api/v1/groups/{group_id}/members"): ("group.members", group_members),
        ("DELETE", "/api/v1/groups/{group_id}"): ("group.delete", delete_group),
        ("POST", "/api/v1/categories"): ("category.create", create_category),
        ("PATCH", "/api/v1/categories/{category_id}"): ("category.update", update_category),
        ("DELETE", "/api/v1/categories/{category_id}"): ("category.delete", delete_category),
        ("POST", "/api/v1/rooms"): ("room.create", create_room),
        ("PATCH", "/api/v1/rooms/{room_id}"): ("room.update", update_room),
        ("POST", "/api/v1/rooms/{room_id}/disable"): ("room.disable", disable_room),
        ("POST", "/api/v1/rooms/{room_id}/enable"): ("room.enable", enable_room),
        ("POST", "/api/v1/rooms/{room_id}/clear"): ("room.clear", clear_room),
        ("POST", "/api/v1/messages/replace"): ("messages.replace", replace_messages),
        ("POST", "/api/v1/messages/remove"): ("messages.remove", remove_messages),
        ("POST", "/api/v1/addins"): ("addin.create", create_addin),
        ("PATCH", "/api/v1/addins/{addin_id}"): ("addin.update", update_addin),
        ("DELETE", "/api/v1/addins/{addin_id}"): ("addin.delete", delete_addin),
        ("DELETE", "/api/v1/rooms/{room_id}"): ("room.delete", delete_room),
        ("PATCH", "/api/v1/config"): ("config.update", update_config),
        ("PATCH", "/api/v1/config/nodes/{node_name}"): ("config.update", update_node_config),
        ("POST", "/api/v1/tokens"): ("token.create", create_token),
        **lifecycle_scenarios(),  # issue 18: edit policy, retention, legal holds
        # last: the import (of this deployment's own export, everything skipped) changes nothing
        ("POST", "/api/v1/exports"): ("export", export_all),
        ("POST", "/api/v1/imports"): ("import", import_again),
    }
    # The pool's routes need a pool of node processes: test_pool.py checks their audit entries
    # (test_pool_control_through_the_management_api); the directory's need an LDAP server:
    # tests/userdir/test_directory_admin.py checks theirs.
    elsewhere = ("/api/v1/pool", "/api/v1/directory")
    mutating = {
        (r.method, r.path) for r in ROUTES if r.mutating and not r.path.startswith(elsewhere)
    }
    assert mutating == set(scenarios), (
        f"mutating routes without an audit scenario: {sorted(mutating - set(scenarios))};"
        f" scenarios for routes that do not exist: {sorted(set(scenarios) - mutating)}"
    )
    await api.user("alice2", admin=True)
    roots = await api.call("GET", "/api/v1/users", params={"query": "root"})
    s["root"] = next(u["id"] for u in roots if u["name"] == "root")
    for (method, path), (action, scenario) in scenarios.items():
        newest = await api.audit(limit="1")
        last_id = newest[0]["id"] if newest else 0
        result = await scenario(api, s)
        expected = result if isinstance(result, list) else [(action, *result)]
        entries = [e for e in reversed(await api.audit()) if e["id"] > last_id]
        assert len(entries) == len(expected), (method, path, entries)
        actor = s.pop("token_actor", "token")
        for entry, (action, target, before, after) in zip(entries, expected, strict=True):
            assert entry["actor"] == actor, (method, path, entry)
            assert entry["actor_id"] == (None if actor == "token" else api.users[actor])
            assert (entry["action"], entry["target"]) == (action, target), (method, path, entry)
            assert entry["before"] == before, (method, path, entry)
            assert entry["after"] == after, (method, path, entry)
            assert abs(entry["ts"] - dt.datetime.now(dt.UTC).timestamp() * 1000) < 60_000
    # a refused change leaves no entry
    newest = (await api.audit(limit="1"))[0]["id"]
    await api.call("POST", "/api/v1/users", {"name": "bob", "password": PASSWORD}, status=409)
    assert (await api.audit(limit="1"))[0]["id"] == newest
    # filters and paging
    by_action = await api.audit(action="room.create")
    assert [e["action"] for e in by_action] == ["room.create"]
    assert [(e["action"], e["actor"]) for e in await api.audit(target=f"user:{alice}")] == [
        ("user.disconnect", "token"),
        ("user.policy", "token"),
        ("user.create", "token"),
    ]
    assert {e["actor"] for e in await api.audit(actor="alice2")} == {"alice2"}
    page = await api.audit(limit="3")
    older = await api.audit(before=str(page[-1]["id"]), limit="3")
    assert [e["id"] for e in page + older] == [e["id"] for e in (await api.audit())[:6]]


# -- authentication -------------------------------------------------------------------------


def _path(path: str) -> str:
    for name in ("user_id", "group_id", "category_id", "room_id", "addin_id", "hold_id", "file_id"):
        path = path.replace("{" + name + "}", "1")
    return path.replace("{node_name}", "test-node")


async def test_authentication_and_authorization(api: Api) -> None:
    await api.user("alice")
    await api.room("lobby")
    every = [(r.method, _path(r.path)) for r in ROUTES] + [
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]
    # a non-admin user's session token from the client protocol
    client = await api.login("alice")
    user_token = client.token
    assert user_token
    for method, path in every:
        for token, status in ((None, 401), ("not-a-token", 401), (user_token, 403)):
            async with api.http.request(
                method,
                path,
                json={} if method in ("POST", "PUT", "PATCH") else None,
                headers={"Authorization": f"Bearer {token}"} if token else {},
            ) as response:
                body = await response.json()
                assert response.status == status, (method, path, token, body)
                assert set(body) == {"error"}, (method, path, body)
                assert set(body["error"]) == {"code", "message"}
                if status == 401:
                    assert "Bearer" in response.headers["WWW-Authenticate"]
    # the static token works; a wrong static token does not
    assert (await api.call("GET", "/api/v1/pool"))["nodes"]
    await api.call("GET", "/api/v1/pool", token=STATIC + "x", status=401)
    # an administrator's client-protocol token works
    admin = await api.login("root")
    assert admin.token
    await api.call("GET", "/api/v1/pool", token=admin.token)

    # Basic auth, and POST /api/v1/tokens turning it into a bearer token
    def basic(name: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
        }

    out = await api.call("POST", "/api/v1/tokens", token=None, headers=basic("root", PASSWORD))
    assert out["user"]["name"] == "root" and out["token"]
    assert await api.call("GET", "/api/v1/users", token=out["token"])
    await api.call("GET", "/api/v1/users", token=None, headers=basic("root", PASSWORD))
    await api.call("GET", "/api/v1/users", token=None, headers=basic("root", "wrong"), status=401)
    await api.call("GET", "/api/v1/users", token=None, headers=basic("nobody", "x"), status=401)

    # an unknown name takes as long to refuse as a wrong password: timing tells no names
    async def refusal_time(name: str) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            await api.call(
                "GET", "/api/v1/users", token=None, headers=basic(name, "wrong"), status=401
            )
            times.append(time.perf_counter() - started)
        return sorted(times)[1]

    known, unknown = await refusal_time("root"), await refusal_time("nobody")
    assert unknown > known / 3, (known, unknown)
    body = await api.call(
        "POST", "/api/v1/tokens", token=None, headers=basic("alice", PASSWORD), status=403
    )
    assert set(body) == {"error"}
    await api.call(
        "GET", "/api/v1/users", token=None, headers={"Authorization": "Basic !!!"}, status=401
    )
    # the static token has no user to make a session for
    await api.call("POST", "/api/v1/tokens", status=403)
    # the new token is a client-protocol session token too
    client = await api.h.connect()
    await client.resume(out["token"])


async def test_health_and_readiness_need_no_credentials(api: Api) -> None:
    async with api.http.get("/healthz") as response:
        assert response.status == 200
        body = await response.json()
        assert body["alive"] is True and body["event_loop_lag_s"] < 1
    async with api.http.get("/readyz") as response:
        assert response.status == 200
        assert await response.json() == {"ready": True, "accepting": True, "store": "ok"}
    async with api.http.get("/openapi.json") as response:
        assert response.status == 401


@pytest.mark.postgres
async def test_readyz_fails_when_the_store_stops(tmp_path: Any) -> None:
    """A node on its own PostgreSQL cluster; the cluster stops: /readyz answers 503."""
    from chatserver.store.migrate import upgrade

    cluster = await asyncio.to_thread(PostgresCluster(fsync=False).start)
    stopped = False
    try:
        await asyncio.to_thread(upgrade, cluster.url())
        node = await start_node(node_config(cluster.url(), management={"token": STATIC}))
        h = Harness(node)
        try:
            await h.user("root", admin=True)
            room = await h.room()
            client = await h.login("root")
            await client.call("join", room=room)
            await post(client, room, "stored")
            host, port = node.management.address  # type: ignore[union-attr,misc]
            async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
                async with http.get("/readyz") as response:
                    assert response.status == 200
                await asyncio.to_thread(cluster.stop)
                stopped = True
                # answered from the background probe's last result: 503 within a few seconds
                async with asyncio.timeout(scaled(10)):
                    while True:
                        async with http.get("/readyz") as response:
                            body = await response.json()
                        if response.status != 200:
                            break
                        await asyncio.sleep(0.1)
                assert response.status == 503, body
                assert body["ready"] is False and body["store"].startswith("unreachable")
                async with http.get("/healthz") as response:
                    assert response.status == 200  # alive, just not ready
                # a post now fails in its group commit: a store error, a post rejected
                reply = await client.request("post", room=room, text="lost", cid="lost")
                assert reply["error"]["code"] == "unavailable", reply
                headers = {"Authorization": f"Bearer {STATIC}"}
                async with http.get("/metrics", headers=headers) as response:
                    text = await response.text()
                assert 'chatserver_store_errors_total{operation="group_commit"} 1.0' in text
                assert 'chatserver_posts_rejected_total{reason="unavailable"} 1.0' in text
        finally:
            await asyncio.wait_for(h.close(), scaled(30))
    finally:
        if not stopped:
            await asyncio.to_thread(cluster.stop)
