"""What a room's manager may choose from: the ``room.choices`` op behind the management pages.

A manager adding members needs to find users and groups by name, and to show the names of the
principals that already hold a role; a creator making a room needs the same for its category.
Only administrators may list users (``users``), so this op answers the narrower question "whom
could I give a role in this room (or in a new room of this category)?":

- the caller must have the right the page is for, through the one
  :class:`~chatserver.rooms.authorization.Authorization`: ``manage`` for a room (a room they may
  not find answers ``not_found`` like a missing one), ``create`` for a category (a category they
  are not in answers ``not_found``, one they may not create in ``forbidden``);
- it names only principals the room's category accepts (:func:`~chatserver.rooms.access.eligible`,
  the rule ``room.members`` enforces), so it tells a manager nothing about users outside the
  category, and the principals already holding a role in that room;
- it is bounded: at most :data:`MAX_MATCHES` of each kind, found among at most
  :data:`MAX_SCANNED` candidates by name; at most :data:`MAX_HOLDERS` role holders named.
"""

from __future__ import annotations

from typing import Any

from ..protocol.errors import BAD_REQUEST, FORBIDDEN, NOT_FOUND, ChatError
from ..store import principals as principal_store
from ..store import users as user_store
from ..store.categories import Category
from ..store.db import Database
from ..store.principals import Principal
from ..store.users import User
from . import access
from .addins import Addins
from .authorization import Authorization
from .facts import Facts

MAX_MATCHES = 20  # users, and groups, per reply
MAX_SCANNED = 200  # candidates examined per kind (the rest: narrow the query)
MAX_HOLDERS = 1000  # role holders named per reply
MAX_MANAGED = 500  # rooms in a rooms.managed reply


class Choices:
    def __init__(
        self, db: Database, facts: Facts, auth: Authorization, addins: Addins | None = None
    ) -> None:
        self._db = db
        self._facts = facts
        self._auth = auth
        self._addins = addins

    async def _scope(
        self, user: User, room_id: int | None, category_id: int | None
    ) -> tuple[Category, list[Principal]]:
        """The category whose rules apply, and the principals holding a role in the room."""
        if (room_id is None) == (category_id is None):
            raise ChatError(BAD_REQUEST, "give either room or category")
        if room_id is not None:
            room, category, _actor = await self._auth.check(user, room_id, "manage")
            held = sorted(set(room.members) | set(room.managers) | set(room.presenters))
            return category, held
        assert category_id is not None
        actor = await self._facts.actor(user)
        target = await self._facts.category(category_id)
        if target is None or not (actor.is_admin or access.in_category(actor, target)):
            raise ChatError(NOT_FOUND, f"no category {category_id}")
        if not access.can_create_in(actor, target):
            raise ChatError(FORBIDDEN, f"you may not create rooms in {target.name!r}")
        return target, []

    async def _eligible(self, p: Principal, category: Category) -> bool:
        groups = await self._facts.groups_of(p.kind, p.id) if p.kind != "everyone" else frozenset()
        return access.eligible(p, category, groups)

    async def choices(
        self, user: User, room_id: int | None, category_id: int | None, query: str | None
    ) -> dict[str, Any]:
        category, held = await self._scope(user, room_id, category_id)
        users: list[dict[str, Any]] = []
        groups: list[dict[str, Any]] = []
        if query is not None:
            for found in await user_store.list_users(self._db, query, MAX_SCANNED):
                if len(users) == MAX_MATCHES:
                    break
                if await self._eligible(Principal("user", found.id), category):
                    users.append(found.public())
            for group in await principal_store.search_groups(self._db, query, MAX_SCANNED):
                if len(groups) == MAX_MATCHES:
                    break
                if await self._eligible(Principal("group", group.id), category):
                    groups.append(group.public())
        out: dict[str, Any] = {
            "users": users,
            "groups": groups,
            "everyone": await self._eligible(principal_store.EVERYONE, category),
        }
        if room_id is not None:
            out["holders"] = await self._holders(held[:MAX_HOLDERS])
            out["holders_complete"] = len(held) <= MAX_HOLDERS
            out["addins"] = await self._addin_list()
        return out

    async def _holders(self, held: list[Principal]) -> list[dict[str, Any]]:
        user_ids = [p.id for p in held if p.kind == "user"]
        found = await user_store.get_users(self._db, user_ids)
        out: list[dict[str, Any]] = []
        for p in held:
            if p.kind == "user":
                u = found.get(p.id)
                out.append(
                    {
                        **p.wire(),
                        "name": u.name if u else f"#{p.id}",
                        "display_name": (u.display_name if u else ""),
                    }
                )
            elif p.kind == "group":
                g = await principal_store.get_group(self._db, p.id)
                out.append({**p.wire(), "name": g.name if g else f"#{p.id}", "display_name": ""})
            else:
                out.append({**p.wire(), "name": "everyone", "display_name": ""})
        return out

    async def _addin_list(self) -> list[dict[str, Any]]:
        if self._addins is None:
            return []
        await self._addins.fresh()
        return self._addins.listing()

    async def managed(self, user: User) -> list[int]:
        """The rooms ``user`` manages through a manager role (disabled ones too), each checked
        by :meth:`Authorization.check` (a role outside the category does not count)."""
        actor = await self._facts.actor(user)
        candidates = await principal_store.rooms_with_role(
            self._db, actor.principals, "manager", MAX_MANAGED
        )
        out = []
        for room_id in candidates:
            try:
                await self._auth.check(user, room_id, "manage")
            except ChatError:
                continue
            out.append(room_id)
        return out
