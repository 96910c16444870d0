"""Full-text search over messages: one function, a fast path per dialect.

PostgreSQL matches the stored ``messages.tsv`` (``to_tsvector('simple', text)``, a generated
column) against a ``tsquery``, with the GIN index ``ix_messages_tsv`` on ``(room_id, tsv)``
(migration 0014: the rooms are filtered inside the index, and a phrase is checked against the
stored positions instead of the text being analysed again); another ``search.language`` matches
``to_tsvector(language, text)`` with its own expression index from :func:`ensure_index`. SQLite
matches the FTS5 table ``messages_fts`` (external content, kept in step by triggers). Either way
the index changes in the transaction that stores, replaces or removes a message, so a removed
or replaced message is not found by its old text, and a cleared room (its messages removed) is
not found at all.

Newest first on PostgreSQL is one of two plans: take every candidate from the GIN index, check
it and sort the matches (cost grows with the rows that hold every word), or walk the index on
``ts`` backwards and stop at the page's end (cost grows with the rows walked past: few for a
frequent word, many for a rare one or for a phrase of two common words that seldom stand side by
side). :class:`TermStats` estimates both from ANALYZE's word frequencies and the messages'
average length, and picks; a walk is cut after a budget (about what the GIN plan is expected to
cost, at least :data:`WALK_BUDGET_MS`) and the GIN plan answers instead.

The caller decides which rooms may be searched (authorization is not the store's job): ``rooms``
is the list of room ids, or ``None`` for every room (administrators).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import column, func, literal_column, table, text
from sqlalchemy.exc import DBAPIError, OperationalError

from .db import Database
from .messages import Message, _message, _select_messages
from .schema import files, messages, users

messages_fts = table("messages_fts", column("rowid"))

# PostgreSQL, newest first: how long the walk down the index on ts may take at least (see
# search() and TermStats.walk_budget_ms).
WALK_BUDGET_MS = 40  # whole milliseconds; 0: never walk
# The cost model of TermStats.walk_first (µs; fitted by least squares to both plans forced on
# 120 queries of loadtest/search.py's data, 1,000,000 messages, a quiet machine, PostgreSQL 15;
# what matters for the choice is their ratio, which load changes less than the values):
GIN_US = 2_500.0  # the GIN plan's fixed part (planning, the bitmaps)
GIN_US_PER_ENTRY = 0.024  # a posting of a word or of a searched room read from the GIN index
GIN_US_PER_CANDIDATE = 2.0  # a row of the searched rooms holding every word, fetched, checked
GIN_US_PER_MATCH = 1.7  # a matching row, joined and sorted
WALK_US = 5_000.0  # the walk's fixed part
WALK_US_PER_ROW = 0.75  # a row walked past on the index on ts
STATS_REFRESH_S = 60.0  # how long word frequencies read from pg_stats are used
LENGTH_SAMPLE_ROWS = 2000  # about how many messages the average length is read from
DEFAULT_LENGTH = 10.0  # words in a message, until read


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


@dataclass(slots=True)
class TermStats:
    """Word frequencies of ``messages.tsv`` (PostgreSQL's ANALYZE keeps the most common words
    and their share of rows in ``pg_stats``) and the messages' average length in words (from a
    sample of about :data:`LENGTH_SAMPLE_ROWS`), read at most every :data:`STATS_REFRESH_S`, to
    choose the plan of a newest-first search (:meth:`walk_first`)."""

    freq: dict[str, float] = field(default_factory=dict)
    floor: float = 0.0  # a word not in ``freq`` is in fewer rows than this share
    rows: float = 0.0  # messages
    rooms: float = 0.0
    length: float = DEFAULT_LENGTH  # words in a message, on average
    read_at: float = float("-inf")

    async def refresh(self, db: Database) -> None:
        if time.monotonic() - self.read_at < STATS_REFRESH_S:
            return
        self.read_at = time.monotonic()
        async with db.read() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs,"
                        " (SELECT reltuples FROM pg_class WHERE oid = 'messages'::regclass),"
                        " (SELECT reltuples FROM pg_class WHERE oid = 'rooms'::regclass)"
                        " FROM (SELECT 1) AS one LEFT JOIN pg_stats AS s"
                        " ON s.schemaname = current_schema() AND s.tablename = 'messages'"
                        " AND s.attname = 'tsv'"
                    )
                )
            ).one()
            words, freqs, rows, rooms = row
            rows = max(0.0, float(rows or 0))
            # A sample of whole pages (SYSTEM): a few dozen pages read, whatever the table's size.
            percent = min(100.0, 100.0 * LENGTH_SAMPLE_ROWS / max(rows, 1.0))
            length = (
                await conn.execute(
                    text(
                        f"SELECT avg(length(tsv)) FROM messages TABLESAMPLE SYSTEM ({percent:f})"
                        " WHERE tsv IS NOT NULL"
                    )
                )
            ).scalar()
        # most_common_elem_freqs: one per word, then the least and the greatest of them and
        # the share of empty vectors.
        self.freq = dict(zip(words or (), freqs or (), strict=False))
        self.floor = float(freqs[-3]) if freqs else 0.0
        self.rows, self.rooms = rows, max(0.0, float(rooms or 0))
        self.length = max(1.0, float(length)) if length is not None else DEFAULT_LENGTH

    def _word(self, word: str, prefix: bool) -> float:
        if prefix:
            return sum(v for w, v in self.freq.items() if w.startswith(word)) or self.floor
        return self.freq.get(word, self.floor)

    def _term(self, words: tuple[str, ...], prefix: bool) -> tuple[float, float]:
        """(the share of messages that hold the term, the share that hold all its words).

        A phrase needs its words side by side: with each word's chance per position taken from
        its share of messages (``share = 1 - (1 - p) ** length``), as if words were drawn
        independently. That underestimates phrases people use together; then the GIN plan is
        chosen, which is cheap exactly when few messages hold all the words."""
        shares = [self._word(w, prefix and i == len(words) - 1) for i, w in enumerate(words)]
        distinct = {
            (w, prefix and i == len(words) - 1): f
            for i, (w, f) in enumerate(zip(words, shares, strict=True))
        }
        every = math.prod(distinct.values())  # a word said twice is one condition on a row
        if len(shares) == 1:
            return every, every
        length = max(self.length, float(len(shares)))
        side_by_side = math.prod(1.0 - (1.0 - f) ** (1.0 / length) for f in shares)
        places = length - len(shares) + 1
        return min(every, 1.0 - (1.0 - side_by_side) ** places), every

    def share(self, q: TextQuery) -> float | None:
        """The estimated share of messages that match ``q`` (of an AND, its rarest term's: the
        terms of one question are seldom independent); None: no estimate."""
        if not self.freq or not q.terms:
            return None
        return min(self._term(words, prefix)[0] for words, prefix in q.terms)

    def costs_us(self, q: TextQuery, rooms: list[int] | None, limit: int) -> tuple[float, float]:
        """The estimated cost of (the walk, the GIN plan) in µs; (0, 0): no statistics."""
        share = self.share(q)
        if share is None or self.rows <= 0:
            return 0.0, 0.0
        searched = 1.0 if rooms is None or self.rooms <= 0 else min(1.0, len(rooms) / self.rooms)
        candidates = min(self._term(words, prefix)[1] for words, prefix in q.terms)
        postings = (0.0 if rooms is None else searched) + sum(
            self._word(w, prefix and i == len(words) - 1)
            for words, prefix in q.terms
            for i, w in enumerate(dict.fromkeys(words))
        )
        gin_us = GIN_US + self.rows * (
            GIN_US_PER_ENTRY * postings
            + (GIN_US_PER_CANDIDATE * candidates + GIN_US_PER_MATCH * share) * searched
        )
        walked = min(self.rows, limit / max(share * searched, 1e-12))
        walk_us = WALK_US + WALK_US_PER_ROW * walked
        return walk_us, gin_us

    def walk_first(self, q: TextQuery, rooms: list[int] | None, limit: int) -> bool | None:
        """Whether walking the index on ts (cost ~ the rows before the page's last hit) is
        cheaper than the GIN plan (cost ~ the rows that hold every word); None: no statistics
        to say."""
        walk_us, gin_us = self.costs_us(q, rooms, limit)
        return None if gin_us <= 0 else walk_us < gin_us

    def walk_budget_ms(self, q: TextQuery, rooms: list[int] | None, limit: int) -> int:
        """How long a walk may run before the GIN plan takes over: as long as the GIN plan is
        expected to take, at least :data:`WALK_BUDGET_MS` (a walk that runs into a stretch of
        messages without the words then costs at most about twice the better plan; for a very
        common word the GIN plan is the one to avoid)."""
        _, gin_us = self.costs_us(q, rooms, limit)
        return max(WALK_BUDGET_MS, int(gin_us / 1000))


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
    stats: TermStats | None = None,
) -> list[Message]:
    """Up to ``limit`` messages (not removed) in ``rooms`` that match ``q``: newest first
    (continuing below ``before`` = (ts, room, seq)), or by relevance (from ``offset``).

    ``stats`` (PostgreSQL): word frequencies that choose the newest-first plan; without them
    the walk is tried first (see the module's docstring)."""
    if rooms is not None and not rooms:
        return []
    walk, walk_ms = True, WALK_BUDGET_MS
    if db.is_postgres and stats is not None and q.terms and not relevance:
        await stats.refresh(db)
        choice = stats.walk_first(q, rooms, limit)
        walk = walk if choice is None else choice
        walk_ms = stats.walk_budget_ms(q, rooms, limit)
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
            # 'simple': the stored column (migration 0014); another language: its expression
            # index (ensure_index).
            vector: Any = (
                literal_column("messages.tsv")
                if language == "simple"
                else func.to_tsvector(config, m.text)
            )
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
    if db.is_postgres and rank is not None and not relevance:
        # Newest first: walk the index on ts backwards and stop at the page's end (fast for a
        # frequent word), or take every match from the GIN index and sort them (fast for a rare
        # one). ``stats`` says which when it can; PostgreSQL's own estimate for a phrase or a
        # rare word can pick the walk, which then reads the whole table. So a walk gets a
        # budget, and the GIN plan (``ts + 0`` takes the walk away) the rest.
        budget = min(WALK_BUDGET_MS and walk_ms, timeout_ms) if walk else 0
        if budget > 0:  # 0: the GIN plan only
            found = await _walk(db, stmt, budget)
            if found is not None:
                return found
        stmt = unordered.limit(limit)
    async with db.read() as conn:
        if db.is_postgres:
            await conn.execute(text("SET LOCAL jit = off"))  # see _walk
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


async def _walk(db: Database, stmt: Any, budget_ms: int) -> list[Message] | None:
    """``stmt`` within ``budget_ms``, or None when it ran out. A transaction of its own (not a
    savepoint: the timeout may cancel the SAVEPOINT itself on a loaded machine, and the GIN plan
    that followed ran in an aborted transaction: "internal error" for the user)."""
    async with db.read() as conn:
        # A search is short: compiling it (a walk's estimate is high) costs more than it runs,
        # up to a second.
        await conn.execute(text("SET LOCAL jit = off"))
        await conn.execute(text(f"SET LOCAL statement_timeout = {int(budget_ms)}"))
        try:
            rows = (await conn.execute(stmt)).fetchall()
        except DBAPIError as exc:
            if "statement timeout" not in str(exc.orig):
                raise
            # Caught here, not by Database.read: a cancelled statement is not a failed store.
            return None
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
