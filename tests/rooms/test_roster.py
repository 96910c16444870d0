"""The participant roster on one node, over TCP and WebSocket: ``room.participants``, ``joined`` /
``left`` events, several connections of one user, the limit, and who may read it."""

from __future__ import annotations

import pytest

from chatserver.client import Client
from chatserver.store.rooms import create_room
from tests.conftest import Harness, node_config, scaled, start_node

TRANSPORTS = ["tcp", "websocket", "websocket-json"]


def names(listing: dict) -> list[str]:  # type: ignore[type-arg]
    return [p["name"] for p in listing["participants"]]


async def no_event(client: Client, ev: str, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await client.next_event(ev, timeout=scaled(wait))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_roster_and_events(harness: Harness, transport: str) -> None:
    room = await harness.room()
    for name in ("alice", "bob"):
        await harness.user(name)
    alice = await harness.login("alice", transport)
    bob = await harness.login("bob", transport)
    await alice.call("join", room=room)
    listing = await alice.call("room.participants", room=room)
    assert names(listing) == ["alice"] and listing["count"] == 1
    assert listing["updates"] is True and listing["limit"] == 75

    await bob.call("join", room=room)
    joined = await alice.next_event("joined", timeout=scaled(5))
    assert joined["room"] == room and joined["user"]["name"] == "bob"
    await no_event(bob, "joined")  # not told about oneself
    assert names(await bob.call("room.participants", room=room)) == ["alice", "bob"]

    # A second connection of bob's: bob counts once, and nobody is told.
    bob2 = await harness.login("bob", transport)
    await bob2.call("join", room=room)
    await no_event(alice, "joined")
    assert (await alice.call("room.participants", room=room))["count"] == 2
    await bob.call("leave", room=room)
    await no_event(alice, "left")  # bob is still in through bob2
    await bob2.close()
    left = await alice.next_event("left", timeout=scaled(5))
    assert left["user"]["name"] == "bob"
    assert names(await alice.call("room.participants", room=room)) == ["alice"]


async def test_roster_needs_the_right_to_read(harness: Harness) -> None:
    open_room = await harness.room()
    for name in ("alice", "mallory"):
        await harness.user(name)
    alice = await harness.login("alice")
    mallory = await harness.login("mallory")
    await alice.call("join", room=open_room)
    # A closed room mallory is not a member of: readable by nobody but its managers/members.
    closed = (await create_room(harness.node.db, "closed", privacy="closed")).id
    missing = await mallory.request("room.participants", room=closed)
    nothing = await mallory.request("room.participants", room=999_999)
    assert missing["ok"] is False and nothing["ok"] is False
    assert missing["error"]["code"] in ("forbidden", "not_found")
    assert "participants" not in missing
    secret = (await create_room(harness.node.db, "secret", privacy="secret")).id
    answer = await mallory.request("room.participants", room=secret)
    assert answer["error"] == {"code": "not_found", "message": f"no room {secret}"}
    assert nothing["error"]["code"] == "not_found"


async def test_above_the_limit_no_events(db_url: str) -> None:
    node = await start_node(node_config(db_url, chat={"participant_update_limit": 2}))
    h = Harness(node)
    try:
        room = await h.room()
        for name in ("alice", "bob", "carol", "dave"):
            await h.user(name)
        alice, bob, carol, dave = [await h.login(n) for n in ("alice", "bob", "carol", "dave")]
        await alice.call("join", room=room)
        await bob.call("join", room=room)
        assert (await alice.next_event("joined", timeout=scaled(5)))["user"]["name"] == "bob"
        await carol.call("join", room=room)  # 3 > 2: told once that updates stop
        paused = await alice.next_event(timeout=scaled(5))
        assert paused == {"ev": "participants.updates", "room": room, "updates": False, "count": 3}
        await dave.call("join", room=room)
        await no_event(alice, "joined")
        listing = await dave.call("room.participants", room=room)
        assert listing["updates"] is False and listing["count"] == 4 and listing["limit"] == 2
        await dave.close()
        await no_event(alice, "left")
        await carol.call("leave", room=room)  # back at the limit: updates resume
        resumed = await alice.next_event("participants.updates", timeout=scaled(5))
        assert resumed["updates"] is True and resumed["count"] == 2
        await bob.call("leave", room=room)
        assert (await alice.next_event("left", timeout=scaled(5)))["user"]["name"] == "bob"
    finally:
        await h.close()
