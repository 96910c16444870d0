"""Search for users (issue 17): the op over TCP and WebSocket on both dialects, what it finds,
and above all what it never finds — rooms the caller may not read right now."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from chatserver.client import Client
from chatserver.store import admin as admin_store
from chatserver.store.admin import MessageFilter
from tests.admin import test_api
from tests.admin.test_api import Api
from tests.conftest import Harness, node_config, start_node
from tests.rooms.test_governance import (
    EVERYONE,
    admin_client,
    make_user,
    new_category,
    new_room,
    user,
)

api = test_api.api  # the management port fixture


@pytest.fixture
async def harness(db_url: str) -> AsyncIterator[Harness]:
    """A node whose search rate limit does not get in the tests' way (one test puts it back)."""
    node = await start_node(node_config(db_url, search={"per_user_per_s": 1000}))
    h = Harness(node)
    try:
        yield h
    finally:
        await h.close()


async def hits(client: Client, query: str, **fields: Any) -> list[dict[str, Any]]:
    reply = await client.call("search", query=query, **fields)
    found: list[dict[str, Any]] = reply["hits"]
    return found


async def error_of(client: Client, op: str, **fields: Any) -> str:
    reply = await client.request(op, **fields)
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


async def world(h: Harness) -> dict[str, Any]:
    """Rooms carol may and may not read, each with a "zebra" message posted by the admin."""
    admin = await admin_client(h)
    bob = await make_user(h, "bob")
    carol = await make_user(h, "carol")
    pub = await new_category(admin, "pub", allowed=(EVERYONE,))
    blocked = await new_category(admin, "blocked", allowed=(EVERYONE,), denied=(user(carol),))
    rooms = {
        "lobby": await new_room(admin, pub, "lobby", "open"),
        "club": await new_room(admin, pub, "club", "closed", members=[user(bob)]),
        "vault": await new_room(admin, pub, "vault", "secret", members=[user(bob)]),
        "dark": await new_room(admin, blocked, "dark", "open"),
        "was": await new_room(admin, pub, "was", "closed", members=[user(carol)]),
    }
    for name, rid in rooms.items():
        await admin.call("post", room=rid, text=f"zebra crossing in {name}", cid=f"z-{name}")
    # carol was a member of "was", and is not any more: she left.
    await admin.call("room.members", room=rooms["was"], remove={"members": [user(carol)]})
    return {"admin": admin, "rooms": rooms, "carol": carol, "bob": bob, "blocked": blocked}


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
async def test_search_finds_only_rooms_the_caller_may_read(
    harness: Harness, transport: str
) -> None:
    w = await world(harness)
    rooms = w["rooms"]
    carol = await harness.login("carol", transport)
    found = await hits(carol, "zebra")
    assert [f["room"] for f in found] == [rooms["lobby"]]
    # The same for every form of the query: a prefix, a phrase, relevance order, a room filter.
    assert [f["room"] for f in await hits(carol, "zeb*")] == [rooms["lobby"]]
    assert [f["room"] for f in await hits(carol, '"zebra crossing"')] == [rooms["lobby"]]
    assert [f["room"] for f in await hits(carol, "zebra", order="relevance")] == [rooms["lobby"]]
    for name in ("club", "vault", "dark", "was"):
        assert await hits(carol, f"zebra in:{name}") == []
        assert await hits(carol, f"zebra in:{rooms[name]}") == []
        assert await hits(carol, name) == []  # the room's name in its message text
    # One room: answered exactly like history would (secret and denied: not_found).
    assert await error_of(carol, "search", query="zebra", room=rooms["vault"]) == "not_found"
    assert await error_of(carol, "search", query="zebra", room=rooms["dark"]) == "not_found"
    assert await error_of(carol, "search", query="zebra", room=10**9) == "not_found"
    assert await error_of(carol, "search", query="zebra", room=rooms["club"]) == "forbidden"
    assert await error_of(carol, "search", query="zebra", room=rooms["was"]) == "forbidden"
    # The member and the administrator find theirs.
    bob = await harness.login("bob", transport)
    assert {f["room"] for f in await hits(bob, "zebra")} == {
        rooms["lobby"],
        rooms["club"],
        rooms["vault"],
        rooms["dark"],
    }
    assert {f["room"] for f in await hits(w["admin"], "zebra")} == set(rooms.values())


async def test_rights_taken_away_take_search_with_them(harness: Harness) -> None:
    w = await world(harness)
    rooms, admin = w["rooms"], w["admin"]
    bob = await harness.login("bob")
    assert rooms["club"] in {f["room"] for f in await hits(bob, "zebra")}
    await admin.call("room.members", room=rooms["club"], remove={"members": [user(w["bob"])]})
    assert rooms["club"] not in {f["room"] for f in await hits(bob, "zebra")}
    # Denied by category after the fact.
    await admin.call("category.update", category=w["blocked"], add={"denied": [user(w["bob"])]})
    assert rooms["dark"] not in {f["room"] for f in await hits(bob, "zebra")}


async def test_hits_snippets_cursor_and_jump(harness: Harness) -> None:
    admin = await admin_client(harness)
    await make_user(harness, "dave")
    room = await harness.room("plaza")
    dave = await harness.login("dave")
    for i in range(7):
        await dave.call("post", room=room, text=f"note {i}: the Quick brown fox", cid=f"n{i}")
    await admin.call("post", room=room, text="unrelated fox", cid="u")
    long = "x " * 150 + "fox at the end " + "y " * 150
    await dave.call("post", room=room, text=long, cid="long")
    first = await dave.call("search", query="quick fox", limit=3)
    assert len(first["hits"]) == 3 and first["cursor"]
    top = first["hits"][0]
    assert top["seq"] == 7 and top["sender"]["name"] == "dave" and top["room"] == room
    text = top["snippet"]
    assert [text[a:b] for a, b in top["highlights"]] == ["Quick", "fox"]
    seen = [h["seq"] for h in first["hits"]]
    cursor = first["cursor"]
    while cursor:
        page = await dave.call("search", query="quick fox", limit=3, cursor=cursor)
        seen += [h["seq"] for h in page["hits"]]
        cursor = page["cursor"]
    assert seen == [7, 6, 5, 4, 3, 2, 1]  # "unrelated fox" (seq 8) is not quick
    # A long message: a snippet around the hit, its range still on the word.
    (hit,) = (await dave.call("search", query="fox from:dave end"))["hits"]
    assert len(hit["snippet"]) <= 202 and hit["snippet"].startswith("…")
    assert [hit["snippet"][a:b] for a, b in hit["highlights"]] == ["fox", "end"]
    assert [h["sender"]["name"] for h in await hits(dave, "from:root unrelated")] == ["root"]
    assert [h["seq"] for h in await hits(dave, "from:nobody fox")] == []
    # Jump to a hit: a history page around its seq.
    page = await dave.call("history", room=room, around=4, limit=4)
    assert [m["seq"] for m in page["messages"]] == [2, 3, 4, 5] and page["more"] is True
    # Dates (UTC days).
    assert len(await hits(dave, "fox after:2000-01-01")) == 9
    assert await hits(dave, "fox before:2000-01-01") == []
    assert await hits(dave, "fox on:2000-01-01") == []


async def test_removed_replaced_and_cleared_messages_are_not_found(harness: Harness) -> None:
    await admin_client(harness)
    await make_user(harness, "erin")
    room = await harness.room("quarry")
    other = await harness.room("garden")
    erin = await harness.login("erin")
    await erin.call("post", room=room, text="granite block one", cid="a")
    await erin.call("post", room=room, text="granite block two", cid="b")
    await erin.call("post", room=other, text="granite in the garden", cid="c")
    db = harness.node.db
    await admin_store.change_messages(
        db,
        MessageFilter(room_id=room, keywords=("one",)),
        state="removed",
        text="",
        limit=10,
        compliance_node=None,
        actor="test",
    )
    await admin_store.change_messages(
        db,
        MessageFilter(room_id=room, keywords=("two",)),
        state="replaced",
        text="marble slab",
        limit=10,
        compliance_node=None,
        actor="test",
    )
    assert await hits(erin, "one") == []
    assert [h["seq"] for h in await hits(erin, "marble")] == [2]
    assert [h["room"] for h in await hits(erin, "granite")] == [other]
    await admin_store.clear_room(db, other, 2**62, compliance_node=None, actor="test")
    assert await hits(erin, "granite") == []
    assert await hits(erin, "garden") == []


async def test_bad_queries_and_limits(harness: Harness) -> None:
    await make_user(harness, "finn")
    finn = await harness.login("finn")
    assert await error_of(finn, "search", query="x" * 300) == "too_large"
    assert await error_of(finn, "search", query=" ".join(f"w{i}" for i in range(9))) == "too_large"
    assert await error_of(finn, "search", query="a*") == "bad_request"
    assert await error_of(finn, "search", query="before:yesterday") == "bad_request"
    assert await error_of(finn, "search", query="fox in:") == "bad_request"
    assert await error_of(finn, "search", query="has:link") == "bad_request"
    assert await hits(finn, "size:big") == []  # not a filter: two words
    assert await error_of(finn, "search", query="!!!") == "bad_request"
    assert await error_of(finn, "search", query="fox", limit=51) == "bad_request"
    assert await error_of(finn, "search", query="fox", cursor="bm90IGEgY3Vyc29y") == "bad_request"
    assert await error_of(finn, "search", query="fox", order="oldest") == "bad_request"
    # Words the index's query languages would read as operators are only words here.
    for query in ("fox & | ! <-> :*", 'NEAR("a" "b")', "fox OR NOT", "'); drop table x; --"):
        assert await hits(finn, query) == []


async def test_search_rate_limit(db_url: str) -> None:
    harness = Harness(await start_node(node_config(db_url)))
    try:
        await _rate_limited(harness)
    finally:
        await harness.close()


async def _rate_limited(harness: Harness) -> None:
    await make_user(harness, "gus")
    gus = await harness.login("gus")
    codes = [
        (await gus.request("search", query="fox")).get("error", {}).get("code") for _ in range(12)
    ]
    assert "rate_limited" in codes and codes[0] is None


async def http_search(h: Harness, bearer: str | None, **params: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(h.http + "/api/v1/search", params=params, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_http_search_is_the_same_search(harness: Harness) -> None:
    w = await world(harness)
    rooms = w["rooms"]
    carol = await harness.login("carol")
    assert carol.token is not None
    status, body = await http_search(harness, carol.token, q="zebra")
    assert status == 200 and [h["room"] for h in body["hits"]] == [rooms["lobby"]]
    assert body == {"hits": await hits(carol, "zebra"), "cursor": None}
    status, body = await http_search(harness, carol.token, q="zebra", room=str(rooms["vault"]))
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await http_search(harness, carol.token, q="zebra", room=str(rooms["club"]))
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await http_search(harness, carol.token, q="zebra", room="-1")
    assert (status, body["error"]["code"]) == (400, "bad_request")
    status, body = await http_search(harness, carol.token, q="z" * 501)
    assert status == 413
    status, body = await http_search(harness, None, q="zebra")
    assert status == 401
    status, body = await http_search(harness, "not-a-token", q="zebra")
    assert status == 401
    status, body = await http_search(harness, None, q="zebra", token=carol.token)
    assert (status, body["error"]["code"]) == (400, "bad_request")  # no credentials in URLs


async def test_administrators_search_uses_the_index_over_every_room(api: Api) -> None:
    """The management port's search takes ``query`` (the same syntax and index), and finds
    secret rooms too, as it always did."""
    await api.user("alice")
    secret = await api.room("hidden", privacy="secret")
    lobby = await api.room("lobby", privacy="open")
    root = await api.login("root")
    await root.call("post", room=secret["id"], text="budget figures for 2027", cid="s1")
    await root.call("post", room=lobby["id"], text="budgetary lunch", cid="l1")
    await root.call("post", room=lobby["id"], text="nothing", cid="l2")

    async def found(**body: Any) -> list[tuple[int, int]]:
        out = await api.call("POST", "/api/v1/messages/search", body)
        return [(m["room"], m["seq"]) for m in out["messages"]]

    assert await found(query="budget") == [(secret["id"], 1)]
    assert sorted(await found(query="budget*")) == [(secret["id"], 1), (lobby["id"], 1)]
    assert await found(query="budget*", room=lobby["id"]) == [(lobby["id"], 1)]
    assert await found(query=f"budget* in:{secret['id']}") == [(secret["id"], 1)]
    assert await found(query="budget* from:alice") == []
    assert await found(query='"figures for"') == [(secret["id"], 1)]
    await api.call("POST", "/api/v1/messages/search", {"query": "on:someday"}, status=400)
    # A user finds only the open room's message.
    alice = await api.login("alice")
    assert [h["room"] for h in await hits(alice, "budget*")] == [lobby["id"]]


async def test_files_and_room_names_in_queries(harness: Harness) -> None:
    await make_user(harness, "hana")
    ops = await harness.room("ops team")
    other = await harness.room("other")
    hana = await harness.login("hana")
    await hana.call("post", room=ops, text="the report, without a file", cid="a")
    up = await hana.upload(harness.http, other, b"pdf bytes", name="r.pdf", text="the report")
    found = await hits(hana, "report has:file")
    assert [(h["room"], h["seq"]) for h in found] == [(other, up["message"]["seq"])]
    assert found[0]["file"]["id"] == up["file"]["id"]
    assert [h["room"] for h in await hits(hana, 'report in:"ops team"')] == [ops]
    assert [h["room"] for h in await hits(hana, 'report in:"OPS TEAM"')] == [ops]
    assert [h["room"] for h in await hits(hana, f"report in:{other}")] == [other]
    assert await hits(hana, "report in:nowhere") == []


async def test_the_gin_plan_after_the_walk_gives_the_same_pages(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's newest-first search falls back to the GIN plan when the walk down the ts
    index runs out of its budget: the pages must be the same either way."""
    from chatserver.store import search as search_store

    await make_user(harness, "ivan")
    room = await harness.room("mill")
    ivan = await harness.login("ivan")
    for i in range(30):
        await ivan.call("post", room=room, text=f"grain {i} flour" + " sack" * (i % 3), cid=f"g{i}")

    async def pages(query: str) -> list[int]:
        out, cursor = [], None
        while True:
            page = await ivan.call("search", query=query, limit=7, cursor=cursor)
            out += [h["seq"] for h in page["hits"]]
            cursor = page["cursor"]
            if cursor is None:
                return out

    queries = ["grain", '"flour sack"', "fl* sack", "grain from:ivan"]
    walked = [await pages(q) for q in queries]
    monkeypatch.setattr(search_store, "WALK_BUDGET_MS", 0)  # the GIN plan only
    assert [await pages(q) for q in queries] == walked
    assert walked[0] == list(range(30, 0, -1))
