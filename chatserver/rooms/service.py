"""The chat domain: authentication, room directory, authorization, posting, history.

Every transport's sessions call these functions; so will the management port. Each op that reads
or writes a room goes through :meth:`ChatService.readable_room` / :meth:`writable_room`, which ask
:class:`~chatserver.rooms.governance.Governance` — the one authorization path (ARCHITECTURE
invariant 6). A room the caller may not find answers ``not_found``, like a missing room.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import OrderedDict
from typing import Any

from ..config import Config
from ..passwords import DUMMY_HASH, hash_password, verify_password
from ..protocol.codec import Packed
from ..protocol.errors import (
    BAD_REQUEST,
    CONFLICT,
    FORBIDDEN,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    ChatError,
)
from ..store import messages as message_store
from ..store import outbox
from ..store import rooms as room_store
from ..store import users as user_store
from ..store.db import Database
from ..store.messages import Message, NewPost, Stored
from ..store.rooms import Room
from ..store.users import User
from . import access
from .governance import Governance
from .hub import Hub, Subscriber
from .writer import Writer

log = logging.getLogger(__name__)

ROOM_PAGE_DEFAULT = 50
ROOM_PAGE_MAX = 500


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = self.burst = max(rate, 1.0)
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RateLimiter:
    """Posts per user per second, shared by all of a user's connections; bounded in size."""

    def __init__(self, rate: float, max_users: int = 200_000) -> None:
        self.rate = rate
        self._buckets: OrderedDict[int, TokenBucket] = OrderedDict()
        self._max_users = max_users
        self.limited = 0

    def allow(self, user_id: int) -> bool:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(self.rate)
            if len(self._buckets) > self._max_users:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(user_id)
        if bucket.take():
            return True
        self.limited += 1
        return False


_CURSOR_PREFIX = "room:"


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + name).encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        text = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith(_CURSOR_PREFIX):
        raise ChatError(BAD_REQUEST, "field 'cursor' is not a cursor of this server")
    return text[len(_CURSOR_PREFIX) :]


class ChatService:
    def __init__(self, config: Config, db: Database) -> None:
        self.config = config
        self.db = db
        chat = config.chat
        self.hub = Hub(
            cache_size=chat.default_chat_history,
            load_recent=self._load_recent,
            load_after=lambda room, seq, limit: message_store.after(
                db, room, seq, limit, include_removed=True
            ),
        )
        # Compliance capture (docs/compliance.md): the node's name when on, else None.
        self.capture = config.node.name if config.compliance.enabled else None
        if self.capture is not None:
            outbox.enable(db, self.capture)
        # (subscriber, room) -> user id of every subscription whose JOIN was recorded: its PART
        # is recorded when the subscription ends, however it ends.
        self._joined: dict[tuple[Subscriber, int], int] = {}
        self._part_tasks: set[asyncio.Task[None]] = set()
        self.writer = Writer(
            db,
            self.hub.deliver,
            max_pending=config.limits.max_pending_posts,
            capture=self.capture,
        )
        self.rate_limiter = RateLimiter(config.limits.posts_per_user_per_s)
        self.governance = Governance(config, db, self.hub)
        self.governance.on_room_gone = self.hub.forget

    def start(self) -> None:
        self.writer.start()

    def set_capture(self, enabled: bool) -> None:
        """Switch compliance capture on or off from now on (``[compliance] enabled`` at run
        time); subscriptions joined while it was off record no PART."""
        self.capture = self.config.node.name if enabled else None
        if self.capture is not None:
            outbox.enable(self.db, self.capture)
        else:
            outbox.disable(self.db)
        self.writer.capture = self.capture

    async def close(self) -> None:
        await self.writer.close()
        if self._joined:
            # The node is stopping and every subscription ends with it: record their PARTs now,
            # while the store is open (connections close after this).
            ended, self._joined = self._joined, {}
            parts = [outbox.Event("PART", room, uid, {}) for (_, room), uid in ended.items()]
            try:
                await self._record(parts)
            except Exception as exc:
                log.error("recording %d compliance PARTs at stop failed: %s", len(parts), exc)
        if self._part_tasks:
            await asyncio.gather(*self._part_tasks, return_exceptions=True)

    # -- users ------------------------------------------------------------------------------

    async def login(self, name: str, password: str) -> tuple[User, str]:
        found = await user_store.credentials(self.db, name)
        stored_hash = found[1] if found else DUMMY_HASH
        ok = await asyncio.to_thread(verify_password, password, stored_hash)
        if not ok or found is None:
            raise ChatError(UNAUTHENTICATED, "wrong user name or password")
        user = found[0]
        self._check_policy(user)
        token = await user_store.create_session(self.db, user.id, self.config.chat.session_ttl_s)
        return user, token

    async def resume(self, token: str) -> User:
        user = await user_store.user_for_token(self.db, token)
        if user is None:
            raise ChatError(UNAUTHENTICATED, "the token is unknown or expired")
        self._check_policy(user)
        return user

    def _check_policy(self, user: User) -> None:
        if not self.governance.policy_enabled(user):
            raise ChatError(FORBIDDEN, "persistent chat is disabled for this user")

    async def add_user(
        self, name: str, password: str, *, is_admin: bool = False, display_name: str | None = None
    ) -> User:
        password_hash = await asyncio.to_thread(hash_password, password)
        try:
            return await user_store.create_user(
                self.db, name, password_hash, is_admin=is_admin, display_name=display_name
            )
        except user_store.UserExists:
            raise ChatError(CONFLICT, f"a user named {name!r} exists") from None

    # -- rooms ------------------------------------------------------------------------------

    async def readable_room(self, user: User, room_id: int) -> Room:
        """The room if ``user`` may read it; ``not_found`` if they may not even find it."""
        room = self.governance.check_cached(user, room_id, "read")
        if room is not None:
            return room
        room, _category, _actor = await self.governance.check(user, room_id, "read")
        return room

    async def writable_room(self, user: User, room_id: int) -> Room:
        """The room if ``user`` may post in it."""
        room, _category, _actor = await self.governance.check(user, room_id, "post")
        return room

    async def list_rooms(
        self,
        user: User,
        query: str | None,
        limit: int | None,
        cursor: str | None,
        category: int | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The rooms ``user`` may find (disabled ones only for administrators), by name."""
        limit = min(limit or ROOM_PAGE_DEFAULT, ROOM_PAGE_MAX)
        after_name = _decode_cursor(cursor) if cursor else None
        governance = self.governance
        actor = await governance.actor(user)
        found: list[dict[str, Any]] = []
        scanned = 0
        # Scan in pages; stop after a bounded amount of work and hand out a cursor to continue.
        while len(found) < limit and scanned < 20 * limit:
            page = await room_store.list_rooms(
                self.db, query=query, after_name=after_name, limit=limit, category_id=category
            )
            if not page:
                after_name = None
                break
            scanned += len(page)
            for candidate in page:
                after_name = candidate.name
                room = await governance.room(candidate.id)
                cat = await governance.category(room.category_id) if room else None
                if room is None or cat is None or (room.disabled and not user.is_admin):
                    continue
                if access.can_find(actor, room, cat):
                    found.append(candidate.public())  # the page's row: a current last_seq
                    if len(found) == limit:
                        break
            if len(page) < limit and len(found) < limit:
                after_name = None
                break
        return found, (_encode_cursor(after_name) if after_name is not None else None)

    # -- reading ----------------------------------------------------------------------------

    async def _load_recent(self, room_id: int, limit: int) -> tuple[int, list[Message]]:
        return await message_store.window(self.db, room_id, limit) or (0, [])

    async def join(
        self, user: User, subscriber: Subscriber, room_id: int, since: int | None
    ) -> tuple[dict[str, Any], Any]:
        """Subscribe and return the join reply's fields and a release callback.

        The caller queues the reply, then calls the callback, which starts live delivery
        exactly after the reply's ``last_seq``. The subscription is made in the same step as a
        check that no right changed since the authorization check, so a change that takes the
        right away either is seen by the check or sees the subscription when it enforces.
        """
        while True:
            generation = self.governance.generation
            room = await self.readable_room(user, room_id)
            state = await self.hub.room(room.id)
            if generation == self.governance.generation:
                break
        page_max = self.config.chat.history_page_max
        recent = state.recent
        first_cached = recent[0]["seq"] if recent else state.last_seq + 1
        if since is None or since >= first_cached - 1:
            # Served from the cache, and subscribed in the same step: no await in between.
            messages: list[dict[str, Any]] | Packed
            if since is None:
                messages = self.hub.backchat(state, self.config.chat.default_chat_history)
                page = messages.items
            else:
                messages = page = [m for m in recent if m["seq"] > since][-page_max:]
            gap = bool(since is not None and page and page[0]["seq"] > since + 1)
            self.hub.subscribe(state, subscriber)
            last_seq = state.last_seq
            if self.capture is not None:
                await self._record_join(user, subscriber, room.id, since, last_seq, page)
            return (
                {"room": room.id, "last_seq": last_seq, "messages": messages, "gap": gap},
                None,
            )
        sub = self.hub.subscribe_buffered(state, subscriber)
        try:
            last = await message_store.last_seq(self.db, room.id) or 0
            newest = await message_store.latest(self.db, room.id, page_max, after=since)
        except BaseException:
            self.hub.unsubscribe(room.id, subscriber)
            raise
        snapshot = max(last, newest[-1].seq if newest else 0)
        gap = bool(newest and newest[0].seq > since + 1)
        wires = [m.wire() for m in newest]
        if self.capture is not None:
            await self._record_join(user, subscriber, room.id, since, snapshot, wires)
        reply = {"room": room.id, "last_seq": snapshot, "messages": wires, "gap": gap}
        return reply, lambda: self.hub.release(sub, snapshot)

    def leave(self, subscriber: Subscriber, room_id: int) -> bool:
        left = self.hub.unsubscribe(room_id, subscriber)
        if self._joined:
            user_id = self._joined.pop((subscriber, room_id), None)
            if user_id is not None:
                task = asyncio.get_running_loop().create_task(self._record_part(user_id, room_id))
                self._part_tasks.add(task)
                task.add_done_callback(self._part_tasks.discard)
        return left

    # -- compliance capture of reads and presence (docs/compliance.md) ---------------------

    async def _record(self, events: list[outbox.Event]) -> None:
        assert self.capture is not None
        async with self.db.write() as conn:
            await outbox.record(conn, self.capture, events)

    async def _record_join(
        self,
        user: User,
        subscriber: Subscriber,
        room_id: int,
        since: int | None,
        last_seq: int,
        messages: list[dict[str, Any]],
    ) -> None:
        """Commit the JOIN (and the BACKCHAT of the messages the reply carries) before the
        reply is sent; a join whose events cannot be recorded fails with ``unavailable``."""
        events = [outbox.Event("JOIN", room_id, user.id, {"since": since, "last_seq": last_seq})]
        if messages:
            events.append(_backchat(user, room_id, "join", messages))
        self._joined[(subscriber, room_id)] = user.id
        try:
            await self._record(events)
        except Exception as exc:
            self._joined.pop((subscriber, room_id), None)
            self.hub.unsubscribe(room_id, subscriber)
            log.error("recording a compliance JOIN failed: %s", exc)
            raise ChatError(UNAVAILABLE, "the join could not be recorded; retry later") from None

    async def _record_part(self, user_id: int, room_id: int) -> None:
        try:
            await self._record([outbox.Event("PART", room_id, user_id, {})])
        except Exception as exc:
            log.error("recording a compliance PART of room %d failed: %s", room_id, exc)

    async def history(
        self, user: User, room_id: int, before: int | None, after: int | None, limit: int | None
    ) -> tuple[list[dict[str, Any]], bool]:
        room = await self.readable_room(user, room_id)
        page_max = self.config.chat.history_page_max
        if limit is not None and limit > page_max:
            raise ChatError(TOO_LARGE, f"limit exceeds history_page_max={page_max}")
        limit = limit or min(page_max, 50)
        if after is not None:
            found = await message_store.after(self.db, room.id, after, limit + 1)
            page, more = [m.wire() for m in found[:limit]], len(found) > limit
        else:
            found = await message_store.latest(self.db, room.id, limit + 1, before=before)
            page, more = [m.wire() for m in found[-limit:]], len(found) > limit
        if self.capture is not None:
            event = _backchat(user, room.id, "history", page)
            event.payload.update(before=before, after=after, limit=limit)
            try:
                await self._record([event])
            except Exception as exc:
                log.error("recording a compliance BACKCHAT failed: %s", exc)
                raise ChatError(
                    UNAVAILABLE, "the read could not be recorded; retry later"
                ) from None
        return page, more

    # -- posting ----------------------------------------------------------------------------

    async def post(self, user: User, room_id: int, text: str, cid: str) -> asyncio.Future[Stored]:
        """Queue a post for the next group commit; the future resolves after commit."""
        self._check_length(text)
        room = self.governance.check_cached(user, room_id, "post") or await self.writable_room(
            user, room_id
        )
        return self._submit(user, room, text, cid)

    def post_cached(
        self, user: User, room_id: int, text: str, cid: str
    ) -> asyncio.Future[Stored] | None:
        """:meth:`post` without awaiting, when the right to post is cached; otherwise ``None``
        (call :meth:`post`)."""
        room = self.governance.check_cached(user, room_id, "post")
        if room is None:
            return None
        self._check_length(text)
        return self._submit(user, room, text, cid)

    def _check_length(self, text: str) -> None:
        limit = self.config.chat.max_message_chars
        if len(text) > limit:
            raise ChatError(TOO_LARGE, f"message exceeds max_message_chars={limit}")

    def _submit(self, user: User, room: Room, text: str, cid: str) -> asyncio.Future[Stored]:
        if not self.rate_limiter.allow(user.id):
            raise ChatError(RATE_LIMITED, "too many posts; slow down")
        return self.writer.submit(NewPost(room.id, user.id, user.name, cid, text))


def _backchat(user: User, room_id: int, source: str, page: list[dict[str, Any]]) -> outbox.Event:
    """A BACKCHAT event: ``user`` read ``page`` (messages in wire form) of ``room_id``."""
    seqs = [m["seq"] for m in page]
    return outbox.Event(
        "BACKCHAT",
        room_id,
        user.id,
        {
            "source": source,  # "join" (the join backchat) | "history" (a history request)
            "from_seq": min(seqs) if seqs else None,
            "to_seq": max(seqs) if seqs else None,
            "count": len(seqs),
        },
    )
