"""Reading a room: joining it (history on join, then live delivery), leaving it, paging history.

Every read asks :class:`~chatserver.rooms.authorization.Authorization` first (ARCHITECTURE
invariant 6); with compliance on, what was read is recorded before it is sent
(:class:`~chatserver.rooms.capture.Capture`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..protocol.codec import Packed
from ..protocol.errors import TOO_LARGE, ChatError
from ..store import messages as message_store
from ..store import users as user_store
from ..store.db import Database
from ..store.messages import Message
from ..store.users import User
from .addins import Addins
from .authorization import Authorization
from .capture import Capture
from .facts import Facts
from .hub import Hub, Subscriber
from .settings import RuntimeSettings


async def load_recent(db: Database, room_id: int, limit: int) -> tuple[int, list[Message]]:
    """The hub's loader: a room's last_seq and newest ``limit`` messages."""
    return await message_store.window(db, room_id, limit) or (0, [])


class Reading:
    def __init__(
        self,
        db: Database,
        settings: RuntimeSettings,
        facts: Facts,
        auth: Authorization,
        hub: Hub,
        capture: Capture,
        addins: Addins | None = None,
    ) -> None:
        self._addins = addins
        self._db = db
        self._settings = settings
        self._facts = facts
        self._auth = auth
        self._hub = hub
        self._capture = capture

    async def join(
        self, user: User, subscriber: Subscriber, room_id: int, since: int | None
    ) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """Subscribe and return the join reply's fields and a release callback.

        The caller queues the reply, then calls the callback, which starts live delivery
        exactly after the reply's ``last_seq``. The subscription is made in the same step as a
        check that no right changed since the authorization check, so a change that takes the
        right away either is seen by the check or sees the subscription when it enforces.
        """
        hub, chat = self._hub, self._settings.chat
        addins = self._addins
        if addins is not None:
            await addins.fresh()  # before the room is read: no await between it and subscribing
        while True:
            generation = self._facts.generation
            room = await self._auth.readable_room(user, room_id)
            state = await hub.room(room.id)
            if generation == self._facts.generation:
                break
        page_max = chat.history_page_max
        recent = state.recent
        first_cached = recent[0]["seq"] if recent else state.last_seq + 1
        if since is None or since >= first_cached - 1:
            # Served from the cache, and subscribed in the same step: no await in between.
            messages: list[dict[str, Any]] | Packed
            gap = cleared = False
            if since is None:
                messages = hub.backchat(state, chat.default_chat_history)
                page = messages.items
            else:
                # The cache holds every message after ``since`` that was not removed.
                newer = [m for m in recent if m["seq"] > since]
                messages = page = newer[-page_max:]
                gap = len(newer) > page_max
                cleared = not gap and state.last_seq - since > len(page)
            hub.subscribe(state, subscriber)
            last_seq = state.last_seq
            if self._capture.on:
                await self._record_join(user, subscriber, room.id, since, last_seq, page)
            fields = {"room": room.id, "last_seq": last_seq, "messages": messages, "gap": gap}
            fields["cleared"] = cleared
            return self._with_addin(fields, room.addin_id), None
        sub = hub.subscribe_buffered(state, subscriber)
        try:
            last = await message_store.last_seq(self._db, room.id) or 0
            newest = await message_store.latest(self._db, room.id, page_max + 1, after=since)
        except BaseException:
            hub.unsubscribe(room.id, subscriber)
            raise
        # More than a page newer than ``since``: a gap that history fills. Otherwise every
        # message left after ``since`` is here, and a hole is what a clear or removal took.
        gap = len(newest) > page_max
        newest = newest[-page_max:]
        snapshot = max(last, newest[-1].seq if newest else 0)
        cleared = not gap and snapshot - since > len(newest)
        wires = [m.wire() for m in newest]
        if self._capture.on:
            await self._record_join(user, subscriber, room.id, since, snapshot, wires)
        reply = {"room": room.id, "last_seq": snapshot, "messages": wires, "gap": gap}
        reply["cleared"] = cleared
        return self._with_addin(reply, room.addin_id), lambda: hub.release(sub, snapshot)

    def _with_addin(self, fields: dict[str, Any], addin_id: int | None) -> dict[str, Any]:
        """The join reply names the room's add-in, if it has one (the joiner may read it)."""
        info = self._addins.info(addin_id) if self._addins is not None else None
        if info is not None:
            fields["addin_info"] = info
        return fields

    async def _record_join(
        self,
        user: User,
        subscriber: Subscriber,
        room_id: int,
        since: int | None,
        last_seq: int,
        page: list[dict[str, Any]],
    ) -> None:
        try:
            await self._capture.joined(user, subscriber, room_id, since, last_seq, page)
        except ChatError:
            self._hub.unsubscribe(room_id, subscriber)
            raise

    async def readable(self, user: User, room_id: int) -> int:
        """The room's id if ``user`` may read it now (the one authorization path)."""
        room = await self._auth.readable_room(user, room_id)
        return room.id

    def leave(self, subscriber: Subscriber, room_id: int) -> bool:
        left = self._hub.unsubscribe(room_id, subscriber)
        self._capture.left(subscriber, room_id)
        return left

    async def history(
        self,
        user: User,
        room_id: int,
        before: int | None,
        after: int | None,
        limit: int | None,
        around: int | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of history: the newest (before ``before``), the oldest after ``after``, or
        (``around``: jumping to a search hit) up to ``limit`` messages centred on that seq, the
        seq included; ``more`` then says whether older messages exist before the page."""
        room = await self._auth.readable_room(user, room_id)
        page_max = self._settings.chat.history_page_max
        if limit is not None and limit > page_max:
            raise ChatError(TOO_LARGE, f"limit exceeds history_page_max={page_max}")
        limit = limit or min(page_max, 50)
        if around is not None:
            half = limit // 2
            older = await message_store.latest(self._db, room.id, half + 1, before=around)
            newer = await message_store.after(self._db, room.id, around - 1, limit - half)
            more = len(older) > half
            page = [m.wire() for m in (older[-half:] if half else []) + newer]
        elif after is not None:
            found = await message_store.after(self._db, room.id, after, limit + 1)
            page, more = [m.wire() for m in found[:limit]], len(found) > limit
        else:
            found = await message_store.latest(self._db, room.id, limit + 1, before=before)
            page, more = [m.wire() for m in found[-limit:]], len(found) > limit
        if self._capture.on:
            await self._capture.read(user, room.id, page, before, after, limit)
        return page, more

    async def senders(self, user: User, room_id: int, ids: list[int]) -> list[dict[str, object]]:
        """Who among ``ids`` sent messages in a room ``user`` may read: their ids, names and
        display names (a client renders senders with them). Users who never posted there are
        left out, so a reader learns nothing about users it could not see in the room."""
        room = await self._auth.readable_room(user, room_id)
        found = await user_store.senders_in_room(self._db, room.id, sorted(set(ids)))
        return [u.public() for u in found]
