"""Messages: the group-commit batch insert and history reads.

Every room has a gap-free sequence ``seq`` = 1, 2, 3, … assigned inside the storing transaction,
under a lock on the room's row taken in ascending room-id order (so two batches cannot deadlock).
Because the lock is held until commit, commit order equals ``seq`` order in every room.

A post is identified by (room, sender, cid); a post whose key is already stored (or earlier in the
same batch) stores nothing and reports the first message's ``seq`` with ``duplicate=True``. The
duplicate check runs after the room lock is held, so it cannot race a concurrent insert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, tuple_, update

from .db import Database, now_ms
from .outbox import Event, record, record_pg
from .schema import categories, messages, rooms, users


@dataclass(frozen=True, slots=True)
class Message:
    room: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    text: str
    cid: str
    kept: bool = True  # False: live only (the room's category has chat history off)
    state: str = ""  # "" | "replaced" | "removed" (see schema.messages)

    def wire(self) -> dict[str, Any]:
        """The message as every reply and event carries it."""
        wire = {
            "room": self.room,
            "seq": self.seq,
            "ts": self.ts,
            "sender": {"id": self.sender_id, "name": self.sender_name},
            "text": self.text,
            "cid": self.cid,
        }
        if self.state:
            wire["state"] = self.state
        return wire

    @property
    def removed(self) -> bool:
        return self.state == "removed"


@dataclass(frozen=True, slots=True)
class NewPost:
    room: int
    sender_id: int
    sender_name: str
    cid: str
    text: str


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of one post in a batch."""

    message: Message | None  # None: the room does not exist (any more)
    duplicate: bool


@dataclass(slots=True)
class _Plan:
    results: list[Stored]
    new_rows: list[Message]  # every new message, kept or not
    last_seqs: dict[int, int]

    @property
    def kept_rows(self) -> list[Message]:
        return [m for m in self.new_rows if m.kept]


def _plan(
    posts: list[NewPost],
    last_seqs: dict[int, int],
    keeps: dict[int, bool],
    existing: dict[tuple[int, int, str], tuple[int, int, str]],
    ts: int,
) -> _Plan:
    """Assign seqs to the new posts of a batch; pure, shared by both dialects."""
    results: list[Stored] = []
    new_rows: list[Message] = []
    seen: dict[tuple[int, int, str], Message] = {}
    last = dict(last_seqs)
    for post in posts:
        key = (post.room, post.sender_id, post.cid)
        if post.room not in last:
            results.append(Stored(None, False))
        elif key in seen:
            results.append(Stored(seen[key], True))
        elif key in existing:
            seq, old_ts, text = existing[key]
            msg = Message(post.room, seq, old_ts, post.sender_id, post.sender_name, text, post.cid)
            seen[key] = msg
            results.append(Stored(msg, True))
        else:
            last[post.room] += 1
            msg = Message(
                post.room,
                last[post.room],
                ts,
                post.sender_id,
                post.sender_name,
                post.text,
                post.cid,
                keeps[post.room],
            )
            seen[key] = msg
            new_rows.append(msg)
            results.append(Stored(msg, False))
    changed = {room: seq for room, seq in last.items() if seq != last_seqs[room]}
    return _Plan(results, new_rows, changed)


def _chat_events(new_rows: list[Message]) -> list[Event]:
    """One compliance ``CHAT`` event per new message, kept or not (chat history off)."""
    return [
        Event(
            "CHAT",
            m.room,
            m.sender_id,
            {"seq": m.seq, "text": m.text, "cid": m.cid, "sender": m.sender_name, "kept": m.kept},
            m.ts,
        )
        for m in new_rows
    ]


async def store_batch(
    db: Database, posts: list[NewPost], *, capture: str | None = None
) -> list[Stored]:
    """Store a batch of posts in one transaction; the results are in the order of ``posts``.

    With ``capture`` (the node's name), a compliance ``CHAT`` event for every new message is
    written to the outbox in the same transaction.
    """
    if db.is_postgres:
        return await _store_batch_pg(db, posts, capture)
    return await _store_batch_generic(db, posts, capture)


async def _store_batch_generic(
    db: Database, posts: list[NewPost], capture: str | None
) -> list[Stored]:
    room_ids = sorted({p.room for p in posts})
    keys = list({(p.room, p.sender_id, p.cid) for p in posts})
    async with db.write() as conn:
        rows = list(
            await conn.execute(
                select(rooms.c.id, rooms.c.last_seq, categories.c.chat_history)
                .join(categories, categories.c.id == rooms.c.category_id)
                .where(rooms.c.id.in_(room_ids))
                .order_by(rooms.c.id)
                .with_for_update(of=rooms)
            )
        )
        last_seqs = {row.id: row.last_seq for row in rows}
        keeps = {row.id: bool(row.chat_history) for row in rows}
        existing = {}
        for row in await conn.execute(
            select(
                messages.c.room_id,
                messages.c.sender_id,
                messages.c.cid,
                messages.c.seq,
                messages.c.ts,
                messages.c.text,
            ).where(tuple_(messages.c.room_id, messages.c.sender_id, messages.c.cid).in_(keys))
        ):
            existing[(row.room_id, row.sender_id, row.cid)] = (row.seq, row.ts, row.text)
        plan = _plan(posts, last_seqs, keeps, existing, now_ms())
        if plan.kept_rows:
            await conn.execute(
                insert(messages),
                [
                    {
                        "room_id": m.room,
                        "seq": m.seq,
                        "sender_id": m.sender_id,
                        "cid": m.cid,
                        "text": m.text,
                        "ts": m.ts,
                    }
                    for m in plan.kept_rows
                ],
            )
        if plan.last_seqs:
            await conn.execute(
                update(rooms)
                .where(rooms.c.id == bindparam("rid"))
                .values(last_seq=bindparam("seq")),
                [{"rid": room, "seq": seq} for room, seq in plan.last_seqs.items()],
            )
        if capture is not None and plan.new_rows:
            await record(conn, capture, _chat_events(plan.new_rows))
    return plan.results


async def _store_batch_pg(db: Database, posts: list[NewPost], capture: str | None) -> list[Stored]:
    pool = await db.pg_pool()
    room_ids = sorted({p.room for p in posts})
    keys = list({(p.room, p.sender_id, p.cid) for p in posts})
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT r.id, r.last_seq, c.chat_history FROM rooms r"
            " JOIN categories c ON c.id = r.category_id"
            " WHERE r.id = ANY($1::bigint[]) ORDER BY r.id FOR UPDATE OF r",
            room_ids,
        )
        last_seqs = {row["id"]: row["last_seq"] for row in rows}
        keeps = {row["id"]: row["chat_history"] for row in rows}
        existing = {}
        for row in await conn.fetch(
            "SELECT m.room_id, m.sender_id, m.cid, m.seq, m.ts, m.text FROM messages m"
            " JOIN unnest($1::bigint[], $2::bigint[], $3::text[]) AS k(r, s, c)"
            " ON m.room_id = k.r AND m.sender_id = k.s AND m.cid = k.c",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
        ):
            existing[(row["room_id"], row["sender_id"], row["cid"])] = (
                row["seq"],
                row["ts"],
                row["text"],
            )
        plan = _plan(posts, last_seqs, keeps, existing, now_ms())
        new = plan.kept_rows
        if plan.last_seqs:
            # The rows and the rooms' new last_seq in one statement (one round trip): a
            # data-modifying WITH runs exactly once whether or not the outer query reads it.
            await conn.execute(
                "WITH inserted AS (INSERT INTO messages (room_id, seq, sender_id, cid, text, ts)"
                " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],"
                " $5::text[], $6::bigint[]))"
                " UPDATE rooms SET last_seq = v.seq FROM unnest($7::bigint[], $8::bigint[])"
                " AS v(id, seq) WHERE rooms.id = v.id",
                [m.room for m in new],
                [m.seq for m in new],
                [m.sender_id for m in new],
                [m.cid for m in new],
                [m.text for m in new],
                [m.ts for m in new],
                list(plan.last_seqs),
                list(plan.last_seqs.values()),
            )
        if capture is not None and plan.new_rows:
            await record_pg(conn, capture, _chat_events(plan.new_rows))
    return plan.results


def _select_messages() -> Any:
    return select(
        messages.c.room_id,
        messages.c.seq,
        messages.c.ts,
        messages.c.sender_id,
        users.c.name.label("sender_name"),
        messages.c.text,
        messages.c.cid,
        messages.c.state,
    ).join(users, users.c.id == messages.c.sender_id)


def _message(row: Any) -> Message:
    return Message(
        row.room_id,
        row.seq,
        row.ts,
        row.sender_id,
        row.sender_name,
        row.text,
        row.cid,
        state=row.state,
    )


async def latest(
    db: Database, room: int, limit: int, *, before: int | None = None, after: int | None = None
) -> list[Message]:
    """The newest ``limit`` messages below ``before`` and above ``after``, oldest first.

    Messages an administrator removed are left out.
    """
    stmt = _select_messages().where(messages.c.room_id == room, messages.c.state != "removed")
    if before is not None:
        stmt = stmt.where(messages.c.seq < before)
    if after is not None:
        stmt = stmt.where(messages.c.seq > after)
    stmt = stmt.order_by(messages.c.seq.desc()).limit(limit)
    async with db.read() as conn:
        rows = list(await conn.execute(stmt))
    return [_message(row) for row in reversed(rows)]


async def after(
    db: Database, room: int, seq: int, limit: int, *, include_removed: bool = False
) -> list[Message]:
    """The first ``limit`` messages with a sequence number above ``seq``, oldest first.

    ``include_removed`` keeps the tombstones of removed messages, for a reader (the hub's gap
    repair) that needs every seq.
    """
    stmt = (
        _select_messages()
        .where(messages.c.room_id == room, messages.c.seq > seq)
        .order_by(messages.c.seq)
        .limit(limit)
    )
    if not include_removed:
        stmt = stmt.where(messages.c.state != "removed")
    async with db.read() as conn:
        return [_message(row) for row in await conn.execute(stmt)]


async def last_seq(db: Database, room: int) -> int | None:
    async with db.read() as conn:
        result = await conn.execute(select(rooms.c.last_seq).where(rooms.c.id == room))
        value = result.scalar_one_or_none()
    return None if value is None else int(value)
