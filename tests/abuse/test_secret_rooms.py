"""A secret room must be indistinguishable from a missing one (issue 14, item 6).

An outsider probed two ways: ``room.create`` with a secret room's name answered ``conflict``
(a missing name: the room is created), and ``not_found`` for a secret room's id came ten times
faster than for a missing id (the secret room was cached, the missing id read from the store
every time). Each case below failed on that code.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import msgpack
import pytest
from sqlalchemy import event

from chatserver.client import Client
from chatserver.store import rooms as room_store
from chatserver.store.principals import Principal
from tests.abuse.secret_probe import OPS, RawClient, logged_in, probe, request_fields, running_node
from tests.conftest import PASSWORD, Harness

EVERYONE = {"kind": "everyone", "id": 0}
MISSING = 10**9  # a room id that does not exist


async def make_user(h: Harness, name: str, *, admin: bool = False) -> int:
    return (await h.node.accounts.add_user(name, PASSWORD, is_admin=admin, by="test")).id


async def open_category(admin: Client, name: str) -> int:
    """A category everyone is in and may create rooms in."""
    cid: int = (await admin.call("category.create", name=name))["category"]["id"]
    lists = {"allowed": [EVERYONE], "creators": [EVERYONE]}
    await admin.call("category.update", category=cid, add=lists)
    return cid


class World:
    """root (administrator), rob and mallory in the category Research, where everyone may create
    rooms; rob made the secret room Project Falcon, which mallory may not find."""

    def __init__(self, h: Harness) -> None:
        self.h = h

    async def build(self) -> World:
        h = self.h
        await make_user(h, "root", admin=True)
        self.rob_id = await make_user(h, "rob")
        await make_user(h, "mallory")
        self.root = await h.login("root")
        self.rob = await h.login("rob")
        self.mallory = await h.login("mallory")
        self.research = await open_category(self.root, "Research")
        self.falcon = await self.create(self.rob, "Project Falcon", privacy="secret")
        return self

    async def create(self, client: Client, name: str, **fields: Any) -> int:
        reply = await client.call("room.create", category=self.research, name=name, **fields)
        room_id: int = reply["room"]["id"]
        return room_id


# -- by name -----------------------------------------------------------------------------------


async def test_a_secret_rooms_name_is_free_to_those_who_may_not_find_it(harness: Harness) -> None:
    w = await World(harness).build()
    assert (await w.mallory.request("room.get", room=w.falcon))["error"]["code"] == "not_found"

    # Taking the secret room's name answers exactly like taking a name nobody has.
    taken = await w.mallory.call("room.create", category=w.research, name="Project Falcon")
    fresh = await w.mallory.call("room.create", category=w.research, name="Project Hawk")
    twin = taken["room"]["id"]
    assert twin != w.falcon
    for reply in (taken, fresh):
        del reply["re"], reply["room"]["id"], reply["room"]["name"]
    assert taken == fresh

    # A name the caller can see still clashes: for mallory's closed room, anyone in Research.
    await w.create(w.mallory, "Lounge")
    for client in (w.rob, w.root):
        clash = await client.request("room.create", category=w.research, name="Lounge")
        assert clash["error"] == {"code": "conflict", "message": "a room named 'Lounge' exists"}
    # Administrators find every room, so for them every name clashes.
    clash = await w.root.request("room.create", category=w.research, name="Project Falcon")
    assert clash["error"]["code"] == "conflict"

    # rob may find both rooms named Project Falcon: they are told apart by id.
    found = await w.rob.call("rooms", query="Project Falcon")
    assert sorted(r["id"] for r in found["rooms"]) == sorted([w.falcon, twin])


async def test_renaming_passes_over_rooms_the_manager_may_not_find(harness: Harness) -> None:
    w = await World(harness).build()
    scratch = await w.create(w.mallory, "Scratch")
    lounge = await w.create(w.rob, "Lounge")
    assert lounge

    reply = await w.mallory.call("room.update", room=scratch, name="Project Falcon")
    assert reply["room"]["name"] == "Project Falcon"
    clash = await w.mallory.request("room.update", room=scratch, name="Lounge")
    assert clash["error"] == {"code": "conflict", "message": "a room named 'Lounge' exists"}
    # Its own name does not clash with itself.
    await w.mallory.call("room.update", room=scratch, name="Project Falcon", description="x")

    # rob can see both Lounge and mallory's Project Falcon.
    for name in ("Lounge", "Project Falcon"):
        clash = await w.rob.request("room.update", room=w.falcon, name=name)
        assert clash["error"]["code"] == "conflict", name


async def test_rooms_named_alike_at_one_moment_still_clash(harness: Harness) -> None:
    """The clash is checked inside the creating transaction, so a name still cannot be taken
    twice by a race between people who see each other's rooms."""
    await make_user(harness, "root", admin=True)
    clients = [await harness.login("root") for _ in range(6)]
    replies = await asyncio.gather(*(c.request("room.create", name="Race") for c in clients))
    assert sorted(bool(r["ok"]) for r in replies) == [False] * 5 + [True]
    assert {r["error"]["code"] for r in replies if not r["ok"]} == {"conflict"}

    # The same for renames racing a creation.
    rooms = [
        (await c.call("room.create", name=f"r{i}"))["room"]["id"] for i, c in enumerate(clients)
    ]
    replies = await asyncio.gather(
        *(
            c.request("room.update", room=r, name="Renamed")
            for c, r in zip(clients, rooms, strict=True)
        )
    )
    assert sorted(bool(r["ok"]) for r in replies) == [False] * 5 + [True]


async def test_the_directory_pages_through_rooms_that_share_a_name(harness: Harness) -> None:
    db = harness.node.db
    ids = set()
    for name in ("alpha", "dup", "dup", "dup", "dup", "dup", "omega"):
        ids.add((await room_store.create_room(db, name, clash=lambda _room: False)).id)
    await make_user(harness, "alice")
    alice = await harness.login("alice")
    seen: list[int] = []
    cursor = None
    while True:
        page = await alice.call("rooms", limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [r["id"] for r in page["rooms"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)  # every room once
    # A cursor of the old form (a name alone) continues after every room of that name.
    old = base64.urlsafe_b64encode(b"room:dup").decode()
    page = await alice.call("rooms", cursor=old)
    assert [r["name"] for r in page["rooms"]] == ["omega"]


# -- by the reply --------------------------------------------------------------------------------


def raw_login(h: Harness, name: str) -> AbstractAsyncContextManager[RawClient]:
    host, port = h.node.addresses["tcp"]
    return logged_in(host, port, name, PASSWORD)


async def test_not_found_is_byte_for_byte_the_same(harness: Harness) -> None:
    """The same request for a secret room, then for the same id once the room is gone, gets the
    same bytes back: whether the room was cached (rob uses it) or not."""
    w = await World(harness).build()
    unused = await w.create(w.rob, "Project Owl", privacy="secret")
    await w.rob.call("join", room=w.falcon)  # cached, and live
    request_id = 4242
    async with raw_login(harness, "mallory") as mallory:

        async def replies(room: int) -> dict[str, bytes]:
            return {
                op: await mallory.frame({"op": op, "id": request_id, **request_fields(op, room, 1)})
                for op in OPS
            }

        before = {room: await replies(room) for room in (w.falcon, unused)}
        for room in (w.falcon, unused):
            await w.root.call("room.delete", room=room)
        after = {room: await replies(room) for room in (w.falcon, unused)}
    assert before == after
    for room, by_op in after.items():
        error = {"code": "not_found", "message": f"no room {room}"}
        expected = {"re": request_id, "ok": False, "error": error}
        assert all(msgpack.unpackb(raw) == expected for raw in by_op.values())


# -- by the work done ----------------------------------------------------------------------------


@contextmanager
def statements(h: Harness) -> Iterator[list[str]]:
    """The SQL statements the node sends to its SQLite store meanwhile."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    engine = h.node.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_refusing_a_secret_room_reads_the_store_as_for_a_missing_one(
    harness: Harness,
) -> None:
    """The structural half of the timing test: a secret room, cached or not, is refused after
    the same statements as a missing room (SQLite: the statements are visible to SQLAlchemy)."""
    if harness.node.db.is_postgres:
        pytest.skip("the PostgreSQL room read goes through asyncpg; the timing test covers it")
    w = await World(harness).build()
    await w.rob.call("join", room=w.falcon)
    assert harness.node.facts.cached_room(w.falcon) is not None
    async with raw_login(harness, "mallory") as mallory:
        for n, op in enumerate(OPS):
            # made behind the node's back: not cached until someone asks for it
            made = await room_store.create_room(
                harness.node.db,
                f"Project Owl {op}",
                category_id=w.research,
                privacy="secret",
                managers=(Principal("user", w.rob_id),),
            )
            assert harness.node.facts.cached_room(made.id) is None
            cases = (("cached", w.falcon), ("uncached", made.id), ("missing", MISSING + n))
            seen = {}
            for kind, room in cases:
                with statements(harness) as seen[kind]:
                    reply = await mallory.request(op, **request_fields(op, room, n))
                assert reply["error"]["code"] == "not_found", (op, kind)
            assert seen["missing"], op  # the store was read
            assert seen["cached"] == seen["uncached"] == seen["missing"], op


# -- by timing, from the outside -----------------------------------------------------------------

PROBES = 1000
# Interleaved pairs on one connection: drift of the machine hits both kinds alike, so the medians
# agree to within a few percent on an idle machine and ~10% on this busy one. The fault was 2x
# (PostgreSQL) to 10x (SQLite).
TOLERANCE = 1.25


async def test_not_found_takes_as_long_for_a_secret_room_as_for_a_missing_one(db_url: str) -> None:
    """1,000 requests for a secret room that a member keeps cached, 1,000 for missing ids (each
    asked once, as a scan would), interleaved, against a node in its own process."""
    results = {}
    async with running_node(db_url) as node:
        address = node.host, node.port
        async with (
            logged_in(*address, "admin", node.admin_password) as member,
            logged_in(*address, "mallory", PASSWORD) as client,
        ):
            assert (await member.request("join", room=node.secret))["ok"]  # cached: the hot case
            missing = list(range(MISSING, MISSING + PROBES))
            for op in OPS:
                sample = results[op] = await probe(client, op, node.secret, missing, PROBES)
                kinds = dict(sample.replies)
                assert len(sample.replies) == 2 and kinds["secret"] == kinds["missing"], op
    lines = [sample.line(op) for op, sample in results.items()]
    for sample in results.values():
        ratio = statistics.median(sample.missing) / statistics.median(sample.secret)
        assert 1 / TOLERANCE <= ratio <= TOLERANCE, "\n".join(lines)
