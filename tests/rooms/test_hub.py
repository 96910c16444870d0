"""The hub's ordering rules with an in-memory store: duplicates dropped, gaps filled, snapshots."""

from __future__ import annotations

import asyncio
from typing import Any

from chatserver.protocol.events import Outgoing
from chatserver.rooms.hub import Hub
from chatserver.store.messages import Message


def msg(seq: int, room: int = 1) -> Message:
    return Message(room, seq, 1000 + seq, 7, "u", f"text {seq}", f"c{seq}")


class Store:
    """Stands in for the message table: the hub reads history through two functions."""

    def __init__(self) -> None:
        self.messages: dict[int, list[Message]] = {}
        self.reads = 0

    def add(self, *seqs: int, room: int = 1) -> list[Message]:
        new = [msg(s, room) for s in seqs]
        self.messages.setdefault(room, []).extend(new)
        return new

    async def recent(self, room: int, limit: int) -> tuple[int, list[Message]]:
        self.reads += 1
        stored = self.messages.get(room, [])
        return (stored[-1].seq if stored else 0), stored[-limit:]

    async def after(self, room: int, seq: int, limit: int) -> list[Message]:
        self.reads += 1
        await asyncio.sleep(0)
        return [m for m in self.messages.get(room, []) if m.seq > seq][:limit]


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.resyncs: list[tuple[int, str]] = []

    def send(self, item: Outgoing) -> None:
        self.seqs.append(item.obj["seq"])

    def resync(self, room: int, reason: str) -> None:
        self.resyncs.append((room, reason))


def make_hub(store: Store, cache: int = 3) -> Hub:
    return Hub(cache_size=cache, load_recent=store.recent, load_after=store.after)


async def test_duplicates_are_dropped_and_cache_keeps_the_newest() -> None:
    store = Store()
    store.add(1, 2)
    hub = make_hub(store)
    state = await hub.room(1)
    sub = Recorder()
    hub.subscribe(state, sub)
    hub.deliver(store.add(3, 4))
    hub.deliver([msg(2), msg(3), msg(4)])  # already delivered: dropped
    assert sub.seqs == [3, 4]
    assert [m["seq"] for m in state.recent] == [2, 3, 4]


async def test_a_gap_is_filled_from_the_store_before_anything_after_it() -> None:
    store = Store()
    store.add(1)
    hub = make_hub(store)
    state = await hub.room(1)
    sub = Recorder()
    hub.subscribe(state, sub)
    store.add(2, 3)  # stored, but their announcement was lost
    hub.deliver(store.add(4))
    hub.deliver(store.add(5))  # arrives while the gap is being repaired
    for _ in range(10):
        await asyncio.sleep(0)
    assert sub.seqs == [2, 3, 4, 5]
    assert state.ready and state.last_seq == 5


async def test_buffered_subscription_releases_only_after_the_snapshot() -> None:
    store = Store()
    store.add(1, 2, 3)
    hub = make_hub(store)
    state = await hub.room(1)
    sub = Recorder()
    held = hub.subscribe_buffered(state, sub)
    hub.deliver(store.add(4, 5))
    assert sub.seqs == []  # held until the reply is out
    hub.release(held, snapshot_seq=4)  # the reply already had 1..4
    assert sub.seqs == [5]
    hub.deliver([msg(4)])  # a late duplicate of something in the snapshot
    hub.deliver(store.add(6))
    assert sub.seqs == [5, 6]


async def test_overflowing_buffer_resyncs_after_the_reply() -> None:
    from chatserver.rooms import hub as hub_module

    store = Store()
    hub = make_hub(store)
    state = await hub.room(1)
    sub = Recorder()
    held = hub.subscribe_buffered(state, sub)
    limit = hub_module.MAX_BUFFERED_EVENTS
    hub.deliver(store.add(*range(1, limit + 3)))
    assert sub.resyncs == []  # not before the join reply
    hub.release(held, snapshot_seq=0)
    assert sub.resyncs == [(1, "too_slow")] and sub.seqs == []


async def test_concurrent_first_use_loads_once() -> None:
    store = Store()
    store.add(1)
    hub = make_hub(store)
    states = await asyncio.gather(*(hub.room(1) for _ in range(5)))
    assert all(s is states[0] for s in states) and store.reads == 1


async def test_idle_rooms_are_evicted_beyond_the_bound() -> None:
    store = Store()
    hub = Hub(cache_size=3, load_recent=store.recent, load_after=store.after, max_idle_rooms=2)
    keep = await hub.room(1)
    hub.subscribe(keep, Recorder())
    for room in range(2, 6):
        await hub.room(room)
    rooms: Any = hub._rooms
    assert 1 in rooms and len(rooms) <= 3


async def test_eviction_steps_over_rooms_in_use_without_scanning_them_all() -> None:
    """Many followed rooms and many idle ones: followed rooms are never dropped, and idle ones
    are, the oldest first, while a load looks at a bounded number of rooms."""
    store = Store()
    hub = Hub(cache_size=3, load_recent=store.recent, load_after=store.after, max_idle_rooms=10)
    followed = list(range(1, 101))
    for room in followed:
        hub.subscribe(await hub.room(room), Recorder())
    for room in range(1000, 1200):
        await hub.room(room)
    rooms: Any = hub._rooms
    assert all(room in rooms for room in followed)
    # Each load steps over at most 16 followed rooms, so a few of the newest idle rooms wait
    # for the next loads to reach them: about one per 16 followed rooms, never more.
    idle = [room for room in rooms if room >= 1000]
    assert len(idle) <= len(followed) // 16 + 1
    assert idle == list(range(1200 - len(idle), 1200))


async def test_the_backchat_is_encoded_once_until_the_cache_changes() -> None:
    from chatserver.rooms.hub import MessageChange

    store = Store()
    store.add(1, 2, 3, 4)
    hub = make_hub(store)
    state = await hub.room(1)
    first = hub.backchat(state, 3)
    assert [m["seq"] for m in first.items] == [2, 3, 4]
    assert hub.backchat(state, 3) is first  # shared by every join until the cache changes
    assert [m["seq"] for m in hub.backchat(state, 2).items] == [3, 4]  # shorter: not shared
    hub.deliver(store.add(5))  # a full cache: same length, new last message
    after_post = hub.backchat(state, 3)
    assert after_post is not first and [m["seq"] for m in after_post.items] == [3, 4, 5]
    hub.change_messages(1, [MessageChange(4, "replaced", "[redacted]")])
    edited = hub.backchat(state, 3)
    assert edited is not after_post
    assert [m["text"] for m in edited.items] == ["text 3", "[redacted]", "text 5"]


# -- a peer's word against the store (issue 15) -----------------------------------------------


class Watcher(Recorder):
    """Keeps every event (messages and corrections)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def send(self, item: Outgoing) -> None:
        self.events.append(item.obj)
        if item.obj.get("ev") == "message":
            self.seqs.append(item.obj["seq"])


def forged(seq: int, room: int = 1) -> Message:
    return Message(room, seq, 1, 1, "admin", "forged", "x")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_seq_far_ahead_the_store_does_not_have_is_dropped_without_resync() -> None:
    store = Store()
    store.add(1, 2)
    hub = make_hub(store)
    state = await hub.room(1)
    sub = Watcher()
    hub.subscribe(state, sub)
    store.add(3)  # a real message whose event has not arrived yet
    hub.deliver([forged(1_000_000)], remote=True)
    await settle()
    assert sub.resyncs == [] and sub.seqs == [3]  # repaired from the store, forgery dropped
    assert state.ready and state.last_seq == 3 and hub.contradicted == 1
    hub.deliver(store.add(4), remote=True)  # live delivery goes on
    assert sub.seqs == [3, 4]
    assert all(e.get("text") != "forged" for e in sub.events)


async def test_a_forgery_inside_a_gap_loses_to_the_store() -> None:
    store = Store()
    store.add(1)
    hub = make_hub(store)
    state = await hub.room(1)
    sub = Watcher()
    hub.subscribe(state, sub)
    store.add(2, 3)
    hub.deliver([forged(3)], remote=True)  # seq 3 exists: the store's version is delivered
    await settle()
    assert sub.seqs == [2, 3]
    assert [e["text"] for e in sub.events] == ["text 2", "text 3"]
    assert state.recent[-1]["text"] == "text 3"


async def test_a_duplicate_that_differs_is_re_read_and_subscribers_corrected() -> None:
    store = Store()
    store.add(1)
    hub = make_hub(store)
    state = await hub.room(1)
    sub = Watcher()
    hub.subscribe(state, sub)
    hub.deliver([forged(2)], remote=True)  # an impostor's next seq, delivered (trusted link)
    store.add(2)  # the real message 2 is committed and announced
    hub.deliver([msg(2)], remote=True)
    await settle()
    assert sub.events[-1] == {
        "ev": "message.changed",
        "room": 1,
        "seq": 2,
        "state": "replaced",
        "text": "text 2",
    }
    assert state.recent[-1] == msg(2).wire()  # later joiners' backchat has the stored one
    # A duplicate that matches, and a false duplicate of a correct delivery, change nothing.
    before = list(sub.events)
    hub.deliver([msg(2)], remote=True)
    hub.deliver([forged(2)], remote=True)
    await settle()
    assert sub.events == before and state.recent[-1] == msg(2).wire()


async def test_deliver_from_store_delivers_only_what_the_store_confirms() -> None:
    store = Store()
    store.add(1)
    hub = make_hub(store)
    state = await hub.room(1)
    sub = Watcher()
    hub.subscribe(state, sub)
    store.add(2)
    dropped = await hub.deliver_from_store([forged(2), forged(3), forged(7, room=99)])
    assert dropped == 2 and sub.seqs == [2]
    assert sub.events[0]["text"] == "text 2"
    dropped = await hub.deliver_from_store([msg(2)])  # a true claim: delivered once
    assert dropped == 0 and sub.seqs == [2]


async def test_edits_from_a_peer_are_taken_from_the_store() -> None:
    from chatserver.rooms.changes import MessageChange, MessagesChanged

    store = Store()
    store.add(1, 2, 3)
    hub = make_hub(store)
    await hub.room(1)
    store.messages[1][1] = Message(1, 2, 1002, 7, "u", "[redacted]", "c2", state="replaced")
    claim = MessagesChanged(
        1,
        (MessageChange(2, "replaced", "what the peer says"), MessageChange(3, "removed", "")),
        cleared_through=3,
    )
    confirmed = await hub.verify_changes(claim)
    assert confirmed == MessagesChanged(1, (MessageChange(2, "replaced", "[redacted]"),), None)
    assert await hub.verify_changes(MessagesChanged(1, (MessageChange(1, "removed", ""),))) is None
