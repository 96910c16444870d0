"""The compliance writer with a frozen database: every use of its connections is bounded by
``compliance.timeout_s``, it says once that it paused, and once that it resumed, and the chain
holds every event exactly once afterwards."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from chatserver.pool.local import NodeProcess
from chatserver.store import outbox
from chatserver.store.db import Database
from chatserver.store.schema import compliance_outbox
from chatserver.testing import PostgresCluster
from compliance import schema as comp_schema
from compliance.schema import events
from compliance.verify import verify
from tests.compliance.test_compliance import comp_config, comp_env, wait_until
from tests.conftest import DIALECTS, scaled
from tests.pool.test_pool import new_database
from tests.store.faults import StoreProxy

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif("postgresql" not in DIALECTS, reason="PostgreSQL tests are off"),
]

TIMEOUT_S = 2.0
_numbers = itertools.count(1)


async def record(url: str, first: int, count: int) -> None:
    db = Database(url)
    try:
        async with db.write() as conn:
            batch = [
                outbox.Event("CHAT", None, None, {"n": n}) for n in range(first, first + count)
            ]
            await outbox.record(conn, "node1", batch)
    finally:
        await db.close()


async def count(url: str, table: object) -> int:
    db = Database(url)
    try:
        async with db.read() as conn:
            stmt = select(func.count()).select_from(table)  # type: ignore[arg-type]
            return int((await conn.execute(stmt)).scalar_one())
    finally:
        await db.close()


@pytest.mark.parametrize("frozen", ["compliance", "content"])
async def test_a_frozen_database_pauses_the_writer_within_its_bound_and_it_resumes_once(
    pg_cluster: PostgresCluster, tmp_path: Path, frozen: str
) -> None:
    content_url = await new_database(pg_cluster)
    comp_url = await pg_cluster.create_database(f"compw_{os.getpid()}_{next(_numbers)}")
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    config = comp_config(
        proxy.url(content_url) if frozen == "content" else content_url,
        proxy.url(comp_url) if frozen == "compliance" else comp_url,
        tmp_path,
        timeout_s=TIMEOUT_S,
    )
    env = {**comp_env(config), "PYTHONUNBUFFERED": "1"}
    writer = NodeProcess(
        "writer",
        env,
        args=("compliance", "run", "--no-export", "--poll-s", "0.1", "--metrics", "127.0.0.1:0"),
        echo=bool(os.environ.get("CHATSERVER_TEST_ECHO")),
    )

    def lines(text: str) -> list[str]:
        return [line for line in writer.lines if text in line]

    async def stored(n: int) -> bool:
        return (
            await count(comp_url, events) == n and await count(content_url, compliance_outbox) == 0
        )

    comp = Database(comp_url)
    await comp_schema.prepare(comp)
    await comp.close()
    try:
        await record(content_url, 0, 10)
        await writer.start()
        await wait_until(lambda: stored(10))

        proxy.freeze()
        frozen_at = time.monotonic()
        await record(content_url, 10, 10)  # directly: only the writer's connections are frozen
        await writer.wait_for("compliance writer paused", scaled(4 * TIMEOUT_S + 10))
        took = time.monotonic() - frozen_at
        # A round begins within poll_s; getting a connection and its use are each bounded.
        assert took <= scaled(2 * TIMEOUT_S + 2), took
        label = "compliance database" if frozen == "compliance" else "content store"
        await writer.wait_for(f"{label} unavailable", scaled(5))
        await wait_until(lambda: _later(frozen_at, 3 * TIMEOUT_S), 4 * TIMEOUT_S + 5)
        assert len(lines("compliance writer paused")) == 1, writer.lines
        assert await count(content_url, compliance_outbox) == 10
        # Its /metrics answers too, within the metrics' own bound (5 s), and says so.
        found = await writer.wait_for(r"metrics on (http://\S+/metrics)", scaled(5))
        started = time.monotonic()
        async with aiohttp.ClientSession() as http, http.get(found.group(1)) as response:
            text = await response.text()
        assert time.monotonic() - started <= scaled(5 + 3)
        assert "chatserver_compliance_writer_up 0.0" in text
        up = "0.0" if frozen == "compliance" else "1.0"
        assert f"chatserver_compliance_database_up {up}" in text

        proxy.thaw()
        await wait_until(lambda: stored(20), 60)
        await writer.wait_for("compliance writer resumed after", scaled(10))
        assert len(lines("compliance writer paused")) == 1, writer.lines
        assert len(lines("compliance writer resumed")) == 1, writer.lines
        assert not lines("Traceback"), writer.lines

        comp, content = Database(comp_url), Database(content_url)
        try:
            report = await verify(comp, content)
            async with comp.read() as conn:
                rows = list(await conn.execute(select(events).order_by(events.c.seq)))
        finally:
            await comp.close()
            await content.close()
        assert report.ok and report.broken is None, report
        assert [r.seq for r in rows] == list(range(1, 21))  # the chain has no gap
        assert len({r.event_id for r in rows}) == 20  # and no event twice
        numbers = sorted(int(r.payload.split(":")[1].rstrip("}")) for r in rows)
        assert numbers == list(range(20))
    finally:
        await writer.stop(scaled(30))
        await proxy.close()


async def _later(since: float, seconds: float) -> bool:
    return time.monotonic() - since >= seconds


async def test_the_writer_stops_while_the_compliance_database_is_frozen(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """SIGTERM while a round waits on a frozen compliance database: the writer exits within the
    bound (its connections are dropped, not closed politely)."""
    content_url = await new_database(pg_cluster)
    comp_url = await pg_cluster.create_database(f"compw_{os.getpid()}_{next(_numbers)}")
    comp = Database(comp_url)
    await comp_schema.prepare(comp)
    await comp.close()
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    config = comp_config(content_url, proxy.url(comp_url), tmp_path, timeout_s=TIMEOUT_S)
    writer = NodeProcess(
        "writer",
        {**comp_env(config), "PYTHONUNBUFFERED": "1"},
        args=("compliance", "run", "--no-export", "--poll-s", "0.1"),
    )
    try:
        await record(content_url, 0, 5)
        await writer.start()
        await wait_until(lambda: _stored(comp_url, content_url, 5))
        proxy.freeze()
        await record(content_url, 5, 5)
        await asyncio.sleep(0.5)  # a round is waiting on the frozen database
        started = time.monotonic()
        code = await writer.stop(scaled(30))
        took = time.monotonic() - started
        assert code == 0, writer.lines
        assert took <= scaled(2 * TIMEOUT_S + 3), took
        assert await count(content_url, compliance_outbox) == 5  # kept for the next writer
    finally:
        await writer.stop(scaled(30))
        await proxy.close()


async def _stored(comp_url: str, content_url: str, n: int) -> bool:
    return await count(comp_url, events) == n and await count(content_url, compliance_outbox) == 0
