"""The store's full-text search (chatserver/store/search.py) below the op: the newest-first plan
that word frequencies choose on PostgreSQL, migration 0014 on a database that holds messages,
and the batched read of the rooms a first search needs."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text, update

from chatserver.rooms.facts import Facts
from chatserver.store import rooms as room_store
from chatserver.store import search as search_store
from chatserver.store.db import Database, now_ms
from chatserver.store.migrate import alembic_config, upgrade
from chatserver.store.principals import principal
from chatserver.store.schema import messages
from chatserver.store.search import TermStats, TextQuery
from chatserver.testing import PostgresCluster
from tests.conftest import DIALECTS

_numbers = itertools.count(1)


def words(*terms: str, prefix: bool = False) -> TextQuery:
    return TextQuery(tuple((tuple(t.split()), prefix) for t in terms))


def test_term_stats_choose_the_walk_for_frequent_words_only() -> None:
    stats = TermStats(
        freq={"the": 0.6, "deploy": 0.05, "release": 0.2, "relay": 0.01},
        floor=0.001,
        rows=1_000_000,
        rooms=1000,
    )
    readable = list(range(100))
    assert stats.share(words("the")) == 0.6
    assert stats.share(words("zygote")) == 0.001  # not listed: rarer than the least listed
    # A phrase: its words side by side (here 10 words a message, drawn independently), far
    # rarer than its rarest word; an AND: its rarest term.
    assert stats.share(words("the deploy")) == pytest.approx(0.00403, rel=0.01)
    assert stats.share(words("the", "deploy")) == 0.05
    assert stats.share(words("rel", prefix=True)) == pytest.approx(0.21)
    assert stats.walk_first(words("the"), readable, 21) is True
    assert stats.walk_first(words("zygote"), readable, 21) is False
    assert stats.walk_first(words("the zygote"), readable, 21) is False
    # Every room (administrators): the walk wins earlier, a rare word still goes to the index.
    assert stats.walk_first(words("deploy"), None, 21) is True
    assert stats.walk_first(words("zygote"), None, 21) is False
    assert TermStats().walk_first(words("the"), readable, 21) is None  # no statistics
    # Two words seldom side by side: the walk would pass ~50,000 rows, the GIN plan checks the
    # ~3,000 rows of the readable rooms that hold both; anywhere in a message: the walk.
    assert stats.walk_first(words("the deploy"), readable, 21) is False
    assert stats.walk_first(words("the", "deploy"), readable, 21) is True
    # A walk may run about as long as the GIN plan would (60,000 matches: long), at least 40 ms.
    assert stats.walk_budget_ms(words("the"), readable, 21) > 150
    assert stats.walk_budget_ms(words("zygote"), readable, 21) == search_store.WALK_BUDGET_MS


async def _seed(db: Database, n: int = 300) -> tuple[list[int], dict[int, str]]:
    """Two rooms; message i says "common" always, "rare" when i % 97 == 0, the phrase "alpha
    beta" when i % 5 == 0 (and "beta alpha" when i % 5 == 1): (room ids, text by seq)."""
    async with db.write() as conn:  # plain SQL: the database may be at 0012, older than schema.py
        uid = (
            await conn.execute(
                text(
                    "INSERT INTO users (name, display_name, password_hash, is_admin, created_ms)"
                    " VALUES ('seeder', '', '', false, :now) RETURNING id"
                ),
                {"now": now_ms()},
            )
        ).scalar_one()
    rooms = []
    async with db.write() as conn:
        for i in range(2):
            rooms.append(
                (
                    await conn.execute(
                        text(
                            "INSERT INTO rooms (name, description, last_seq, created_ms,"
                            " category_id, privacy, type, disabled, invitations)"
                            " VALUES (:name, '', :last, :now, 1, 'closed', 'normal', false,"
                            " 'inherit') RETURNING id"
                        ),
                        {"name": f"seed{i}", "last": n, "now": now_ms()},
                    )
                ).scalar_one()
            )
    texts: dict[int, str] = {}
    rows = []
    for i in range(1, n + 1):
        t = f"common word {i}" + (" rare" if i % 97 == 0 else "")
        t += " alpha beta" if i % 5 == 0 else " beta alpha" if i % 5 == 1 else ""
        texts[i] = t
        for room in rooms:
            rows.append(
                {
                    "room_id": room,
                    "seq": i,
                    "sender_id": uid,
                    "cid": f"c{i}",
                    "text": t,
                    "ts": 1_000_000 + i * 10 + room,
                    "state": "",
                }
            )
    async with db.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (room_id, seq, sender_id, cid, text, ts, state)"
                " VALUES (:room_id, :seq, :sender_id, :cid, :text, :ts, :state)"
            ),
            rows,
        )
    return rooms, texts


async def _pages(db: Database, q: TextQuery, rooms: list[int], stats: TermStats | None) -> Any:
    out, before = [], None
    while True:
        page = await search_store.search(db, q, rooms=rooms, limit=7, before=before, stats=stats)
        out += [(m.room, m.seq) for m in page]
        if len(page) < 7:
            return out
        before = (page[-1].ts, page[-1].room, page[-1].seq)


@pytest.mark.skipif("postgresql" not in DIALECTS, reason="PostgreSQL's plans")
async def test_both_newest_first_plans_give_the_same_pages(pg_cluster: PostgresCluster) -> None:
    url = await pg_cluster.create_database(f"search_plans_{next(_numbers)}", template="postgres")
    db = Database(url)
    try:
        rooms, texts = await _seed(db)
        async with db.write() as conn:
            await conn.execute(text("ANALYZE messages"))
        read = TermStats()
        await read.refresh(db)
        assert read.freq["common"] == pytest.approx(1.0)
        assert read.freq.get("rare", 0.0) < 0.05
        assert 1.0 <= read.length <= 12.0  # words a message, from a sample
        # As if the table were large (with 300 rows either plan takes no time at all):
        read.rows, read.rooms = 1_000_000.0, 1000.0
        assert read.walk_first(words("common"), rooms[:1], 8) is True
        assert read.walk_first(words("rare"), rooms[:1], 8) is False
        walk = TermStats(freq={"x": 1.0}, floor=1.0, rows=1e9, rooms=2, read_at=1e18)
        gin = TermStats(freq={"x": 1.0}, floor=1e-9, rows=1e9, rooms=2, read_at=1e18)
        for q, want in [
            (words("rare"), [s for s, t in texts.items() if "rare" in t]),
            (words("alpha beta"), [s for s, t in texts.items() if "alpha beta" in t]),
            (words("comm", "al", prefix=True), [s for s in texts if s % 5 in (0, 1)]),
            (words("common"), list(texts)),
        ]:
            expected = [(rooms[0], s) for s in sorted(want, reverse=True)]
            walked = await _pages(db, q, rooms[:1], walk)
            indexed = await _pages(db, q, rooms[:1], gin)
            assert walked == indexed == expected, q
    finally:
        await db.close()


async def _database_at_0012(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/old.db"
    else:
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        url = await cluster.create_database(f"at_0012_{next(_numbers)}", template="template0")
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0012")
    return url


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_upgrade_from_0012_keeps_rows_searchable(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = await _database_at_0012(dialect, request, tmp_path)
    db = Database(url)
    try:
        rooms, texts = await _seed(db, n=60)
        async with db.write() as conn:  # one removed, one replaced (as the store does both)
            await conn.execute(
                update(messages).where(messages.c.seq == 5).values(text="", state="removed")
            )
        await db.close()
        await asyncio.to_thread(upgrade, url)  # 0012 -> head, rows present
        db = Database(url)
        async with db.write() as conn:
            await conn.execute(
                update(messages)
                .where((messages.c.room_id == rooms[0]) & (messages.c.seq == 10))
                .values(text="swapped words", state="replaced")
            )
        found = await search_store.search(db, words("alpha beta"), rooms=rooms[:1], limit=100)
        want = [s for s, t in texts.items() if "alpha beta" in t and s not in (5, 10)]
        assert [m.seq for m in found] == sorted(want, reverse=True)
        assert all(m.room == rooms[0] for m in found)
        swapped = await search_store.search(db, words("swapped"), rooms=None, limit=10)
        assert [(m.room, m.seq) for m in swapped] == [(rooms[0], 10)]
        if db.is_postgres:
            async with db.read() as conn:
                empty = (
                    await conn.execute(text("SELECT count(*) FROM messages WHERE tsv IS NULL"))
                ).scalar_one()
                indexes = {
                    r[0]
                    for r in await conn.execute(
                        text("SELECT indexname FROM pg_indexes WHERE tablename = 'messages'")
                    )
                }
            assert empty == 0
            assert "ix_messages_tsv" in indexes and "ix_messages_search" not in indexes
    finally:
        await db.close()


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_facts_read_uncached_rooms_in_one_batch(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await _database_at_0012(dialect, request, tmp_path)
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    try:
        made = [
            await room_store.create_room(
                db, f"r{i}", managers=(principal("user", 1),) if i % 2 else ()
            )
            for i in range(room_store.GET_ROOMS_CHUNK + 20)
        ]
        ids = [r.id for r in made]
        one_by_one = {i: await room_store.get_room(db, i) for i in ids[:40]}
        calls: list[int] = []
        real = room_store.get_rooms

        async def counted(db_: Database, room_ids: list[int]) -> Any:
            calls.append(len(room_ids))
            return await real(db_, room_ids)

        async def refused(*_: Any) -> Any:
            raise AssertionError("a room read one statement at a time")

        monkeypatch.setattr(room_store, "get_rooms", counted)
        monkeypatch.setattr(room_store, "get_room", refused)
        facts = Facts(db)
        got = await facts.rooms([*ids, 999_999])
        assert calls == [len(ids) + 1]  # one call (SQLite: two statements, over GET_ROOMS_CHUNK)
        assert set(got) == set(ids)  # the missing id is left out
        assert {i: got[i] for i in ids[:40]} == one_by_one  # roles included
        assert await facts.rooms(ids[:5]) == {i: got[i] for i in ids[:5]}
        assert calls == [len(ids) + 1]  # cached now: no second read
    finally:
        await db.close()


@pytest.mark.skipif("postgresql" not in DIALECTS, reason="PostgreSQL's walk budget")
async def test_a_walk_out_of_time_gives_way_to_the_gin_plan(
    pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk cancelled by its budget is not a failed store (no StoreUnavailable, health
    untouched), and the GIN plan then answers in a transaction that is not aborted: main's
    savepoint answered "internal error" when the timeout cancelled the SAVEPOINT itself."""
    url = await pg_cluster.create_database(f"search_budget_{next(_numbers)}", template="postgres")
    db = Database(url)
    monkeypatch.setattr(search_store, "WALK_BUDGET_MS", 1)
    monkeypatch.setattr(search_store, "WALK_US", 0.0)  # (a walk chosen on 10 rows)
    monkeypatch.setattr(search_store, "GIN_US", 0.0)
    walk = TermStats(freq={"x": 1.0}, floor=1.0, rows=10.0, rooms=2, read_at=1e18)
    try:
        rooms, _ = await _seed(db, n=10)
        async with db.write() as conn:  # a long stretch without the word: the walk runs out
            await conn.execute(
                text(
                    "INSERT INTO messages (room_id, seq, sender_id, cid, text, ts, state)"
                    " SELECT :room, 100 + i, 1, 'f' || i, 'filler ' || i, 2000000 + i, ''"
                    " FROM generate_series(1, 200000) AS i"
                ),
                {"room": rooms[0]},
            )
        assert walk.walk_first(words("rare"), rooms[:1], 8) is True
        assert walk.walk_budget_ms(words("rare"), rooms[:1], 8) == 1
        cancelled: list[bool] = []
        real = search_store._walk

        async def watched(*args: Any) -> Any:
            found = await real(*args)
            cancelled.append(found is None)
            return found

        monkeypatch.setattr(search_store, "_walk", watched)
        failed = db.health.failed_total
        found = await search_store.search(db, words("rare"), rooms=rooms[:1], limit=8, stats=walk)
        assert cancelled == [True]  # the walk ran out of its 1 ms
        assert [m.seq for m in found] == []  # "rare" is in seq 97, 194 of 300: not seeded here
        found = await search_store.search(db, words("word"), rooms=rooms[:1], limit=3, stats=walk)
        assert [m.seq for m in found] == [10, 9, 8]
        assert db.health.failed_total == failed and db.health.available
    finally:
        await db.close()
