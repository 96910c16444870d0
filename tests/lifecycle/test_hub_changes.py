"""The hub's order for changes: a change never overtakes the message it changes, and a peer's
change is what the store holds (with an in-memory store, as tests/rooms/test_hub.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from chatserver.protocol.events import Outgoing
from chatserver.rooms.changes import MessageChange, MessagesChanged
from chatserver.rooms.hub import Hub
from tests.rooms.test_hub import Store, msg


class Events:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def send(self, item: Outgoing) -> None:
        self.items.append(item.obj)

    def resync(self, room: int, reason: str) -> None:
        raise AssertionError(reason)


def seen(events: Events) -> list[tuple[str, int]]:
    return [(e.get("ev", "?"), e["seq"]) for e in events.items]


async def test_a_change_waits_for_its_message() -> None:
    """The message (from a peer) is late; the change (made on this node) is not: the reader
    gets the message, then the change, and the cache holds the changed text."""
    store = Store()
    store.add(1)
    hub = Hub(cache_size=5, load_recent=store.recent, load_after=store.after)
    state = await hub.room(1)
    reader = Events()
    hub.subscribe(state, reader)
    late = store.add(2)[0]
    edited = dataclasses.replace(late, text="fixed", state="edited", edited_ts=5)
    hub.change_messages(1, [MessageChange.of(edited, 1)])
    assert reader.items == []  # seq 2 not delivered yet: the change waits
    hub.deliver([late], remote=True)
    assert seen(reader) == [("message", 2), ("message.changed", 2)]
    assert reader.items[0]["text"] == "text 2" and reader.items[1]["text"] == "fixed"
    assert [m["text"] for m in state.recent] == ["text 1", "fixed"]
    assert state.recent[-1]["edited_ts"] == 5 and state.recent[-1]["state"] == "edited"


async def test_a_change_while_a_join_waits_for_its_snapshot_follows_it() -> None:
    store = Store()
    store.add(1, 2)
    hub = Hub(cache_size=5, load_recent=store.recent, load_after=store.after)
    state = await hub.room(1)
    joiner = Events()
    sub = hub.subscribe_buffered(state, joiner)
    deleted = dataclasses.replace(msg(2), text="", state="deleted")
    hub.change_messages(1, [MessageChange.of(deleted, 3)])
    hub.release(sub, 2)  # the snapshot (read before or after the change: either way) ends at 2
    assert joiner.items == [
        {
            "ev": "message.changed",
            "room": 1,
            "seq": 2,
            "state": "deleted",
            "change": 3,
            "reactions": {},
        }
    ]


async def test_a_peers_reaction_is_the_stores_count() -> None:
    store = Store()
    store.add(1)
    stored = store.messages[1][0]
    store.messages[1][0] = dataclasses.replace(stored, reactions={"👍": 2})
    hub = Hub(cache_size=5, load_recent=store.recent, load_after=store.after)
    claim = MessagesChanged(
        1, (MessageChange(1, "", "text 1", 4, None, (("👍", 9),), (3, "👍", True)),)
    )
    confirmed = await hub.verify_changes(claim)
    assert confirmed is not None
    assert confirmed.changes[0].reactions == (("👍", 2),)  # the store's, not the peer's 9
    # An edit the store does not show is dropped.
    forged = MessagesChanged(1, (MessageChange(1, "edited", "forged", 5),))
    assert await hub.verify_changes(forged) is None
    assert hub.contradicted == 1
    await asyncio.sleep(0)


async def test_a_peers_purge_removal_is_confirmed_only_below_what_was_delivered() -> None:
    store = Store()
    store.add(1, 2, 3)
    hub = Hub(cache_size=5, load_recent=store.recent, load_after=store.after)
    state = await hub.room(1)
    del store.messages[1][0]  # seq 1 purged from the store
    claim = MessagesChanged(1, (MessageChange(1, "removed"), MessageChange(9, "removed")))
    confirmed = await hub.verify_changes(claim)
    assert confirmed == MessagesChanged(1, (MessageChange(1, "removed"),), None)
    assert hub.contradicted == 1  # seq 9 has not come: a forged removal of a future message
    hub.change_messages(1, confirmed.changes)
    assert [m["seq"] for m in state.recent] == [2, 3]
