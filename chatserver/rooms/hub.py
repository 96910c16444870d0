"""Live delivery: per-room subscriber sets, the recent-message cache, in-order fan-out.

Every stored message reaches :meth:`Hub.deliver` (from this node's writer, and later from peers).
For each room the hub keeps ``last_seq``, the highest sequence number it has delivered, and keeps
these rules (ARCHITECTURE invariant 4):

- a message at or below ``last_seq`` is a duplicate and is dropped;
- a message at ``last_seq + 1`` is appended to the cache and fanned out;
- a message beyond ``last_seq + 1`` reveals a gap: the room stops delivering, reads the missing
  messages from the store, then delivers everything in order.

Messages from peers (``remote``) are a peer's word, checked against the store whenever
something about them is unexpected, never on the fast path:

- a gap is repaired from the store, and message events beyond what the store holds (a forged seq
  far ahead) are dropped and logged; the room's subscribers are not told to resync;
- a duplicate whose sender, text or client id differs from what was delivered for that seq is a
  conflict: the seq is re-read from the store, and the cache and the subscribers corrected;
- :meth:`deliver_from_store` delivers the store's version of what a peer claims (for links the
  pool does not trust yet), and :meth:`verify_changes` keeps only the edits the store confirms.

Fan-out wraps each message in one :class:`Outgoing`, encoded once per wire format and shared by
all subscribers.

A subscriber that joins with a snapshot (the join reply) is added in the same event-loop step
that takes the snapshot, so its live events start exactly after the reply's ``last_seq``. When the
snapshot needs the store, the subscription buffers live events until the reply is queued and then
releases those above the snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ..latency import LatencyHistogram
from ..protocol.codec import Packed
from ..protocol.events import MessagePosted, Outgoing, RoomCleared
from ..store.messages import Message
from .changes import MessageChange, MessagesChanged
from .verify import verify_changes

log = logging.getLogger(__name__)

# A subscription that waits for its snapshot buffers at most this many events, then resyncs.
MAX_BUFFERED_EVENTS = 10_000
# Re-reads of a seq whose events differ, in flight at once (more differing events are dropped).
MAX_CORRECTIONS = 16


class Subscriber(Protocol):
    def send(self, item: Outgoing) -> None: ...

    def resync(self, room: int, reason: str) -> None: ...


class Subscription:
    """One subscriber's interest in one room.

    ``floor`` is the highest ``seq`` the subscriber already has (from its join reply); only
    messages above it are sent. While ``buffer`` is a list, live events wait there until the
    snapshot is known (:meth:`Hub.release`).
    """

    __slots__ = ("buffer", "floor", "overflowed", "room", "subscriber")

    def __init__(self, room: int, subscriber: Subscriber, floor: int, *, buffering: bool) -> None:
        self.room = room
        self.subscriber = subscriber
        self.floor = floor
        self.buffer: list[tuple[int, Outgoing]] | None = [] if buffering else None
        self.overflowed = False


LoadRecent = Callable[[int, int], Awaitable[tuple[int, list[Message]]]]
LoadAfter = Callable[[int, int, int], Awaitable[list[Message]]]


class RoomState:
    __slots__ = (
        "ahead",
        "changes",
        "id",
        "last_seq",
        "packed",
        "pending",
        "ready",
        "recent",
        "subscriptions",
        "task",
    )

    def __init__(self, room_id: int, cache_size: int) -> None:
        self.id = room_id
        self.subscriptions: dict[Subscriber, Subscription] = {}
        self.last_seq = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=cache_size)
        # ``recent`` as a Packed list, and what it was made from (the deque, its length, its
        # last item): valid while those are unchanged.
        self.packed: tuple[Any, int, Any, Packed] | None = None
        # Not ready while loading or repairing a gap; deliveries wait in ``pending`` meanwhile.
        self.ready = False
        self.pending: list[Message] = []
        # Administrators' changes that arrived while the cache was loading, applied after it.
        self.changes: list[MessageChange] = []
        # Changes to messages not delivered here yet (their event still on its way from a
        # peer): sent right after the message they change, so a reader sees them in order.
        self.ahead: list[MessageChange] = []
        self.task: asyncio.Task[None] | None = None


class Hub:
    def __init__(
        self,
        *,
        cache_size: int,
        load_recent: LoadRecent,
        load_after: LoadAfter,
        max_idle_rooms: int = 10_000,
        on_deliver: Callable[[list[Message]], None] | None = None,
    ) -> None:
        self.cache_size = cache_size
        self._load_recent = load_recent
        self._load_after = load_after
        self._rooms: OrderedDict[int, RoomState] = OrderedDict()
        self._max_idle_rooms = max_idle_rooms
        self.delivered = 0
        # From a message's commit (its ts) to its delivery here, once per delivered message.
        self.delivery_latency = LatencyHistogram()
        # Peers' message events the store contradicted (dropped or corrected).
        self.contradicted = 0
        self._correcting = 0  # re-reads of a seq in flight (at most MAX_CORRECTIONS)
        # Sees every message this node accepts (stored here, or from a peer): topic feeds.
        self.on_deliver = on_deliver

    # -- room state -------------------------------------------------------------------------

    async def room(self, room_id: int) -> RoomState:
        """The room's state, loaded from the store (cache and ``last_seq``) if needed."""
        state = self._rooms.get(room_id)
        if state is None:
            state = RoomState(room_id, self.cache_size)
            self._rooms[room_id] = state
            state.task = asyncio.get_running_loop().create_task(self._load(state))
            self._evict_idle()
        else:
            self._rooms.move_to_end(room_id)
        while not state.ready:
            assert state.task is not None
            await asyncio.shield(state.task)
            if self._rooms.get(room_id) is not state:  # evicted or failed; start again
                return await self.room(room_id)
        return state

    async def _load(self, state: RoomState) -> None:
        try:
            last_seq, recent = await self._load_recent(state.id, self.cache_size)
        except Exception:
            if self._rooms.get(state.id) is state:
                del self._rooms[state.id]
            raise
        state.last_seq = last_seq
        state.recent.extend(m.wire() for m in recent)
        self._finish(state)

    def _finish(self, state: RoomState) -> None:
        state.ready = True
        state.task = None
        if state.changes:
            changes, state.changes = state.changes, []
            self._edit_cache(state, changes, None)
        pending, state.pending = state.pending, []
        self._deliver_room(state, pending)

    def _evict_idle(self) -> None:
        """Drop the least recently used idle rooms while more than ``max_idle_rooms`` are loaded.

        A room in use met at the front moves to the back, so a call looks at a few rooms, not
        at every loaded one: a node whose users follow 20,000 rooms loads another in O(1).
        """
        budget = 16
        while len(self._rooms) > self._max_idle_rooms and budget:
            room_id, state = next(iter(self._rooms.items()))
            if not state.subscriptions and state.ready:
                del self._rooms[room_id]
            else:
                self._rooms.move_to_end(room_id)
                budget -= 1

    def forget(self, room_id: int) -> None:
        """Drop a room's cache and subscribers (the room is gone)."""
        state = self._rooms.pop(room_id, None)
        if state is not None:
            for sub in list(state.subscriptions.values()):
                sub.subscriber.resync(room_id, "room_removed")

    # -- subscribing ------------------------------------------------------------------------

    def subscribe(self, state: RoomState, subscriber: Subscriber) -> None:
        """Deliver every message after ``state.last_seq`` (as of now) to ``subscriber``."""
        assert state.ready
        state.subscriptions[subscriber] = Subscription(
            state.id, subscriber, state.last_seq, buffering=False
        )

    def subscribe_buffered(self, state: RoomState, subscriber: Subscriber) -> Subscription:
        """Subscribe now, holding live events until :meth:`release` says where the snapshot ends."""
        sub = Subscription(state.id, subscriber, 0, buffering=True)
        state.subscriptions[subscriber] = sub
        return sub

    def release(self, sub: Subscription, snapshot_seq: int) -> None:
        """Send the held events above ``snapshot_seq`` and go live after it.

        Call it after the join reply is queued: a subscription that overflowed its buffer
        meanwhile gets its ``resync`` now, after the reply, not before it.
        """
        buffered, sub.buffer = sub.buffer or [], None
        sub.floor = snapshot_seq
        if sub.overflowed:
            sub.subscriber.resync(sub.room, "too_slow")
            return
        for seq, item in buffered:
            if seq < 0:  # a change: it says the state now, so it is never wrong to send it
                sub.subscriber.send(item)
            elif seq > snapshot_seq:
                sub.subscriber.send(item)
                sub.floor = seq

    def unsubscribe(self, room_id: int, subscriber: Subscriber) -> bool:
        state = self._rooms.get(room_id)
        if state is None:
            return False
        return state.subscriptions.pop(subscriber, None) is not None

    def is_subscribed(self, room_id: int, subscriber: Subscriber) -> bool:
        state = self._rooms.get(room_id)
        return state is not None and subscriber in state.subscriptions

    def known_last_seq(self, room_id: int) -> int | None:
        """The last seq delivered here, if this node follows the room (else ``None``)."""
        state = self._rooms.get(room_id)
        return state.last_seq if state is not None and state.ready else None

    def subscribers(self, room_id: int) -> list[Any]:
        state = self._rooms.get(room_id)
        return [] if state is None else list(state.subscriptions)

    def backchat(self, state: RoomState, count: int) -> Packed:
        """The newest ``count`` cached messages, encoded once and shared until the cache
        changes (every join of a busy room would otherwise encode the same 30 messages)."""
        recent = state.recent
        if count < len(recent):
            return Packed(list(recent)[-count:])
        last = recent[-1] if recent else None
        packed = state.packed
        if packed is not None and packed[0] is recent and packed[1] == len(recent):
            if packed[2] is last:
                return packed[3]
        value = Packed(list(recent))
        state.packed = (recent, len(recent), last, value)
        return value

    def subscription_count(self) -> int:
        return sum(len(state.subscriptions) for state in self._rooms.values())

    def subscribed_rooms(self) -> list[int]:
        return [room_id for room_id, state in self._rooms.items() if state.subscriptions]

    def loaded_rooms(self) -> list[int]:
        """Every room whose cache is loaded (the pool's catch-up keeps them current)."""
        return [room_id for room_id, state in self._rooms.items() if state.ready]

    def drop_idle(self) -> None:
        """Forget the caches of rooms nobody here follows; they reload from the store on use
        (the pool calls this when a peer link comes back: edits may have been missed)."""
        for room_id, state in list(self._rooms.items()):
            if state.ready and not state.subscriptions:
                del self._rooms[room_id]

    def set_cache_size(self, size: int) -> list[asyncio.Task[None]]:
        """Keep ``size`` recent messages per room from now on (the join backchat's length).

        Rooms without subscribers (idle or still loading with the old size) are dropped and
        reload on next use; rooms with subscribers keep their cache, refilled from the store when
        it grows: the refills are returned, and the caller awaits them before it says the change
        is made (a join right after it gets the new length).
        """
        if size == self.cache_size:
            return []
        growing = size > self.cache_size
        self.cache_size = size
        refills = []
        for room_id, state in list(self._rooms.items()):
            if not state.subscriptions:
                del self._rooms[room_id]  # a load in flight is retried by its waiters
                continue
            state.recent = deque(state.recent, maxlen=size)
            if growing:
                refills.append(asyncio.get_running_loop().create_task(self._refill(state)))
        return refills

    async def _refill(self, state: RoomState) -> None:
        try:
            _last, older = await self._load_recent(state.id, self.cache_size)
        except Exception:
            log.exception("room %d: refilling the recent-message cache failed", state.id)
            return
        # What was delivered meanwhile is already in ``recent``: merge by seq.
        merged = {m.seq: m.wire() for m in older if m.seq <= state.last_seq}
        merged.update((wire["seq"], wire) for wire in state.recent)
        state.recent = deque((merged[seq] for seq in sorted(merged)), maxlen=self.cache_size)

    # -- administrators' changes ------------------------------------------------------------

    def change_messages(
        self, room_id: int, changes: Sequence[MessageChange], cleared_through: int | None = None
    ) -> None:
        """Apply replaced / removed messages (and a room clear up to ``cleared_through``) to the
        cache, and tell the room's live subscribers (``message.changed``, ``room.cleared``).

        A change to a message not yet delivered here waits for it (:attr:`RoomState.ahead`).
        A subscriber still waiting for its join snapshot gets the change after it (the snapshot
        may have been read before the change committed).
        """
        state = self._rooms.get(room_id)
        if state is None:
            return
        if not state.ready:
            if cleared_through is not None:  # the load may have read the old rows: reload
                self._rooms.pop(room_id, None)
                for sub in list(state.subscriptions.values()):
                    sub.subscriber.resync(room_id, "cleared")
                return
            state.changes.extend(changes)
            return
        if any(c.seq > state.last_seq for c in changes):
            state.ahead.extend(c for c in changes if c.seq > state.last_seq)
            changes = [c for c in changes if c.seq <= state.last_seq]
            if len(state.ahead) > MAX_BUFFERED_EVENTS:  # their messages never came: start over
                self.forget(room_id)
                return
        self._edit_cache(state, changes, cleared_through)
        events = [Outgoing.event(c.event(room_id)) for c in changes]
        if cleared_through is not None:
            events.append(Outgoing.event(RoomCleared(room_id, cleared_through)))
        for sub in list(state.subscriptions.values()):
            for item in events:
                if sub.buffer is None:
                    sub.subscriber.send(item)
                elif not sub.overflowed and len(sub.buffer) < MAX_BUFFERED_EVENTS:
                    sub.buffer.append((-1, item))
        if len(state.recent) < self.cache_size and any(c.state == "removed" for c in changes):
            # Removed messages left the cache short: reload it, so the backchat of a join here
            # is as long as one served from the store (joins wait for it, deliveries queue).
            state.ready = False
            state.task = asyncio.get_running_loop().create_task(self._reload_recent(state))

    async def _reload_recent(self, state: RoomState) -> None:
        try:
            _last, recent = await self._load_recent(state.id, self.cache_size)
        except Exception:
            log.exception("room %d: reloading the recent-message cache failed", state.id)
        else:
            # What was delivered meanwhile waits in ``pending`` and is appended by _finish.
            state.recent = deque(
                (m.wire() for m in recent if m.seq <= state.last_seq), maxlen=self.cache_size
            )
        self._finish(state)

    def _edit_cache(
        self, state: RoomState, changes: Sequence[MessageChange], cleared_through: int | None
    ) -> None:
        by_seq = {change.seq: change for change in changes}
        kept: deque[dict[str, Any]] = deque(maxlen=state.recent.maxlen)
        for wire in state.recent:
            seq = wire["seq"]
            change = by_seq.get(seq)
            if cleared_through is not None and seq <= cleared_through:
                continue
            if change is None:
                kept.append(wire)
            else:
                after = change.apply(wire)
                if after is not None:
                    kept.append(after)
        state.recent = kept

    # -- delivery ---------------------------------------------------------------------------

    def deliver(self, stored: list[Message], *, remote: bool = False) -> None:
        """Fan out committed messages; ``stored`` is in ``seq`` order within each room.

        ``remote``: they come from a peer, so a duplicate is compared with what was delivered.
        A room this node does not follow (or that does not exist) is skipped.
        """
        if self.on_deliver is not None:
            self.on_deliver(stored)
        by_room: dict[int, list[Message]] = {}
        for message in stored:
            by_room.setdefault(message.room, []).append(message)
        for room_id, batch in by_room.items():
            state = self._rooms.get(room_id)
            if state is not None:
                if state.ready:
                    self._deliver_room(state, batch, remote)
                else:
                    state.pending.extend(batch)

    async def deliver_from_store(self, claimed: list[Message]) -> int:
        """Deliver the store's version of the messages a peer claims were stored: for each
        claimed seq the store holds, its stored message. Returns how many claims the store
        contradicted (no such seq, or another message there)."""
        by_room: dict[int, list[Message]] = {}
        for message in claimed:
            by_room.setdefault(message.room, []).append(message)
        dropped = 0
        for room_id, batch in by_room.items():
            if room_id not in self._rooms and self.on_deliver is None:
                continue  # not followed here (and no feeds to match): nothing to deliver
            low = min(m.seq for m in batch)
            span = min(max(m.seq for m in batch) - low + 1, 1000)
            found = {m.seq: m for m in await self._load_after(room_id, low - 1, span)}
            good: list[Message] = []
            for message in batch:
                stored = found.get(message.seq)
                if stored is None or not _same(stored.wire(), message):
                    dropped += 1
                if stored is not None and (not good or good[-1].seq < stored.seq):
                    good.append(stored)  # the seq is taken: what the store holds there
            self.deliver(good)
        self.contradicted += dropped
        return dropped

    def _deliver_room(self, state: RoomState, batch: list[Message], remote: bool = False) -> None:
        for index, message in enumerate(batch):
            if message.seq <= state.last_seq:
                if remote:
                    self._compare(state, message)
                continue
            if message.seq > state.last_seq + 1:
                # A gap: fetch what is missing before delivering anything after it.
                state.ready = False
                state.pending = batch[index:]
                state.task = asyncio.get_running_loop().create_task(self._repair(state))
                return
            state.last_seq = message.seq
            if message.removed:  # a tombstone from gap repair: the seq is taken, nothing to send
                continue
            wire = message.wire()
            if message.kept:  # a category without chat history keeps nothing for later readers
                state.recent.append(wire)
            if state.subscriptions:
                item = Outgoing.event(MessagePosted(wire))
                seq = message.seq
                self.delivery_latency.observe(max(0.0, time.time() - message.ts / 1000))
                for sub in list(state.subscriptions.values()):
                    if sub.buffer is None:
                        if seq > sub.floor:
                            sub.floor = seq
                            sub.subscriber.send(item)
                            self.delivered += 1
                    elif sub.overflowed:
                        continue
                    elif len(sub.buffer) < MAX_BUFFERED_EVENTS:
                        sub.buffer.append((seq, item))
                    else:
                        sub.overflowed = True
                        sub.buffer.clear()
        if state.ahead:
            due = [c for c in state.ahead if c.seq <= state.last_seq]
            if due:
                state.ahead = [c for c in state.ahead if c.seq > state.last_seq]
                self.change_messages(state.id, due)

    async def _repair(self, state: RoomState) -> None:
        target = max(m.seq for m in state.pending)
        try:
            while state.last_seq < target:
                missing = await self._load_after(state.id, state.last_seq, 1000)
                if not missing:
                    # The store holds nothing after last_seq: the events beyond it were never
                    # stored (a peer's forgery or bug). Drop them; the subscribers lose nothing.
                    beyond = [m for m in state.pending if m.seq > state.last_seq]
                    state.pending = [m for m in state.pending if m.seq <= state.last_seq]
                    self.contradicted += len(beyond)
                    log.warning(
                        "room %d: dropped %d message events (seq %d to %d) the store does not"
                        " have (it ends at %d)",
                        state.id,
                        len(beyond),
                        min(m.seq for m in beyond),
                        max(m.seq for m in beyond),
                        state.last_seq,
                    )
                    break
                if missing[0].seq != state.last_seq + 1:
                    raise RuntimeError(f"store has no message {state.last_seq + 1}")
                self._deliver_ready(state, missing)
        except Exception:
            log.exception("room %d: gap repair failed; subscribers resync", state.id)
            self._rooms.pop(state.id, None)
            for sub in state.subscriptions.values():
                sub.subscriber.resync(state.id, "gap")
            return
        self._finish(state)

    def _deliver_ready(self, state: RoomState, batch: list[Message]) -> None:
        state.ready = True
        try:
            self._deliver_room(state, batch)
        finally:
            state.ready = False

    # -- peers' word against the store -------------------------------------------------------

    def _compare(self, state: RoomState, message: Message) -> None:
        """A peer's event for a seq already delivered: if it differs from what the cache holds
        for that seq, one of the two was not the stored message: re-read it."""
        for wire in reversed(state.recent):
            seq = wire["seq"]
            if seq < message.seq:
                return  # not in the cache (never kept, or older): nothing to compare with
            if seq == message.seq:
                if not _same(wire, message):
                    if self._correcting >= MAX_CORRECTIONS:
                        return  # a flood of them: the cache is checked by those in flight
                    log.warning(
                        "room %d: a peer's event for seq %d differs from the one delivered;"
                        " reading it from the store",
                        state.id,
                        message.seq,
                    )
                    self._correcting += 1
                    asyncio.get_running_loop().create_task(self._correct(state, message.seq))
                return

    async def _correct(self, state: RoomState, seq: int) -> None:
        try:
            found = await self._load_after(state.id, seq - 1, 1)
        except Exception as exc:
            log.warning("room %d: cannot re-read seq %d: %s", state.id, seq, exc)
            return
        finally:
            self._correcting -= 1
        stored = found[0] if found and found[0].seq == seq else None
        for index, wire in enumerate(state.recent):
            if wire["seq"] != seq:
                continue
            if stored is not None and _same(wire, stored):
                self.contradicted += 1  # the later event was the false one; nothing delivered
                return
            self.contradicted += 1
            if stored is None or stored.removed:
                del state.recent[index]
                change = MessageChange(seq, "removed", "")
            else:
                state.recent[index] = stored.wire()
                change = MessageChange(seq, "replaced", stored.text)
            log.warning(
                "room %d: seq %d delivered here was not the stored message; corrected",
                state.id,
                seq,
            )
            item = Outgoing.event(change.event(state.id))
            for sub in list(state.subscriptions.values()):
                if sub.buffer is None and sub.floor >= seq:
                    sub.subscriber.send(item)
            return

    async def verify_changes(self, change: MessagesChanged) -> MessagesChanged | None:
        """A peer's ``edit`` as the store has it (:func:`.verify.verify_changes`)."""
        known = self.known_last_seq(change.room)
        confirmed, dropped = await verify_changes(self._load_after, change, known)
        self.contradicted += dropped
        return confirmed


def _same(wire: dict[str, Any], message: Message) -> bool:
    """Is ``wire`` (a delivered message) the same message as ``message``?"""
    return (
        wire["sender"]["id"] == message.sender_id
        and wire["cid"] == message.cid
        and (wire["text"] == message.text or bool(wire.get("state") or message.state))
    )
