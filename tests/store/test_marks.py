"""The store half of read markers and mentions (issue 17), on both dialects."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from chatserver.rooms.mentions import mentioned_names
from chatserver.store import marks
from chatserver.store import rooms as room_store
from chatserver.store import users as user_store
from chatserver.store.db import Database
from chatserver.store.messages import NewPost, store_batch
from chatserver.store.schema import compliance_outbox, mentions


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.close()


def post(room: int, sender: int, name: str, cid: str, text: str) -> NewPost:
    return NewPost(room, sender, name, cid, text, mentioned_names(text))


@pytest.mark.parametrize("capture", [None, "node1"])
async def test_mentions_are_stored_with_their_messages(db: Database, capture: str | None) -> None:
    alice = await user_store.create_user(db, "alice", "x")
    bob = await user_store.create_user(db, "Bob.Smith", "x")
    carol = await user_store.create_user(db, "carol", "x")
    r1 = (await room_store.create_room(db, "one")).id
    r2 = (await room_store.create_room(db, "two")).id
    batch = [
        post(r1, alice.id, "alice", "a", "plain"),
        post(r1, alice.id, "alice", "b", "@bob.smith, @carol and @ghost and @alice"),
        post(r2, carol.id, "carol", "c", "@BOB.SMITH."),
        post(r1, alice.id, "alice", "b", "@bob.smith, @carol and @ghost and @alice"),  # repeat
    ]
    results = await store_batch(db, batch, capture=capture)
    assert [sorted(r.mentioned) for r in results] == [[], sorted([bob.id, carol.id]), [bob.id], []]
    assert results[3].duplicate
    # Retried later: stored nothing, mentions nobody again.
    again = await store_batch(db, batch[1:2], capture=capture)
    assert again[0].duplicate and again[0].mentioned == ()
    async with db.read() as conn:
        rows = sorted(
            tuple(r)
            for r in await conn.execute(
                select(mentions.c.user_id, mentions.c.room_id, mentions.c.seq, mentions.c.sender_id)
            )
        )
        chat_events = (
            await conn.execute(select(func.count()).select_from(compliance_outbox))
        ).scalar()
    assert rows == sorted(
        [(bob.id, r1, 2, alice.id), (carol.id, r1, 2, alice.id), (bob.id, r2, 1, carol.id)]
    )
    assert chat_events == (3 if capture else 0)
    assert await marks.mention_counts(db, bob.id, {r1: 0, r2: 0}) == {r1: 1, r2: 1}
    assert await marks.mention_counts(db, bob.id, {r1: 2, r2: 0}) == {r2: 1}
    assert await marks.is_mentioned(db, carol.id, r1, 2)
    assert not await marks.is_mentioned(db, carol.id, r1, 1)


async def test_markers_only_move_forward(db: Database) -> None:
    alice = await user_store.create_user(db, "alice", "x")
    room = (await room_store.create_room(db, "one")).id
    await marks.save_markers(db, {(alice.id, room): 5})
    await marks.save_markers(db, {(alice.id, room): 3})
    assert await marks.markers(db, alice.id, [room]) == {room: 5}
    await marks.save_markers(db, {(alice.id, room): 9, (alice.id, 2**31 - 1): 1})  # a gone room
    assert await marks.markers(db, alice.id, [room, 2**31 - 1]) == {room: 9}
