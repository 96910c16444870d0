"""Raising ``default_chat_history`` at run time: the management API answers once joins serve the
new length (the caches of followed rooms are refilled first)."""

from __future__ import annotations

from tests.admin.test_api import Api, api, backchat, post  # noqa: F401 (the api fixture)


async def test_raised_history_size_is_served_at_once(api: Api) -> None:  # noqa: F811
    await api.user("alice")
    rid = (await api.room("lobby", privacy="open"))["id"]
    alice = await api.login("alice")
    await alice.call("join", room=rid)  # followed: the room's cache stays loaded
    for i in range(45):
        await post(alice, rid, f"m{i}")
    assert len(await backchat(api, "alice", rid)) == 30
    await api.call("PATCH", "/api/v1/config", {"default_chat_history": 40})
    got = [m["text"] for m in await backchat(api, "alice", rid)]
    assert got == [f"m{i}" for i in range(5, 45)]
    await api.call("PATCH", "/api/v1/config", {"default_chat_history": 10})
    assert len(await backchat(api, "alice", rid)) == 10


async def test_reload_returns_after_the_caches_are_refilled(api: Api) -> None:  # noqa: F811
    """The same, without an HTTP round trip to hide the race: once ``reload`` returns, the
    cache of a followed room holds the new number of messages."""
    from chatserver.store import admin as admin_store

    node = api.h.node
    await api.user("alice")
    rid = (await api.room("lobby", privacy="open"))["id"]
    alice = await api.login("alice")
    await alice.call("join", room=rid)
    for i in range(45):
        await post(alice, rid, f"m{i}")
    await admin_store.store_settings(node.db, "", {"default_chat_history": 40})
    await node.settings.reload()
    state = await node.hub.room(rid)
    assert len(state.recent) == 40
