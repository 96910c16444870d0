"""Store functions of the management port: audit log, add-ins, run-time settings, message
moderation (replace / remove / clear) and the administrators' room queries.

Moderation never deletes a message row: a removed message becomes a tombstone (``state =
"removed"``, text gone) so every room keeps its gap-free ``seq`` order (ARCHITECTURE invariant 2);
a replaced one keeps its ``seq`` with the substituted text. When compliance is on, each change is
recorded in the compliance outbox, with the original text, in the same transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import LargeBinary, cast, delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from . import holds, outbox
from .db import LIKE_ESCAPE, Database, contains_pattern, now_ms
from .files import remove_covered
from .schema import addins, audit_log, groups, messages, room_principals, rooms, settings, users

# -- audit log ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts_ms: int
    actor: str
    actor_id: int | None
    action: str
    target: str
    before: Any
    after: Any

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts_ms,
            "actor": self.actor,
            "actor_id": self.actor_id,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
        }


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


async def audit(
    db: Database,
    actor: str,
    actor_id: int | None,
    action: str,
    target: str,
    before: Any,
    after: Any,
) -> None:
    async with db.write() as conn:
        await conn.execute(
            insert(audit_log).values(
                ts_ms=now_ms(),
                actor=actor,
                actor_id=actor_id,
                action=action,
                target=target,
                before=_json(before),
                after=_json(after),
            )
        )


async def audit_entries(
    db: Database,
    *,
    limit: int,
    before_id: int | None = None,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
    since_ms: int | None = None,
) -> list[AuditEntry]:
    """Newest first."""
    stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(audit_log.c.id < before_id)
    if action:
        stmt = stmt.where(audit_log.c.action == action)
    if actor:
        stmt = stmt.where(audit_log.c.actor == actor)
    if target:
        stmt = stmt.where(audit_log.c.target == target)
    if since_ms is not None:
        stmt = stmt.where(audit_log.c.ts_ms >= since_ms)
    async with db.read() as conn:
        rows = list(await conn.execute(stmt))
    return [
        AuditEntry(
            r.id,
            r.ts_ms,
            r.actor,
            r.actor_id,
            r.action,
            r.target,
            None if r.before is None else json.loads(r.before),
            None if r.after is None else json.loads(r.after),
        )
        for r in rows
    ]


# -- groups ---------------------------------------------------------------------------------


async def list_groups(db: Database) -> list[dict[str, Any]]:
    async with db.read() as conn:
        rows = await conn.execute(select(groups).order_by(groups.c.name))
        return [
            {"id": r.id, "name": r.name, "description": r.description, "source": r.source}
            for r in rows
        ]


# -- add-ins --------------------------------------------------------------------------------


class AddinExists(Exception):
    pass


class AddinInUse(Exception):
    pass


def _addin(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "url": row.url, "created": row.created_ms}


async def list_addins(db: Database) -> list[dict[str, Any]]:
    async with db.read() as conn:
        return [_addin(r) for r in await conn.execute(select(addins).order_by(addins.c.name))]


async def get_addin(db: Database, addin_id: int) -> dict[str, Any] | None:
    async with db.read() as conn:
        row = (await conn.execute(select(addins).where(addins.c.id == addin_id))).first()
    return None if row is None else _addin(row)


async def create_addin(db: Database, name: str, url: str) -> dict[str, Any]:
    try:
        async with db.write() as conn:
            result = await conn.execute(
                insert(addins).values(name=name, url=url, created_ms=now_ms())
            )
            key = result.inserted_primary_key
            assert key is not None
            addin_id = int(key[0])
    except IntegrityError:
        raise AddinExists(name) from None
    found = await get_addin(db, addin_id)
    assert found is not None
    return found


async def update_addin(db: Database, addin_id: int, **values: Any) -> bool:
    try:
        async with db.write() as conn:
            result = await conn.execute(
                update(addins).where(addins.c.id == addin_id).values(**values)
            )
    except IntegrityError:
        raise AddinExists(values.get("name", "")) from None
    return bool(result.rowcount)


async def delete_addin(db: Database, addin_id: int) -> bool:
    async with db.write() as conn:
        # Lock the row first: a room update setting this add-in (which locks it too) has either
        # committed, and is counted below, or waits and then finds no add-in.
        await conn.execute(select(addins.c.id).where(addins.c.id == addin_id).with_for_update())
        used = await conn.execute(
            select(func.count()).select_from(rooms).where(rooms.c.addin_id == addin_id)
        )
        if used.scalar_one():
            raise AddinInUse(addin_id)
        result = await conn.execute(delete(addins).where(addins.c.id == addin_id))
    return bool(result.rowcount)


# -- run-time settings ----------------------------------------------------------------------


async def load_settings(db: Database) -> dict[str, dict[str, Any]]:
    """Every stored setting: scope ("" = the whole deployment, else a node name) -> key -> value."""
    out: dict[str, dict[str, Any]] = {}
    async with db.read() as conn:
        for row in await conn.execute(select(settings)):
            out.setdefault(row.scope, {})[row.key] = json.loads(row.value)
    return out


async def store_settings(db: Database, scope: str, values: dict[str, Any]) -> None:
    """Set (or, for a value of ``None``, clear) settings at ``scope``, in one transaction."""
    async with db.write() as conn:
        for key, value in values.items():
            await conn.execute(
                delete(settings).where(settings.c.scope == scope, settings.c.key == key)
            )
            if value is not None:
                await conn.execute(
                    insert(settings).values(scope=scope, key=key, value=json.dumps(value))
                )


# -- message moderation ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageFilter:
    room_id: int | None = None
    user_id: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    keywords: tuple[str, ...] = ()
    match: str = "all"  # all | any | exact
    case_sensitive: bool = False

    def matches(self, text: str) -> bool:
        if not self.keywords:
            return True
        haystack = text if self.case_sensitive else text.casefold()
        words = [k if self.case_sensitive else k.casefold() for k in self.keywords]
        if self.match == "exact":
            return any(haystack == w for w in words)
        if self.match == "any":
            return any(w in haystack for w in words)
        return all(w in haystack for w in words)


@dataclass(frozen=True, slots=True)
class FoundMessage:
    room_id: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    text: str
    state: str

    def public(self) -> dict[str, Any]:
        return {
            "room": self.room_id,
            "seq": self.seq,
            "ts": self.ts,
            "sender": {"id": self.sender_id, "name": self.sender_name},
            "text": self.text,
            "state": self.state,
        }


# Rows examined per page while filtering by keyword in Python.
_SCAN_PAGE = 2000


async def find_messages(
    db: Database, flt: MessageFilter, limit: int, *, conn: Any = None
) -> list[FoundMessage]:
    """Up to ``limit`` messages (not removed) that match ``flt``, oldest first."""
    found: list[FoundMessage] = []
    cursor: tuple[int, int] = (0, 0)
    stmt = (
        select(
            messages.c.room_id,
            messages.c.seq,
            messages.c.ts,
            messages.c.sender_id,
            users.c.name,
            messages.c.text,
            messages.c.state,
        )
        .join(users, users.c.id == messages.c.sender_id)
        .where(messages.c.state != "removed")
        .order_by(messages.c.room_id, messages.c.seq)
        .limit(_SCAN_PAGE)
    )
    if flt.room_id is not None:
        stmt = stmt.where(messages.c.room_id == flt.room_id)
    if flt.user_id is not None:
        stmt = stmt.where(messages.c.sender_id == flt.user_id)
    if flt.since_ms is not None:
        stmt = stmt.where(messages.c.ts >= flt.since_ms)
    if flt.until_ms is not None:
        stmt = stmt.where(messages.c.ts <= flt.until_ms)

    async def scan(c: Any) -> None:
        nonlocal cursor
        while len(found) < limit:
            page = list(
                await c.execute(stmt.where(tuple_(messages.c.room_id, messages.c.seq) > cursor))
            )
            for r in page:
                if flt.matches(r.text):
                    found.append(
                        FoundMessage(r.room_id, r.seq, r.ts, r.sender_id, r.name, r.text, r.state)
                    )
                    if len(found) >= limit:
                        break
            if len(page) < _SCAN_PAGE:
                return
            cursor = (page[-1].room_id, page[-1].seq)

    if conn is not None:
        await scan(conn)
    else:
        async with db.read() as c:
            await scan(c)
    return found


async def change_messages(
    db: Database,
    flt: MessageFilter,
    *,
    state: str,
    text: str,
    limit: int,
    compliance_node: str | None,
    actor: str,
) -> list[FoundMessage]:
    """Replace (``state="replaced"``) or remove (``state="removed"``) up to ``limit`` matching
    messages in one transaction; returns the originals."""
    assert state in ("replaced", "removed")
    async with db.write() as conn:
        found = await find_messages(db, flt, limit, conn=conn)
        for room_id in sorted({m.room_id for m in found}):
            seqs = [m.seq for m in found if m.room_id == room_id]
            # Held versions are kept; the room's change number moves (resume's changes).
            await holds.keep_held(conn, room_id, messages.c.seq.in_(seqs), state[:-1])
            number = await _next_change(conn, room_id)
            await conn.execute(
                update(messages)
                .where(messages.c.room_id == room_id, messages.c.seq.in_(seqs))
                .values(state=state, text=text if state == "replaced" else "", change_no=number)
            )
        if state == "removed":  # the files those messages carried go with them
            by_room: dict[int, list[int]] = {}
            for m in found:
                by_room.setdefault(m.room_id, []).append(m.seq)
            for room_id, seqs in by_room.items():
                await remove_covered(conn, room_id, seqs)
        if compliance_node is not None and found:
            kind = "REPLACE" if state == "replaced" else "REMOVE"
            await outbox.record(
                conn,
                compliance_node,
                [
                    outbox.Event(
                        kind,
                        m.room_id,
                        m.sender_id,
                        {
                            "seq": m.seq,
                            "original_text": m.text,
                            "new_text": text if state == "replaced" else None,
                            "by": actor,
                        },
                    )
                    for m in found
                ],
            )
    return found


async def _next_change(conn: AsyncConnection, room_id: int) -> int:
    """Take the room's next change number (the row lock orders it with users' changes)."""
    await conn.execute(
        update(rooms).where(rooms.c.id == room_id).values(change_no=rooms.c.change_no + 1)
    )
    value = await conn.scalar(select(rooms.c.change_no).where(rooms.c.id == room_id))
    return int(value or 0)


async def clear_room(
    db: Database, room_id: int, until_ms: int, *, compliance_node: str | None, actor: str
) -> tuple[int, int]:
    """Remove every message of the room posted at or before ``until_ms``.

    Returns (messages removed, ``through_seq``, or 0 when nothing was removed). The bound is a
    seq: the highest seq posted at or before ``until_ms``, and every message up to it is removed
    in the same transaction, so what the announcement ``through_seq`` tells clients to drop is
    exactly what the store no longer serves, even where message times and seqs disagree (times
    from two nodes' clocks, or two commits that overtook each other).
    """
    in_room = messages.c.room_id == room_id
    async with db.write() as conn:
        top = (
            await conn.execute(
                select(func.max(messages.c.seq)).where(in_room, messages.c.ts <= until_ms)
            )
        ).scalar_one_or_none()
        if not top:
            return 0, 0
        await holds.keep_held(conn, room_id, messages.c.seq <= top, "clear")
        number = await _next_change(conn, room_id)
        result = await conn.execute(
            update(messages)
            .where(in_room, messages.c.seq <= top, messages.c.state != "removed")
            .values(state="removed", text="", change_no=number)
        )
        count = int(result.rowcount)
        if count:
            await remove_covered(conn, room_id, None)
        if count and compliance_node is not None:
            await outbox.record(
                conn,
                compliance_node,
                [
                    outbox.Event(
                        "CLEAR",
                        room_id,
                        None,
                        {
                            "until_ms": until_ms,
                            "removed": count,
                            "through_seq": top,
                            "by": actor,
                        },
                    )
                ],
            )
    return (count, int(top)) if count else (0, 0)


# -- administrators' room queries -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomQuery:
    category_id: int | None = None
    privacy: str | None = None
    type: str | None = None
    disabled: bool | None = None
    member: tuple[str, int] | None = None  # (principal kind, id), a direct grant
    manager: tuple[str, int] | None = None
    addin_id: int | None = None
    contains: str | None = None  # in the name or description, any case
    content_exceeds_mb: float | None = None


def _text_bytes(db: Database) -> Any:
    """The size of a message's text in bytes (UTF-8), not characters."""
    if db.dialect == "sqlite":
        return func.length(cast(messages.c.text, LargeBinary))
    return func.octet_length(messages.c.text)


async def query_rooms(db: Database, q: RoomQuery, *, after_id: int, limit: int) -> list[int]:
    """Ids of the rooms that match every given filter, ascending, after ``after_id``."""
    stmt = select(rooms.c.id).where(rooms.c.id > after_id).order_by(rooms.c.id).limit(limit)
    if q.category_id is not None:
        stmt = stmt.where(rooms.c.category_id == q.category_id)
    if q.privacy is not None:
        stmt = stmt.where(rooms.c.privacy == q.privacy)
    if q.type is not None:
        stmt = stmt.where(rooms.c.type == q.type)
    if q.disabled is not None:
        stmt = stmt.where(rooms.c.disabled.is_(q.disabled))
    if q.addin_id is not None:
        stmt = stmt.where(rooms.c.addin_id == q.addin_id)
    if q.contains:
        pattern = contains_pattern(q.contains)
        stmt = stmt.where(
            rooms.c.name.ilike(pattern, escape=LIKE_ESCAPE)
            | rooms.c.description.ilike(pattern, escape=LIKE_ESCAPE)
        )
    for role, principal in (("member", q.member), ("manager", q.manager)):
        if principal is not None:
            stmt = stmt.where(
                rooms.c.id.in_(
                    select(room_principals.c.room_id).where(
                        room_principals.c.role == role,
                        room_principals.c.principal_kind == principal[0],
                        room_principals.c.principal_id == principal[1],
                    )
                )
            )
    if q.content_exceeds_mb is not None:
        threshold = int(q.content_exceeds_mb * 1024 * 1024)
        stmt = stmt.where(
            rooms.c.id.in_(
                select(messages.c.room_id)
                .group_by(messages.c.room_id)
                .having(func.sum(_text_bytes(db)) > threshold)
            )
        )
    async with db.read() as conn:
        return [r.id for r in await conn.execute(stmt)]
