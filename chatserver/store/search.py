"""Full-text search over messages: one function, a fast path per dialect.

PostgreSQL matches ``to_tsvector(language, text)`` against a ``tsquery`` (the GIN expression
index ``ix_messages_search``, migration 0012; another language gets its own index from
:func:`ensure_index`); SQLite matches the FTS5 table ``messages_fts`` (external content, kept
in step by triggers). Either way the index changes in the transaction that stores, replaces or
removes a message, so a removed or replaced message is not found by its old text, and a cleared
room (its messages removed) is not found at all.

The caller decides which rooms may be searched (authorization is not the store's job): ``rooms``
is the list of room ids, or ``None`` for every room (administrators).
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, func, literal_column, table, text
from sqlalchemy.exc import DBAPIError, OperationalError

from .db import Database
from .messages import Message, _message, _select_messages
from .schema import files, messages, users

messages_fts = table("messages_fts", column("rowid"))

# PostgreSQL, newest first: how long the walk down the index on ts may take (see search()).
WALK_BUDGET_MS = 40  # whole milliseconds; 0: never walk


class SearchTimeout(Exception):
    """The search ran past its time limit and was cancelled."""


@dataclass(frozen=True, slots=True)
class TextQuery:
    """What the store needs of a parsed query (:class:`chatserver.rooms.query.Query`): terms as
    tuples of case-folded words (``\\w+``), the last one a prefix when ``prefix``."""

    terms: tuple[tuple[tuple[str, ...], bool], ...] = ()
    sender_id: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    has_file: bool = False


def pg_tsquery(q: TextQuery) -> str:
    """``'deploy' & 'release' <-> 'notes' & 'rel':*``: words are ``\\w+``, so need no escape."""
    parts = []
    for words, prefix in q.terms:
        quoted = [f"'{w}'" for w in words]
        if prefix:
            quoted[-1] += ":*"
        parts.append(" <-> ".join(quoted))
    return " & ".join(parts)


def fts5_match(q: TextQuery) -> str:
    """``"deploy" AND "release notes" AND "rel"*``: the same, in FTS5's query language."""
    parts = []
    for words, prefix in q.terms:
        parts.append('"' + " ".join(words) + '"' + ("*" if prefix else ""))
    return " AND ".join(parts)


async def ensure_index(db: Database, language: str) -> None:
    """Make the GIN index for ``language`` if it is not ``simple`` (migration 0012's) and does
    not exist yet (PostgreSQL only; ``language`` is checked by the configuration)."""
    if not db.is_postgres or language == "simple":
        return
    async with db.write() as conn:
        await conn.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS ix_messages_search_{language} ON messages"
                f" USING gin (to_tsvector('{language}'::regconfig, text))"
            )
        )


async def search(
    db: Database,
    q: TextQuery,
    *,
    rooms: list[int] | None,
    limit: int,
    relevance: bool = False,
    before: tuple[int, int, int] | None = None,
    offset: int = 0,
    language: str = "simple",
    timeout_ms: int = 2000,
) -> list[Message]:
    """Up to ``limit`` messages (not removed) in ``rooms`` that match ``q``: newest first
    (continuing below ``before`` = (ts, room, seq)), or by relevance (from ``offset``)."""
    if rooms is not None and not rooms:
        return []
    m = messages.c
    stmt = _select_messages().where(m.state != "removed")
    if rooms is not None:
        stmt = stmt.where(m.room_id.in_(rooms))
    if q.sender_id is not None:
        stmt = stmt.where(m.sender_id == q.sender_id)
    if q.since_ms is not None:
        stmt = stmt.where(m.ts >= q.since_ms)
    if q.until_ms is not None:
        stmt = stmt.where(m.ts < q.until_ms)
    if q.has_file:
        stmt = stmt.where(files.c.id.is_not(None))
    rank: Any = None
    if q.terms:
        if db.is_postgres:
            config: Any = literal_column(f"'{language}'::regconfig")
            vector = func.to_tsvector(config, m.text)
            tsq = func.to_tsquery(config, pg_tsquery(q))
            stmt = stmt.where(vector.op("@@")(tsq))
            rank = func.ts_rank(vector, tsq).desc()
        else:
            stmt = stmt.join(messages_fts, messages_fts.c.rowid == literal_column("messages.rowid"))
            stmt = stmt.where(text("messages_fts MATCH :fts_q").bindparams(fts_q=fts5_match(q)))
            rank = text("bm25(messages_fts)")
    if relevance and rank is not None:
        stmt = stmt.order_by(rank, m.ts.desc(), m.room_id.desc(), m.seq.desc()).offset(offset)
    else:
        if before is not None:
            ts, room, seq = before
            stmt = stmt.where(
                (m.ts < ts)
                | ((m.ts == ts) & (m.room_id < room))
                | ((m.ts == ts) & (m.room_id == room) & (m.seq < seq))
            )
        # ``ts + 0``: the same order, but not one the index on ts can give (see below).
        unordered = stmt.order_by((m.ts + 0).desc(), m.room_id.desc(), m.seq.desc())
        stmt = stmt.order_by(m.ts.desc(), m.room_id.desc(), m.seq.desc())
    stmt = stmt.limit(limit)
    async with db.read() as conn:
        if db.is_postgres:
            if rank is not None and not relevance:
                # Newest first: PostgreSQL may walk the index on ts backwards and stop at the
                # page's end (fast for a frequent word), or take every match from the GIN index
                # and sort them (fast for a rare one); its estimate for a phrase or a rare word
                # can pick the walk, which then reads the whole table. So the walk gets a short
                # budget, and the GIN plan (``ts + 0`` takes the walk away) the rest.
                budget = min(WALK_BUDGET_MS, timeout_ms)
                if budget > 0:  # 0: the GIN plan only
                    await conn.execute(text(f"SET LOCAL statement_timeout = {int(budget)}"))
                    try:
                        async with conn.begin_nested():
                            rows = (await conn.execute(stmt)).fetchall()
                        return [_message(r) for r in rows]
                    except DBAPIError as exc:
                        if "statement timeout" not in str(exc.orig):
                            raise
                stmt = unordered.limit(limit)
            await conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
            try:
                rows = (await conn.execute(stmt)).fetchall()
            except DBAPIError as exc:
                if "statement timeout" in str(exc.orig):
                    raise SearchTimeout from None
                raise
        else:
            raw = (await conn.get_raw_connection()).driver_connection
            handle = asyncio.get_running_loop().call_later(timeout_ms / 1000, _interrupt, raw)
            try:
                rows = (await conn.execute(stmt)).fetchall()
            except OperationalError as exc:
                if "interrupted" in str(exc.orig):
                    raise SearchTimeout from None
                raise
            finally:
                handle.cancel()
    return [_message(r) for r in rows]


def _interrupt(aio_conn: Any) -> None:
    inner: sqlite3.Connection | None = getattr(aio_conn, "_conn", None)
    if inner is not None:
        inner.interrupt()


async def user_id_by_name(db: Database, name: str) -> int | None:
    async with db.read() as conn:
        row = (
            await conn.execute(
                users.select().with_only_columns(users.c.id).where(users.c.name == name)
            )
        ).first()
    return None if row is None else int(row[0])


async def room_names(db: Database) -> dict[int, str]:
    """Every room that is not disabled, by id (the candidates a user's readable rooms are
    chosen from)."""
    from .schema import rooms

    async with db.read() as conn:
        rows = await conn.execute(
            rooms.select().with_only_columns(rooms.c.id, rooms.c.name).where(~rooms.c.disabled)
        )
        return {int(r[0]): r[1] for r in rows}
