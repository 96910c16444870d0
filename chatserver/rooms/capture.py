"""Compliance capture of what is not a store write: joins, parts and history reads.

Posts and governance changes record their compliance events in the transaction that makes them
(``store/outbox.py``). Reads and presence have no such transaction: :class:`Capture` records a
``JOIN`` (and the ``BACKCHAT`` of the history the join reply carries) before the reply is sent, a
``BACKCHAT`` for every history page, and a ``PART`` when a recorded subscription ends, however it
ends (docs/compliance.md).

One object per node, shared by the writer (which reads :attr:`Capture.node` for each batch) and
the reading ops, so switching capture on or off at run time happens in one place.

When the store is unavailable nothing recorded here is lost (ARCHITECTURE invariant 7):

- a JOIN, BACKCHAT or SEARCH that cannot be recorded fails its request (``unavailable``): the
  join, the page or the hits are not sent, so there is nothing unrecorded to lose;
- a PART cannot fail its request (the subscription has ended): it is kept, with its time, and
  recorded when the store answers again (tried every few seconds, and at stop); only a PART still
  unrecorded when the node stops with the store away is lost, and the log says how many.

Failures are logged once per change of state (:class:`Outage`): the first failure, then, when an
event is recorded again, how long it lasted and how many events of each kind failed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from ..protocol.errors import UNAVAILABLE, ChatError
from ..store import outbox
from ..store.db import Database
from ..store.health import describe
from ..store.users import User

Subscriber = object  # a session; only its identity is used

log = logging.getLogger(__name__)

# A PART that could not be recorded is tried again after this pause, doubled up to the maximum.
RETRY_S = 0.5
RETRY_MAX_S = 5.0


class Outage:
    """Compliance events that could not be recorded, logged once per change of state."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the first failure, while failing
        self.failed: Counter[str] = Counter()  # events of each kind failed since then
        self.failed_total = 0

    def failed_to_record(self, kinds: list[str], exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.failed.clear()
            log.warning(
                "recording compliance events failed (%s); joins, reads and searches are answered"
                " `unavailable` and PARTs kept until one is recorded again",
                describe(exc),
            )
        self.failed.update(kinds)
        self.failed_total += len(kinds)

    def recorded(self, parts_waiting: int) -> None:
        if self.since is None:
            return
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(self.failed.items()))
        log.warning(
            "compliance events are recorded again after %.1f s; %d failed meanwhile (%s),"
            " %d PARTs kept are still to record",
            time.monotonic() - self.since,
            sum(self.failed.values()),
            counts,
            parts_waiting,
        )
        self.since = None


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
        # PARTs that could not be recorded, in the order they happened, and the task retrying
        # them. At most one per recorded JOIN: no JOIN is recorded while they wait.
        self._parts: list[outbox.Event] = []
        self._retrying: asyncio.Task[None] | None = None
        self.outage = Outage()
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

    async def _record(
        self, events: list[outbox.Event], node: str | None = None, *, kept: bool = False
    ) -> None:
        """Commit ``events`` (``kept``: the first of the kept PARTs); a failure is counted in
        :attr:`outage` and raised."""
        node = node or self.node
        assert node is not None
        try:
            async with self._db.write() as conn:
                await outbox.record(conn, node, events)
        except Exception as exc:
            self.failed([event.kind for event in events], exc)
            raise
        self.outage.recorded(len(self._parts) - (len(events) if kept else 0))

    def failed(self, kinds: list[str], exc: BaseException) -> None:
        """Events of ``kinds`` could not be recorded (here, or by a store module that records
        its own: a FILEDOWNLOAD)."""
        self.outage.failed_to_record(kinds, exc)

    def recorded(self) -> None:
        """An event was recorded: the store answers again, if it did not."""
        self.outage.recorded(len(self._parts))

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
        except Exception:
            self._joined.pop((subscriber, room_id), None)
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
        part = outbox.Event("PART", room_id, user_id, {})
        try:
            await self._record([part], self._name)
        except Exception:
            self._keep([part])

    def _keep(self, parts: list[outbox.Event]) -> None:
        """Keep PARTs that could not be recorded, and retry them until they are."""
        self._parts.extend(parts)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry_parts())

    async def _retry_parts(self) -> None:
        pause = RETRY_S
        while self._parts:
            await asyncio.sleep(pause)
            parts = list(self._parts)  # kept until recorded (close() records what is left)
            try:
                await self._record(parts, self._name, kept=True)
            except Exception:
                pause = min(pause * 2, RETRY_MAX_S)
            else:
                del self._parts[: len(parts)]  # any kept meanwhile stay, in order

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
        except Exception:
            raise ChatError(UNAVAILABLE, "the read could not be recorded; retry later") from None

    async def record_read(self, event: outbox.Event) -> None:
        """Commit a BACKCHAT (a thread, resume's changes) before what it records is sent."""
        try:
            await self._record([event])
        except Exception:
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
        except Exception:
            raise ChatError(UNAVAILABLE, "the search could not be recorded; retry later") from None

    async def close(self) -> None:
        """The node is stopping and every subscription ends with it: record their PARTs now,
        while the store is open."""
        ended, self._joined = self._joined, {}
        if self._part_tasks:
            await asyncio.gather(*self._part_tasks, return_exceptions=True)
        if self._retrying is not None:
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)
        parts, self._parts = self._parts, []
        if self.node is not None:
            parts += [outbox.Event("PART", room, uid, {}) for (_, room), uid in ended.items()]
        if not parts:
            return
        try:
            await self._record(parts, self._name)
        except Exception as exc:
            log.error(
                "%d compliance PARTs are lost: the store did not record them at stop (%s)",
                len(parts),
                describe(exc),
            )


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
