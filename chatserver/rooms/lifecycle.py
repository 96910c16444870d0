"""Users' changes to their messages (edit, delete), reactions, threads and resume's changes.

One path per operation, whatever the transport: the right to read the room first, through the
shared authorization path (a room the caller may not read answers ``not_found``, exactly like a
missing room, and so does a message of it), then the store's transaction
(:mod:`chatserver.store.lifecycle`: the policy, the client id, the compliance event), then the
change is told to the room's readers here and to the pool's other nodes through
``messages_changed`` (:meth:`~.governance.Governance.messages_changed`: the same path as an
administrator's removal), as a ``message.changed`` event that follows the message it changes.

Editing needs the right to post (the new text is a post's); deleting one's own message and
reacting need the right to read. Every change takes a token of the user's post rate limit
(``limits.posts_per_user_per_s``) before anything is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..protocol.errors import BAD_REQUEST, NOT_FOUND, RATE_LIMITED, TOO_LARGE, ChatError
from ..store import lifecycle as store
from ..store.db import Database, now_ms
from ..store.users import User
from .authorization import Authorization
from .capture import Capture, backchat
from .changes import MessageChange, MessagesChanged
from .ratelimit import RateLimiter
from .settings import RuntimeSettings

log = logging.getLogger(__name__)

MAX_EMOJI_CHARS = 32
THREAD_PAGE_MAX = 200
MAX_CHANGES = 500  # changes a join reply carries (more: ``changes_gap``, read history again)


def check_emoji(emoji: str) -> str:
    """An emoji (or a short code such as ``:ship:``): 1 to 32 characters, no white space."""
    if not emoji or len(emoji) > MAX_EMOJI_CHARS or any(ch.isspace() for ch in emoji):
        raise ChatError(BAD_REQUEST, f"an emoji is 1 to {MAX_EMOJI_CHARS} characters, no spaces")
    return emoji


class Lifecycle:
    def __init__(
        self,
        db: Database,
        settings: RuntimeSettings,
        auth: Authorization,
        capture: Capture,
        messages_changed: Callable[[MessagesChanged], None],
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self._rate_limiter = rate_limiter  # shared with posts: one budget per user
        self._db = db
        self._settings = settings
        self._auth = auth
        self._capture = capture
        self._messages_changed = messages_changed

    def _no_message(self, room: int, seq: int) -> ChatError:
        return ChatError(NOT_FOUND, f"no message {seq} in room {room}")

    async def _run(self, user: User, room: int, seq: int, need: str, work: Any) -> store.Outcome:
        if self._rate_limiter is not None and not self._rate_limiter.allow(user.id):
            raise ChatError(RATE_LIMITED, "too many changes; slow down")
        if need == "post":
            found = await self._auth.writable_room(user, room)
        else:
            found = await self._auth.readable_room(user, room)
        try:
            outcome: store.Outcome = await work(found.id)
        except store.NotFound:
            raise self._no_message(room, seq) from None
        except store.Refused as exc:
            log.warning(
                "user %d: change of message %d in room %d refused: %s", user.id, seq, room, exc
            )
            raise ChatError(exc.code, exc.reason) from None
        return outcome

    def _tell(self, room: int, outcome: store.Outcome, reaction: Any = None) -> None:
        if not outcome.duplicate:
            change = MessageChange.of(outcome.message, outcome.change_no, reaction)
            self._messages_changed(MessagesChanged(room, (change,), None))

    @staticmethod
    def _reply(outcome: store.Outcome) -> dict[str, Any]:
        return {
            "message": outcome.message.wire(),
            "change": outcome.change_no,
            "duplicate": outcome.duplicate,
        }

    async def edit(self, user: User, room: int, seq: int, text: str, cid: str) -> dict[str, Any]:
        chat = self._settings.chat
        if len(text) > chat.max_message_chars:
            raise ChatError(
                TOO_LARGE, f"message exceeds max_message_chars={chat.max_message_chars}"
            )

        async def work(room_id: int) -> store.Outcome:
            return await store.edit(
                self._db,
                room_id,
                seq,
                user.id,
                cid,
                text,
                default_policy=chat.edit_policy,
                capture=self._capture.node,
            )

        outcome = await self._run(user, room, seq, "post", work)
        self._tell(room, outcome)
        return self._reply(outcome)

    async def delete(self, user: User, room: int, seq: int, cid: str) -> dict[str, Any]:
        chat = self._settings.chat

        async def work(room_id: int) -> store.Outcome:
            return await store.delete_own(
                self._db,
                room_id,
                seq,
                user.id,
                cid,
                default_policy=chat.edit_policy,
                capture=self._capture.node,
            )

        outcome = await self._run(user, room, seq, "read", work)
        if not outcome.duplicate:
            log.info("user %d deleted message %d of room %d", user.id, seq, room)
        self._tell(room, outcome)
        return self._reply(outcome)

    async def react(
        self, user: User, room: int, seq: int, emoji: str, cid: str, *, add: bool
    ) -> dict[str, Any]:
        check_emoji(emoji)
        chat = self._settings.chat
        limits = store.Limits(chat.max_reactions_per_message, chat.max_distinct_reactions)

        async def work(room_id: int) -> store.Outcome:
            return await store.react(
                self._db,
                room_id,
                seq,
                user.id,
                cid,
                emoji,
                add,
                limits=limits,
                capture=self._capture.node,
            )

        outcome = await self._run(user, room, seq, "read", work)
        self._tell(room, outcome, (user.id, emoji, add))
        return self._reply(outcome)

    async def thread(
        self, user: User, room_id: int, seq: int, after: int | None, limit: int | None
    ) -> dict[str, Any]:
        """The message ``seq`` and a page of the answers to it (oldest first, after ``after``)."""
        room = await self._auth.readable_room(user, room_id)
        if limit is not None and limit > THREAD_PAGE_MAX:
            raise ChatError(TOO_LARGE, f"limit exceeds {THREAD_PAGE_MAX}")
        limit = limit or 50
        root, replies = await store.thread(self._db, room.id, seq, after or 0, limit + 1)
        if root is None:
            raise self._no_message(room_id, seq)
        more = len(replies) > limit
        page = [m.wire() for m in replies[:limit]]
        if self._capture.on:
            await self._capture.record_read(backchat(user, room.id, "thread", [root.wire(), *page]))
        return {"message": root.wire(), "replies": page, "more": more}

    async def edit_policy(self, room_id: int) -> dict[str, Any]:
        """For a join's reply (the caller may read the room): the edit policy that applies in
        it, decided as :meth:`edit` and :meth:`delete` decide it, and this node's clock (ms) to
        judge a message's age by; nothing if the room is gone meanwhile."""
        policy = await store.room_edit_policy(self._db, room_id, self._settings.chat.edit_policy)
        return {} if policy is None else {"edit_policy": policy, "now": now_ms()}

    async def changes(
        self, user: User, room_id: int, since_change: int, through_seq: int
    ) -> dict[str, Any]:
        """For a join's reply: the room's change number and the messages up to ``through_seq``
        changed after ``since_change`` (``changes_gap``: more than a reply carries)."""
        current, found = await store.changed_since(
            self._db, room_id, since_change, through_seq, MAX_CHANGES + 1
        )
        gap = len(found) > MAX_CHANGES
        changed = [m.wire() for m in found[:MAX_CHANGES]]
        if self._capture.on and changed:
            await self._capture.record_read(backchat(user, room_id, "changes", changed))
        return {"change_no": current, "changed": changed, "changes_gap": gap}
