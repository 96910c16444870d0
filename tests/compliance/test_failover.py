"""The compliance database fails over like the content store (issue 15, section 3): its URL
names a primary and a synchronous replica; the primary is killed mid-stream and the replica
promoted; the writer (real databases, in process) resumes by itself and every captured event is
in the compliance database exactly once, the hash chain unbroken."""

from __future__ import annotations

import asyncio
import json
import time

from sqlalchemy import func, select

from chatserver.config import load_config
from chatserver.store import outbox
from chatserver.store.db import Database
from chatserver.store.schema import compliance_outbox
from chatserver.testing import PostgresCluster, ReplicaCluster
from compliance.schema import events, prepare
from compliance.verify import Report, check_chain
from compliance.writer import run
from tests.conftest import scaled


async def test_the_writer_resumes_exactly_once_after_a_failover(
    pg_cluster: PostgresCluster, pg_pair: tuple[PostgresCluster, ReplicaCluster]
) -> None:
    primary, replica = pg_pair
    await replica.wait_streaming()
    content_url = await pg_cluster.create_database("comp_failover_content", template="postgres")
    await primary.create_database("compliance")
    await replica.wait_streaming()
    comp_url = (
        f"postgresql://{primary.user}@/compliance"
        f"?host=127.0.0.1:{primary.port}&host=127.0.0.1:{replica.port}"
    )
    config = load_config(
        env={
            "CHATSERVER_DATABASE_URL": content_url,
            "CHATSERVER_COMPLIANCE_ENABLED": "true",
            "CHATSERVER_COMPLIANCE_DATABASE_URL": comp_url,
        }
    )
    content = Database(content_url)
    stop = asyncio.Event()
    writer = asyncio.ensure_future(run(config, stop, poll_s=0.05, batch=20, export=False))
    produced = 0

    async def produce(seconds: float) -> None:
        nonlocal produced
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            batch = [outbox.Event("CHAT", None, None, {"n": produced + i}) for i in range(3)]
            async with content.write() as conn:
                await outbox.record(conn, "test", batch)
            produced += len(batch)
            await asyncio.sleep(0.005)

    async def pending() -> int:
        async with content.read() as conn:
            return int(
                (
                    await conn.execute(select(func.count()).select_from(compliance_outbox))
                ).scalar_one()
            )

    async def stored_on(cluster: PostgresCluster) -> int:
        comp = Database(cluster.url("compliance") + "?target_session_attrs=any")  # a standby
        try:
            async with comp.read() as conn:
                return int(
                    (await conn.execute(select(func.count()).select_from(events))).scalar_one()
                )
        finally:
            await comp.close()

    try:
        await produce(1.5)
        before = await stored_on(replica)  # moved to the old primary (and replicated)
        assert before > 0
        crashed = time.monotonic()
        await asyncio.to_thread(primary.crash)
        await asyncio.to_thread(replica.promote)
        await produce(1.5)
        async with asyncio.timeout(scaled(30)):
            while await pending():  # noqa: ASYNC110 (polling another process's database)
                await asyncio.sleep(0.05)
        drained_s = time.monotonic() - crashed
        stop.set()
        await asyncio.wait_for(writer, scaled(10))
    finally:
        stop.set()
        await asyncio.gather(writer, return_exceptions=True)
        await content.close()
    print(
        f"\ncompliance failover: {produced} events ({before} stored before the crash),"
        f" outbox empty {drained_s:.2f} s after the crash"
    )

    comp = Database(replica.url("compliance"))
    try:
        async with comp.read() as conn:
            stored = [
                json.loads(r.payload)["n"] for r in await conn.execute(select(events.c.payload))
            ]
        report = Report()
        await check_chain(comp, report)
    finally:
        await comp.close()
    assert produced > 100
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert sorted(stored) == list(range(produced)), "an event is missing"
    assert report.broken is None, report.broken
    assert report.events == produced


async def test_the_writer_follows_a_pool_failover_onto_the_backup_store(
    pg_cluster: PostgresCluster, pg_pair: tuple[PostgresCluster, ReplicaCluster]
) -> None:
    """The outbox is in the content store: after `pool failover` onto database.backup_url, the
    events captured there are moved too (the writer follows the pool state, as nodes do)."""
    from chatserver.pool.failover import StoreFailover
    from chatserver.store.migrate import upgrade

    primary, backup = pg_pair
    await asyncio.to_thread(upgrade, primary.url())
    await backup.wait_streaming()
    comp_url = await pg_cluster.create_database("comp_follows_pool")
    config = load_config(
        env={
            "CHATSERVER_DATABASE_URL": primary.url(),
            "CHATSERVER_DATABASE_BACKUP_URL": backup.url(),
            "CHATSERVER_DATABASE_FAILOVER_CHECK_S": "0.2",
            "CHATSERVER_COMPLIANCE_ENABLED": "true",
            "CHATSERVER_COMPLIANCE_DATABASE_URL": comp_url,
        }
    )
    comp = Database(comp_url)
    await prepare(comp)  # what the writer does first; the test reads the tables meanwhile
    content = Database(primary.url())
    stop = asyncio.Event()
    writer = asyncio.ensure_future(run(config, stop, poll_s=0.05, batch=20, export=False))

    async def record(db: Database, first: int, count: int) -> None:
        async with db.write() as conn:
            await outbox.record(
                conn,
                "test",
                [outbox.Event("CHAT", None, None, {"n": first + i}) for i in range(count)],
            )

    async def stored() -> list[int]:
        async with comp.read() as conn:
            return sorted(
                json.loads(r.payload)["n"] for r in await conn.execute(select(events.c.payload))
            )

    try:
        await record(content, 0, 30)
        async with asyncio.timeout(scaled(20)):
            while len(await stored()) < 30:  # noqa: ASYNC110 (the writer's progress)
                await asyncio.sleep(0.05)
        # The operator fails the pool over (as `chatserver pool failover --promote` does).
        failover = StoreFailover(content, primary.url(), backup.url(), 1.0)
        await failover.set_state("failed_over", by="test", reason="drill", promote=True)
        await record(content, 30, 30)  # `content` now writes to the backup store
        async with asyncio.timeout(scaled(20)):
            while len(await stored()) < 60:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(writer, scaled(10))
        assert await stored() == list(range(60))
    finally:
        stop.set()
        await asyncio.gather(writer, return_exceptions=True)
        await content.close()
        await comp.close()
