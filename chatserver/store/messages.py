"""Messages: the group-commit batch insert and history reads.

Every room has a gap-free sequence ``seq`` = 1, 2, 3, … assigned inside the storing transaction,
under a lock on the room's row taken in ascending room-id order (so two batches cannot deadlock).
Because the lock is held until commit, commit order equals ``seq`` order in every room.

A post is identified by (room, sender, cid); a post whose key is already stored (or earlier in the
same batch) stores nothing and reports the first message's ``seq`` with ``duplicate=True``. The
duplicate check runs after the room lock is held, so it cannot race a concurrent insert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import bindparam, insert, literal_column, select, tuple_, update

from .db import PG_NOW_MS, Database, now_ms
from .marks import STORE_BATCH_WITH_MENTIONS_PG, Named, insert_mentions, mention_args
from .outbox import Event, record, record_pg
from .schema import categories, files, messages, rooms, users


@dataclass(frozen=True, slots=True)
class FileRef:
    """The file a message carries (docs/protocol.md, "Files"): what a reader needs to show it
    and download it (``GET /api/v1/files/{id}`` on the client HTTP listener)."""

    id: int
    name: str
    size: int
    media_type: str
    sha256: str

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "media_type": self.media_type,
            "sha256": self.sha256,
        }


# Message, NewPost and Stored are made for every post: plain (not frozen) dataclasses, because a
# frozen one's __init__ is five times slower. Treat them as immutable all the same.
@dataclass(slots=True)
class Message:
    room: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    text: str
    cid: str
    kept: bool = True  # False: live only (the room's category has chat history off)
    state: str = ""  # "" | "replaced" | "removed" | "edited" | "deleted" (schema.messages)
    file: FileRef | None = None  # the file the message carries (an upload)
    reply_to: int | None = None  # the seq this message answers
    edited_ts: int | None = None  # when its sender last edited it
    reactions: dict[str, int] | None = None  # counts per emoji

    def wire(self) -> dict[str, Any]:
        """The message as every reply and event carries it."""
        wire: dict[str, Any] = {
            "room": self.room,
            "seq": self.seq,
            "ts": self.ts,
            "sender": {"id": self.sender_id, "name": self.sender_name},
            "text": self.text,
            "cid": self.cid,
        }
        if self.state:
            wire["state"] = self.state
        if self.file is not None and self.state not in GONE:
            wire["file"] = self.file.wire()
        if self.reply_to is not None:
            wire["reply_to"] = self.reply_to
        if self.edited_ts is not None:
            wire["edited_ts"] = self.edited_ts
        if self.reactions:
            wire["reactions"] = self.reactions
        return wire

    @property
    def removed(self) -> bool:
        return self.state == "removed"


# States whose text (and file) is gone: an administrator's removal, the sender's delete.
GONE = ("removed", "deleted")


def reaction_counts(value: str | None) -> dict[str, int] | None:
    """The stored ``messages.reactions`` JSON as a map (None when there are none)."""
    if not value:
        return None
    counts: dict[str, int] = json.loads(value)
    return counts or None


@dataclass(slots=True)
class NewPost:
    room: int
    sender_id: int
    sender_name: str
    cid: str
    text: str
    # The lower-cased names the text mentions (chatserver/rooms/mentions.py).
    mentions: tuple[str, ...] = ()
    reply_to: int | None = None  # the seq it answers (checked to exist by the caller)


@dataclass(slots=True)
class Stored:
    """The outcome of one post in a batch."""

    message: Message | None  # None: the room does not exist (any more)
    duplicate: bool
    # The users the new message mentions, stored with it (chatserver/store/marks.py).
    mentioned: tuple[int, ...] = ()


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
    """Number a batch's posts: SQLite's half of a rule implemented twice.

    Pure: ``last_seqs`` and ``keeps`` are the locked rooms' ``last_seq`` and chat-history flag
    (a room missing from them is gone), ``existing`` the batch's keys already stored. The rule is
    docs/architecture.md, section 3, step 4. PostgreSQL runs the same rule in the PL/pgSQL
    function ``chat_store_batch()`` (migration 0006, read back by ``_results``), not here.
    tests/store/test_plan.py holds the two together: random scenarios run on both dialects must
    give the same outcomes, ``last_seq``s, rows and CHAT events, and those of a model of the
    rule. Change one, change the other.
    """
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
                reply_to=post.reply_to,
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
    db: Database, posts: list[NewPost], *, capture: str | None = None, ts: int | None = None
) -> list[Stored]:
    """Store a batch of posts in one transaction; the results are in the order of ``posts``.

    With ``capture`` (the node's name), a compliance ``CHAT`` event for every new message is
    written to the outbox in the same transaction, in the order of ``posts``.
    SQLite numbers the posts with ``_plan``; PostgreSQL with ``chat_store_batch()``.
    The new messages' time is ``ts`` when given (tests), else the store's clock.
    """
    if db.is_postgres and not any(p.reply_to is not None for p in posts):
        # chat_store_batch() has no reply_to; a batch with a reply takes the generic path,
        # which runs the same rule (tests/store/test_plan.py) on either dialect.
        return await _store_batch_pg(db, posts, capture, ts)
    return await _store_batch_generic(db, posts, capture, ts)


async def _store_batch_generic(
    db: Database, posts: list[NewPost], capture: str | None, ts: int | None
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
        if ts is None and db.is_postgres:  # a batch with a reply: still the store's clock
            ts = int(await conn.scalar(select(literal_column(PG_NOW_MS))) or 0)
        plan = _plan(posts, last_seqs, keeps, existing, now_ms() if ts is None else ts)
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
                        "reply_to": m.reply_to,
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
        named = _named(posts, plan.results)
        if named:
            _attach(plan.results, await insert_mentions(conn, named))
    return plan.results


def _named(posts: list[NewPost], results: list[Stored]) -> list[Named]:
    """The new messages of a batch that mention somebody, for the mentions insert."""
    return [
        (r.message.room, r.message.seq, post.sender_id, r.message.ts, post.mentions)
        for post, r in zip(posts, results, strict=True)
        if post.mentions and r.message is not None and not r.duplicate
    ]


def _attach(results: list[Stored], stored: list[tuple[int, int, int]]) -> None:
    """Tell each new message's result whom it mentions."""
    if not stored:
        return
    by_message: dict[tuple[int, int], list[int]] = {}
    for user, room, seq in stored:
        by_message.setdefault((room, seq), []).append(user)
    for r in results:
        if r.message is not None and not r.duplicate:
            users = by_message.get((r.message.room, r.message.seq))
            if users:
                r.mentioned = tuple(users)


# The whole batch in one round trip, commit included (migration 0006 defines the function).
# The messages' time is the store's clock, not this node's: every node's messages are on one
# clock, which ``room clear --until`` and searches by date compare with.
_STORE_BATCH_PG = (
    "SELECT * FROM chat_store_batch($1::bigint[], $2::bigint[], $3::text[], $4::text[],"
    f" coalesce($5::bigint, {PG_NOW_MS}))"
)


async def _store_batch_pg(
    db: Database, posts: list[NewPost], capture: str | None, ts: int | None
) -> list[Stored]:
    """``store_batch`` on PostgreSQL: PostgreSQL's half of a rule implemented twice.

    The numbering runs server-side in ``chat_store_batch()`` (migration 0006), not in
    ``_plan``, which is SQLite's. tests/store/test_plan.py holds the two together (same
    outcomes, ``last_seq``s, rows and CHAT events on both dialects, and a model of the rule).
    Change one, change the other.
    """
    # The function sees each (room, sender, cid) once; a repeat later in the batch gets the
    # first one's message, as a duplicate.
    first: dict[tuple[int, int, str], int] = {}
    unique: list[NewPost] = []
    for post in posts:
        key = (post.room, post.sender_id, post.cid)
        if key not in first:
            first[key] = len(unique)
            unique.append(post)
    args = (
        [p.room for p in unique],
        [p.sender_id for p in unique],
        [p.cid for p in unique],
        [p.text for p in unique],
        ts,
    )
    statement, extra = _STORE_BATCH_PG, cast(tuple[Any, ...], ())
    if any(p.mentions for p in unique):
        # The mentions are inserted by the same statement (so in its transaction).
        statement, extra = STORE_BATCH_WITH_MENTIONS_PG, mention_args(unique)
    pool = await db.pg_pool()
    async with pool.acquire() as conn:
        if capture is None:
            # Outside an explicit transaction the statement is its own: one round trip.
            rows = await conn.fetch(statement, *args, *extra)
            results = _results(posts, first, unique, rows)[0]
        else:
            async with conn.transaction():
                rows = await conn.fetch(statement, *args, *extra)
                results, new_rows = _results(posts, first, unique, rows)
                await record_pg(conn, capture, _chat_events(new_rows))
    if extra:
        _attach(
            results,
            [
                (user, unique[row["out_i"] - 1].room, row["out_seq"])
                for row in rows
                for user in row["out_mentioned"] or ()
            ],
        )
    return results


def _results(
    posts: list[NewPost], first: dict[tuple[int, int, str], int], unique: list[NewPost], rows: Any
) -> tuple[list[Stored], list[Message]]:
    """The batch's results in the order of ``posts``, and its new messages (kept or not) in that
    order too: the CHAT events are recorded in the order of ``new_rows``, and must follow the
    posts (and so each room's seqs) as they do on SQLite. The function returns its rows in no
    particular order (in practice grouped by room, highest seq first), so they are placed by
    ``out_i`` before the new messages are read off."""
    stored: list[Stored | None] = [None] * len(unique)
    for row in rows:
        i = row["out_i"] - 1
        post = unique[i]
        is_new = row["out_new"]
        message = Message(
            post.room,
            row["out_seq"],
            row["out_ts"],
            post.sender_id,
            post.sender_name,
            row["out_text"],
            post.cid,
            row["out_kept"] if is_new else True,
        )
        stored[i] = Stored(message, not is_new)
    new_rows = [
        outcome.message
        for outcome in stored
        if outcome is not None and outcome.message is not None and not outcome.duplicate
    ]
    results: list[Stored] = []
    answered: set[int] = set()
    for post in posts:
        i = first[(post.room, post.sender_id, post.cid)]
        outcome = stored[i]
        if outcome is None:  # the room does not exist
            results.append(Stored(None, False))
        elif i in answered:  # a repeat within the batch
            results.append(Stored(outcome.message, True))
        else:
            answered.add(i)
            results.append(outcome)
    return results, new_rows


def _select_messages() -> Any:
    return (
        select(
            messages.c.room_id,
            messages.c.seq,
            messages.c.ts,
            messages.c.sender_id,
            users.c.name.label("sender_name"),
            messages.c.text,
            messages.c.cid,
            messages.c.state,
            messages.c.reply_to,
            messages.c.edited_ms,
            messages.c.reactions,
            files.c.id.label("file_id"),
            files.c.name.label("file_name"),
            files.c.size.label("file_size"),
            files.c.media_type.label("file_media_type"),
            files.c.sha256.label("file_sha256"),
        )
        .join(users, users.c.id == messages.c.sender_id)
        .outerjoin(
            files,
            (files.c.room_id == messages.c.room_id)
            & (files.c.seq == messages.c.seq)
            & (files.c.state == "ready"),
        )
    )


def file_ref(row: Any) -> FileRef | None:
    """The file of a row read with the file_* columns of :func:`_select_messages` (or the same
    names from a raw query), if it has one."""
    if row["file_id"] is None:
        return None
    return FileRef(
        row["file_id"],
        row["file_name"],
        row["file_size"],
        row["file_media_type"],
        row["file_sha256"],
    )


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
        file=file_ref(row._mapping),
        reply_to=row.reply_to,
        edited_ts=row.edited_ms,
        reactions=reaction_counts(row.reactions),
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


async def window(db: Database, room: int, limit: int) -> tuple[int, list[Message]] | None:
    """The room's ``last_seq`` and its newest ``limit`` messages (oldest first, removed ones
    left out), or ``None`` if there is no such room: what a node caches for a room."""
    if not db.is_postgres:
        last = await last_seq(db, room)
        if last is None:
            return None
        recent = await latest(db, room, limit)
        return max(last, recent[-1].seq if recent else 0), recent
    # One statement on the asyncpg pool: every node reads this for every room on its first join
    # there. The LEFT JOIN keeps the room's row when it has no messages.
    pool = await db.pg_pool()
    rows = await pool.fetch(
        "SELECT r.last_seq, m.seq, m.ts, m.sender_id, m.sender_name, m.text, m.cid, m.state,"
        " m.file_id, m.file_name, m.file_size, m.file_media_type, m.file_sha256,"
        " m.reply_to, m.edited_ms, m.reactions"
        " FROM rooms r LEFT JOIN LATERAL ("
        "   SELECT m.seq, m.ts, m.sender_id, u.name AS sender_name, m.text, m.cid, m.state,"
        "   m.reply_to, m.edited_ms, m.reactions,"
        "   f.id AS file_id, f.name AS file_name, f.size AS file_size,"
        "   f.media_type AS file_media_type, f.sha256 AS file_sha256"
        "   FROM messages m JOIN users u ON u.id = m.sender_id"
        "   LEFT JOIN files f ON f.room_id = m.room_id AND f.seq = m.seq AND f.state = 'ready'"
        "   WHERE m.room_id = r.id AND m.state <> 'removed' ORDER BY m.seq DESC LIMIT $2"
        " ) m ON true WHERE r.id = $1 ORDER BY m.seq DESC",
        room,
        limit,
    )
    if not rows:
        return None
    recent = [
        Message(
            room,
            r["seq"],
            r["ts"],
            r["sender_id"],
            r["sender_name"],
            r["text"],
            r["cid"],
            state=r["state"],
            file=file_ref(r),
            reply_to=r["reply_to"],
            edited_ts=r["edited_ms"],
            reactions=reaction_counts(r["reactions"]),
        )
        for r in reversed(rows)
        if r["seq"] is not None
    ]
    last = rows[0]["last_seq"]
    return max(last, recent[-1].seq if recent else 0), recent


async def last_seq(db: Database, room: int) -> int | None:
    async with db.read() as conn:
        result = await conn.execute(select(rooms.c.last_seq).where(rooms.c.id == room))
        value = result.scalar_one_or_none()
    return None if value is None else int(value)
