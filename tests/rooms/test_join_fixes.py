"""Two join bugs of issue 17: an invitation is spent before the join reply (the user's other
connection no longer lists it), and after a room clear ``join since`` says ``cleared`` rather
than ``gap`` for the hole history can never fill."""

from __future__ import annotations

from chatserver.store import rooms as room_store
from tests.conftest import Harness
from tests.rooms.test_governance import admin_client, make_user, new_category, new_room, user


async def test_invitation_is_spent_before_the_join_reply(harness: Harness) -> None:
    admin = await admin_client(harness)
    bob_id = await make_user(harness, "bob")
    cat = await new_category(admin, "invite", invitations=True)
    rooms = [
        await new_room(admin, cat, f"party{i}", "closed", invitations="inherit") for i in range(8)
    ]
    for room in rooms:
        await admin.call("room.members", room=room, add={"members": [user(bob_id)]})
    phone = await harness.login("bob")
    laptop = await harness.login("bob")
    listed = await laptop.call("invitations")
    assert sorted(i["room"]["id"] for i in listed["invitations"]) == sorted(rooms)
    for n, room in enumerate(rooms):
        await phone.call("join", room=room)
        # Read at once in the node's own process, and from the other connection.
        pending = await room_store.pending_invitations(harness.node.db, bob_id)
        assert room not in [p[0] for p in pending]
        left = (await laptop.call("invitations"))["invitations"]
        assert sorted(i["room"]["id"] for i in left) == sorted(rooms[n + 1 :])


async def test_a_refused_join_keeps_the_invitation(harness: Harness) -> None:
    admin = await admin_client(harness)
    bob_id = await make_user(harness, "bob")
    cat = await new_category(admin, "invite", invitations=True)
    room = await new_room(admin, cat, "party", "closed", invitations="inherit")
    await admin.call("room.members", room=room, add={"members": [user(bob_id)]})
    bob = await harness.login("bob")
    await admin.call("room.disable", room=room)
    refused = await bob.request("join", room=room)
    assert refused["ok"] is False
    await admin.call("room.enable", room=room)
    assert [i["room"]["id"] for i in (await bob.call("invitations"))["invitations"]] == [room]
