"""Shared fixtures: both store dialects, a running node, clients.

Every store test runs twice: on SQLite (a file under the test's tmp_path) and on PostgreSQL (a
throwaway cluster started once per test session; each test gets a new database cloned from a
migrated template). ``CHATSERVER_TEST_DIALECTS=sqlite`` limits a local run to one dialect.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from chatserver.client import Client
from chatserver.config import Config, load_config
from chatserver.server import Node
from chatserver.store.migrate import upgrade
from chatserver.testing import PostgresCluster, ReplicaCluster

DIALECTS = [
    d for d in os.environ.get("CHATSERVER_TEST_DIALECTS", "sqlite,postgresql").split(",") if d
]
# Scale every timeout in the tests on a slow machine: CHATSERVER_TEST_TIMEOUT_SCALE=3.
TIMEOUT_SCALE = float(os.environ.get("CHATSERVER_TEST_TIMEOUT_SCALE", "1"))
PASSWORD = "correct horse battery"

pytest_plugins = ["pytester"]  # tests/test_loop_errors.py runs a test that must fail


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long fault and soak tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Tests run on uvloop, the loop the server runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


class LoopErrors(logging.Handler):
    """What the event loop reported to its exception handler during one test.

    A task that dies with an exception nobody retrieves, a callback that raises, a transport
    with a fatal error: asyncio hands each to ``loop.call_exception_handler`` and, by default,
    only logs it, so the test that caused it passes. ``contexts`` holds each context the test's
    loop reported; as a logging handler on the ``asyncio`` logger this also catches what loops
    other than the test's (``asyncio.run`` in a thread, say) log through their default handler.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.contexts: list[dict[str, Any]] = []

    def handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def emit(self, record: logging.LogRecord) -> None:
        context: dict[str, Any] = {"message": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            context["exception"] = record.exc_info[1]
        self.contexts.append(context)

    def describe(self) -> str:
        lines = [f"the event loop reported {len(self.contexts)} error(s) nobody handled:"]
        for context in self.contexts:
            lines.append(f"- {context.get('message') or 'unhandled exception in event loop'}")
            exc = context.get("exception")
            if exc is not None:
                trace = "".join(traceback.format_exception(exc)).rstrip()
                lines.extend("  " + line for line in trace.splitlines())
            for key in ("task", "future", "handle", "transport", "protocol"):
                if key in context:
                    lines.append(f"  {key}: {context[key]!r}"[:300])
        return "\n".join(lines)


@pytest.fixture(autouse=True)
async def loop_errors() -> AsyncIterator[LoopErrors]:
    """Fail the test if its event loop saw an error nobody handled (after asyncpg's test base).

    Teardown runs after every other fixture's (autouse fixtures are set up first), so a node
    stopped by ``harness`` is covered; ``gc.collect()`` there makes a dead task whose exception
    was never retrieved report it now (from its finalizer), not in some later test. Then
    ``gc.freeze()``: the price is that a cycle still alive at a test's end and dropped later is
    never collected (nor reported), which the suite's memory can afford.
    """
    loop = asyncio.get_running_loop()
    recorder = LoopErrors()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(recorder.handler)
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(recorder)
    try:
        yield recorder
        gc.collect()
        await asyncio.sleep(0)  # anything the finalizers scheduled
        # What is still alive now is kept out of later collections: each test's collection then
        # scans only what was made since (a full one here takes ~0.1 s, hundreds of times).
        gc.freeze()
    finally:
        asyncio_log.removeHandler(recorder)
        loop.set_exception_handler(previous)
    if recorder.contexts:
        pytest.fail(recorder.describe(), pytrace=False)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()
    try:
        upgrade(cluster.url())  # the template: the "postgres" database, migrated once
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_pair() -> Iterator[tuple[PostgresCluster, ReplicaCluster]]:
    """A fresh primary and its synchronous streaming replica (``pg_basebackup -R``), for tests
    that crash the primary and promote the replica; ``await replica.wait_streaming()`` before
    relying on the replication being synchronous."""
    primary = PostgresCluster().start()
    replica: ReplicaCluster | None = None
    try:
        replica = ReplicaCluster(primary, synchronous=True).start()
        yield primary, replica
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """An S3-compatible server (moto's, in a thread of this process, on a free loopback port)
    for the S3 storage backend of files; one for the session (tests/test_files_storage.py)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(params=DIALECTS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/chat.db"
        await asyncio.to_thread(upgrade, url)
        return url
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    return await cluster.create_database(f"test_{next(_db_numbers)}", template="postgres")


def node_config(db_url: str, **sections: dict[str, object]) -> Config:
    """A node on free loopback ports; tests post in bursts, so the post rate limit is lifted
    unless a test sets ``limits={"posts_per_user_per_s": …}`` itself."""
    sections.setdefault("limits", {}).setdefault("posts_per_user_per_s", 1_000_000)
    env = {
        "CHATSERVER_NODE_NAME": "test-node",
        "CHATSERVER_DATABASE_URL": db_url,
        "CHATSERVER_LISTEN_TCP": "127.0.0.1:0",
        "CHATSERVER_LISTEN_WEBSOCKET": "127.0.0.1:0",
        "CHATSERVER_LISTEN_MANAGEMENT": "127.0.0.1:0",
        "CHATSERVER_LISTEN_HTTP": "127.0.0.1:0",
    }
    for section, values in sections.items():
        for key, value in values.items():
            env[f"CHATSERVER_{section.upper()}_{key.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return load_config(env=env)


class Harness:
    """A running node and helpers to talk to it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.clients: list[Client] = []

    async def connect(self, transport: str = "tcp") -> Client:
        if transport == "tcp":
            host, port = self.node.addresses["tcp"]
            client = await Client.connect_tcp(host, port)
        else:
            host, port = self.node.addresses["websocket"]
            client = await Client.connect_websocket(
                f"ws://{host}:{port}/", text=transport == "websocket-json"
            )
        self.clients.append(client)
        return client

    async def user(self, name: str, *, admin: bool = False) -> None:
        await self.node.accounts.add_user(name, PASSWORD, by="test", is_admin=admin)

    async def login(self, name: str, transport: str = "tcp") -> Client:
        client = await self.connect(transport)
        await client.login(name, PASSWORD)
        return client

    @property
    def http(self) -> str:
        """The node's client HTTP listener (files), as ``http://host:port``."""
        host, port = self.node.addresses["http"]
        return f"http://{host}:{port}"

    async def room(self, name: str = "lobby") -> int:
        from chatserver.store.rooms import create_room

        return (await create_room(self.node.db, name)).id

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        await self.node.stop()


async def start_node(config: Config) -> Node:
    node = Node(config, announce=lambda _line: None)
    await node.start()
    return node


@pytest.fixture
async def harness(db_url: str) -> AsyncIterator[Harness]:
    node = await start_node(node_config(db_url))
    h = Harness(node)
    try:
        yield h
    finally:
        await h.close()


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_SCALE
