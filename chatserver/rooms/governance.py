"""The governance operations: categories, groups, user policies, room settings and roles,
moves, deletion and invitations — each checked, committed, then made true everywhere.

Each operation checks the caller's right (:class:`~chatserver.rooms.authorization.Authorization`),
commits the change to the store, and then, in this order: drops the cached facts it touched and
tells the pool's other nodes (:meth:`Governance._changed`, one :mod:`~chatserver.rooms.changes`
type per kind of change), enforces it on live subscriptions and re-announces the rooms concerned
(:class:`~chatserver.rooms.enforcement.Enforcement`), and last records it in the audit log
(:class:`~chatserver.rooms.audit.Audit`: who, the op, the state before and after — whichever
front end asked for it; last, so an entry that cannot be written never keeps a change from being
enforced). A change reported by a peer goes through
:meth:`Governance.apply_remote`, which does the same minus the store write, the publishing and
the audit entry (the node that made it wrote that).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..protocol.errors import BAD_REQUEST, CONFLICT, FORBIDDEN, NOT_FOUND, ChatError
from ..store import categories as category_store
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
from .audit import Audit, category_state, group_state, room_state, user_state
from .authorization import Authorization
from .changes import (
    CategoriesChanged,
    Change,
    MembershipChanged,
    MessagesChanged,
    Publisher,
    RoomChanged,
    SettingsChanged,
    UserDisconnected,
    UsersInvited,
)
from .enforcement import Enforcement
from .facts import Facts
from .hub import Hub

MAX_PRINCIPALS_PER_CHANGE = 1000


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


_ROOM_ROLES = {"members": "member", "managers": "manager", "presenters": "presenter"}
_CATEGORY_LISTS = {"allowed": "allowed", "denied": "denied", "creators": "creator"}


def _by_key(
    value: dict[str, Any] | None, field: str, keys: dict[str, str]
) -> dict[str, list[Principal]]:
    if value is None:
        return {}
    unknown = set(value) - set(keys)
    if unknown:
        raise ChatError(
            BAD_REQUEST, f"field {field!r} takes {', '.join(keys)}; not {sorted(unknown)[0]!r}"
        )
    return {keys[k]: parse_principals(v, f"{field}.{k}") for k, v in value.items()}


def parse_roles(value: dict[str, Any] | None, field: str) -> dict[str, list[Principal]]:
    """``{"members"|"managers"|"presenters": [principal, …]}`` from a request."""
    return _by_key(value, field, _ROOM_ROLES)


def parse_lists(value: dict[str, Any] | None, field: str) -> dict[str, list[Principal]]:
    """``{"allowed"|"denied"|"creators": [principal, …]}`` from a request."""
    return _by_key(value, field, _CATEGORY_LISTS)


def _local_group(group: principal_store.Group) -> None:
    if group.source != "local":
        raise ChatError(FORBIDDEN, f"group {group.name!r} is the directory's: change it there")


def _choice(value: str | None, allowed: tuple[str, ...], field: str) -> str | None:
    if value is not None and value not in allowed:
        raise ChatError(BAD_REQUEST, f"field {field!r} must be one of {', '.join(allowed)}")
    return value


class Governance:
    def __init__(
        self,
        db: Database,
        facts: Facts,
        auth: Authorization,
        enforcement: Enforcement,
        hub: Hub,
        publisher: Publisher,
        audit: Audit,
    ) -> None:
        self.db = db
        self._facts = facts
        self._auth = auth
        self._live = enforcement
        self._hub = hub
        self._publisher = publisher
        self._audit = audit

    def _changed(self, change: Change) -> None:
        """A change committed here: drop the facts it touched and tell the other nodes."""
        self._facts.forget(change)
        self._publisher.publish(change)

    async def apply_remote(self, change: Change) -> None:
        """A change another node of the pool committed: make it true on this node."""
        facts, live = self._facts, self._live
        if isinstance(change, RoomChanged):
            facts.forget(change)
            if await facts.room(change.room) is None:
                await live.enforce([change.room], reason="deleted")
                self._hub.forget(change.room)
            else:
                await live.enforce([change.room])
                await live.announce_room(change.room)
        elif isinstance(change, CategoriesChanged | MembershipChanged):
            facts.forget(change)
            await live.enforce()
        elif isinstance(change, UserDisconnected):
            live.disconnect(change.user, change.reason)
        elif isinstance(change, UsersInvited):
            await live.invited(change.room, change.users, change.by)
        elif isinstance(change, MessagesChanged):
            self._hub.change_messages(change.room, change.changes, change.cleared_through)
        elif isinstance(change, SettingsChanged):
            raise TypeError("run-time settings are applied by the node, not by governance")

    def imported(self) -> None:
        """An import wrote users, groups, categories and rooms into the store: drop every
        cached fact, here and (through the pool) on the other nodes."""
        self._changed(CategoriesChanged())
        self._changed(MembershipChanged())

    def disconnect_user(self, user_id: int, reason: str) -> int:
        """Close every connection of the user, on this node and the pool's others; returns how
        many were closed here."""
        self._publisher.publish(UserDisconnected(user_id, reason))
        return self._live.disconnect(user_id, reason)

    def messages_changed(self, change: MessagesChanged) -> None:
        """Stored messages were replaced or removed (committed): update caches, tell the
        subscribers here, and tell the other nodes."""
        self._hub.change_messages(change.room, change.changes, change.cleared_through)
        self._publisher.publish(change)

    # -- categories (administrators) --------------------------------------------------------

    async def list_categories(self, user: User) -> list[dict[str, Any]]:
        actor = await self._facts.actor(user)
        out = []
        for category in sorted((await self._facts.categories()).values(), key=lambda c: c.name):
            if not (actor.is_admin or access.in_category(actor, category)):
                continue
            view = category.public(with_principals=actor.is_admin)
            view["can_create"] = access.can_create_in(actor, category)
            out.append(view)
        return out

    async def create_category(self, user: User, name: str, **flags: Any) -> dict[str, Any]:
        self._auth.require_admin(user)
        try:
            category_id = await category_store.create_category(self.db, name, **flags)
        except category_store.CategoryExists:
            raise ChatError(CONFLICT, f"a category named {name!r} exists") from None
        self._changed(CategoriesChanged())
        category = await self._facts.category(category_id)
        assert category is not None
        after = category_state(category)
        await self._audit.record(user, "category.create", f"category:{category_id}", None, after)
        return after

    async def update_category(
        self,
        user: User,
        category_id: int,
        values: dict[str, Any],
        add: dict[str, list[Principal]],
        remove: dict[str, list[Principal]],
    ) -> dict[str, Any]:
        self._auth.require_admin(user)
        before = await self._facts.category(category_id)
        if before is None:
            raise ChatError(NOT_FOUND, f"no category {category_id}")
        await self._check_exist([p for principals in add.values() for p in principals])
        if values:
            try:
                await category_store.update_category(self.db, category_id, **values)
            except category_store.CategoryExists:
                raise ChatError(CONFLICT, f"a category named {values['name']!r} exists") from None
        if add or remove:
            await category_store.change_principals(self.db, category_id, add, remove)
        self._changed(CategoriesChanged())
        await self._live.enforce()
        category = await self._facts.category(category_id)
        assert category is not None
        after = category_state(category)
        await self._audit.record(
            user, "category.update", f"category:{category_id}", category_state(before), after
        )
        return after

    async def delete_category(self, user: User, category_id: int) -> None:
        self._auth.require_admin(user)
        before = await self._facts.category(category_id)
        try:
            deleted = await category_store.delete_category(self.db, category_id)
        except category_store.CategoryNotEmpty:
            raise ChatError(
                CONFLICT, "a category can be removed only when it has no rooms"
            ) from None
        if not deleted or before is None:
            raise ChatError(NOT_FOUND, f"no category {category_id}")
        self._changed(CategoriesChanged())
        await self._audit.record(
            user, "category.delete", f"category:{category_id}", category_state(before), None
        )

    # -- groups and policy (administrators) -------------------------------------------------

    async def create_group(self, user: User, name: str, description: str) -> dict[str, Any]:
        self._auth.require_admin(user)
        try:
            group = await principal_store.create_group(self.db, name, description)
        except principal_store.GroupExists:
            raise ChatError(CONFLICT, f"a group named {name!r} exists") from None
        await self._audit.record(
            user, "group.create", f"group:{group.id}", None, group_state(group, [])
        )
        return group.public()

    async def change_group(
        self, user: User, group_id: int, add: list[Principal], remove: list[Principal]
    ) -> dict[str, Any]:
        self._auth.require_admin(user)
        group = await principal_store.get_group(self.db, group_id)
        if group is None:
            raise ChatError(NOT_FOUND, f"no group {group_id}")
        _local_group(group)
        if any(p.kind == "everyone" for p in add):
            raise ChatError(BAD_REQUEST, "a group holds users and groups, not everyone")
        await self._check_exist(add)
        before = group_state(group, await principal_store.group_members_of(self.db, group_id))
        try:
            await principal_store.add_group_members(self.db, group_id, add)
        except principal_store.CycleError as exc:
            raise ChatError(CONFLICT, f"that would make a cycle: {exc}") from None
        await principal_store.remove_group_members(self.db, group_id, remove)
        self._changed(MembershipChanged())
        await self._live.enforce()
        after = group_state(group, await principal_store.group_members_of(self.db, group_id))
        await self._audit.record(user, "group.members", f"group:{group_id}", before, after)
        return after

    async def delete_group(self, user: User, group_id: int) -> None:
        self._auth.require_admin(user)
        group = await principal_store.get_group(self.db, group_id)
        if group is None:
            raise ChatError(NOT_FOUND, f"no group {group_id}")
        _local_group(group)
        before = group_state(group, await principal_store.group_members_of(self.db, group_id))
        if not await principal_store.delete_group(self.db, group_id):  # and its grants
            raise ChatError(NOT_FOUND, f"no group {group_id}")
        self._changed(CategoriesChanged())
        await self._live.enforce()
        await self._audit.record(user, "group.delete", f"group:{group_id}", before, None)

    async def directory_changed(self, groups_removed: bool) -> None:
        """The directory sync changed groups or their members (committed): the same as a local
        group change, on this node and the pool's others."""
        self._changed(CategoriesChanged() if groups_removed else MembershipChanged())
        await self._live.enforce()

    async def _check_exist(self, principals: list[Principal]) -> None:
        for p in principals:
            if p.kind == "user" and await user_store.get_user(self.db, p.id) is None:
                raise ChatError(NOT_FOUND, f"no user {p.id}")
            if p.kind == "group" and await principal_store.get_group(self.db, p.id) is None:
                raise ChatError(NOT_FOUND, f"no group {p.id}")

    async def set_policy(self, user: User, target: int, enabled: bool | None) -> None:
        self._auth.require_admin(user)
        before = await user_store.get_user(self.db, target)
        if before is None or not await principal_store.set_user_policy(self.db, target, enabled):
            raise ChatError(NOT_FOUND, f"no user {target}")
        updated = await user_store.get_user(self.db, target)
        assert updated is not None
        if not self._auth.policy_enabled(updated):
            self.disconnect_user(target, "disabled")
        await self._audit.record(
            user, "user.policy", f"user:{target}", user_state(before), user_state(updated)
        )

    async def list_users(self, user: User, query: str | None) -> list[dict[str, Any]]:
        self._auth.require_admin(user)
        return [
            {
                **u.public(),
                "is_admin": u.is_admin,
                "persistent_chat_enabled": self._auth.policy_enabled(u),
            }
            for u in await user_store.list_users(self.db, query)
        ]

    # -- rooms ------------------------------------------------------------------------------

    async def _check_eligible(self, principals: Iterable[Principal], category: Category) -> None:
        for p in principals:
            groups = (
                await self._facts.groups_of(p.kind, p.id) if p.kind != "everyone" else frozenset()
            )
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
        category = await self._facts.category(category_id)
        actor = await self._facts.actor(user)
        if category is None or not (actor.is_admin or access.in_category(actor, category)):
            raise ChatError(NOT_FOUND, f"no category {category_id}")
        if not access.can_create_in(actor, category):
            raise ChatError(FORBIDDEN, f"you may not create rooms in {category.name!r}")
        managers = () if actor.is_admin else (Principal("user", user.id),)
        try:
            room = await room_store.create_room(
                self.db,
                name,
                description,
                category_id=category_id,
                privacy=_choice(privacy, room_store.PRIVACY, "privacy") or "closed",
                type=_choice(type_, room_store.TYPES, "type") or "normal",
                invitations=_choice(invitations, room_store.INVITATIONS, "invitations")
                or "inherit",
                managers=managers,
                clash=await self._in_sight(actor),
            )
        except room_store.RoomExists:
            raise ChatError(CONFLICT, f"a room named {name!r} exists") from None
        await self._audit.record(user, "room.create", f"room:{room.id}", None, room_state(room))
        return room

    async def _record_room(self, user: User, action: str, before: Room) -> None:
        """Audit a change of a room (committed, its facts dropped): the room before, and now."""
        after = await self._facts.room(before.id)
        await self._audit.record(
            user,
            action,
            f"room:{before.id}",
            room_state(before),
            None if after is None else room_state(after),
        )

    async def _in_sight(self, actor: Actor) -> room_store.Clash:
        """A room name clashes only with the rooms ``actor`` may find; a room they may not find
        is passed over, so that the answer does not tell them it exists (docs/governance.md,
        section 6). For administrators that is every room."""
        categories = await self._facts.categories()

        def findable(room: Room) -> bool:
            category = categories.get(room.category_id)
            return category is not None and access.can_find(actor, room, category)

        return findable

    async def update_room(self, user: User, room_id: int, values: dict[str, Any]) -> None:
        before, _category, actor = await self._auth.check(user, room_id, "manage")
        _choice(values.get("privacy"), room_store.PRIVACY, "privacy")
        _choice(values.get("type"), room_store.TYPES, "type")
        _choice(values.get("invitations"), room_store.INVITATIONS, "invitations")
        if not values:
            return
        try:
            await room_store.update_room(
                self.db, room_id, clash=await self._in_sight(actor), **values
            )
        except room_store.RoomExists:
            raise ChatError(CONFLICT, f"a room named {values.get('name')!r} exists") from None
        except room_store.AddinMissing:
            raise ChatError(BAD_REQUEST, f"no add-in {values['addin_id']}") from None
        self._changed(RoomChanged(room_id))
        await self._live.enforce([room_id])
        await self._live.announce_room(room_id)
        await self._record_room(user, "room.update", before)

    async def set_disabled(self, user: User, room_id: int, disabled: bool) -> None:
        before, _category, _actor = await self._auth.check(user, room_id, "manage")
        await room_store.update_room(self.db, room_id, disabled=disabled)
        self._changed(RoomChanged(room_id))
        await self._live.enforce([room_id], reason="disabled")
        await self._live.announce_room(room_id)
        await self._record_room(user, "room.disable" if disabled else "room.enable", before)

    async def change_roles(
        self,
        user: User,
        room_id: int,
        add: dict[str, list[Principal]],
        remove: dict[str, list[Principal]],
    ) -> set[int]:
        """Change a room's roles; returns the users newly invited."""
        room, category, _actor = await self._auth.check(user, room_id, "manage")
        added = [p for principals in add.values() for p in principals]
        await self._check_exist(added)
        await self._check_eligible(added, category)
        await room_store.change_roles(self.db, room_id, add, remove)
        self._changed(RoomChanged(room_id))
        await self._live.enforce([room_id])
        invited: set[int] = set()
        if category.invitations and room.invitations == "inherit" and add.get("member"):
            users: set[int] = set()
            for p in add["member"]:
                if p.kind == "user":
                    users.add(p.id)
                elif p.kind == "group":
                    users |= await principal_store.users_in_group(self.db, p.id)
            users.discard(user.id)
            fresh = await self._facts.room(room_id)
            assert fresh is not None
            # Only users who may now read the room are invited (a denied group member is not).
            entitled = set()
            for uid in users:
                actor = Actor(uid, False, await self._facts.groups_of("user", uid))
                if access.can_read(actor, fresh, category):
                    entitled.add(uid)
            invited = await room_store.add_invitations(self.db, room_id, entitled, user.id)
            if invited:
                change = UsersInvited(room_id, tuple(sorted(invited)), user.public())
                self._publisher.publish(change)  # the invitees' sessions on other nodes
                await self._live.invited(change.room, change.users, change.by)
        await self._live.announce_room(room_id)
        await self._record_room(user, "room.members", room)
        return invited

    async def move_room(self, user: User, room_id: int, category_id: int) -> None:
        room, _category, actor = await self._auth.check(user, room_id, "manage")
        target = await self._facts.category(category_id)
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
                    await self._facts.groups_of(p.kind, p.id)
                    if p.kind != "everyone"
                    else frozenset()
                )
                if not access.eligible(p, target, groups):
                    remove.setdefault(role, []).append(p)
        await room_store.update_room(self.db, room_id, category_id=category_id)
        await room_store.change_roles(self.db, room_id, {}, remove)
        self._changed(RoomChanged(room_id))
        await self._live.enforce([room_id])
        await self._live.announce_room(room_id)
        await self._record_room(user, "room.move", room)

    async def delete_room(self, user: User, room_id: int) -> None:
        self._auth.require_admin(user)
        before = await self._facts.room(room_id)
        if before is None or not await room_store.delete_room(self.db, room_id):
            raise ChatError(NOT_FOUND, f"no room {room_id}")
        self._changed(RoomChanged(room_id))
        await self._live.enforce([room_id], reason="deleted")
        self._hub.forget(room_id)
        await self._record_room(user, "room.delete", before)

    # -- invitations ------------------------------------------------------------------------

    async def invitations(self, user: User) -> list[dict[str, Any]]:
        out = []
        for room_id, inviter, created in await room_store.pending_invitations(self.db, user.id):
            room = await self._facts.room(room_id)
            category = await self._facts.category(room.category_id) if room else None
            if room is None or category is None:
                continue
            if not access.can_read(await self._facts.actor(user), room, category):
                continue
            inviter_user = await user_store.get_user(self.db, inviter) if inviter else None
            out.append(
                {
                    "room": await self._live.room_view(user, room, category),
                    "by": inviter_user.public() if inviter_user else None,
                    "ts": created,
                }
            )
        return out

    async def dismiss(self, user: User, room_id: int) -> None:
        if not await room_store.remove_invitation(self.db, user.id, room_id):
            raise ChatError(NOT_FOUND, f"no invitation to room {room_id}")

    async def invitation_used(self, user: User, room_id: int) -> None:
        """``user`` joined ``room_id``: an invitation to it is spent."""
        await room_store.remove_invitation(self.db, user.id, room_id)

    # -- views ------------------------------------------------------------------------------

    async def view(self, user: User, room_id: int) -> dict[str, Any]:
        """The room as ``user`` sees it; ``not_found`` if they may not find it."""
        room, category, _actor = await self._auth.check(user, room_id, "find")
        return await self._live.room_view(user, room, category)
