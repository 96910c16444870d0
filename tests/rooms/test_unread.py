"""Read markers, unread and mention counts, ``@name`` mentions (issue 17), on both dialects.

A mention in a room the user may not read (secret, closed and not a member, a member removed
since, denied by the category) gives no ``mention`` event, no count and no page entry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from chatserver.client import Client
from chatserver.metrics import UnreadCollector
from chatserver.rooms.mentions import MAX_MENTIONS, mentioned_names
from chatserver.store import marks
from chatserver.store.db import Database
from tests.conftest import Harness, scaled
from tests.rooms.test_governance import (
    EVERYONE,
    admin_client,
    make_user,
    new_category,
    new_room,
    user,
)


def test_mention_syntax() -> None:
    text = "hi @Bob. and @j.doe-x, mail@example.org @ @- @BOB (@carol_1)"
    assert mentioned_names(text) == ("bob", "j.doe-x", "carol_1")
    assert mentioned_names("no mention here") == ()
    many = " ".join(f"@u{i}" for i in range(3 * MAX_MENTIONS))
    assert mentioned_names(many) == tuple(f"u{i}" for i in range(MAX_MENTIONS))


async def rooms_by_id(client: Client) -> dict[int, dict[str, Any]]:
    reply = await client.call("rooms", limit=100)
    return {r["id"]: r for r in reply["rooms"]}


async def no_event(client: Client, ev: str, wait: float = 0.3) -> None:
    await asyncio.sleep(wait)
    while not client.events.empty():
        event = client.events.get_nowait()
        assert event["ev"] != ev, event


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
async def test_mentions_and_unread_counts(harness: Harness, transport: str) -> None:
    await make_user(harness, "alice")
    await make_user(harness, "Bob")
    room = await harness.room("lobby")
    alice = await harness.login("alice")
    bob = await harness.login("Bob", transport)
    await alice.call("post", room=room, text="hello all", cid="1")
    await alice.call("post", room=room, text="hey @bob, look", cid="2")
    # Not joined to the room, bob hears of it.
    event = await bob.next_event("mention", timeout=scaled(5))
    assert (event["room"], event["seq"], event["sender"]["name"]) == (room, 2, "alice")
    assert event["text"] == "hey @bob, look"
    await alice.call("post", room=room, text="@BOB again, and @nobody at all", cid="3")
    assert (await bob.next_event("mention", timeout=scaled(5)))["seq"] == 3
    # A self-mention is no mention.
    await bob.call("post", room=room, text="I am @bob", cid="4")
    listed = (await rooms_by_id(bob))[room]
    assert (listed["unread"], listed["mentions"]) == (4, 2)
    # The mentions op pages them back, newest first.
    page = await bob.call("mentions")
    assert [(m["room"], m["seq"]) for m in page["mentions"]] == [(room, 3), (room, 2)]
    assert page["mentions"][0]["text"].startswith("@BOB again")
    first = await bob.call("mentions", limit=1)
    rest = await bob.call("mentions", limit=1, cursor=first["cursor"])
    assert [m["seq"] for m in first["mentions"] + rest["mentions"]] == [3, 2]
    # Reading through seq 2 leaves two unread, one mention; the join reply says so too.
    assert (await bob.call("read", room=room, seq=2))["seq"] == 2
    listed = (await rooms_by_id(bob))[room]
    assert (listed["unread"], listed["mentions"]) == (2, 1)
    joined = await bob.call("join", room=room)
    assert (joined["unread"], joined["mentions"]) == (2, 1)
    # alice was never mentioned: no counts beyond the unread ones.
    listed = (await rooms_by_id(alice))[room]
    assert (listed["unread"], listed["mentions"]) == (4, 0)


async def test_read_markers_are_shared_and_only_move_forward(harness: Harness) -> None:
    await make_user(harness, "alice")
    room = await harness.room("lobby")
    one = await harness.login("alice")
    two = await harness.login("alice", "websocket")
    for i in range(5):
        await one.call("post", room=room, text=f"m{i}", cid=str(i))
    assert (await one.call("read", room=room, seq=3))["seq"] == 3
    event = await two.next_event("read", timeout=scaled(5))
    assert (event["room"], event["seq"]) == (room, 3)
    # Backwards: the marker stays, nobody is told.
    assert (await two.call("read", room=room, seq=1))["seq"] == 3
    await no_event(one, "read")
    # Beyond the room's last seq; a room that does not exist.
    beyond = await one.request("read", room=room, seq=6)
    assert beyond["error"]["code"] == "bad_request"
    missing = await one.request("read", room=2**31 - 1, seq=1)
    assert missing["error"]["code"] == "not_found"
    assert (await rooms_by_id(two))[room]["unread"] == 2


async def test_a_storm_of_markers_is_written_coalesced_and_flushed_on_stop(
    harness: Harness, db_url: str
) -> None:
    node = harness.node
    await make_user(harness, "alice")
    room = await harness.room("lobby")
    other = await harness.room("other")
    alice = await harness.login("alice")
    total = 300
    for i in range(total):
        await alice.call("post", room=room, text=f"m{i}", cid=str(i))
    await alice.call("post", room=other, text="x", cid="x")
    await node.unread.flush()
    written_before = node.unread.markers_written
    started = time.monotonic()
    for seq in range(1, total + 1):  # one marker per message read, as fast as the client goes
        await alice.call("read", room=room, seq=seq)
    await alice.call("read", room=other, seq=1)
    elapsed = time.monotonic() - started
    interval = node.config.chat.read_marker_flush_s
    written = node.unread.markers_written - written_before
    # At most one write per (user, room) per interval, plus the one still pending.
    assert written <= 2 * (elapsed / interval + 2), (written, elapsed)
    assert written < total / 4
    # The node's metrics say the same.
    families = {f.name: f.samples[0].value for f in UnreadCollector(node.unread).collect()}
    assert families["chatserver_read_markers_written"] == node.unread.markers_written
    assert families["chatserver_read_markers_pending"] == node.unread.pending
    # A clean stop writes what is pending: nothing is lost.
    await node.stop()
    db = Database(db_url)
    try:
        stored = await marks.markers(db, alice_id(alice), [room, other])
    finally:
        await db.close()
    assert stored == {room: total, other: 1}


def alice_id(client: Client) -> int:
    assert client.user is not None
    return int(client.user["id"])


async def test_mentions_in_rooms_the_user_may_not_read_give_nothing(harness: Harness) -> None:
    admin = await admin_client(harness)
    bob_id = await make_user(harness, "bob")
    bob = await harness.login("bob")
    open_cat = await new_category(admin, "open")
    banned_cat = await new_category(admin, "banned", allowed=(EVERYONE,), denied=(user(bob_id),))
    secret = await new_room(admin, open_cat, "secret", "secret")
    closed = await new_room(admin, open_cat, "closed", "closed")
    left = await new_room(admin, open_cat, "left", "closed", members=[user(bob_id)])
    denied = await new_room(admin, banned_cat, "denied", "open")
    visible = await new_room(admin, open_cat, "visible", "open")
    # bob was a member when this one came: a mention he may no longer see once removed.
    await admin.call("post", room=left, text="@bob while a member", cid="l1")
    assert (await bob.next_event("mention", timeout=scaled(5)))["room"] == left
    await admin.call("room.members", room=left, remove={"members": [user(bob_id)]})
    for rid in (secret, closed, left, denied):
        await admin.call("post", room=rid, text=f"psst @bob in {rid}", cid=f"m{rid}")
    await admin.call("post", room=visible, text="@bob here", cid="v")
    # The first mention event after the hidden ones is the visible room's.
    event = await bob.next_event("mention", timeout=scaled(5))
    assert event["room"] == visible, event
    page = await bob.call("mentions")
    assert [m["room"] for m in page["mentions"]] == [visible]
    for rid in (secret, closed, left, denied):
        reply = await bob.request("mentions", room=rid)
        assert reply["error"]["code"] in ("not_found", "forbidden")
        reply = await bob.request("read", room=rid, seq=1)
        assert reply["error"]["code"] in ("not_found", "forbidden")
    listed = await rooms_by_id(bob)
    assert secret not in listed and denied not in listed
    for rid in (closed, left):  # findable, not readable: no counts
        assert (listed[rid]["unread"], listed[rid]["mentions"]) == (0, 0)
    assert (listed[visible]["unread"], listed[visible]["mentions"]) == (1, 1)
    # The store holds the mentions (they count again if bob may read the room again).
    await admin.call("room.members", room=left, add={"members": [user(bob_id)]})
    listed = await rooms_by_id(bob)
    assert listed[left]["mentions"] == 2


async def test_one_message_mentions_at_most_twenty_users(harness: Harness) -> None:
    await make_user(harness, "alice")
    for i in range(MAX_MENTIONS + 5):
        await make_user(harness, f"u{i}")
    room = await harness.room("lobby")
    alice = await harness.login("alice")
    text = " ".join(f"@u{i}" for i in range(MAX_MENTIONS + 5))
    reply = await alice.call("post", room=room, text=text, cid="all")
    counts = []
    for i in range(MAX_MENTIONS + 5):
        u = await harness.login(f"u{i}")
        counts.append((await rooms_by_id(u))[room]["mentions"])
        await u.close()
    assert counts == [1] * MAX_MENTIONS + [0] * 5, counts
    assert reply["seq"] == 1


async def test_a_peers_mention_the_store_does_not_hold_is_not_sent(harness: Harness) -> None:
    """What a peer says is checked against the store (``remote_mention`` is the handler of the
    ``mentioned`` peer event)."""
    from chatserver.rooms.changes import UsersMentioned

    await make_user(harness, "alice")
    bob_id = await make_user(harness, "bob")
    room = await harness.room("lobby")
    alice = await harness.login("alice")
    bob = await harness.login("bob")
    await alice.call("post", room=room, text="no mention", cid="1")
    alice_user = alice.user
    assert alice_user is not None
    forged = UsersMentioned(room, 1, 0, alice_user["id"], "alice", "forged", (bob_id,))
    await harness.node.unread.remote_mention(forged)
    await no_event(bob, "mention", wait=0.5)
    await alice.call("post", room=room, text="real @bob", cid="2")
    real = UsersMentioned(room, 2, 0, alice_user["id"], "alice", "real @bob", (bob_id,))
    await harness.node.unread.remote_mention(real)
    assert (await bob.next_event("mention", timeout=scaled(5)))["seq"] == 2  # the local one
    assert (await bob.next_event("mention", timeout=scaled(5)))["text"] == "real @bob"
