"""The store's pool of connections on PostgreSQL (store/db.py): connections made for a burst are
kept for the next one (no overflow made and dropped per burst), and a node opens some as it
starts (Database.warm)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from sqlalchemy import text

from chatserver.store.db import Database
from chatserver.store.migrate import upgrade
from chatserver.testing import PostgresCluster

_numbers = itertools.count(1)


async def _backend_pids(db: Database, at_once: int) -> set[int]:
    """The server processes that served ``at_once`` reads held open together."""
    held = asyncio.Event()
    ready = 0
    pids: set[int] = set()

    async def one() -> None:
        nonlocal ready
        async with db.read() as conn:
            pids.add(int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
            ready += 1
            if ready == at_once:
                held.set()
            await held.wait()  # every read holds its connection until all have one

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(at_once))), 30)
    return pids


async def _connections_to(cluster: PostgresCluster, name: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(cluster.url())
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <>"
                " pg_backend_pid()",
                name,
            )
        )
    finally:
        await conn.close()


async def test_connections_made_for_a_burst_are_kept_for_the_next(
    pg_cluster: PostgresCluster,
) -> None:
    name = f"pool_{next(_numbers)}"
    url = await pg_cluster.create_database(name, template="postgres")
    db = Database(url, pool_size=10)
    try:
        first = await _backend_pids(db, 15)  # more than pool_size: an overflow before
        assert len(first) == 15
        assert await _connections_to(pg_cluster, name) == 15  # all kept open
        second = await _backend_pids(db, 15)
        assert second == first  # the same server processes: no connection made again
    finally:
        await db.close()


async def test_warm_opens_connections_before_they_are_needed(
    pg_cluster: PostgresCluster,
) -> None:
    name = f"pool_{next(_numbers)}"
    url = await pg_cluster.create_database(name, template="postgres")
    db = Database(url)
    try:
        assert await _connections_to(pg_cluster, name) == 0
        assert await db.warm(6) == 6
        assert await _connections_to(pg_cluster, name) == 6
        # The first burst after it uses them.
        assert len(await _backend_pids(db, 6)) == 6
        assert await _connections_to(pg_cluster, name) == 6
    finally:
        await db.close()


async def test_warm_is_nothing_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    try:
        assert await db.warm(6) == 0
    finally:
        await db.close()
