"""The pool registry on a real PostgreSQL database: expiry, automatic promotion, re-registering."""

from __future__ import annotations

import asyncio
import itertools
import os

from sqlalchemy import update

from chatserver.pool import registry
from chatserver.pool.registry import ACTIVE, STANDBY
from chatserver.store.db import Database
from chatserver.store.schema import pool_nodes
from chatserver.testing import PostgresCluster

DEAD_AFTER_MS = 3000
ADDRESSES = {"tcp": "", "websocket": "", "peer": "", "management": ""}
_numbers = itertools.count(1)


async def registered(cluster: PostgresCluster, states: dict[str, str]) -> str:
    """A fresh database whose registry holds ``states`` (every heartbeat fresh)."""
    url = await cluster.create_database(f"registry_{os.getpid()}_{next(_numbers)}", "postgres")
    db = Database(url)
    try:
        async with db.write() as conn:
            now = await registry.db_now(conn)
            for name, state in states.items():
                await conn.execute(
                    pool_nodes.insert().values(
                        name=name, state=state, started_ms=1, heartbeat_ms=now, **ADDRESSES
                    )
                )
    finally:
        await db.close()
    return url


async def kill(db: Database, *names: str) -> None:
    """Age these nodes' heartbeats past dead_after."""
    async with db.write() as conn:
        now = await registry.db_now(conn)
        await conn.execute(
            update(pool_nodes)
            .where(pool_nodes.c.name.in_(names))
            .values(heartbeat_ms=now - 2 * DEAD_AFTER_MS)
        )


async def states(db: Database) -> dict[str, str]:
    return {row.name: row.state for row in await registry.list_nodes(db)}


async def noticing_at_once(url: str, names: list[str], noticers: int) -> list[registry.Expired]:
    """``noticers`` nodes (each with its own connections) expire ``names`` at the same moment."""
    dbs = [Database(url) for _ in range(noticers)]
    try:
        return await asyncio.gather(
            *(registry.expire(db, DEAD_AFTER_MS, names, promote_up_to=2) for db in dbs)
        )
    finally:
        for db in dbs:
            await db.close()


async def test_one_standby_takes_a_dead_active_place_however_many_notice(
    pg_cluster: PostgresCluster,
) -> None:
    url = await registered(
        pg_cluster, {"a1": ACTIVE, "a2": ACTIVE, "s1": STANDBY, "s2": STANDBY, "s3": STANDBY}
    )
    db = Database(url)
    try:
        await kill(db, "a1")
        results = await noticing_at_once(url, ["a1"], noticers=4)
        assert sorted(name for r in results for name in r.gone) == ["a1"]
        assert [name for r in results for name in r.promoted] == ["s1"]
        assert await states(db) == {"a2": ACTIVE, "s1": ACTIVE, "s2": STANDBY, "s3": STANDBY}
        (done,) = [r for r in results if r.promoted]
        assert done.before["a1"] == ACTIVE and "a1" not in done.after
        assert done.after["s1"] == ACTIVE

        # Two active nodes die at once: two standbys, never more than max_active active.
        await kill(db, "a2", "s1")
        results = await noticing_at_once(url, ["a2", "s1"], noticers=3)
        assert sorted(name for r in results for name in r.promoted) == ["s2", "s3"]
        assert await states(db) == {"s2": ACTIVE, "s3": ACTIVE}
    finally:
        await db.close()


async def test_a_node_heard_over_a_link_counts_as_active_when_promoting(
    pg_cluster: PostgresCluster,
) -> None:
    """After a store outage every heartbeat is old: an active node the noticing node still hears
    holds its place, so a dead active node's place is the only one filled."""
    url = await registered(pg_cluster, {"a1": ACTIVE, "a2": ACTIVE, "s1": STANDBY})
    db = Database(url)
    try:
        await kill(db, "a1", "a2")
        expired = await registry.expire(db, DEAD_AFTER_MS, ["a1"], promote_up_to=2, heard=["a2"])
        assert expired.promoted == ["s1"]
        await kill(db, "s1")  # now s1 (active) dies too; a2 still heard, no standby left
        expired = await registry.expire(db, DEAD_AFTER_MS, ["s1"], promote_up_to=1, heard=["a2"])
        assert (expired.gone, expired.promoted) == (["s1"], [])
        assert await states(db) == {"a2": ACTIVE}
    finally:
        await db.close()


async def test_no_promotion_without_auto_promote_or_for_a_dead_standby(
    pg_cluster: PostgresCluster,
) -> None:
    url = await registered(pg_cluster, {"a1": ACTIVE, "a2": ACTIVE, "s1": STANDBY, "s2": STANDBY})
    db = Database(url)
    try:
        await kill(db, "a1", "s1")
        expired = await registry.expire(db, DEAD_AFTER_MS, ["a1", "s1"])  # auto_promote off
        assert (expired.gone, expired.promoted) == (["a1", "s1"], [])
        assert await states(db) == {"a2": ACTIVE, "s2": STANDBY}
        await kill(db, "s2")
        expired = await registry.expire(db, DEAD_AFTER_MS, ["s2"], promote_up_to=2)
        assert (expired.gone, expired.promoted) == (["s2"], [])
    finally:
        await db.close()


async def test_expire_deletes_only_the_named_stale_rows(pg_cluster: PostgresCluster) -> None:
    """A node the caller still hears is not named; a named node that has beaten since is kept."""
    url = await registered(pg_cluster, {"a1": ACTIVE, "a2": ACTIVE, "a3": ACTIVE})
    db = Database(url)
    try:
        await kill(db, "a1", "a2")
        expired = await registry.expire(db, DEAD_AFTER_MS, ["a1", "a3"])
        assert expired.gone == ["a1"]  # a2 is stale but not named; a3 is named but fresh
        assert set(await states(db)) == {"a2", "a3"}
    finally:
        await db.close()


async def test_an_expired_active_node_comes_back_as_standby_when_its_place_is_taken(
    pg_cluster: PostgresCluster,
) -> None:
    url = await registered(pg_cluster, {"a2": ACTIVE, "s1": ACTIVE})
    db = Database(url)
    try:
        beat = {"started_ms": 1, "max_active": 2, "dead_after_ms": DEAD_AFTER_MS}
        state, rows, _ = await registry.heartbeat(db, "a1", ADDRESSES, state=ACTIVE, **beat)
        assert state == STANDBY and {r.name for r in rows} == {"a1", "a2", "s1"}
        # With a free place (a dead active node does not count) it comes back as it was.
        await kill(db, "a2")
        async with db.write() as conn:
            await conn.execute(pool_nodes.delete().where(pool_nodes.c.name == "a1"))
        state, _, _ = await registry.heartbeat(db, "a1", ADDRESSES, state=ACTIVE, **beat)
        assert state == ACTIVE
        # A row that exists keeps the state the registry holds (an administrator's change).
        state, _, _ = await registry.heartbeat(db, "s1", ADDRESSES, state=STANDBY, **beat)
        assert state == ACTIVE
    finally:
        await db.close()
