"""``join since`` after a room clear (or a removal): the hole history can never fill is
``cleared: true``, not ``gap: true`` — served from the node's cache and from the store."""

from __future__ import annotations

import pytest

from tests.admin.test_api import Api, api, post  # noqa: F401 (the api fixture)


@pytest.mark.parametrize("followed", [True, False])
async def test_join_since_after_a_clear_says_cleared(api: Api, followed: bool) -> None:  # noqa: F811
    await api.user("alice")
    rid = (await api.room("lobby", privacy="open"))["id"]
    alice = await api.login("alice")
    if followed:  # the room's cache stays loaded: the join is served from it
        await alice.call("join", room=rid)
    else:  # a small cache: a join since 3 must read the store
        await api.call("PATCH", "/api/v1/config", {"default_chat_history": 3})
    last = None
    for i in range(10):
        last = await post(alice, rid, f"old{i}")
    assert last is not None
    out = await api.call("POST", f"/api/v1/rooms/{rid}/clear", {"until": last["ts"]})
    assert out == {"removed": 10, "through_seq": 10}
    for i in range(6):
        await post(alice, rid, f"new{i}")
    reader = await api.login("alice")
    reply = await reader.call("join", room=rid, since=3)
    assert [m["seq"] for m in reply["messages"]] == list(range(11, 17))
    assert reply["gap"] is False and reply["cleared"] is True and reply["last_seq"] == 16
    # Nothing was removed after 12: neither.
    again = await reader.call("join", room=rid, since=12)
    assert [m["seq"] for m in again["messages"]] == [13, 14, 15, 16]
    assert again["gap"] is False and again["cleared"] is False
    # A single removed message is a hole history cannot fill either.
    await api.call("POST", "/api/v1/messages/remove", {"room": rid, "keywords": ["new3"]})
    hole = await reader.call("join", room=rid, since=12)
    assert [m["seq"] for m in hole["messages"]] == [13, 15, 16]
    assert hole["gap"] is False and hole["cleared"] is True
    # The whole tail removed: no messages, still cleared.
    await api.call(
        "POST",
        "/api/v1/messages/remove",
        {"room": rid, "keywords": ["new4", "new5"], "match": "any"},
    )
    tail = await reader.call("join", room=rid, since=13)
    assert tail["messages"] == [] and tail["cleared"] is True and tail["last_seq"] == 16
    assert (await reader.call("join", room=rid, since=16))["cleared"] is False
    assert (await reader.call("join", room=rid))["cleared"] is False
