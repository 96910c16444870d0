"""Principals: groups of users and groups, and each user's policy.

A principal is ``Principal(kind, id)`` with kind ``user``, ``group`` or ``everyone`` (id 0).
Group membership is transitive; adding a member that would make a cycle is refused.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import outbox
from .db import LIKE_ESCAPE, Database, contains_pattern, now_ms
from .schema import category_principals, group_members, groups, room_principals, users

KINDS = ("user", "group", "everyone")


@dataclass(frozen=True, slots=True, order=True, weakref_slot=True)
class Principal:
    kind: str
    id: int

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id}


EVERYONE = Principal("everyone", 0)

_interned: weakref.WeakValueDictionary[tuple[str, int], Principal] = weakref.WeakValueDictionary()


def principal(kind: str, pid: int) -> Principal:
    """The one ``Principal(kind, pid)`` object while any is in use.

    Role lists are loaded per room on every node: a user in 18 rooms would otherwise be 18
    objects per node (1.4 million on each node of an 80,000-user pool), each one more object for
    the cyclic garbage collector to walk.
    """
    key = (kind, pid)
    found = _interned.get(key)
    if found is None:
        found = _interned[key] = Principal(kind, pid)
    return found


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    description: str
    source: str = "local"  # or "directory": changed only by the directory sync

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "source": self.source,
        }


class GroupExists(Exception):
    pass


class CycleError(Exception):
    pass


async def create_group(
    db: Database,
    name: str,
    description: str = "",
    *,
    source: str = "local",
    external_id: str | None = None,
) -> Group:
    try:
        async with db.write() as conn:
            result = await conn.execute(
                insert(groups)
                .values(
                    name=name,
                    description=description,
                    created_ms=now_ms(),
                    source=source,
                    external_id=external_id,
                )
                .returning(groups.c.id)
            )
            group_id = result.scalar_one()
            payload = {"group": group_id, "name": name, "description": description}
            await outbox.capture(db, conn, "GROUP_CREATE", None, payload)
    except IntegrityError:
        raise GroupExists(name) from None
    return Group(group_id, name, description, source)


async def get_group(db: Database, group_id: int) -> Group | None:
    async with db.read() as conn:
        row = (await conn.execute(select(groups).where(groups.c.id == group_id))).first()
    return Group(row.id, row.name, row.description, row.source) if row else None


async def search_groups(db: Database, query: str, limit: int) -> list[Group]:
    """Groups whose name contains ``query`` (ignoring case), by name; at most ``limit``."""
    stmt = select(groups).order_by(groups.c.name, groups.c.id).limit(limit)
    if query:
        stmt = stmt.where(groups.c.name.ilike(contains_pattern(query), escape=LIKE_ESCAPE))
    async with db.read() as conn:
        return [Group(r.id, r.name, r.description) for r in await conn.execute(stmt)]


async def rooms_with_role(
    db: Database, holders: frozenset[Principal], role: str, limit: int
) -> list[int]:
    """The rooms (ids, ascending, at most ``limit``) where one of ``holders`` has ``role``
    directly: the candidates; whether the role counts is the rules' business."""
    users = [p.id for p in holders if p.kind == "user"]
    groups_ = [p.id for p in holders if p.kind == "group"]
    t = room_principals
    stmt = (
        select(t.c.room_id)
        .distinct()
        .where(
            t.c.role == role,
            (t.c.principal_kind == "everyone")
            | ((t.c.principal_kind == "user") & t.c.principal_id.in_(users))
            | ((t.c.principal_kind == "group") & t.c.principal_id.in_(groups_)),
        )
        .order_by(t.c.room_id)
        .limit(limit)
    )
    async with db.read() as conn:
        return [r.room_id for r in await conn.execute(stmt)]


async def delete_group(db: Database, group_id: int) -> bool:
    """Delete a group, its memberships in other groups and every grant it held."""
    async with db.write() as conn:
        await conn.execute(
            delete(group_members).where(
                group_members.c.member_kind == "group", group_members.c.member_id == group_id
            )
        )
        for table in (category_principals, room_principals):
            await conn.execute(
                delete(table).where(
                    table.c.principal_kind == "group", table.c.principal_id == group_id
                )
            )
        result = await conn.execute(delete(groups).where(groups.c.id == group_id))
        if result.rowcount:
            await outbox.capture(db, conn, "GROUP_DELETE", None, {"group": group_id})
    return bool(result.rowcount)


async def _edges(conn: Any) -> dict[int, set[int]]:
    """group id -> the groups it directly contains."""
    contains: dict[int, set[int]] = defaultdict(set)
    rows = await conn.execute(
        select(group_members.c.group_id, group_members.c.member_id).where(
            group_members.c.member_kind == "group"
        )
    )
    for row in rows:
        contains[row.group_id].add(row.member_id)
    return contains


def _reachable(contains: dict[int, set[int]], start: int) -> set[int]:
    seen = {start}
    stack = [start]
    while stack:
        for child in contains.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


async def add_group_members(db: Database, group_id: int, members: list[Principal]) -> None:
    """Add users and groups to a group; :class:`CycleError` if a group would contain itself."""
    async with db.write() as conn:
        contains = await _edges(conn)
        existing = {
            (r.member_kind, r.member_id)
            for r in await conn.execute(
                select(group_members.c.member_kind, group_members.c.member_id).where(
                    group_members.c.group_id == group_id
                )
            )
        }
        rows = []
        for member in members:
            if (member.kind, member.id) in existing:
                continue
            if member.kind == "group":
                if group_id in _reachable(contains, member.id):
                    raise CycleError(f"group {member.id} contains group {group_id}")
                contains[group_id].add(member.id)
            rows.append({"group_id": group_id, "member_kind": member.kind, "member_id": member.id})
            existing.add((member.kind, member.id))
        if rows:
            await conn.execute(insert(group_members), rows)
            added = [{"kind": r["member_kind"], "id": r["member_id"]} for r in rows]
            payload = {"group": group_id, "add": added, "remove": []}
            await outbox.capture(db, conn, "GROUP_MEMBERS", None, payload)


async def remove_group_members(db: Database, group_id: int, members: list[Principal]) -> None:
    async with db.write() as conn:
        for member in members:
            await conn.execute(
                delete(group_members).where(
                    group_members.c.group_id == group_id,
                    group_members.c.member_kind == member.kind,
                    group_members.c.member_id == member.id,
                )
            )
        if members:
            payload = {"group": group_id, "add": [], "remove": [m.wire() for m in members]}
            await outbox.capture(db, conn, "GROUP_MEMBERS", None, payload)


async def group_members_of(db: Database, group_id: int) -> list[Principal]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(group_members.c.member_kind, group_members.c.member_id)
            .where(group_members.c.group_id == group_id)
            .order_by(group_members.c.member_kind, group_members.c.member_id)
        )
        return [principal(r.member_kind, r.member_id) for r in rows]


async def load_membership(db: Database) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """Every direct membership: (user id -> groups, group id -> groups that contain it)."""
    user_groups: dict[int, set[int]] = defaultdict(set)
    group_parents: dict[int, set[int]] = defaultdict(set)
    async with db.read() as conn:
        for row in await conn.execute(select(group_members)):
            if row.member_kind == "user":
                user_groups[row.member_id].add(row.group_id)
            else:
                group_parents[row.member_id].add(row.group_id)
    return user_groups, group_parents


async def users_in_group(db: Database, group_id: int) -> set[int]:
    """Every user in the group, directly or through nested groups."""
    async with db.read() as conn:
        contains = await _edges(conn)
        all_groups = _reachable(contains, group_id)
        rows = await conn.execute(
            select(group_members.c.member_id).where(
                group_members.c.member_kind == "user", group_members.c.group_id.in_(all_groups)
            )
        )
        return {r.member_id for r in rows}


async def set_user_policy(db: Database, user_id: int, enabled: bool | None) -> bool:
    async with db.write() as conn:
        result = await conn.execute(
            update(users).where(users.c.id == user_id).values(persistent_chat_enabled=enabled)
        )
        if result.rowcount:
            payload = {"user": user_id, "persistent_chat_enabled": enabled}
            await outbox.capture(db, conn, "USER_POLICY", None, payload)
    return bool(result.rowcount)


async def change_grants(
    conn: Any,
    table: Any,
    owner_column: str,
    owner_id: int,
    add: dict[str, list[Principal]],
    remove: dict[str, list[Principal]],
) -> None:
    """Add and remove (role, principal) grants of one category or room, inside ``conn``'s
    transaction. ``table`` has the columns ``owner_column``, role, principal_kind, principal_id."""
    owner = table.c[owner_column]
    for role, principals in remove.items():
        for p in principals:
            await conn.execute(
                delete(table).where(
                    owner == owner_id,
                    table.c.role == role,
                    table.c.principal_kind == p.kind,
                    table.c.principal_id == p.id,
                )
            )
    existing = {
        (r.role, principal(r.principal_kind, r.principal_id))
        for r in await conn.execute(select(table).where(owner == owner_id))
    }
    rows = [
        {owner_column: owner_id, "role": role, "principal_kind": p.kind, "principal_id": p.id}
        for role, principals in add.items()
        for p in dict.fromkeys(principals)
        if (role, p) not in existing
    ]
    if rows:
        await conn.execute(insert(table), rows)
