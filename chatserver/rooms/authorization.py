"""The one authorization path: may this user find, read, post in or manage this room?

:meth:`Authorization.check` gathers the facts (:class:`~chatserver.rooms.facts.Facts`) and asks
the rules (:mod:`chatserver.rooms.access`). Every op that touches a room goes through it — the
client protocol's, the management port's, the pool's (ARCHITECTURE invariant 6). A room the user
may not find answers ``not_found``, exactly like a room that does not exist; one they may find
but lack the right for answers ``forbidden``.

:meth:`Authorization.check_cached` is the same decision without awaiting, for the post fast path:
it answers only "yes" (remembered per generation of the facts) or "ask :meth:`check`".
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Config
from ..protocol.errors import FORBIDDEN, NOT_FOUND, ChatError
from ..store.categories import Category
from ..store.rooms import Room
from ..store.users import User
from . import access
from .access import Actor
from .facts import Facts

MAX_REMEMBERED = 200_000

_RULES: dict[str, Callable[[Actor, Room, Category], bool] | None] = {
    "find": None,  # can_find is checked first for every need
    "read": access.can_read,
    "post": access.can_post,
    "manage": access.can_manage,
}


class Authorization:
    def __init__(self, config: Config, facts: Facts) -> None:
        self._config = config
        self._facts = facts
        # Yes-answers of check_cached as of a generation: a user posting into a room asks the
        # same question for every post.
        self._allowed: dict[tuple[int, bool, int, str], Room] = {}
        self._allowed_generation = -1

    def policy_enabled(self, user: User) -> bool:
        """Administrators are never locked out by the policy (they are the ones who change it)."""
        if user.is_admin:
            return True
        if user.persistent_chat_enabled is not None:
            return user.persistent_chat_enabled
        return self._config.policy.persistent_chat_enabled

    def require_admin(self, user: User) -> None:
        if not user.is_admin:
            raise ChatError(FORBIDDEN, "only administrators may do this")

    async def check(self, user: User, room_id: int, need: str) -> tuple[Room, Category, Actor]:
        """The room if ``user`` has the right ``need`` (find, read, post, manage).

        A room the user may not find answers ``not_found``, exactly like a missing room.
        """
        facts = self._facts
        actor = await facts.actor(user)
        cached = facts.cached_room(room_id)
        room = cached if cached is not None else await facts.room(room_id)  # a missing one too
        category = await self._findable(actor, room)
        if category is None and cached is not None:
            # A room this user may not find is cached when others use it: refuse it only after
            # the read of the store that refusing a missing room costs, so that the two take
            # equally long (docs/security.md).
            await facts.read_missing_room()
        if room is None or category is None:
            raise ChatError(NOT_FOUND, f"no room {room_id}")
        rule = _RULES[need]
        if rule is not None and not rule(actor, room, category):
            if need == "read" and room.disabled:
                raise ChatError(FORBIDDEN, f"room {room_id} is disabled")
            raise ChatError(FORBIDDEN, f"you may not {need} in room {room_id}")
        return room, category, actor

    async def _findable(self, actor: Actor, room: Room | None) -> Category | None:
        """The room's category if ``actor`` may find the room; else ``None``."""
        if room is None:
            return None
        category = await self._facts.category(room.category_id)
        if category is None or not access.can_find(actor, room, category):
            return None
        return category

    def check_cached(self, user: User, room_id: int, need: str) -> Room | None:
        """:meth:`check` without awaiting, when every fact it needs is cached and the answer is
        yes; otherwise ``None`` (call :meth:`check`, which also raises the right error)."""
        facts = self._facts
        if self._allowed_generation != facts.generation:
            self._allowed.clear()
            self._allowed_generation = facts.generation
        key = (user.id, user.is_admin, room_id, need)
        known = self._allowed.get(key)
        if known is not None:
            return known
        room = facts.cached_room(room_id)
        if room is None:
            return None
        actor = facts.cached_actor(user)
        category = facts.cached_category(room.category_id)
        if actor is None or category is None or not access.can_find(actor, room, category):
            return None
        rule = _RULES[need]
        if rule is not None and not rule(actor, room, category):
            return None
        if len(self._allowed) >= MAX_REMEMBERED:
            self._allowed.clear()
        self._allowed[key] = room
        return room

    async def readable_room(self, user: User, room_id: int) -> Room:
        """The room if ``user`` may read it (join, history)."""
        room = self.check_cached(user, room_id, "read")
        if room is not None:
            return room
        room, _category, _actor = await self.check(user, room_id, "read")
        return room

    async def writable_room(self, user: User, room_id: int) -> Room:
        """The room if ``user`` may post in it."""
        room = self.check_cached(user, room_id, "post")
        if room is not None:
            return room
        room, _category, _actor = await self.check(user, room_id, "post")
        return room
