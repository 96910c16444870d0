"""Unread: read markers, unread and mention counts, and live ``mention`` events (issue 17).

Read markers
    ``read`` (room, seq) moves the user's marker forward (never back). The session that set it
    gets the reply; the user's other sessions here get a ``read`` event, and the other nodes of
    a pool hear a ``read`` peer event and tell theirs. The marker is written to the store
    coalesced: :meth:`Unread.mark` only records it in a pending map (user, room) -> seq, and a
    task writes the map once a second in one transaction, so a storm of markers costs at most
    one write per user and room per second. :meth:`Unread.close` writes what is pending (a
    clean stop loses nothing); a crash loses at most the last second of markers (the user's
    clients set them again as they read).

Counts
    A room's unread count is ``last_seq - marker`` (a room never marked has marker 0), never
    below 0: no message is read to count them. It counts the user's own messages and removed
    ones too (a client that posts sets its marker to its post's seq). The mention count is the
    number of the user's stored mentions above the marker: a range of the mentions table's
    primary key. Both are given only for rooms the user may read now; other rooms carry 0.

Mentions
    The writer hands over every committed message that mentions someone
    (:meth:`Unread.mentioned`); it is published to the pool and delivered here to the mentioned
    users connected to this node (the presence map) who may read the room now (checked per
    event through :class:`Authorization`), joined to the room or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from ..protocol.errors import BAD_REQUEST, NOT_FOUND, UNAVAILABLE, ChatError
from ..protocol.events import MentionEvent, Outgoing, ReadMarker
from ..store import marks
from ..store.db import Database
from ..store.messages import Stored
from ..store.users import User
from .authorization import Authorization
from .changes import Publisher, ReadMoved, UsersMentioned
from .mentions import excerpt
from .presence import Member, Presence

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
# Markers heard from peers are kept this many flush intervals (the peer writes them within one).
REMOTE_GENERATIONS = 3
# Pages of the store read at most per ``mentions`` op (rooms not readable any more are skipped).
MENTION_SCANS = 5
# Markers waiting to be written at most (the store is away): then ``read`` answers unavailable.
MAX_PENDING = 200_000
MENTIONS_PAGE_DEFAULT = 50
MENTIONS_PAGE_MAX = 100


def _encode(cursor: tuple[int, int, int]) -> str:
    return "{}.{}.{}".format(*cursor)


def _decode(text: str) -> tuple[int, int, int]:
    try:
        ts, room, seq = (int(part) for part in text.split("."))
    except ValueError:
        raise ChatError(BAD_REQUEST, "bad cursor") from None
    return ts, room, seq


class Unread:
    def __init__(
        self,
        db: Database,
        auth: Authorization,
        presence: Presence,
        publisher: Publisher,
        last_seq: Callable[[int], Any],
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        """``last_seq(room)`` is an awaitable for a room's current last seq (the store's)."""
        self._db = db
        self._auth = auth
        self._presence = presence
        self._publisher = publisher
        self._last_seq = last_seq
        self._interval = flush_interval_s
        self._pending: dict[tuple[int, int], int] = {}
        self._remote: deque[dict[tuple[int, int], int]] = deque([{}], maxlen=REMOTE_GENERATIONS)
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Observations (tests, metrics).
        self.writes = 0
        self.markers_written = 0
        self.mentions_delivered = 0

    # -- read markers -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="read-markers")

    async def close(self) -> None:
        """Stop the flush task and write what is pending."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for task in list(self._tasks):
            task.cancel()
        await self.flush()

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval)
            self._remote.appendleft({})
            try:
                await self.flush()
            except Exception as exc:  # the store is away: keep them for the next turn
                if not failing:
                    log.warning("writing read markers failed (kept, retried): %s", exc)
                failing = True
            else:
                if failing:
                    log.info("writing read markers works again")
                failing = False

    async def flush(self) -> None:
        """Write the pending markers in one transaction (kept for the next turn on failure)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await marks.save_markers(self._db, batch)
        except BaseException:
            for key, seq in batch.items():  # merged back with what came meanwhile
                if seq > self._pending.get(key, 0):
                    self._pending[key] = seq
            raise
        self.writes += 1
        self.markers_written += len(batch)

    async def mark(self, user: User, room_id: int, seq: int, origin: Member | None) -> int:
        """Move ``user``'s marker in ``room_id`` to ``seq``; the marker now (never lower).

        ``not_found``/``forbidden`` as for any read of the room; ``bad_request`` for a seq
        beyond the room's last one.
        """
        room = await self._auth.readable_room(user, room_id)
        last = await self._last_seq(room.id) or 0
        if seq > last:
            raise ChatError(BAD_REQUEST, f"seq {seq} is beyond room {room.id}'s last_seq {last}")
        key = (user.id, room.id)
        current = self._known(key)
        if current is None:
            current = (await marks.markers(self._db, user.id, [room.id])).get(room.id, 0)
        if seq <= current:
            return current
        if key not in self._pending and len(self._pending) >= MAX_PENDING:
            log.warning("read refused: %d read markers wait to be written", len(self._pending))
            raise ChatError(UNAVAILABLE, "read markers cannot be stored now; retry later")
        self._pending[key] = seq
        self._tell_sessions(user.id, room.id, seq, origin)
        self._publisher.publish(ReadMoved(user.id, room.id, seq))
        return seq

    def _known(self, key: tuple[int, int]) -> int | None:
        """The freshest marker this node knows without the store (pending or from a peer)."""
        best = self._pending.get(key)
        for generation in self._remote:
            seen = generation.get(key)
            if seen is not None and (best is None or seen > best):
                best = seen
        return best

    def _tell_sessions(self, user_id: int, room: int, seq: int, origin: Member | None) -> None:
        event: Outgoing | None = None
        for member in self._presence.of(user_id):
            if member is origin:
                continue
            if event is None:
                event = Outgoing.event(ReadMarker(room, seq))
            member.send(event)

    async def remote_read(self, event: ReadMoved) -> None:
        """A peer's user moved a marker: tell their sessions here (the peer writes it)."""
        key = (event.user, event.room)
        if event.seq > self._remote[0].get(key, 0):
            self._remote[0][key] = event.seq
        if event.user in self._presence:
            self._tell_sessions(event.user, event.room, event.seq, None)

    # -- counts -----------------------------------------------------------------------------

    async def markers(self, user_id: int, room_ids: list[int]) -> dict[int, int]:
        """``user_id``'s markers in ``room_ids`` (0 for none): the store's, or fresher ones."""
        stored = await marks.markers(self._db, user_id, room_ids)
        out = {}
        for room in room_ids:
            known = self._known((user_id, room))
            out[room] = max(stored.get(room, 0), known or 0)
        return out

    async def counts(self, user: User, last_seqs: dict[int, int]) -> dict[int, tuple[int, int]]:
        """room -> (unread, mentions) for the rooms of ``last_seqs`` ``user`` may read now."""
        readable = [room for room in last_seqs if await self._may_read(user, room)]
        if not readable:
            return {}
        markers = await self.markers(user.id, readable)
        mentions = await marks.mention_counts(self._db, user.id, markers)
        return {
            room: (max(0, last_seqs[room] - markers[room]), mentions.get(room, 0))
            for room in readable
        }

    async def annotate(self, user: User, rooms: list[dict[str, Any]]) -> None:
        """Add ``unread`` and ``mentions`` to each room of a ``rooms`` reply."""
        counts = await self.counts(user, {r["id"]: r["last_seq"] for r in rooms})
        for r in rooms:
            r["unread"], r["mentions"] = counts.get(r["id"], (0, 0))

    async def _may_read(self, user: User, room_id: int) -> bool:
        try:
            await self._auth.readable_room(user, room_id)
        except ChatError:
            return False
        return True

    async def mention_page(
        self, user: User, room: int | None, before: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of ``user``'s mentions, newest first, from rooms they may read now, and the
        cursor of the next page (``None``: no more). Rooms they may not read are skipped, with
        a bounded amount of reading per call (the cursor continues after it)."""
        if room is not None and not await self._may_read(user, room):
            raise ChatError(NOT_FOUND, f"no room {room}")
        cursor = _decode(before) if before is not None else None
        found: list[dict[str, Any]] = []
        readable: dict[int, bool] = {}
        for _ in range(MENTION_SCANS):
            page = await marks.mention_page(self._db, user.id, room, cursor, limit)
            for m in page:
                cursor = (m.ts, m.room, m.seq)
                if m.room not in readable:
                    readable[m.room] = await self._may_read(user, m.room)
                if readable[m.room]:
                    found.append(m.wire())
                    if len(found) == limit:
                        return found, _encode(cursor)
            if len(page) < limit:
                return found, None
        return found, _encode(cursor) if cursor is not None else None

    # -- mentions ---------------------------------------------------------------------------

    def mentioned(self, results: list[Stored]) -> None:
        """The writer's callback: a committed batch's results (after delivery)."""
        for r in results:
            if not r.mentioned or r.message is None or r.duplicate:
                continue
            m = r.message
            event = UsersMentioned(
                m.room, m.seq, m.ts, m.sender_id, m.sender_name, excerpt(m.text), r.mentioned
            )
            self._publisher.publish(event)
            self.deliver_mention(event)

    def deliver_mention(self, event: UsersMentioned, *, confirm: bool = False) -> None:
        """Send ``mention`` to the mentioned users connected here who may read the room
        (``confirm``: only those the store holds the mention of: a peer's word)."""
        here = [u for u in event.users if u in self._presence]
        if not here:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(event, here, confirm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def remote_mention(self, event: UsersMentioned) -> None:
        self.deliver_mention(event, confirm=True)

    async def _deliver(self, event: UsersMentioned, users: list[int], confirm: bool) -> None:
        wire = Outgoing.event(
            MentionEvent(
                event.room, event.seq, event.ts, event.sender_id, event.sender_name, event.excerpt
            )
        )
        for user_id in users:
            members = self._presence.of(user_id)
            user = next((m.user for m in members if m.user is not None), None)
            if user is None or not await self._may_read(user, event.room):
                continue
            if confirm and not await marks.is_mentioned(self._db, user_id, event.room, event.seq):
                log.warning(
                    "pool: mention of user %d in room %d seq %d not in the store; not sent",
                    user_id,
                    event.room,
                    event.seq,
                )
                continue
            for member in self._presence.of(user_id):
                member.send(wire)
            self.mentions_delivered += 1
