"""Disaster recovery of the content store (issue 15, section 3): multi-host URLs on real
clusters, and a node that follows a promoted replica under load, losing no acknowledged post.

The scenario itself is loadtest/failover.py (also runnable by hand); numbers are printed with
``-s``. Only the bound the issue sets (first acknowledgement ≤ 10 s after the crash, scaled) is
asserted as a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chatserver.testing import PostgresCluster, ReplicaCluster, free_port
from loadtest.failover import failover_under_load
from tests.conftest import Harness, node_config, scaled, start_node


@pytest.fixture
async def node_on() -> AsyncIterator[list[Harness]]:
    started: list[Harness] = []
    yield started
    for h in started:
        await h.close()


async def post_and_read(h: Harness, cid: str) -> int:
    await h.user("alice")
    room = await h.room()
    client = await h.login("alice")
    await client.call("join", room=room)
    reply = await client.call("post", room=room, text="hello", cid=cid)
    page = await client.call("history", room=room, after=0, limit=10)
    assert [m["cid"] for m in page["messages"]] == [cid]
    return int(reply["seq"])


@pytest.mark.parametrize("form", ["query", "comma", "libpq"])
async def test_a_node_works_when_its_first_host_is_down(
    pg_cluster: PostgresCluster, node_on: list[Harness], form: str
) -> None:
    """Every documented form, the first host refusing connections: the node starts, posts go
    through both the SQLAlchemy engine and the asyncpg fast path, and `migrate` works too."""
    from chatserver.store.migrate import upgrade

    name = f"multihost_{form}"
    await pg_cluster.create_database(name, template="postgres")
    dead, live = free_port(), pg_cluster.port
    url = {
        "query": f"postgresql://{pg_cluster.user}@/{name}?host=127.0.0.1:{dead}&host=127.0.0.1:{live}",
        "comma": f"postgresql://{pg_cluster.user}@127.0.0.1:{dead},127.0.0.1:{live}/{name}",
        "libpq": f"postgresql://{pg_cluster.user}@/{name}?host=127.0.0.1,127.0.0.1&port={dead},{live}",
    }[form]
    await asyncio.to_thread(upgrade, url)  # what `chatserver migrate` runs
    h = Harness(await start_node(node_config(url)))
    node_on.append(h)
    assert h.node.db.is_postgres
    assert await post_and_read(h, "first") == 1


async def test_a_node_writes_to_the_primary_whichever_host_is_listed_first(
    pg_pair: tuple[PostgresCluster, ReplicaCluster], node_on: list[Harness]
) -> None:
    """The issue's failing URL: ``?host=A&host=B`` with the replica first. Before the parser,
    SQLAlchemy and the asyncpg fast path read it differently and every post failed while the
    node reported itself started; now both skip the read-only standby."""
    from chatserver.store.migrate import upgrade

    primary, replica = pg_pair
    await replica.wait_streaming()
    await asyncio.to_thread(upgrade, primary.url())
    await replica.wait_streaming()
    url = (
        f"postgresql://{primary.user}@/postgres"
        f"?host=127.0.0.1:{replica.port}&host=127.0.0.1:{primary.port}"
    )
    h = Harness(await start_node(node_config(url)))
    node_on.append(h)
    assert await post_and_read(h, "to-the-primary") == 1


async def test_a_url_naming_only_a_standby_is_refused_at_start(
    pg_pair: tuple[PostgresCluster, ReplicaCluster],
) -> None:
    """A node never starts on a store it cannot write: the start fails, it does not report
    itself started and then fail every post."""
    from chatserver.server import Node
    from chatserver.store.migrate import upgrade

    primary, replica = pg_pair
    await asyncio.to_thread(upgrade, primary.url())
    await replica.wait_streaming()
    node = Node(node_config(f"postgresql://{primary.user}@127.0.0.1:{replica.port}/postgres"))
    try:
        with pytest.raises(Exception) as raised:
            await node.start()
        # the store's refusal (StoreUnavailable says `unavailable`; its cause says why, and
        # `chatserver run` prints the cause)
        assert "target attribute" in f"{raised.value} {raised.value.__cause__}", raised.value
    finally:
        await node.stop()


async def test_no_acknowledged_post_is_lost_across_a_failover(
    pg_pair: tuple[PostgresCluster, ReplicaCluster],
) -> None:
    """Synchronous replication: the primary killed (``stop -m immediate``) under load, the
    replica promoted; the node follows by itself and the clients' retries (same cid) land."""
    primary, replica = pg_pair
    result = await failover_under_load(primary, replica, posters=6, before_s=2, after_s=3)
    print(f"\nfailover (synchronous): {result}")
    assert result.acked > 100
    assert (result.lost, result.duplicates, result.gaps) == (0, 0, 0), result.lost_cids[:10]
    assert result.stored == result.acked  # nothing stored that no client was told about
    assert result.first_ack_s is not None and result.first_ack_s <= scaled(10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("synchronous", "delay_ms"),
    [(True, 0), (True, 10), (False, 0), (False, 10)],
    ids=["sync", "sync-10ms", "async", "async-10ms"],
)
async def test_failover_measured(synchronous: bool, delay_ms: float) -> None:
    """Several runs, longer, more posters, with and without 10 ms between the sites: the numbers
    for docs/operations.md. What asynchronous replication loses is measured, not asserted (it
    depends on the replica's lag); with synchronous replication nothing may be lost."""
    from loadtest.failover import run_once

    for _ in range(3):
        result = await run_once(synchronous, delay_ms=delay_ms, posters=16, before_s=5, after_s=5)
        print(f"\nfailover: {result}")
        if synchronous:
            assert (result.lost, result.duplicates, result.gaps) == (0, 0, 0)
        assert result.duplicates == 0 and result.gaps == 0
