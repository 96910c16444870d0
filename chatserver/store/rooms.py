"""Rooms: the directory, each room's settings and roles, its last sequence number, invitations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import BigInteger, delete, func, insert, literal, select, update

from . import holds, outbox
from .db import Database, now_ms
from .principals import Principal, change_grants, principal
from .schema import addins, invitations, messages, room_principals, rooms

ROLES = ("member", "manager", "presenter")
PRIVACY = ("open", "closed", "secret")
TYPES = ("normal", "auditorium")
INVITATIONS = ("inherit", "off")


@dataclass(frozen=True, slots=True)
class Room:
    id: int
    name: str
    description: str
    last_seq: int
    category_id: int = 1
    privacy: str = "closed"
    type: str = "normal"
    disabled: bool = False
    invitations: str = "inherit"
    addin_id: int | None = None
    members: frozenset[Principal] = field(default_factory=frozenset)
    managers: frozenset[Principal] = field(default_factory=frozenset)
    presenters: frozenset[Principal] = field(default_factory=frozenset)

    def public(self, *, with_roles: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "last_seq": self.last_seq,
            "category": self.category_id,
            "privacy": self.privacy,
            "type": self.type,
            "disabled": self.disabled,
            "invitations": self.invitations,
            "addin": self.addin_id,
        }
        if with_roles:
            for name in ("members", "managers", "presenters"):
                out[name] = [p.wire() for p in sorted(getattr(self, name))]
        return out

    def with_roles(self, roles: dict[str, set[Principal]]) -> Room:
        return replace(
            self,
            members=frozenset(roles.get("member", ())),
            managers=frozenset(roles.get("manager", ())),
            presenters=frozenset(roles.get("presenter", ())),
        )


class AddinMissing(Exception):
    """``update_room`` was given an ``addin_id`` no add-in has."""


class RoomExists(Exception):
    pass


Clash = Callable[[Room], bool]
"""Whether a room that already has the wanted name stands in the way of a new room or a rename.

Names are not unique in the store: the rooms layer refuses only a name that clashes with a room
the person naming may find (docs/governance.md, section 6), so that the answer tells nobody of a
room they may not find."""


def any_room(_room: Room) -> bool:
    """Every room with the name clashes: names unique across all rooms (``chatserver room add``,
    run by the operator, who sees every room)."""
    return True


# The first key of the PostgreSQL advisory lock that queues two transactions naming rooms alike.
_NAME_LOCK = 0x726F6F6D  # "room"


async def _name_taken(
    db: Database, conn: Any, name: str, clash: Clash, *, other_than: int | None = None
) -> bool:
    """Whether a room named ``name`` (other than ``other_than``) clashes, inside ``conn``'s write
    transaction. SQLite's write lock already queues writers; on PostgreSQL a transaction-scoped
    advisory lock on the name does, so that of two rooms created with one name at one moment,
    the second sees the first."""
    if db.is_postgres:
        await conn.execute(select(func.pg_advisory_xact_lock(_NAME_LOCK, func.hashtext(name))))
    stmt = select(rooms).where(rooms.c.name == name)
    if other_than is not None:
        stmt = stmt.where(rooms.c.id != other_than)
    named = {row.id: _room(row) for row in await conn.execute(stmt)}
    if not named:
        return False
    roles: dict[int, dict[str, set[Principal]]] = {room_id: {} for room_id in named}
    for r in await conn.execute(
        select(room_principals).where(room_principals.c.room_id.in_(list(named)))
    ):
        roles[r.room_id].setdefault(r.role, set()).add(principal(r.principal_kind, r.principal_id))
    return any(clash(room.with_roles(roles[room.id])) for room in named.values())


def _room(row: Any) -> Room:
    return _room_of(row._mapping)


def _room_of(values: Any) -> Room:
    """A room from a mapping of its columns (a SQLAlchemy row's mapping, an asyncpg record)."""
    return Room(
        values["id"],
        values["name"],
        values["description"],
        values["last_seq"],
        values["category_id"],
        values["privacy"],
        values["type"],
        bool(values["disabled"]),
        values["invitations"],
        values["addin_id"],
    )


async def create_room(
    db: Database,
    name: str,
    description: str = "",
    *,
    category_id: int = 1,
    privacy: str = "open",
    type: str = "normal",
    invitations: str = "inherit",
    managers: tuple[Principal, ...] = (),
    clash: Clash = any_room,
) -> Room:
    """Create a room; :class:`RoomExists` if a room of that name ``clash``-es (by default: any
    room of that name). The defaults make an open room in "General", as ``chatserver room add``
    and the tests expect; the protocol's ``room.create`` defaults to closed."""
    async with db.write() as conn:
        if await _name_taken(db, conn, name, clash):
            raise RoomExists(name)
        result = await conn.execute(
            insert(rooms)
            .values(
                name=name,
                description=description,
                last_seq=0,
                created_ms=now_ms(),
                category_id=category_id,
                privacy=privacy,
                type=type,
                disabled=False,
                invitations=invitations,
            )
            .returning(rooms.c.id)
        )
        room_id = int(result.scalar_one())
        if managers:
            await conn.execute(
                insert(room_principals),
                [
                    {
                        "room_id": room_id,
                        "role": "manager",
                        "principal_kind": p.kind,
                        "principal_id": p.id,
                    }
                    for p in managers
                ],
            )
        await outbox.capture(
            db,
            conn,
            "ROOM_CREATE",
            room_id,
            {
                "name": name,
                "description": description,
                "category": category_id,
                "privacy": privacy,
                "type": type,
                "invitations": invitations,
                "managers": [p.wire() for p in sorted(managers)],
            },
        )
    return Room(
        room_id,
        name,
        description,
        0,
        category_id,
        privacy,
        type,
        False,
        invitations,
        None,
        managers=frozenset(managers),
    )


def _one_room(rows: Any) -> Room | None:
    """The room of :func:`get_room`'s rows: the room's columns and one role per row, or one row
    of NULLs for a missing room.

    A missing room's row is made into a room too, and then dropped: the answer for a room that
    does not exist costs what the answer for one that does costs (see :func:`get_room`).
    """
    roles: dict[str, set[Principal]] = {"member": set(), "manager": set(), "presenter": set()}
    first = None
    for r in rows:
        if first is None:
            first = r
        if r["role"] is not None:
            roles[r["role"]].add(principal(r["principal_kind"], r["principal_id"]))
    if first is None:
        return None
    room = Room(
        first["id"],
        first["name"],
        first["description"],
        first["last_seq"],
        first["category_id"],
        first["privacy"],
        first["type"],
        bool(first["disabled"]),
        first["invitations"],
        first["addin_id"],
        frozenset(roles["member"]),
        frozenset(roles["manager"]),
        frozenset(roles["presenter"]),
    )
    return None if room.id is None else room


_ROOM_COLUMNS = (
    "r.id, r.name, r.description, r.last_seq, r.category_id, r.privacy, r.type, r.disabled,"
    " r.invitations, r.addin_id"
)
# One statement that yields at least one row whether the room exists or not: the room's columns
# and one role per row, or a single row of NULLs for a missing room.
_GET_ROOM_PG = (
    f"SELECT {_ROOM_COLUMNS}, p.role, p.principal_kind, p.principal_id"
    " FROM (SELECT $1::bigint AS id) AS probe"
    " LEFT JOIN rooms AS r ON r.id = probe.id"
    " LEFT JOIN room_principals AS p ON p.room_id = r.id"
)

NO_ROOM = 0
"""A room id that is never given out (ids start at 1): reading it costs what reading any
missing room costs."""


async def get_room(db: Database, room_id: int) -> Room | None:
    """The room with its role lists.

    One statement that yields a row whether the room exists or not (a missing room's is all
    NULLs, made into a room and dropped), so that reading a missing room costs what reading a
    room with one role costs: a room a user may not find cannot be told from a missing one by
    how long the answer takes (docs/security.md). It also reads the room and its roles in one
    snapshot.
    """
    if db.is_postgres:
        # A room is read by every node on its first join there: one statement on the asyncpg
        # pool instead of three round trips through SQLAlchemy (begin, select, rollback).
        pool = await db.pg_pool()
        async with pool.acquire() as conn:
            return _one_room(await conn.fetch(_GET_ROOM_PG, room_id))
    probe = select(literal(room_id, BigInteger).label("probe_id")).subquery("probe")
    stmt = select(
        rooms,
        room_principals.c.role,
        room_principals.c.principal_kind,
        room_principals.c.principal_id,
    ).select_from(
        probe.outerjoin(rooms, rooms.c.id == probe.c.probe_id).outerjoin(
            room_principals, room_principals.c.room_id == rooms.c.id
        )
    )
    async with db.read() as conn:
        return _one_room([row._mapping for row in await conn.execute(stmt)])


GET_ROOMS_CHUNK = 500  # room ids per statement of get_rooms on SQLite (under its 32,766)
_GET_ROOMS_PG = (
    f"SELECT {_ROOM_COLUMNS}, p.role, p.principal_kind, p.principal_id"
    " FROM rooms AS r LEFT JOIN room_principals AS p ON p.room_id = r.id"
    " WHERE r.id = ANY($1::bigint[])"
)


async def get_rooms(db: Database, room_ids: list[int]) -> dict[int, Room]:
    """The rooms of ``room_ids`` that exist, with their role lists, by id: what :func:`get_room`
    reads for one, for many at once (one statement; on SQLite one per :data:`GET_ROOMS_CHUNK`
    ids)."""
    out: dict[int, Room] = {}
    if db.is_postgres:
        # asyncpg's records, as get_room: a room's rows are one per role (tens of thousands for
        # a thousand rooms), and SQLAlchemy's rows cost several times more each.
        pool = await db.pg_pool()
        async with pool.acquire() as pg:
            records = await pg.fetch(_GET_ROOMS_PG, room_ids)
        grouped_pg: dict[int, list[Any]] = {}
        for record in records:
            grouped_pg.setdefault(record["id"], []).append(record)
        for room_id, group in grouped_pg.items():
            room = _one_room(group)
            if room is not None:
                out[room_id] = room
        return out
    async with db.read() as conn:
        for start in range(0, len(room_ids), GET_ROOMS_CHUNK):
            chunk = room_ids[start : start + GET_ROOMS_CHUNK]
            stmt = (
                select(
                    rooms,
                    room_principals.c.role,
                    room_principals.c.principal_kind,
                    room_principals.c.principal_id,
                )
                .select_from(
                    rooms.outerjoin(room_principals, room_principals.c.room_id == rooms.c.id)
                )
                .where(rooms.c.id.in_(chunk))
            )
            grouped: dict[int, list[Any]] = {}
            for row in await conn.execute(stmt):
                grouped.setdefault(row.id, []).append(row._mapping)
            for room_id, group in grouped.items():
                room = _one_room(group)
                if room is not None:
                    out[room_id] = room
    return out


async def list_rooms(
    db: Database,
    *,
    query: str | None,
    after: tuple[str, int | None] | None,
    limit: int,
    category_id: int | None = None,
) -> list[Room]:
    """Rooms ordered by name and id, those whose name or description contains ``query`` (any
    case), after ``after`` (a name and id; a name alone: after every room of that name).

    Role lists are not loaded; the caller filters what each user may see.
    """
    stmt = select(rooms).order_by(rooms.c.name, rooms.c.id).limit(limit)
    if query:
        escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = "%" + escaped + "%"
        stmt = stmt.where(
            rooms.c.name.ilike(pattern, escape="\\")
            | rooms.c.description.ilike(pattern, escape="\\")
        )
    if after is not None:
        after_name, after_id = after
        if after_id is None:
            stmt = stmt.where(rooms.c.name > after_name)
        else:  # names are not unique: (name, id) is the key
            stmt = stmt.where(
                (rooms.c.name > after_name)
                | ((rooms.c.name == after_name) & (rooms.c.id > after_id))
            )
    if category_id is not None:
        stmt = stmt.where(rooms.c.category_id == category_id)
    async with db.read() as conn:
        return [_room(row) for row in await conn.execute(stmt)]


async def update_room(
    db: Database, room_id: int, *, clash: Clash = any_room, **values: Any
) -> None:
    """Change the room's columns; a new ``name`` raises :class:`RoomExists` if another room of
    that name ``clash``-es (see :func:`create_room`); an ``addin_id`` that is not an add-in's
    raises :class:`AddinMissing` (the add-in's row is locked until the commit, so a concurrent
    ``delete_addin`` either runs first or sees the room using it)."""
    async with db.write() as conn:
        addin_id = values.get("addin_id")
        if addin_id is not None:
            found = await conn.execute(
                select(addins.c.id).where(addins.c.id == addin_id).with_for_update()
            )
            if found.first() is None:
                raise AddinMissing(addin_id)
        if "name" in values and await _name_taken(
            db, conn, values["name"], clash, other_than=room_id
        ):
            raise RoomExists(values["name"])
        result = await conn.execute(update(rooms).where(rooms.c.id == room_id).values(**values))
        if result.rowcount:
            kind = "ROOM_UPDATE"
            if set(values) == {"disabled"}:
                kind = "ROOM_DISABLE" if values["disabled"] else "ROOM_ENABLE"
            await outbox.capture(db, conn, kind, room_id, {"values": values})


async def change_roles(
    db: Database,
    room_id: int,
    add: dict[str, list[Principal]],
    remove: dict[str, list[Principal]],
) -> None:
    async with db.write() as conn:
        await change_grants(conn, room_principals, "room_id", room_id, add, remove)
        if any(add.values()) or any(remove.values()):
            await outbox.capture(db, conn, "ROOM_ROLES", room_id, outbox.grants(add, remove))


async def delete_room(db: Database, room_id: int) -> bool:
    async with db.write() as conn:
        name = None
        if outbox.node_for(db) is not None:
            found = await conn.execute(select(rooms.c.name).where(rooms.c.id == room_id))
            name = found.scalar_one_or_none()
        # Held messages outlive their room (held_messages has no foreign key to it).
        await holds.keep_held(conn, room_id, messages.c.room_id == room_id, "room_delete")
        result = await conn.execute(delete(rooms).where(rooms.c.id == room_id))
        if result.rowcount:
            await outbox.capture(db, conn, "ROOM_DELETE", room_id, {"name": name})
    return bool(result.rowcount)


# -- invitations ---------------------------------------------------------------------------


async def add_invitations(db: Database, room_id: int, user_ids: set[int], inviter: int) -> set[int]:
    """Record pending invitations; returns the users newly invited."""
    async with db.write() as conn:
        existing = {
            r.user_id
            for r in await conn.execute(
                select(invitations.c.user_id).where(invitations.c.room_id == room_id)
            )
        }
        new = user_ids - existing
        if new:
            created = now_ms()
            await conn.execute(
                insert(invitations),
                [
                    {"user_id": u, "room_id": room_id, "inviter_id": inviter, "created_ms": created}
                    for u in sorted(new)
                ],
            )
    return new


async def pending_invitations(db: Database, user_id: int) -> list[tuple[int, int | None, int]]:
    """(room id, inviter id, created ms) of the user's pending invitations."""
    async with db.read() as conn:
        rows = await conn.execute(
            select(invitations)
            .where(invitations.c.user_id == user_id)
            .order_by(invitations.c.created_ms)
        )
        return [(r.room_id, r.inviter_id, r.created_ms) for r in rows]


async def remove_invitation(db: Database, user_id: int, room_id: int) -> bool:
    async with db.write() as conn:
        result = await conn.execute(
            delete(invitations).where(
                invitations.c.user_id == user_id, invitations.c.room_id == room_id
            )
        )
    return bool(result.rowcount)
