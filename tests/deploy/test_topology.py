"""deploy/compose.yaml's pool, run without containers (tests/deploy/topology.py): a post on one
node reaches a member on another node live and the compliance database through the writer; the
fifth node is a standby; the replica is synchronous; and every metric name the Grafana
dashboards and the alert rules query is one the running pool and writer export."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatserver.client import Client
from chatserver.testing import PostgresCluster, ReplicaCluster
from tests.conftest import scaled
from tests.deploy.test_monitoring import (
    EXTERNAL,
    alert_queries,
    dashboard_queries,
    exported_names,
    metric_names,
)
from tests.deploy.topology import ACTIVE, Topology, scrape, start_topology

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
async def topology(
    pg_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Topology]:
    primary = PostgresCluster().start()
    replica: ReplicaCluster | None = None
    try:
        replica = ReplicaCluster(primary, synchronous=True).start()
        topo = await start_topology(primary, replica, pg_cluster, tmp_path_factory.mktemp("topo"))
        try:
            yield topo
        finally:
            await topo.stop()
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


async def test_a_post_flows_across_nodes_and_to_the_compliance_database(
    topology: Topology,
) -> None:
    first, third = topology.pool.nodes[0], topology.pool.nodes[2]
    alice = await Client.connect_tcp(*first.tcp)
    bob = await Client.connect_tcp(*third.tcp)
    try:
        await alice.login("alice", "alice-pass-1")
        await bob.login("bob", "bob-pass-12")
        room = (await alice.call("rooms"))["rooms"][0]["id"]
        await alice.call("join", room=room)
        await bob.call("join", room=room)
        await alice.call("post", room=room, text="to the archive", cid="topology-1")
        event = await bob.next_event("message", timeout=scaled(15))  # live, across nodes
        assert event["text"] == "to the archive"
    finally:
        await alice.close()
        await bob.close()
    # The writer moves the captured CHAT to the separate compliance database.
    conn = await asyncpg.connect(topology.compliance_url)
    try:
        async with asyncio.timeout(scaled(30)):
            while True:
                rows = await conn.fetch("SELECT payload FROM compliance_events WHERE kind = 'CHAT'")
                if any("to the archive" in r["payload"] for r in rows):
                    break
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_four_active_nodes_and_a_standby(topology: Topology) -> None:
    states = []
    for index in range(len(topology.management)):
        for family in text_string_to_metric_families(topology.node_metrics(index)):
            if family.name == "chatserver_pool_state":
                states += [s.labels["state"] for s in family.samples if s.value == 1]
    assert sorted(states) == sorted(["active"] * ACTIVE + ["standby"])


async def test_the_replica_is_synchronous(topology: Topology) -> None:
    primary_url = topology.url.split("?")[0].replace("@/", "@127.0.0.1:{}/")
    port = re.search(r"host=127\.0\.0\.1:(\d+)", topology.url)
    assert port is not None
    conn = await asyncpg.connect(primary_url.format(port.group(1)))
    try:
        rows = await conn.fetch("SELECT sync_state FROM pg_stat_replication")
    finally:
        await conn.close()
    assert [r["sync_state"] for r in rows] == ["sync"]


async def test_every_dashboard_and_alert_metric_is_exported(topology: Topology) -> None:
    exported = exported_names(topology.all_metrics())
    queries = {**dashboard_queries(), **alert_queries()}
    assert len(dashboard_queries()) >= 30 and len(alert_queries()) >= 10
    missing = {
        where: sorted(name for name in names if name not in exported and not EXTERNAL.match(name))
        for where, exprs in queries.items()
        for names in [set().union(*(metric_names(e) for e in exprs))]
    }
    missing = {where: names for where, names in missing.items() if names}
    assert not missing, f"queried but exported by no node or writer: {missing}"


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_the_new_latency_and_lag_series_count_what_happened(topology: Topology) -> None:
    """After the post above (module order): node1 observed its acknowledgement, node3 its
    delivery; the writer's endpoint shows the adapter's export lag and its own counts."""
    node1, node3 = topology.node_metrics(0), topology.node_metrics(2)
    assert sum(samples(node1, "chatserver_post_ack_seconds_count").values()) >= 1
    assert sum(samples(node3, "chatserver_delivery_latency_seconds_count").values()) >= 1
    writer = scrape(topology.writer_metrics)
    assert (("adapter", "xml"),) in samples(writer, "chatserver_compliance_export_lag_seconds")
    assert sum(samples(writer, "chatserver_compliance_writer_stored_total").values()) >= 1
    assert samples(writer, "chatserver_compliance_writer_up") == {(): 1.0}
    assert "to the archive" not in writer  # counts and ages, never content


async def test_the_writer_endpoint_serves_only_its_two_routes(topology: Topology) -> None:
    base = topology.writer_metrics.removesuffix("/metrics")
    assert await asyncio.to_thread(status, base + "/healthz") == 200
    assert await asyncio.to_thread(status, base + "/api/v1/audit") == 404
    assert await asyncio.to_thread(status, base + "/metrics", b"x" * 100_000) == 405
    assert await asyncio.to_thread(status, base + "/../../etc/passwd") == 404


def status(url: str, body: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
