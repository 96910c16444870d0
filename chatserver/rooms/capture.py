"""Compliance capture of what is not a store write: joins, parts and history reads.

Posts and governance changes record their compliance events in the transaction that makes them
(``store/outbox.py``). Reads and presence have no such transaction: :class:`Capture` records a
``JOIN`` (and the ``BACKCHAT`` of the history the join reply carries) before the reply is sent, a
``BACKCHAT`` for every history page, and a ``PART`` when a recorded subscription ends, however it
ends (docs/compliance.md).

One object per node, shared by the writer (which reads :attr:`Capture.node` for each batch) and
the reading ops, so switching capture on or off at run time happens in one place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..protocol.errors import UNAVAILABLE, ChatError
from ..store import outbox
from ..store.db import Database
from ..store.users import User

Subscriber = object  # a session; only its identity is used

log = logging.getLogger(__name__)


def acting_as(user_id: int) -> None:
    """The compliance events recorded from now on in this task name ``user_id`` as who made the
    change (a session sets it for each request it serves)."""
    outbox.ACTOR.set(user_id)


class Capture:
    def __init__(self, db: Database, node: str, *, enabled: bool) -> None:
        self._db = db
        self._name = node
        # The node's name while capture is on (outbox rows carry it), else None.
        self.node: str | None = None
        # (subscriber, room) -> user id of every subscription whose JOIN was recorded.
        self._joined: dict[tuple[Subscriber, int], int] = {}
        self._part_tasks: set[asyncio.Task[None]] = set()
        self.enable(enabled)

    @property
    def on(self) -> bool:
        return self.node is not None

    def enable(self, enabled: bool) -> None:
        """Switch capture on or off from now on; subscriptions joined while it was off record
        no PART."""
        self.node = self._name if enabled else None
        if enabled:
            outbox.enable(self._db, self._name)
        else:
            outbox.disable(self._db)

    async def _record(self, events: list[outbox.Event]) -> None:
        assert self.node is not None
        async with self._db.write() as conn:
            await outbox.record(conn, self.node, events)

    async def joined(
        self,
        user: User,
        subscriber: Subscriber,
        room_id: int,
        since: int | None,
        last_seq: int,
        messages: list[dict[str, Any]],
    ) -> None:
        """Commit the JOIN (and the BACKCHAT of the messages the reply carries) before the
        reply is sent; raises ``unavailable`` when they cannot be recorded (the caller ends the
        subscription)."""
        events = [outbox.Event("JOIN", room_id, user.id, {"since": since, "last_seq": last_seq})]
        if messages:
            events.append(backchat(user, room_id, "join", messages))
        self._joined[(subscriber, room_id)] = user.id
        try:
            await self._record(events)
        except Exception as exc:
            self._joined.pop((subscriber, room_id), None)
            log.error("recording a compliance JOIN failed: %s", exc)
            raise ChatError(UNAVAILABLE, "the join could not be recorded; retry later") from None

    def left(self, subscriber: Subscriber, room_id: int) -> None:
        """A subscription ended: record its PART (in the background) if its JOIN was recorded."""
        if not self._joined:
            return
        user_id = self._joined.pop((subscriber, room_id), None)
        if user_id is not None:
            task = asyncio.get_running_loop().create_task(self._record_part(user_id, room_id))
            self._part_tasks.add(task)
            task.add_done_callback(self._part_tasks.discard)

    async def _record_part(self, user_id: int, room_id: int) -> None:
        try:
            await self._record([outbox.Event("PART", room_id, user_id, {})])
        except Exception as exc:
            log.error("recording a compliance PART of room %d failed: %s", room_id, exc)

    async def read(
        self,
        user: User,
        room_id: int,
        page: list[dict[str, Any]],
        before: int | None,
        after: int | None,
        limit: int,
    ) -> None:
        """Commit the BACKCHAT of a history page before it is sent."""
        event = backchat(user, room_id, "history", page)
        event.payload.update(before=before, after=after, limit=limit)
        try:
            await self._record([event])
        except Exception as exc:
            log.error("recording a compliance BACKCHAT failed: %s", exc)
            raise ChatError(UNAVAILABLE, "the read could not be recorded; retry later") from None

    async def record_read(self, event: outbox.Event) -> None:
        """Commit a BACKCHAT (a thread, resume's changes) before what it records is sent."""
        try:
            await self._record([event])
        except Exception as exc:
            log.error("recording a compliance BACKCHAT failed: %s", exc)
            raise ChatError(UNAVAILABLE, "the read could not be recorded; retry later") from None

    async def searched(
        self, user: User, room_id: int | None, query: str, source: str, hits: list[list[int]]
    ) -> None:
        """Commit a SEARCH event (who searched for what, in which scope: one room, or
        ``room_id`` None for every room the user may read; ``hits``: the [room, seq] of each
        hit whose snippet is sent) before the hits are sent."""
        payload = {"query": query, "source": source, "hits": len(hits), "found": hits}
        event = outbox.Event("SEARCH", room_id, user.id, payload)
        try:
            await self._record([event])
        except Exception as exc:
            log.error("recording a compliance SEARCH failed: %s", exc)
            raise ChatError(UNAVAILABLE, "the search could not be recorded; retry later") from None

    async def close(self) -> None:
        """The node is stopping and every subscription ends with it: record their PARTs now,
        while the store is open."""
        if self._joined:
            ended, self._joined = self._joined, {}
            parts = [outbox.Event("PART", room, uid, {}) for (_, room), uid in ended.items()]
            if self.node is not None:
                try:
                    await self._record(parts)
                except Exception as exc:
                    log.error("recording %d compliance PARTs at stop failed: %s", len(parts), exc)
        if self._part_tasks:
            await asyncio.gather(*self._part_tasks, return_exceptions=True)


def backchat(user: User, room_id: int, source: str, page: list[dict[str, Any]]) -> outbox.Event:
    """A BACKCHAT event: ``user`` read ``page`` (messages in wire form) of ``room_id``."""
    seqs = [m["seq"] for m in page]
    return outbox.Event(
        "BACKCHAT",
        room_id,
        user.id,
        {
            # "join" (the join backchat) | "history" (a history request) | "thread" | "changes"
            "source": source,
            "from_seq": min(seqs) if seqs else None,
            "to_seq": max(seqs) if seqs else None,
            "count": len(seqs),
        },
    )
