"""Posting: the one path every post takes, from whichever session path it comes.

The checks run in one order, always: the text (length; :mod:`chatserver.protocol.text` already
refused what the store cannot hold), the right to post (:class:`Authorization`), the user's rate
limit; then the post is queued for the next group commit (:class:`~chatserver.rooms.writer.Writer`)
and its future resolves after the commit.

:meth:`Posting.post_now` is that path without awaiting, for a session that wants to answer a post
without a task; it returns ``None`` when the right to post is not cached, and the caller then
awaits :meth:`Posting.post`, which runs the same checks again (no rate-limit token was taken).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..protocol.errors import NOT_FOUND, RATE_LIMITED, TOO_LARGE, ChatError
from ..store.messages import NewPost, Stored
from ..store.rooms import Room
from ..store.users import User
from .authorization import Authorization
from .mentions import mentioned_names
from .ratelimit import RateLimiter
from .settings import RuntimeSettings
from .writer import Writer


class Posting:
    def __init__(
        self,
        settings: RuntimeSettings,
        auth: Authorization,
        writer: Writer,
        rate_limiter: RateLimiter,
        last_seq: Callable[[int], Awaitable[int | None]] | None = None,
    ) -> None:
        self._last_seq = last_seq  # a room's last seq (the store's), to check a reply's
        self._settings = settings
        self._auth = auth
        self._writer = writer
        self._rate_limiter = rate_limiter

    def post_now(
        self, user: User, room_id: int, text: str, cid: str
    ) -> asyncio.Future[Stored] | None:
        """Queue the post if the right to post is cached; ``None``: await :meth:`post`."""
        self._check_text(text)
        room = self._auth.check_cached(user, room_id, "post")
        if room is None:
            return None
        return self._submit(user, room, text, cid)

    async def post(
        self, user: User, room_id: int, text: str, cid: str, reply_to: int | None = None
    ) -> asyncio.Future[Stored]:
        """Queue the post for the next group commit; the future resolves after commit.

        ``reply_to``: the seq of the message it answers, which must exist in the room (a seq
        at most the room's last; seqs never go back, so it still does at commit)."""
        if reply_to is None:
            future = self.post_now(user, room_id, text, cid)
            if future is not None:
                return future
        else:
            self._check_text(text)
        room = await self._auth.writable_room(user, room_id)
        if reply_to is not None:
            last = await self._last_seq(room.id) if self._last_seq is not None else None
            if last is None or reply_to > last:
                raise ChatError(NOT_FOUND, f"no message {reply_to} in room {room_id}")
        return self._submit(user, room, text, cid, reply_to)

    def _check_text(self, text: str) -> None:
        limit = self._settings.chat.max_message_chars
        if len(text) > limit:
            raise ChatError(TOO_LARGE, f"message exceeds max_message_chars={limit}")

    def _submit(
        self, user: User, room: Room, text: str, cid: str, reply_to: int | None = None
    ) -> asyncio.Future[Stored]:
        if not self._rate_limiter.allow(user.id):
            raise ChatError(RATE_LIMITED, "too many posts; slow down")
        return self._writer.submit(
            NewPost(room.id, user.id, user.name, cid, text, mentioned_names(text), reply_to)
        )
