"""A first host that answers nothing (a primary whose machine is gone: connections neither
refused nor served) must not keep a node from the next host (store/connect.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from chatserver.store.connect import connect
from chatserver.store.dsn import parse
from chatserver.testing import PostgresCluster
from tests.conftest import Harness, node_config, scaled, start_node


class SilentHost:
    """Accepts TCP connections and never says a word; counts them."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def start(self) -> SilentHost:
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self._held.append(writer)

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        for writer in self._held:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def silent() -> AsyncIterator[SilentHost]:
    host = await SilentHost().start()
    yield host
    await host.close()


async def test_a_silent_first_host_costs_its_own_limit_once(
    pg_cluster: PostgresCluster, silent: SilentHost
) -> None:
    url = (
        f"postgresql://{pg_cluster.user}@/postgres?host=127.0.0.1:{silent.port}"
        f"&host=127.0.0.1:{pg_cluster.port}&connect_timeout=1"
    )
    args = parse(url).asyncpg_args()
    began = time.monotonic()
    conn = await connect(**args)
    first_s = time.monotonic() - began
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert silent.accepted == 1
    # asyncpg alone spends its whole timeout (60 s by default) on the silent host.
    assert first_s < scaled(5)
    # The next connection goes to the host that worked first: the silent one is not tried.
    conn = await connect(**args)
    await conn.close()
    assert silent.accepted == 1


async def test_a_node_starts_and_posts_with_a_silent_first_host(
    pg_cluster: PostgresCluster, silent: SilentHost
) -> None:
    name = "silent_first"
    await pg_cluster.create_database(name, template="postgres")
    url = (
        f"postgresql://{pg_cluster.user}@/{name}?host=127.0.0.1:{silent.port}"
        f"&host=127.0.0.1:{pg_cluster.port}&connect_timeout=1"
    )
    async with asyncio.timeout(scaled(30)):
        h = Harness(await start_node(node_config(url)))
        try:
            await h.user("alice")
            room = await h.room()
            client = await h.login("alice")
            assert (await client.call("post", room=room, text="hi", cid="c1"))["seq"] == 1
        finally:
            await h.close()
