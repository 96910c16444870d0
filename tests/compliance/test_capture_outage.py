"""Compliance capture while the content store is unavailable: one log line per change of state,
and nothing recorded lost (a JOIN, read or search that cannot be recorded fails its request; a
PART is kept and recorded when the store returns)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from chatserver.client import RequestFailed
from chatserver.protocol.errors import ChatError
from chatserver.rooms.capture import Capture
from chatserver.store.db import Database
from chatserver.store.schema import compliance_outbox
from chatserver.store.users import User
from chatserver.testing import PostgresCluster
from tests.compliance.test_compliance import wait_until
from tests.conftest import DIALECTS, Harness, node_config, scaled, start_node
from tests.pool.test_pool import new_database, seed
from tests.store.faults import StoreProxy

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif("postgresql" not in DIALECTS, reason="PostgreSQL tests are off"),
]

FAILING = 200
JOINS = 300
PAGE = [{"seq": 1}, {"seq": 2}]


async def outbox_rows(url: str) -> list[Any]:
    db = Database(url)
    try:
        stmt = select(compliance_outbox).order_by(compliance_outbox.c.id)
        async with db.read() as conn:
            return list(await conn.execute(stmt))
    finally:
        await db.close()


async def outbox_kinds(url: str) -> list[tuple[str, int | None]]:
    return [(r.kind, r.room_id) for r in await outbox_rows(url)]


def capture_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "chatserver.rooms.capture"]


@pytest.mark.parametrize("fault", ["cut", "freeze"])
async def test_an_outage_logs_twice_and_loses_no_part(
    pg_cluster: PostgresCluster, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """Hundreds of reads and searches fail while the store is cut (or frozen): each is refused
    ``unavailable``, the capture log has one line when the first fails and one, with the count,
    when an event is recorded again; a PART of a subscription that ended meanwhile is recorded
    once the store is back, with the time it happened."""
    caplog.set_level(logging.INFO)
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    user = User(ids["alice"], "alice", "alice", False)
    room = ids["lobby"]
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    db = Database(proxy.url(url), timeout_s=1, pool_size=2)
    capture = Capture(db, "node1", enabled=True)
    subscriber = object()
    try:
        await capture.joined(user, subscriber, room, None, 2, PAGE)
        proxy.cut() if fault == "cut" else proxy.freeze()

        capture.left(subscriber, room)  # its PART cannot be recorded now

        async def refused(call: Any) -> None:
            with pytest.raises(ChatError, match="could not be recorded"):
                await asyncio.wait_for(call, scaled(10))

        count = FAILING if fault == "cut" else 6  # a freeze costs timeout_s per use
        for i in range(count):
            if i % 2:
                await refused(capture.read(user, room, PAGE, None, None, 50))
            else:
                await refused(capture.searched(user, room, "hello", "search", []))
        await refused(capture.joined(user, object(), room, None, 2, PAGE))
        assert (
            capture_lines(caplog)[-1].getMessage().startswith("recording compliance events failed")
        )
        assert len(capture_lines(caplog)) == 1
        assert not any(r.exc_info for r in caplog.records)
        assert [k for k, _ in await outbox_kinds(url)] == ["JOIN", "BACKCHAT"]

        healed_ms = int(time.time() * 1000)
        proxy.heal() if fault == "cut" else proxy.thaw()
        await capture.read(user, room, PAGE, None, None, 50)  # recorded again

        async def parted() -> bool:
            return ("PART", room) in await outbox_kinds(url)

        await wait_until(parted, 15)
        lines = [r.getMessage() for r in capture_lines(caplog)]
        assert len(lines) == 2, lines
        assert lines[1].startswith("compliance events are recorded again after"), lines
        found = re.search(
            r"; (\d+) failed meanwhile \(BACKCHAT (\d+), JOIN 1, PART (\d+),"
            r" SEARCH (\d+)\)",
            lines[1],
        )
        assert found is not None, lines
        total, reads, part_tries, searches = map(int, found.groups())
        assert (reads, searches) == (count // 2 + 1, count - count // 2)  # + the JOIN's BACKCHAT
        assert part_tries >= 1 and total == count + 2 + part_tries  # + the JOIN refused
        failed = total
        kinds = [k for k, _ in await outbox_kinds(url)]
        assert sorted(kinds) == ["BACKCHAT", "BACKCHAT", "JOIN", "PART"], kinds  # none twice
        assert capture.outage.failed_total >= failed
        part = next(r for r in await outbox_rows(url) if r.kind == "PART")
        assert part.ts_ms < healed_ms  # the time the subscription ended, not when recorded
    finally:
        await capture.close()
        await db.close()
        await proxy.close()


async def test_a_part_still_kept_when_the_node_stops_is_reported_lost(
    pg_cluster: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The one loss left: a PART kept while the store is away when the node stops. The log says
    how many, once."""
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    user = User(ids["alice"], "alice", "alice", False)
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    db = Database(proxy.url(url), timeout_s=1, pool_size=2)
    capture = Capture(db, "node1", enabled=True)
    first, second = object(), object()
    try:
        await capture.joined(user, first, ids["lobby"], None, 0, [])
        await capture.joined(user, second, ids["lobby"], None, 0, [])
        proxy.cut()
        capture.left(first, ids["lobby"])  # kept; the second is still open at stop
        await asyncio.wait_for(capture.close(), scaled(10))
        lost = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(lost) == 1 and lost[0].startswith("2 compliance PARTs are lost"), lost
        assert [k for k, _ in await outbox_kinds(url)] == ["JOIN", "JOIN"]
    finally:
        await db.close()
        await proxy.close()


async def test_a_node_refusing_joins_through_an_outage_logs_it_twice(
    pg_cluster: PostgresCluster, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A whole node with compliance on: a client joins over and over while the store is cut;
    every join is answered ``unavailable``, the capture log says so once, and once with the
    count when a join is recorded again."""
    caplog.set_level(logging.INFO)
    url = await new_database(pg_cluster)
    proxy = StoreProxy(("127.0.0.1", pg_cluster.port))
    await proxy.start()
    config = node_config(
        proxy.url(url),
        database={"timeout_s": 2},
        compliance={
            "enabled": True,
            "database_url": f"sqlite:///{tmp_path}/compliance.db",
            "output_dir": str(tmp_path / "out"),
        },
    )
    h = Harness(await start_node(config))
    try:
        await h.user("alice")
        room = await h.room()
        client = await h.login("alice")
        await client.call("join", room=room)
        proxy.cut()
        refused = 0
        for _ in range(JOINS):
            with pytest.raises(RequestFailed) as failed:
                await asyncio.wait_for(client.call("join", room=room), scaled(10))
            assert failed.value.code == "unavailable", failed.value.reply
            refused += 1
        proxy.heal()
        await asyncio.wait_for(client.call("join", room=room), scaled(10))
        lines = [r.getMessage() for r in capture_lines(caplog)]
        assert len(lines) == 2, lines
        assert lines[0].startswith("recording compliance events failed"), lines
        assert f"; {refused} failed meanwhile (JOIN {refused})" in lines[1], lines
        noisy = [r for r in caplog.records if r.exc_info and r.name.startswith("chatserver")]
        assert not noisy, [r.getMessage() for r in noisy]
    finally:
        await h.close()
        await proxy.close()
