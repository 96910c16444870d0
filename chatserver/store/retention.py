"""Retention policies and the purge: keep messages (and files) N days, then delete them.

A policy has a scope: the deployment (``scope_id`` 0), a category, or a room; a room follows
its own policy, else its category's, else the deployment's, else none (nothing of it is ever
purged). ``files_days`` (None: as ``days``) is how long files are kept, when shorter.

The purge works a room at a time, in bounded batches (one transaction each, at most
``batch`` messages), so a crash between batches loses nothing and the next run goes on where
it stopped: a batch deletes what is older than the cutoff, and nothing newer is ever selected.
Content a legal hold covers is never selected (:mod:`.holds`). With capture on, each batch
records a compliance ``PURGE`` event (room, seq range, count) in its transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, not_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from . import holds
from .db import Database
from .outbox import Event, record
from .schema import (
    file_chunks,
    files,
    held_messages,
    mentions,
    message_ops,
    messages,
    reactions,
    retention_policies,
    rooms,
)

DAY_MS = 86_400_000
SCOPES = ("deployment", "category", "room")


@dataclass(frozen=True, slots=True)
class Policy:
    scope: str  # deployment | category | room
    scope_id: int  # 0 for the deployment
    days: int
    files_days: int | None
    enabled: bool
    updated_ms: int = 0

    def cutoffs(self, now_ms: int) -> tuple[int, int]:
        """(messages posted before this are purged, files uploaded before this are)."""
        files_days = self.days if self.files_days is None else min(self.files_days, self.days)
        return now_ms - self.days * DAY_MS, now_ms - files_days * DAY_MS

    def public(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "scope_id": self.scope_id,
            "days": self.days,
            "files_days": self.files_days,
            "enabled": self.enabled,
            "updated_ms": self.updated_ms,
        }


async def policies(db: Database) -> list[Policy]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(retention_policies).order_by(
                retention_policies.c.scope, retention_policies.c.scope_id
            )
        )
        return [
            Policy(r.scope, r.scope_id, r.days, r.files_days, r.enabled, r.updated_ms) for r in rows
        ]


async def set_policy(db: Database, policy: Policy) -> None:
    key = (retention_policies.c.scope == policy.scope) & (
        retention_policies.c.scope_id == policy.scope_id
    )
    values = {
        "days": policy.days,
        "files_days": policy.files_days,
        "enabled": policy.enabled,
        "updated_ms": policy.updated_ms,
    }
    async with db.write() as conn:
        result = await conn.execute(update(retention_policies).where(key).values(**values))
        if not result.rowcount:
            await conn.execute(
                insert(retention_policies).values(
                    scope=policy.scope, scope_id=policy.scope_id, **values
                )
            )


async def delete_policy(db: Database, scope: str, scope_id: int) -> bool:
    async with db.write() as conn:
        result = await conn.execute(
            delete(retention_policies).where(
                retention_policies.c.scope == scope, retention_policies.c.scope_id == scope_id
            )
        )
    return bool(result.rowcount)


def effective(
    room_rows: list[tuple[int, int]], found: list[Policy], *, enabled_only: bool
) -> dict[int, Policy]:
    """Each room's policy (room, else category, else deployment), for rooms that have one.
    ``room_rows``: (room id, category id)."""
    usable = [p for p in found if p.enabled or not enabled_only]
    by_room = {p.scope_id: p for p in usable if p.scope == "room"}
    by_category = {p.scope_id: p for p in usable if p.scope == "category"}
    deployment = next((p for p in usable if p.scope == "deployment"), None)
    out: dict[int, Policy] = {}
    for room, category in room_rows:
        policy = by_room.get(room) or by_category.get(category) or deployment
        if policy is not None:
            out[room] = policy
    return out


async def room_rows(db: Database) -> list[tuple[int, int]]:
    async with db.read() as conn:
        rows = await conn.execute(select(rooms.c.id, rooms.c.category_id).order_by(rooms.c.id))
        return [(int(r.id), int(r.category_id)) for r in rows]


async def preview(db: Database, chosen: dict[int, Policy], now_ms: int) -> list[dict[str, Any]]:
    """What the purge would delete now under ``chosen`` (room → policy): per room with
    something to delete, the messages and files and the oldest/newest message time."""
    out: list[dict[str, Any]] = []
    async with db.read() as conn:
        held = holds.held_condition(await holds.active(conn))
        for room, policy in sorted(chosen.items()):
            cutoff, files_cutoff = policy.cutoffs(now_ms)
            row = (
                await conn.execute(
                    select(func.count(), func.min(messages.c.ts), func.max(messages.c.ts)).where(
                        messages.c.room_id == room, messages.c.ts < cutoff, not_(held)
                    )
                )
            ).one()
            file_count = await conn.scalar(
                select(func.count())
                .select_from(files)
                .where(
                    files.c.room_id == room,
                    files.c.state == "ready",
                    files.c.created_ms < files_cutoff,
                )
            )
            if row[0] or file_count:
                out.append(
                    {
                        "room": room,
                        "scope": policy.scope,
                        "days": policy.days,
                        "messages": int(row[0]),
                        "files": int(file_count or 0),
                        "oldest_ms": row[1],
                        "newest_ms": row[2],
                    }
                )
    return out


@dataclass(frozen=True, slots=True)
class Batch:
    room: int
    seqs: tuple[int, ...]  # messages deleted
    files: int  # files deleted (with their messages, or older than files_days)
    versions: int  # held versions no hold covers any more, deleted


async def purge_batch(
    db: Database, room: int, policy: Policy, now_ms: int, limit: int, capture: str | None
) -> Batch:
    """Delete at most ``limit`` of the room's messages older than the policy's cutoff (and
    their reactions, mentions, client ids and files), then its files older than the files
    cutoff, in one transaction; nothing a hold covers."""
    cutoff, files_cutoff = policy.cutoffs(now_ms)
    async with db.write() as conn:
        active = await holds.active(conn)
        held = holds.held_condition(active)
        seqs = tuple(
            int(r.seq)
            for r in await conn.execute(
                select(messages.c.seq)
                .where(messages.c.room_id == room, messages.c.ts < cutoff, not_(held))
                .order_by(messages.c.seq)
                .limit(limit)
            )
        )
        removed_files = 0
        if seqs:
            in_batch = messages.c.seq.in_(seqs)
            for table in (reactions, message_ops, mentions):
                await conn.execute(
                    delete(table).where(table.c.room_id == room, table.c.seq.in_(seqs))
                )
            removed_files += await _delete_files(
                conn, and_(files.c.room_id == room, files.c.seq.in_(seqs))
            )
            await conn.execute(delete(messages).where(messages.c.room_id == room, in_batch))
        # Older files whose messages stay (files_days shorter than days), unless held.
        held_seqs = select(messages.c.seq).where(messages.c.room_id == room, held)
        removed_files += await _delete_files(
            conn,
            and_(
                files.c.room_id == room,
                files.c.state == "ready",
                files.c.created_ms < files_cutoff,
                files.c.seq.not_in(held_seqs),
            ),
            limit,
        )
        versions = await _expired_versions(conn, room, cutoff, active, limit)
        if capture is not None and (seqs or removed_files):
            payload = {
                "from_seq": seqs[0] if seqs else None,
                "to_seq": seqs[-1] if seqs else None,
                "messages": len(seqs),
                "files": removed_files,
                "cutoff_ms": cutoff,
                "scope": policy.scope,
                "days": policy.days,
            }
            await record(conn, capture, [Event("PURGE", room, None, payload, now_ms)])
    return Batch(room, seqs, removed_files, versions)


async def _delete_files(conn: AsyncConnection, where: Any, limit: int | None = None) -> int:
    stmt = select(files.c.id).where(where).order_by(files.c.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    ids = [int(r.id) for r in await conn.execute(stmt)]
    if ids:
        await conn.execute(delete(file_chunks).where(file_chunks.c.file_id.in_(ids)))
        await conn.execute(delete(files).where(files.c.id.in_(ids)))
    return len(ids)


async def _expired_versions(
    conn: AsyncConnection, room: int, cutoff: int, active: list[holds.Hold], limit: int
) -> int:
    """Held versions of the room's messages older than the cutoff that no hold covers now."""
    rows = await conn.execute(
        select(
            held_messages.c.seq,
            held_messages.c.version,
            held_messages.c.sender_id,
            held_messages.c.ts,
        )
        .where(held_messages.c.room_id == room, held_messages.c.ts < cutoff)
        .limit(limit)
    )
    expired = [
        (r.seq, r.version) for r in rows if not holds.covering(active, room, r.sender_id, r.ts)
    ]
    for seq, version in expired:
        await conn.execute(
            delete(held_messages).where(
                held_messages.c.room_id == room,
                held_messages.c.seq == seq,
                held_messages.c.version == version,
            )
        )
    return len(expired)
