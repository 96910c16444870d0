"""Governance: categories, groups, room settings and roles, invitations, policies — and the one
place that decides who may do what (with the pure rules of :mod:`chatserver.rooms.access`).

Facts are cached in memory (categories, group membership, rooms with their roles) and dropped
whenever this node changes them; the pool will drop them on a peer's word as well. After every
change that can take a right away, :meth:`Governance.enforce` re-checks each live subscription of
the rooms concerned and removes the ones no longer allowed before the change is acknowledged, so
a revoked user gets no further live event (ARCHITECTURE invariant 6).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..config import Config
from ..protocol.errors import BAD_REQUEST, CONFLICT, FORBIDDEN, NOT_FOUND, ChatError
from ..protocol.events import Outgoing
from ..store import categories as category_store
from ..store import messages as message_store
from ..store import principals as principal_store
from ..store import rooms as room_store
from ..store import users as user_store
from ..store.categories import Category
from ..store.db import Database
from ..store.principals import Principal
from ..store.rooms import Room
from ..store.users import User
from . import access
from .access import Actor
from .hub import Hub

MAX_PRINCIPALS_PER_CHANGE = 1000

_RULES: dict[str, Callable[[Actor, Room, Category], bool] | None] = {
    "find": None,  # can_find is checked first for every need
    "read": access.can_read,
    "post": access.can_post,
    "manage": access.can_manage,
}


class Member(Protocol):
    """A live session, as governance sees it."""

    user: User | None
    invited_rooms: set[int]

    def send(self, item: Outgoing) -> None: ...

    def removed(self, room: int, reason: str) -> None: ...

    def disconnect(self, reason: str) -> None: ...


def parse_principals(value: Any, field: str) -> list[Principal]:
    """``[{"kind": "user"|"group"|"everyone", "id": int}, …]`` from a request."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PRINCIPALS_PER_CHANGE:
        raise ChatError(
            BAD_REQUEST,
            f"field {field!r} must be a list of at most {MAX_PRINCIPALS_PER_CHANGE} principals",
        )
    out = []
    for item in value:
        kind = item.get("kind") if isinstance(item, dict) else None
        pid = item.get("id", 0) if isinstance(item, dict) else None
        if kind not in principal_store.KINDS or not isinstance(pid, int) or isinstance(pid, bool):
            raise ChatError(
                BAD_REQUEST,
                f'field {field!r}: a principal is {{"kind": "user"|"group"|"everyone", "id": int}}',
            )
        out.append(Principal(kind, 0 if kind == "everyone" else pid))
    return out


def _choice(value: str | None, allowed: tuple[str, ...], field: str) -> str | None:
    if value is not None and value not in allowed:
        raise ChatError(BAD_REQUEST, f"field {field!r} must be one of {', '.join(allowed)}")
    return value


class Governance:
    def __init__(self, config: Config, db: Database, hub: Hub) -> None:
        self.config = config
        self.db = db
        self.hub = hub
        self._categories: dict[int, Category] | None = None
        self._membership: tuple[dict[int, set[int]], dict[int, set[int]]] | None = None
        self._rooms: OrderedDict[int, Room] = OrderedDict()
        self._max_cached_rooms = 100_000
        # Live sessions by user id, for invitations, policy changes and enforcement.
        self.members: dict[int, set[Member]] = {}
        self.on_room_gone: Callable[[int], None] = lambda room_id: None
        # Tells the other nodes of a pool about each committed change (set by chatserver.pool).
        self.publish: Callable[[dict[str, Any]], None] = lambda event: None
        # Bumped whenever cached facts are dropped (a right may have changed): a check that
        # awaited something re-checks when the generation moved meanwhile.
        self.generation = 0
        # Each user's groups as of a generation: posts and joins need no walk of the groups.
        self._actors: dict[int, tuple[int, Actor]] = {}
        self._max_cached_actors = 200_000
        # Yes-answers of check_cached as of a generation: a user posting into a room asks the
        # same question for every post.
        self._allowed: dict[tuple[int, bool, int, str], Room] = {}
        self._allowed_generation = -1
        self._max_allowed = 200_000

    # -- facts ------------------------------------------------------------------------------

    async def categories(self) -> dict[int, Category]:
        categories = self._categories
        if categories is None:
            generation = self.generation
            categories = await category_store.load_categories(self.db)
            if generation == self.generation:  # else a change landed meanwhile: don't keep it
                self._categories = categories
        return categories

    async def category(self, category_id: int) -> Category | None:
        return (await self.categories()).get(category_id)

    async def _groups_of(self, kind: str, pid: int) -> frozenset[int]:
        """For a user: every group they are in; for a group: itself and every group above it."""
        membership = self._membership
        if membership is None:
            generation = self.generation
            membership = await principal_store.load_membership(self.db)
            if generation == self.generation:
                self._membership = membership
        user_groups, parents = membership
        start = set(user_groups.get(pid, ())) if kind == "user" else {pid}
        seen = set(start)
        stack = list(start)
        while stack:
            for parent in parents.get(stack.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return frozenset(seen)

    def _cached_actor(self, user: User) -> Actor | None:
        entry = self._actors.get(user.id)
        if entry is None or entry[0] != self.generation or entry[1].is_admin != user.is_admin:
            return None
        return entry[1]

    async def actor(self, user: User) -> Actor:
        cached = self._cached_actor(user)
        if cached is not None:
            return cached
        generation = self.generation
        actor = Actor(user.id, user.is_admin, await self._groups_of("user", user.id))
        if generation == self.generation:
            if len(self._actors) >= self._max_cached_actors:
                self._actors.clear()
            self._actors[user.id] = (generation, actor)
        return actor

    async def room(self, room_id: int) -> Room | None:
        room = self._rooms.get(room_id)
        if room is None:
            generation = self.generation
            room = await room_store.get_room(self.db, room_id)
            if room is None:
                return None
            if generation != self.generation:
                return room  # a change landed while reading: use it once, cache nothing
            self._rooms[room_id] = room
            if len(self._rooms) > self._max_cached_rooms:
                self._rooms.popitem(last=False)
        return room

    async def last_seq(self, room_id: int) -> int:
        """The room's newest sequence number (the cached room's copy goes stale with posts)."""
        known = self.hub.known_last_seq(room_id)
        if known is not None:
            return known
        return await message_store.last_seq(self.db, room_id) or 0

    # The forget_* methods run after the change committed; ``publish=False`` when the change
    # came from a peer (it was published by the node that made it).

    def forget_room(self, room_id: int, *, publish: bool = True) -> None:
        self._rooms.pop(room_id, None)
        self.generation += 1
        if publish:
            self.publish({"t": "room", "room": room_id})

    def forget_categories(self, *, publish: bool = True) -> None:
        self._categories = None
        self._rooms.clear()
        self.generation += 1
        if publish:
            self.publish({"t": "categories"})

    def forget_membership(self, *, publish: bool = True) -> None:
        self._membership = None
        self.generation += 1
        if publish:
            self.publish({"t": "membership"})

    def forget_all(self, *, publish: bool = True) -> None:
        self._categories = None
        self._membership = None
        self._rooms.clear()
        self.generation += 1
        if publish:
            self.publish({"t": "categories"})

    def policy_enabled(self, user: User) -> bool:
        """Administrators are never locked out by the policy (they are the ones who change it)."""
        if user.is_admin:
            return True
        if user.persistent_chat_enabled is not None:
            return user.persistent_chat_enabled
        return self.config.policy.persistent_chat_enabled

    # -- decisions --------------------------------------------------------------------------

    async def check(self, user: User, room_id: int, need: str) -> tuple[Room, Category, Actor]:
        """The room if ``user`` has the right ``need`` (find, read, post, manage).

        A room the user may not find answers ``not_found``, exactly like a missing room.
        """
        room = await self.room(room_id)
        category = await self.category(room.category_id) if room else None
        actor = await self.actor(user)
        if room is None or category is None or not access.can_find(actor, room, category):
            raise ChatError(NOT_FOUND, f"no room {room_id}")
        rule = _RULES[need]
        if rule is not None and not rule(actor, room, category):
            if need == "read" and room.disabled:
                raise ChatError(FORBIDDEN, f"room {room_id} is disabled")
            raise ChatError(FORBIDDEN, f"you may not {need} in room {room_id}")
        return room, category, actor

    def check_cached(self, user: User, room_id: int, need: str) -> Room | None:
        """:meth:`check` without awaiting, when every fact it needs is cached and the answer is
        yes; otherwise ``None`` (call :meth:`check`, which also raises the right error)."""
        if self._allowed_generation != self.generation:
            self._allowed.clear()
            self._allowed_generation = self.generation
        key = (user.id, user.is_admin, room_id, need)
        known = self._allowed.get(key)
        if known is not None:
            return known
        room = self._rooms.get(room_id)
        categories = self._categories
        if room is None or categories is None:
            return None
        actor = self._cached_actor(user)
        category = categories.get(room.category_id)
        if actor is None or category is None or not access.can_find(actor, room, category):
            return None
        rule = _RULES[need]
        if rule is not None and not rule(actor, room, category):
            return None
        if len(self._allowed) >= self._max_allowed:
            self._allowed.clear()
        self._allowed[key] = room
        return room

    def require_admin(self, user: User) -> None:
        if not user.is_admin:
            raise ChatError(FORBIDDEN, "only administrators may do this")

    async def room_view(self, user: User, room: Room, category: Category) -> dict[str, Any]:
        actor = await self.actor(user)
        out = room.public(with_roles=access.can_manage(actor, room, category))
        out["last_seq"] = await self.last_seq(room.id)
        out["roles"] = sorted(access.roles(actor, room, category))
        out["can_post"] = access.can_post(actor, room, category)
        out["can_manage"] = access.can_manage(actor, room, category)
        return out

    # -- enforcement ------------------------------------------------------------------------

    async def enforce(self, room_ids: Iterable[int] | None = None, reason: str = "access") -> None:
        """Remove every live subscription that lost the right to read its room."""
        targets = list(self.hub.subscribed_rooms() if room_ids is None else room_ids)
        for room_id in targets:
            subscribers = list(self.hub.subscribers(room_id))
            if not subscribers:
                continue
            room = await self.room(room_id)
            category = await self.category(room.category_id) if room else None
            for member in subscribers:
                user = getattr(member, "user", None)
                if user is None:
                    continue
                allowed = (
                    room is not None
                    and category is not None
                    and access.can_read(await self.actor(user), room, category)
                )
                if not allowed:
                    why = reason
                    if room is None:
                        why = "deleted"
                    elif room.disabled:
                        why = "disabled"
                    member.removed(room_id, why)

    async def announce_room(self, room_id: int) -> None:
        """Send ``room.updated`` to the room's live subscribers (each sees its own view)."""
        room = await self.room(room_id)
        category = await self.category(room.category_id) if room else None
        if room is None or category is None:
            return
        for member in list(self.hub.subscribers(room_id)):
            if member.user is not None:
                view = await self.room_view(member.user, room, category)
                member.send(Outgoing({"ev": "room.updated", "room": view}))

    # -- categories (administrators) --------------------------------------------------------

    async def list_categories(self, user: User) -> list[dict[str, Any]]:
        actor = await self.actor(user)
        out = []
        for category in sorted((await self.categories()).values(), key=lambda c: c.name):
            if not (actor.is_admin or access.in_category(actor, category)):
                continue
            view = category.public(with_principals=actor.is_admin)
            view["can_create"] = access.can_create_in(actor, category)
            out.append(view)
        return out

    async def create_category(self, user: User, name: str, **flags: Any) -> dict[str, Any]:
        self.require_admin(user)
        try:
            category_id = await category_store.create_category(self.db, name, **flags)
        except category_store.CategoryExists:
            raise ChatError(CONFLICT, f"a category named {name!r} exists") from None
        self.forget_categories()
        category = await self.category(category_id)
        assert category is not None
        return category.public(with_principals=True)

    async def update_category(
        self,
        user: User,
        category_id: int,
        values: dict[str, Any],
        add: dict[str, list[Principal]],
        remove: dict[str, list[Principal]],
    ) -> dict[str, Any]:
        self.require_admin(user)
        if await self.category(category_id) is None:
            raise ChatError(NOT_FOUND, f"no category {category_id}")
        await self._check_exist([p for principals in add.values() for p in principals])
        if values:
            try:
                await category_store.update_category(self.db, category_id, **values)
            except category_store.CategoryExists:
                raise ChatError(CONFLICT, f"a category named {values['name']!r} exists") from None
        if add or remove:
            await category_store.change_principals(self.db, category_id, add, remove)
        self.forget_categories()
        await self.enforce()
        category = await self.category(category_id)
        assert category is not None
        return category.public(with_principals=True)

    async def delete_category(self, user: User, category_id: int) -> None:
        self.require_admin(user)
        try:
            deleted = await category_store.delete_category(self.db, category_id)
        except category_store.CategoryNotEmpty:
            raise ChatError(
                CONFLICT, "a category can be removed only when it has no rooms"
            ) from None
        if not deleted:
            raise ChatError(NOT_FOUND, f"no category {category_id}")
        self.forget_categories()

    # -- groups and policy (administrators) -------------------------------------------------

    async def create_group(self, user: User, name: str, description: str) -> dict[str, Any]:
        self.require_admin(user)
        try:
            group = await principal_store.create_group(self.db, name, description)
        except principal_store.GroupExists:
            raise ChatError(CONFLICT, f"a group named {name!r} exists") from None
        return group.public()

    async def change_group(
        self, user: User, group_id: int, add: list[Principal], remove: list[Principal]
    ) -> dict[str, Any]:
        self.require_admin(user)
        group = await principal_store.get_group(self.db, group_id)
        if group is None:
            raise ChatError(NOT_FOUND, f"no group {group_id}")
        if any(p.kind == "everyone" for p in add):
            raise ChatError(BAD_REQUEST, "a group holds users and groups, not everyone")
        await self._check_exist(add)
        try:
            await principal_store.add_group_members(self.db, group_id, add)
        except principal_store.CycleError as exc:
            raise ChatError(CONFLICT, f"that would make a cycle: {exc}") from None
        await principal_store.remove_group_members(self.db, group_id, remove)
        self.forget_membership()
        await self.enforce()
        members = await principal_store.group_members_of(self.db, group_id)
        return {**group.public(), "members": [p.wire() for p in members]}

    async def delete_group(self, user: User, group_id: int) -> None:
        self.require_admin(user)
        if not await principal_store.delete_group(self.db, group_id):  # and its grants
            raise ChatError(NOT_FOUND, f"no group {group_id}")
        self.forget_all()
        self.forget_membership()
        await self.enforce()

    async def _check_exist(self, principals: list[Principal]) -> None:
        for p in principals:
            if p.kind == "user" and await user_store.get_user(self.db, p.id) is None:
                raise ChatError(NOT_FOUND, f"no user {p.id}")
            if p.kind == "group" and await principal_store.get_group(self.db, p.id) is None:
                raise ChatError(NOT_FOUND, f"no group {p.id}")

    async def set_policy(self, user: User, target: int, enabled: bool | None) -> None:
        self.require_admin(user)
        if not await principal_store.set_user_policy(self.db, target, enabled):
            raise ChatError(NOT_FOUND, f"no user {target}")
        updated = await user_store.get_user(self.db, target)
        assert updated is not None
        if not self.policy_enabled(updated):
            self.publish({"t": "disconnect", "user": target, "reason": "disabled"})
            for member in list(self.members.get(target, ())):
                member.disconnect("disabled")

    async def list_users(self, user: User, query: str | None) -> list[dict[str, Any]]:
        self.require_admin(user)
        return [
            {
                **u.public(),
                "is_admin": u.is_admin,
                "persistent_chat_enabled": self.policy_enabled(u),
            }
            for u in await user_store.list_users(self.db, query)
        ]

    # -- rooms ------------------------------------------------------------------------------

    async def _check_eligible(self, principals: Iterable[Principal], category: Category) -> None:
        for p in principals:
            groups = await self._groups_of(p.kind, p.id) if p.kind != "everyone" else frozenset()
            if not access.eligible(p, category, groups):
                raise ChatError(
                    FORBIDDEN,
                    f"{p.kind} {p.id} is not allowed in category {category.name!r}",
                )

    async def create_room(
        self,
        user: User,
        category_id: int,
        name: str,
        description: str,
        privacy: str | None,
        type_: str | None,
        invitations: str | None,
    ) -> Room:
        category = await self.category(category_id)
        actor = await self.actor(user)
        if category is None or not (actor.is_admin or access.in_category(actor, category)):
            raise ChatError(NOT_FOUND, f"no category {category_id}")
        if not access.can_create_in(actor, category):
            raise ChatError(FORBIDDEN, f"you may not create rooms in {category.name!r}")
        managers = () if actor.is_admin else (Principal("user", user.id),)
        try:
            return await room_store.create_room(
                self.db,
                name,
                description,
                category_id=category_id,
                privacy=_choice(privacy, room_store.PRIVACY, "privacy") or "closed",
                type=_choice(type_, room_store.TYPES, "type") or "normal",
                invitations=_choice(invitations, room_store.INVITATIONS, "invitations")
                or "inherit",
                managers=managers,
            )
        except room_store.RoomExists:
            raise ChatError(CONFLICT, f"a room named {name!r} exists") from None

    async def update_room(self, user: User, room_id: int, values: dict[str, Any]) -> None:
        await self.check(user, room_id, "manage")
        _choice(values.get("privacy"), room_store.PRIVACY, "privacy")
        _choice(values.get("type"), room_store.TYPES, "type")
        _choice(values.get("invitations"), room_store.INVITATIONS, "invitations")
        if not values:
            return
        try:
            await room_store.update_room(self.db, room_id, **values)
        except room_store.RoomExists:
            raise ChatError(CONFLICT, f"a room named {values.get('name')!r} exists") from None
        self.forget_room(room_id)
        await self.enforce([room_id])
        await self.announce_room(room_id)

    async def set_disabled(self, user: User, room_id: int, disabled: bool) -> None:
        await self.check(user, room_id, "manage")
        await room_store.update_room(self.db, room_id, disabled=disabled)
        self.forget_room(room_id)
        await self.enforce([room_id], reason="disabled")
        await self.announce_room(room_id)

    async def change_roles(
        self,
        user: User,
        room_id: int,
        add: dict[str, list[Principal]],
        remove: dict[str, list[Principal]],
    ) -> set[int]:
        """Change a room's roles; returns the users newly invited."""
        room, category, _actor = await self.check(user, room_id, "manage")
        added = [p for principals in add.values() for p in principals]
        await self._check_exist(added)
        await self._check_eligible(added, category)
        await room_store.change_roles(self.db, room_id, add, remove)
        self.forget_room(room_id)
        await self.enforce([room_id])
        invited: set[int] = set()
        if category.invitations and room.invitations == "inherit" and add.get("member"):
            users: set[int] = set()
            for p in add["member"]:
                if p.kind == "user":
                    users.add(p.id)
                elif p.kind == "group":
                    users |= await principal_store.users_in_group(self.db, p.id)
            users.discard(user.id)
            fresh = await self.room(room_id)
            assert fresh is not None
            # Only users who may now read the room are invited (a denied group member is not).
            entitled = set()
            for uid in users:
                actor = Actor(uid, False, await self._groups_of("user", uid))
                if access.can_read(actor, fresh, category):
                    entitled.add(uid)
            invited = await room_store.add_invitations(self.db, room_id, entitled, user.id)
            if invited:  # the invitees' sessions on the pool's other nodes
                self.publish(
                    {"t": "invited", "room": room_id, "users": sorted(invited), "by": user.public()}
                )
            for uid in invited:
                for member in list(self.members.get(uid, ())):
                    assert member.user is not None
                    member.invited_rooms.add(room_id)
                    view = await self.room_view(member.user, fresh, category)
                    member.send(Outgoing({"ev": "invited", "room": view, "by": user.public()}))
        await self.announce_room(room_id)
        return invited

    async def move_room(self, user: User, room_id: int, category_id: int) -> None:
        room, _category, actor = await self.check(user, room_id, "manage")
        target = await self.category(category_id)
        if target is None or not (actor.is_admin or access.in_category(actor, target)):
            raise ChatError(NOT_FOUND, f"no category {category_id}")
        if not access.can_create_in(actor, target):
            raise ChatError(FORBIDDEN, f"you may not create rooms in {target.name!r}")
        # The principals the new category does not allow lose their roles.
        remove: dict[str, list[Principal]] = {}
        for role, principals in (
            ("member", room.members),
            ("manager", room.managers),
            ("presenter", room.presenters),
        ):
            for p in principals:
                groups = (
                    await self._groups_of(p.kind, p.id) if p.kind != "everyone" else frozenset()
                )
                if not access.eligible(p, target, groups):
                    remove.setdefault(role, []).append(p)
        await room_store.update_room(self.db, room_id, category_id=category_id)
        await room_store.change_roles(self.db, room_id, {}, remove)
        self.forget_room(room_id)
        await self.enforce([room_id])
        await self.announce_room(room_id)

    async def delete_room(self, user: User, room_id: int) -> None:
        self.require_admin(user)
        if not await room_store.delete_room(self.db, room_id):
            raise ChatError(NOT_FOUND, f"no room {room_id}")
        self.forget_room(room_id)
        await self.enforce([room_id], reason="deleted")
        self.on_room_gone(room_id)

    # -- invitations ------------------------------------------------------------------------

    async def invitations(self, user: User) -> list[dict[str, Any]]:
        out = []
        for room_id, inviter, created in await room_store.pending_invitations(self.db, user.id):
            room = await self.room(room_id)
            category = await self.category(room.category_id) if room else None
            if room is None or category is None:
                continue
            if not access.can_read(await self.actor(user), room, category):
                continue
            inviter_user = await user_store.get_user(self.db, inviter) if inviter else None
            out.append(
                {
                    "room": await self.room_view(user, room, category),
                    "by": inviter_user.public() if inviter_user else None,
                    "ts": created,
                }
            )
        return out

    async def dismiss(self, user: User, room_id: int) -> None:
        if not await room_store.remove_invitation(self.db, user.id, room_id):
            raise ChatError(NOT_FOUND, f"no invitation to room {room_id}")
