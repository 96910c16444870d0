"""Legal holds: named holds on users and/or rooms, and the held versions of changed messages.

A hold covers a message when it is not lifted, names the message's room or its sender, and the
message was posted within the hold's date range. Nothing erases held content: a retention
purge skips it, and every change that would lose its text (the sender's edit or delete, an
administrator's removal or replacement, a room clear) first copies the version it replaces into
``held_messages`` in the same transaction, where compliance officers and administrators (and
nobody else) can read it (``GET /api/v1/holds/{id}/messages``).

Holds are few (a handful per deployment): they are read whole, inside the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database, now_ms
from .outbox import Event, record
from .schema import held_messages, legal_holds, messages

# Placing more holds than this is refused (they are read on every change of a message).
MAX_HOLDS = 1000
MAX_TARGETS = 10_000


@dataclass(frozen=True, slots=True)
class Hold:
    id: int
    name: str
    users: tuple[int, ...]
    rooms: tuple[int, ...]
    since_ms: int | None
    until_ms: int | None
    created_ms: int
    created_by: str
    lifted_ms: int | None = None
    lifted_by: str | None = None

    def covers(self, room: int, sender: int, ts: int) -> bool:
        if self.lifted_ms is not None:
            return False
        if room not in self.rooms and sender not in self.users:
            return False
        if self.since_ms is not None and ts < self.since_ms:
            return False
        return self.until_ms is None or ts <= self.until_ms

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "users": list(self.users),
            "rooms": list(self.rooms),
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "created_ms": self.created_ms,
            "created_by": self.created_by,
            "lifted_ms": self.lifted_ms,
            "lifted_by": self.lifted_by,
        }

    def condition(self) -> Any:
        """The SQL condition on ``messages`` of what this hold covers."""
        parts = []
        if self.rooms:
            parts.append(messages.c.room_id.in_(self.rooms))
        if self.users:
            parts.append(messages.c.sender_id.in_(self.users))
        cond = or_(*parts) if parts else messages.c.room_id < 0
        if self.since_ms is not None:
            cond = and_(cond, messages.c.ts >= self.since_ms)
        if self.until_ms is not None:
            cond = and_(cond, messages.c.ts <= self.until_ms)
        return cond


class HoldExists(Exception):
    pass


def _hold(row: Row[Any]) -> Hold:
    return Hold(
        row.id,
        row.name,
        tuple(json.loads(row.users)),
        tuple(json.loads(row.rooms)),
        row.since_ms,
        row.until_ms,
        row.created_ms,
        row.created_by,
        row.lifted_ms,
        row.lifted_by,
    )


async def active(conn: AsyncConnection) -> list[Hold]:
    """The holds not lifted, read in the caller's transaction."""
    rows = await conn.execute(select(legal_holds).where(legal_holds.c.lifted_ms.is_(None)))
    return [_hold(r) for r in rows]


def covering(holds: Iterable[Hold], room: int, sender: int, ts: int) -> bool:
    return any(h.covers(room, sender, ts) for h in holds)


def held_condition(holds: list[Hold]) -> Any:
    """SQL: the message is covered by one of ``holds`` (false when there are none)."""
    if not holds:
        return messages.c.room_id < 0
    return or_(*(h.condition() for h in holds))


async def keep_versions(
    conn: AsyncConnection, rows: Iterable[tuple[int, int, int, int, str]], reason: str
) -> int:
    """Copy (room, seq, sender, ts, text) of held messages about to change into held_messages,
    each as the next version of its message. Returns how many were kept."""
    values = []
    for room, seq, sender, ts, text in rows:
        last = await conn.scalar(
            select(func.max(held_messages.c.version)).where(
                held_messages.c.room_id == room, held_messages.c.seq == seq
            )
        )
        values.append(
            {
                "room_id": room,
                "seq": seq,
                "version": int(last or 0) + 1,
                "sender_id": sender,
                "ts": ts,
                "text": text,
                "reason": reason,
                "saved_ms": now_ms(),
            }
        )
    if values:
        await conn.execute(insert(held_messages), values)
    return len(values)


async def keep_held(conn: AsyncConnection, room: int, where: Any, reason: str) -> int:
    """Inside a change of the messages ``where`` selects in ``room``: keep the current version
    of those a hold covers (and not already gone). Returns how many."""
    holds = await active(conn)
    if not holds:
        return 0
    rows = await conn.execute(
        select(messages.c.seq, messages.c.sender_id, messages.c.ts, messages.c.text).where(
            messages.c.room_id == room,
            where,
            messages.c.state.not_in(("removed", "deleted")),
            held_condition(holds),
        )
    )
    return await keep_versions(
        conn, ((room, r.seq, r.sender_id, r.ts, r.text) for r in rows), reason
    )


async def place(
    db: Database,
    name: str,
    users: list[int],
    rooms: list[int],
    since_ms: int | None,
    until_ms: int | None,
    by: str,
    capture: str | None = None,
) -> Hold:
    """Place a hold (with capture on, a compliance ``HOLD`` event in the same transaction)."""
    async with db.write() as conn:
        if await conn.scalar(select(legal_holds.c.id).where(legal_holds.c.name == name)):
            raise HoldExists(name)
        result = await conn.execute(
            insert(legal_holds).values(
                name=name,
                users=json.dumps(sorted(set(users))),
                rooms=json.dumps(sorted(set(rooms))),
                since_ms=since_ms,
                until_ms=until_ms,
                created_ms=now_ms(),
                created_by=by,
            )
        )
        hold_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        row = (await conn.execute(select(legal_holds).where(legal_holds.c.id == hold_id))).one()
        hold = _hold(row)
        if capture is not None:
            await record(conn, capture, [Event("HOLD", None, None, hold.public())])
    return hold


async def lift(db: Database, hold_id: int, by: str, capture: str | None = None) -> Hold | None:
    """Lift a hold (it stays, for the record); None if there is no such hold not lifted. With
    capture on, a compliance ``HOLD_LIFT`` event in the same transaction."""
    async with db.write() as conn:
        result = await conn.execute(
            update(legal_holds)
            .where(legal_holds.c.id == hold_id, legal_holds.c.lifted_ms.is_(None))
            .values(lifted_ms=now_ms(), lifted_by=by)
        )
        if not result.rowcount:
            return None
        row = (await conn.execute(select(legal_holds).where(legal_holds.c.id == hold_id))).one()
        hold = _hold(row)
        if capture is not None:
            await record(conn, capture, [Event("HOLD_LIFT", None, None, hold.public())])
    return hold


async def listing(db: Database) -> list[Hold]:
    async with db.read() as conn:
        rows = await conn.execute(select(legal_holds).order_by(legal_holds.c.id))
        return [_hold(r) for r in rows]


async def get(db: Database, hold_id: int) -> Hold | None:
    async with db.read() as conn:
        row = (
            await conn.execute(select(legal_holds).where(legal_holds.c.id == hold_id))
        ).one_or_none()
    return None if row is None else _hold(row)


async def held_content(db: Database, hold: Hold, limit: int) -> list[dict[str, Any]]:
    """What ``hold`` covers as it stands and every kept earlier version, by room and seq:
    for compliance officers and administrators only (the caller checks)."""
    out: list[dict[str, Any]] = []
    async with db.read() as conn:
        rows = await conn.execute(
            select(
                messages.c.room_id,
                messages.c.seq,
                messages.c.sender_id,
                messages.c.ts,
                messages.c.text,
                messages.c.state,
            )
            .where(hold.condition())
            .order_by(messages.c.room_id, messages.c.seq)
            .limit(limit)
        )
        for r in rows:
            out.append(
                {
                    "room": r.room_id,
                    "seq": r.seq,
                    "sender": r.sender_id,
                    "ts": r.ts,
                    "text": r.text,
                    "state": r.state,
                    "versions": [],
                }
            )
        by_key = {(m["room"], m["seq"]): m for m in out}
        # Versions of messages that are gone (their room deleted) are listed too.
        covered = [held_messages.c.room_id.in_(hold.rooms)] if hold.rooms else []
        if hold.users:
            covered.append(held_messages.c.sender_id.in_(hold.users))
        if by_key:
            covered.append(held_messages.c.room_id.in_({room for room, _ in by_key}))
        found = await conn.execute(
            select(held_messages)
            .where(or_(*covered))
            .order_by(held_messages.c.room_id, held_messages.c.seq, held_messages.c.version)
        )
        for v in found:
            key = (v.room_id, v.seq)
            entry = by_key.get(key)
            if entry is None:
                if not hold.covers(v.room_id, v.sender_id, v.ts):
                    continue
                entry = {
                    "room": v.room_id,
                    "seq": v.seq,
                    "sender": v.sender_id,
                    "ts": v.ts,
                    "text": "",
                    "state": "gone",
                    "versions": [],
                }
                by_key[key] = entry
                out.append(entry)
            entry["versions"].append(
                {"version": v.version, "text": v.text, "reason": v.reason, "saved_ms": v.saved_ms}
            )
    return out
