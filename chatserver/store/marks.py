"""Read markers and mentions (issue 17): one function per question, both dialects.

A read marker only moves forward: :func:`save_markers` keeps the higher of the stored and the
given seq. Mentions are written inside the transaction that stores their messages
(chatserver/store/messages.py): by :func:`insert_mentions` on SQLite, by the statement
:data:`STORE_BATCH_WITH_MENTIONS_PG` on PostgreSQL. So a mention exists exactly when its message
does; the mentions since a marker are a range of the primary key (user, room, seq).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import PG_NOW_MS, Database
from .schema import mentions, messages, read_markers, rooms, users


@dataclass(frozen=True, slots=True)
class Mention:
    """A stored mention of a user, with its message when the room keeps history."""

    room: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    text: str | None  # None: not kept (chat history off), removed, or cleared

    def wire(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "seq": self.seq,
            "ts": self.ts,
            "sender": {"id": self.sender_id, "name": self.sender_name},
            "text": self.text,
        }


async def save_markers(db: Database, markers: dict[tuple[int, int], int]) -> None:
    """Store ``(user, room) -> seq`` markers in one transaction; a marker never moves back.

    A marker for a user or room deleted meanwhile is dropped (the foreign keys would refuse it).
    """
    if not markers:
        return
    async with db.write() as conn:
        rows = [{"user_id": u, "room_id": r, "seq": s} for (u, r), s in markers.items()]
        if db.is_postgres:
            stmt = pg_insert(read_markers)
            stmt = stmt.on_conflict_do_update(
                index_elements=["user_id", "room_id"],
                set_={"seq": func.greatest(read_markers.c.seq, stmt.excluded.seq)},
            )
        else:
            lite = sqlite_insert(read_markers)
            stmt = lite.on_conflict_do_update(  # type: ignore[assignment]
                index_elements=["user_id", "room_id"],
                set_={"seq": func.max(read_markers.c.seq, lite.excluded.seq)},
            )
        # Only for users and rooms that still exist (a refused row would fail the others).
        alive_rooms = {
            r
            for (r,) in await conn.execute(
                select(rooms.c.id).where(rooms.c.id.in_({r for _u, r in markers}))
            )
        }
        alive_users = {
            u
            for (u,) in await conn.execute(
                select(users.c.id).where(users.c.id.in_({u for u, _r in markers}))
            )
        }
        rows = [x for x in rows if x["room_id"] in alive_rooms and x["user_id"] in alive_users]
        if rows:
            await conn.execute(stmt, rows)


async def markers(db: Database, user_id: int, room_ids: list[int]) -> dict[int, int]:
    """The stored markers of ``user_id`` in ``room_ids`` (a room without one is left out)."""
    if not room_ids:
        return {}
    async with db.read() as conn:
        rows = await conn.execute(
            select(read_markers.c.room_id, read_markers.c.seq).where(
                read_markers.c.user_id == user_id, read_markers.c.room_id.in_(room_ids)
            )
        )
        return {row.room_id: int(row.seq) for row in rows}


async def is_mentioned(db: Database, user_id: int, room_id: int, seq: int) -> bool:
    """Whether the store holds that mention (what a peer says is checked against it)."""
    async with db.read() as conn:
        found = await conn.execute(
            select(mentions.c.seq).where(
                mentions.c.user_id == user_id, mentions.c.room_id == room_id, mentions.c.seq == seq
            )
        )
        return found.first() is not None


async def mention_counts(db: Database, user_id: int, since: dict[int, int]) -> dict[int, int]:
    """How many mentions of ``user_id`` each room of ``since`` has above its seq (rooms with
    none are left out): an index range per room."""
    if not since:
        return {}
    cond = or_(
        *(and_(mentions.c.room_id == room, mentions.c.seq > seq) for room, seq in since.items())
    )
    async with db.read() as conn:
        rows = await conn.execute(
            select(mentions.c.room_id, func.count())
            .where(mentions.c.user_id == user_id, cond)
            .group_by(mentions.c.room_id)
        )
        return {row[0]: int(row[1]) for row in rows}


async def mention_page(
    db: Database,
    user_id: int,
    room: int | None,
    before: tuple[int, int, int] | None,
    limit: int,
) -> list[Mention]:
    """``user_id``'s mentions (in ``room`` if given), newest first: (ts, room, seq) below
    ``before`` if given. The caller leaves out rooms the user may not read."""
    sender = users.alias("sender")
    stmt = (
        select(
            mentions.c.room_id,
            mentions.c.seq,
            mentions.c.ts,
            mentions.c.sender_id,
            sender.c.name,
            messages.c.text,
            messages.c.state,
        )
        .join(sender, sender.c.id == mentions.c.sender_id)
        .outerjoin(
            messages,
            (messages.c.room_id == mentions.c.room_id) & (messages.c.seq == mentions.c.seq),
        )
        .where(mentions.c.user_id == user_id)
        .order_by(mentions.c.ts.desc(), mentions.c.room_id.desc(), mentions.c.seq.desc())
        .limit(limit)
    )
    if room is not None:
        stmt = stmt.where(mentions.c.room_id == room)
    if before is not None:
        ts, b_room, b_seq = before
        stmt = stmt.where(
            or_(
                mentions.c.ts < ts,
                and_(mentions.c.ts == ts, mentions.c.room_id < b_room),
                and_(mentions.c.ts == ts, mentions.c.room_id == b_room, mentions.c.seq < b_seq),
            )
        )
    async with db.read() as conn:
        rows = list(await conn.execute(stmt))
    return [
        Mention(
            r.room_id,
            r.seq,
            r.ts,
            r.sender_id,
            r.name,
            r.text if r.text is not None and r.state != "removed" else None,
        )
        for r in rows
    ]


# (room, seq, sender, ts, names) of each new message that mentions somebody.
Named = tuple[int, int, int, int, tuple[str, ...]]


async def insert_mentions(conn: AsyncConnection, named: list[Named]) -> list[tuple[int, int, int]]:
    """Inside the storing transaction (SQLite, or any SQLAlchemy connection): resolve the names
    to users (case-insensitively; the sender is left out) and store one mention each. Returns
    the (user, room, seq) stored."""
    wanted = {name for *_rest, names in named for name in names}
    if not wanted:
        return []
    by_name: dict[str, list[int]] = {}
    for row in await conn.execute(
        select(users.c.id, func.lower(users.c.name)).where(func.lower(users.c.name).in_(wanted))
    ):
        by_name.setdefault(row[1], []).append(int(row[0]))
    stored: list[tuple[int, int, int]] = []
    rows = []
    for room, seq, sender, ts, names in named:
        seen: set[int] = set()
        for name in names:
            for user in by_name.get(name, ()):
                if user != sender and user not in seen:
                    seen.add(user)
                    rows.append(
                        {
                            "user_id": user,
                            "room_id": room,
                            "seq": seq,
                            "sender_id": sender,
                            "ts": ts,
                        }
                    )
                    stored.append((user, room, seq))
    if rows:
        await conn.execute(insert(mentions), rows)
    return stored


# chat_store_batch() (migration 0006) and the batch's mentions in one statement, so in one
# transaction and one round trip: $6/$7 pair each mentioned name with its post's index (1-based,
# as the function's out_i); only new messages mention, the sender never. Each row of the batch
# comes back with the users its message mentions (out_mentioned).
STORE_BATCH_WITH_MENTIONS_PG = f"""
WITH b AS MATERIALIZED (
    SELECT * FROM chat_store_batch($1::bigint[], $2::bigint[], $3::text[], $4::text[],
        coalesce($5::bigint, {PG_NOW_MS}))
), m AS (
    INSERT INTO mentions (user_id, room_id, seq, sender_id, ts)
    SELECT DISTINCT u.id, ($1::bigint[])[b.out_i], b.out_seq, ($2::bigint[])[b.out_i], b.out_ts
    FROM unnest($6::int[], $7::text[]) AS x(i, name)
    JOIN b ON b.out_i = x.i AND b.out_new
    JOIN users u ON lower(u.name) = x.name
    WHERE u.id <> ($2::bigint[])[b.out_i]
    ON CONFLICT DO NOTHING
    RETURNING user_id, room_id, seq
)
SELECT b.*, mm.users AS out_mentioned
FROM b LEFT JOIN (
    SELECT m.room_id, m.seq, array_agg(m.user_id) AS users FROM m GROUP BY m.room_id, m.seq
) AS mm ON mm.room_id = ($1::bigint[])[b.out_i] AND mm.seq = b.out_seq
"""


def mention_args(posts: list[Any]) -> tuple[list[int], list[str]]:
    """$6 and $7 of :data:`STORE_BATCH_WITH_MENTIONS_PG` for ``posts`` (NewPosts)."""
    index: list[int] = []
    names: list[str] = []
    for i, post in enumerate(posts, 1):
        for name in post.mentions:
            index.append(i)
            names.append(name)
    return index, names
