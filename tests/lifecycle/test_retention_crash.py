"""The retention purge across a pool of real ``chatserver run`` processes: one node purges at a
time (the store's lease), and a node killed with SIGKILL in the middle of a purge leaves only
whole batches done; another node takes the lease over and finishes, deleting everything the
policy covers and nothing else (held and newer messages survive, no orphaned reactions)."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import func, select

from chatserver.pool.local import LocalPool
from chatserver.store import holds as hold_store
from chatserver.store import leases, retention
from chatserver.store import messages as message_store
from chatserver.store.db import Database, now_ms
from chatserver.store.messages import NewPost
from chatserver.store.schema import messages, reactions
from chatserver.testing import PostgresCluster
from tests.conftest import scaled
from tests.pool.test_pool import FAST, new_database, seed, wait_mesh

DAY = 86_400_000
OLD, NEW, HELD = 1000, 50, 40


async def _count(db: Database, room: int, older_than: int) -> int:
    async with db.read() as conn:
        value = await conn.scalar(
            select(func.count()).where(messages.c.room_id == room, messages.c.ts < older_than)
        )
    return int(value or 0)


async def _until_at_most(db: Database, room: int, cutoff: int, most: int, timeout: float) -> None:
    """Poll until at most ``most`` of the room's messages are older than ``cutoff``."""
    async with asyncio.timeout(scaled(timeout)):
        for _ in iter(int, 1):
            if await _count(db, room, cutoff) <= most:
                return
            await asyncio.sleep(0.05)


async def test_a_purge_killed_midway_is_finished_by_another_node(
    pg_cluster: PostgresCluster,
) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["ann", "bob"], ["lobby"])
    room, ann, bob = ids["lobby"], ids["ann"], ids["bob"]
    db = Database(url)
    now = now_ms()
    cutoff = now - 30 * DAY
    try:
        posts = [NewPost(room, ann, "ann", f"o{i}", f"old {i}") for i in range(OLD)]
        for i in range(0, OLD, 250):
            await message_store.store_batch(db, posts[i : i + 250], ts=now - 60 * DAY)
        held = [NewPost(room, bob, "bob", f"h{i}", f"held {i}") for i in range(HELD)]
        await message_store.store_batch(db, held, ts=now - 60 * DAY)
        fresh = [NewPost(room, ann, "ann", f"n{i}", f"new {i}") for i in range(NEW)]
        await message_store.store_batch(db, fresh, ts=now - DAY)
        async with db.write() as conn:  # reactions on old messages: they must go with them
            await conn.execute(
                reactions.insert(),
                [
                    {"room_id": room, "seq": s, "user_id": bob, "emoji": "👍", "ts": now}
                    for s in range(1, OLD + 1, 10)
                ],
            )
        await hold_store.place(db, "bob's", [bob], [], None, None, "test")
        await retention.set_policy(db, retention.Policy("deployment", 0, 30, None, True, now))
        env = {
            **FAST,
            "CHATSERVER_RETENTION_BATCH_SIZE": "20",
            "CHATSERVER_RETENTION_BATCH_PAUSE_S": "0.2",
            "CHATSERVER_RETENTION_INTERVAL_S": "0.5",
            "CHATSERVER_RETENTION_LEASE_S": "2",
        }
        pool = LocalPool(url, env=env)
        try:
            await pool.start(2)
            await wait_mesh(pool.nodes)
            await _until_at_most(db, room, cutoff, OLD + HELD - 200, 60)
            found = await leases.holder(db, "retention")
            assert found is not None
            victim = next(n for n in pool.nodes if n.name == found[0])
            survivor = next(n for n in pool.nodes if n is not victim)
            await victim.kill()  # SIGKILL, mid-purge
            killed_at = time.monotonic()
            left = await _count(db, room, cutoff)
            assert HELD < left < OLD + HELD, left  # really in the middle
            # Only the holder purged: the other node never logged a purged room meanwhile.
            assert not any("retention purge: room" in line for line in survivor.lines)
            await _until_at_most(db, room, cutoff, HELD, 90)
            took_over = time.monotonic() - killed_at
            print(f"purge taken over and finished {took_over:.1f} s after the kill")
            holder = await leases.holder(db, "retention")
            assert holder is not None and holder[0] == survivor.name
        finally:
            await pool.stop()
        # Everything the policy covers is gone, nothing else: bob's held messages and the new
        # ones stay, every seq above the purged ones is intact, no reaction is orphaned.
        stored = await message_store.after(db, room, 0, 10_000)
        assert [m.text for m in stored] == [f"held {i}" for i in range(HELD)] + [
            f"new {i}" for i in range(NEW)
        ]
        assert [m.seq for m in stored] == list(range(OLD + 1, OLD + HELD + NEW + 1))
        async with db.read() as conn:
            orphans = await conn.scalar(select(func.count()).select_from(reactions))
        assert orphans == 0
    finally:
        await db.close()
