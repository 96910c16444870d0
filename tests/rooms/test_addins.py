"""Room add-ins as clients see them: name and URL in the room object for those who may read the
room (rooms list, join reply, room.get), never for others; ``room.update`` takes only an add-in
that exists; an add-in in use cannot be deleted."""

from __future__ import annotations

import pytest

from chatserver.store import admin as admin_store
from chatserver.store.rooms import create_room
from tests.conftest import Harness


@pytest.mark.parametrize("transport", ["tcp", "websocket-json"])
async def test_readers_see_the_addin(harness: Harness, transport: str) -> None:
    db = harness.node.db
    board = await admin_store.create_addin(db, "board", "https://example.com/board")
    await harness.user("boss", admin=True)
    await harness.user("mallory")
    boss = await harness.login("boss", transport)
    mallory = await harness.login("mallory", transport)
    lobby = await harness.room()
    closed = (await create_room(db, "closed", privacy="closed")).id
    info = {"id": board["id"], "name": "board", "url": "https://example.com/board"}
    for room in (lobby, closed):
        await boss.call("room.update", room=room, addin=board["id"])

    joined = await boss.call("join", room=lobby)
    assert joined["addin_info"] == info
    assert (await boss.call("room.get", room=closed))["room"]["addin_info"] == info
    listed = {r["id"]: r for r in (await boss.call("rooms"))["rooms"]}
    assert listed[lobby]["addin_info"] == listed[closed]["addin_info"] == info

    # Mallory may read the open lobby, not the closed room (she may find it).
    assert (await mallory.call("join", room=lobby))["addin_info"] == info
    seen = (await mallory.call("room.get", room=closed))["room"]
    assert seen["addin_info"] is None
    listed = {r["id"]: r for r in (await mallory.call("rooms"))["rooms"]}
    assert listed[closed]["addin_info"] is None and listed[lobby]["addin_info"] == info
    refused = await mallory.request("join", room=closed)
    assert refused["ok"] is False and "addin_info" not in refused

    # A room without an add-in: no addin_info in the join reply, null in the room object.
    plain = await harness.room("plain")
    assert "addin_info" not in await boss.call("join", room=plain)
    assert (await boss.call("room.get", room=plain))["room"]["addin_info"] is None


async def test_room_update_takes_only_an_existing_addin(harness: Harness) -> None:
    db = harness.node.db
    board = await admin_store.create_addin(db, "board", "https://example.com/board")
    await harness.user("boss", admin=True)
    boss = await harness.login("boss")
    lobby = await harness.room()
    refused = await boss.request("room.update", room=lobby, addin=board["id"] + 1000)
    assert refused["error"] == {"code": "bad_request", "message": f"no add-in {board['id'] + 1000}"}
    assert (await boss.call("room.get", room=lobby))["room"]["addin"] is None
    await boss.call("room.update", room=lobby, addin=board["id"])
    with pytest.raises(admin_store.AddinInUse):  # in use: deleting it stays refused
        await admin_store.delete_addin(db, board["id"])
    await boss.call("room.update", room=lobby, addin=0)  # 0 detaches it
    assert (await boss.call("room.get", room=lobby))["room"]["addin"] is None
    assert await admin_store.delete_addin(db, board["id"]) is True
    gone = await boss.request("room.update", room=lobby, addin=board["id"])
    assert gone["error"]["code"] == "bad_request"
