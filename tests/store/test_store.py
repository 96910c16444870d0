"""The store on both dialects: schema checks, group-commit batches, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from chatserver.protocol.errors import ChatError
from chatserver.rooms.capture import Capture
from chatserver.rooms.changes import LocalOnly
from chatserver.rooms.writer import Writer
from chatserver.store import categories as category_store
from chatserver.store import messages as message_store
from chatserver.store import rooms as room_store
from chatserver.store import users as user_store
from chatserver.store.db import Database
from chatserver.store.messages import NewPost
from chatserver.store.migrate import SchemaError, check_schema, head_revision


def _writer(db: Database, deliver: Any, **options: Any) -> Writer:
    """A writer on its own: no pool to tell, no compliance capture."""
    return Writer(db, deliver, LocalOnly(), Capture(db, "test", enabled=False), **options)


@pytest.fixture
async def db(db_url: str):  # type: ignore[no-untyped-def]
    database = Database(db_url)
    yield database
    await database.close()


async def test_schema_check_accepts_head_and_refuses_others(db: Database) -> None:
    await check_schema(db)
    async with db.write() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffff'"))
    with pytest.raises(SchemaError, match="newer than this server"):
        await check_schema(db)
    async with db.write() as conn:
        await conn.execute(text("DELETE FROM alembic_version"))
    with pytest.raises(SchemaError, match="chatserver migrate"):
        await check_schema(db)
    assert head_revision() == "0019"


async def test_batch_assigns_gap_free_seqs_per_room_and_dedups(db: Database) -> None:
    alice = await user_store.create_user(db, "alice", "x")
    bob = await user_store.create_user(db, "bob", "x")
    r1 = (await room_store.create_room(db, "one")).id
    r2 = (await room_store.create_room(db, "two")).id
    posts = [
        NewPost(r2, alice.id, "alice", "a", "first in two"),
        NewPost(r1, alice.id, "alice", "a", "first in one"),
        NewPost(r1, bob.id, "bob", "a", "second in one"),  # same cid, other sender
        NewPost(r1, alice.id, "alice", "a", "retry"),  # same key as post 2
        NewPost(999, alice.id, "alice", "z", "no such room"),
        NewPost(r2, bob.id, "bob", "b", "second in two"),
    ]
    results = await message_store.store_batch(db, posts)
    summary = [(r.message.room, r.message.seq, r.duplicate) if r.message else None for r in results]
    assert summary == [
        (r2, 1, False),
        (r1, 1, False),
        (r1, 2, False),
        (r1, 1, True),
        None,
        (r2, 2, False),
    ]
    assert results[3].message.text == "first in one"  # type: ignore[union-attr]
    again = await message_store.store_batch(
        db, [NewPost(r1, bob.id, "bob", "a", "x"), NewPost(r1, bob.id, "bob", "c", "third")]
    )
    assert [(r.message.seq, r.duplicate) for r in again] == [(2, True), (3, False)]  # type: ignore[union-attr]
    assert await message_store.last_seq(db, r1) == 3
    assert await message_store.last_seq(db, r2) == 2
    stored = await message_store.after(db, r1, 0, 10)
    assert [(m.seq, m.sender_name, m.text) for m in stored] == [
        (1, "alice", "first in one"),
        (2, "bob", "second in one"),
        (3, "bob", "third"),
    ]


async def test_batch_in_a_category_without_history_numbers_but_keeps_nothing(db: Database) -> None:
    user = await user_store.create_user(db, "u", "x")
    live_only = await category_store.create_category(db, "live", chat_history=False)
    room = (await room_store.create_room(db, "live-room", category_id=live_only)).id
    kept = (await room_store.create_room(db, "kept-room")).id
    results = await message_store.store_batch(
        db,
        [
            NewPost(room, user.id, "u", "1", "gone"),
            NewPost(kept, user.id, "u", "1", "here"),
            NewPost(room, user.id, "u", "2", "gone too"),
        ],
    )
    assert [(r.message.seq, r.message.kept, r.duplicate) for r in results] == [  # type: ignore[union-attr]
        (1, False, False),
        (1, True, False),
        (2, False, False),
    ]
    assert await message_store.last_seq(db, room) == 2  # live delivery still has its order
    assert await message_store.after(db, room, 0, 10) == []
    assert [m.text for m in await message_store.after(db, kept, 0, 10)] == ["here"]


async def test_a_stored_post_repeated_within_a_later_batch_is_one_duplicate(db: Database) -> None:
    user = await user_store.create_user(db, "u", "x")
    room = (await room_store.create_room(db, "r")).id
    first = await message_store.store_batch(db, [NewPost(room, user.id, "u", "k", "original")])
    assert first[0].message is not None and first[0].message.seq == 1
    again = await message_store.store_batch(
        db,
        [
            NewPost(room, user.id, "u", "k", "retry one"),
            NewPost(room, user.id, "u", "n", "new"),
            NewPost(room, user.id, "u", "k", "retry two"),
        ],
    )
    assert [(r.message.seq, r.message.text, r.duplicate) for r in again] == [  # type: ignore[union-attr]
        (1, "original", True),
        (2, "new", False),
        (1, "original", True),
    ]
    assert again[0].message.ts == first[0].message.ts  # type: ignore[union-attr]
    assert await message_store.last_seq(db, room) == 2


async def test_concurrent_retries_of_the_same_posts_store_each_once(db_url: str) -> None:
    """Two nodes storing the same (room, sender, cid) keys at once: one stores, one finds."""
    dbs = [Database(db_url), Database(db_url)]
    try:
        user = await user_store.create_user(dbs[0], "u", "x")
        room = (await room_store.create_room(dbs[0], "r")).id
        batches = [
            [NewPost(room, user.id, "u", f"{k}-{j}", f"t{k}-{j}") for j in range(10)]
            for k in range(15)
        ]

        async def writer(w: int) -> list[message_store.Stored]:
            out: list[message_store.Stored] = []
            for batch in batches:
                out += await message_store.store_batch(dbs[w], batch)
            return out

        a, b = await asyncio.gather(writer(0), writer(1))
        for x, y in zip(a, b, strict=True):
            assert x.message is not None and y.message is not None
            assert x.message.seq == y.message.seq
            assert x.duplicate != y.duplicate  # exactly one of the two stored it
        seqs = [m.seq for m in await message_store.after(dbs[0], room, 0, 1000)]
        assert seqs == list(range(1, 151))
    finally:
        for database in dbs:
            await database.close()


async def test_concurrent_batches_keep_one_order(db_url: str) -> None:
    """Two writers on two connections (as two nodes would be) never share or skip a seq."""
    dbs = [Database(db_url), Database(db_url)]
    try:
        user = await user_store.create_user(dbs[0], "u", "x")
        rooms = [(await room_store.create_room(dbs[0], f"r{i}")).id for i in range(3)]

        async def writer(w: int) -> None:
            for k in range(20):
                batch = [
                    NewPost(rooms[(k + j) % 3], user.id, "u", f"{w}-{k}-{j}", "t") for j in range(5)
                ]
                await message_store.store_batch(dbs[w], batch)

        await asyncio.gather(writer(0), writer(1))
        for room in rooms:
            seqs = [m.seq for m in await message_store.after(dbs[0], room, 0, 1000)]
            assert seqs == list(range(1, len(seqs) + 1))
        total = 0
        for room in rooms:
            total += len(await message_store.after(dbs[0], room, 0, 1000))
        assert total == 2 * 20 * 5
    finally:
        for database in dbs:
            await database.close()


async def test_an_unusable_store_fails_every_post_and_stores_none(db: Database) -> None:
    user = await user_store.create_user(db, "u", "x")
    room = (await room_store.create_room(db, "r")).id
    delivered: list[object] = []
    writer = _writer(db, delivered.extend)
    writer.start()
    try:
        async with db.write() as conn:
            await conn.execute(text("ALTER TABLE messages RENAME TO messages_away"))
        futures = [writer.submit(NewPost(room, user.id, "u", str(i), "t")) for i in range(10)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(o, ChatError) and o.code == "unavailable" for o in outcomes)
        assert delivered == []
        async with db.write() as conn:
            await conn.execute(text("ALTER TABLE messages_away RENAME TO messages"))
        assert await message_store.last_seq(db, room) == 0  # the seqs were rolled back too
        retried = await asyncio.gather(
            *(writer.submit(NewPost(room, user.id, "u", str(i), "t")) for i in range(10))
        )
        assert sorted(r.message.seq for r in retried) == list(range(1, 11))  # type: ignore[union-attr]
        assert len(delivered) == 10
    finally:
        await writer.close()


async def test_writer_refuses_when_full_and_after_close(db: Database) -> None:
    user = await user_store.create_user(db, "u", "x")
    room = (await room_store.create_room(db, "r")).id
    writer = _writer(db, lambda _m: None, max_pending=100)
    # Not started: nothing drains the queue.
    futures = [writer.submit(NewPost(room, user.id, "u", str(i), "t")) for i in range(100)]
    with pytest.raises(ChatError) as info:
        writer.submit(NewPost(room, user.id, "u", "overflow", "t"))
    assert info.value.code == "unavailable"
    writer.start()
    await writer.close()  # stores what was queued before stopping
    assert all(f.done() and not f.exception() for f in futures)
    with pytest.raises(ChatError):
        writer.submit(NewPost(room, user.id, "u", "late", "t"))
    assert await message_store.last_seq(db, room) == 100


async def test_sessions_expire(db: Database) -> None:
    user = await user_store.create_user(db, "u", "x")
    token = await user_store.create_session(db, user.id, ttl_s=3600)
    assert (await user_store.user_for_token(db, token)) == user
    async with db.write() as conn:
        await conn.execute(text("UPDATE sessions SET expires_ms = 0"))
    assert await user_store.user_for_token(db, token) is None
    assert await user_store.user_for_token(db, "unknown") is None


async def test_the_asyncpg_pool_is_made_once_for_concurrent_callers(db_url: str) -> None:
    """The writer keeps two batches in flight: both may ask for the pool before it exists."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the asyncpg pool is PostgreSQL's fast path")
    db = Database(db_url)
    try:
        pools = await asyncio.gather(*(db.pg_pool() for _ in range(5)))
        assert all(pool is pools[0] for pool in pools)
    finally:
        await db.close()


async def test_closing_does_not_wait_forever_for_a_connection_never_released(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the asyncpg pool is PostgreSQL's fast path")
    from chatserver.store import db as db_module

    monkeypatch.setattr(db_module, "PG_POOL_CLOSE_TIMEOUT_S", 0.5)
    db = Database(db_url)
    pool = await db.pg_pool()
    held = await pool.pool.acquire()  # as if its holder were cancelled before releasing it
    raw = held._con  # the connection behind the pool's proxy
    await asyncio.wait_for(db.close(), 5)  # without the bound, close() waits for it forever
    assert raw.is_closed()


async def test_window_is_last_seq_and_the_newest_messages_without_removed_ones(
    db: Database,
) -> None:
    """What a node loads for a room on its first join there (one statement on PostgreSQL)."""
    user = await user_store.create_user(db, "u", "x")
    room = (await room_store.create_room(db, "r")).id
    empty = (await room_store.create_room(db, "empty")).id
    await message_store.store_batch(
        db, [NewPost(room, user.id, "u", str(i), f"m{i}") for i in range(1, 8)]
    )
    async with db.write() as conn:
        await conn.execute(
            text("UPDATE messages SET state = 'removed', text = '' WHERE room_id = :r AND seq = 6"),
            {"r": room},
        )
    last, recent = await message_store.window(db, room, 3)  # type: ignore[misc]
    assert last == 7
    assert [(m.seq, m.text, m.sender_name) for m in recent] == [
        (4, "m4", "u"),
        (5, "m5", "u"),
        (7, "m7", "u"),
    ]
    assert await message_store.window(db, empty, 3) == (0, [])
    assert await message_store.window(db, 10_000, 3) is None


async def test_rooms_loaded_on_a_node_share_their_principal_objects(db: Database) -> None:
    """Every node loads the role lists of every room its users join: one object per principal,
    not one per (room, principal)."""
    user = await user_store.create_user(db, "u", "x")
    rooms = [(await room_store.create_room(db, f"r{i}")).id for i in range(3)]
    async with db.write() as conn:
        for room in rooms:
            await conn.execute(
                text(
                    "INSERT INTO room_principals (room_id, role, principal_kind, principal_id)"
                    " VALUES (:r, 'member', 'user', :u)"
                ),
                {"r": room, "u": user.id},
            )
    loaded = [await room_store.get_room(db, room) for room in rooms]
    members = [next(iter(room.members)) for room in loaded if room is not None]
    assert len(members) == 3 and members[0].id == user.id
    assert members[0] is members[1] is members[2]


async def test_clear_removes_everything_up_to_the_seq_it_announces(db: Database) -> None:
    """Message times need not follow seqs (times written by nodes whose clocks disagree, or two
    commits that overtook each other): ``clear`` removes every message up to the highest seq
    posted at or before the date, and that seq is the ``through_seq`` it returns, so a client
    that drops what is at or below it drops exactly what the store no longer serves."""
    from chatserver.store import admin as admin_store

    user = await user_store.create_user(db, "u", "x")
    room = (await room_store.create_room(db, "r")).id
    for cid, ts in (("a", 1000), ("b", 5000), ("c", 2000), ("d", 6000)):
        await message_store.store_batch(db, [NewPost(room, user.id, "u", cid, cid)], ts=ts)
    removed, through = await admin_store.clear_room(
        db, room, 3000, compliance_node=None, actor="test"
    )
    assert (removed, through) == (3, 3)  # "b" (seq 2, a later time) goes with its seq
    left = await message_store.after(db, room, 0, 10)
    assert [(m.seq, m.text) for m in left] == [(4, "d")]
    # clearing again up to the same date changes nothing, and announces nothing
    assert await admin_store.clear_room(db, room, 3000, compliance_node=None, actor="t") == (0, 0)
