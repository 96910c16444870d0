"""Item 3 of issue 14: limits on connections.

One account held 235 connections until the open-files limit locked everyone else out, and 200
unauthenticated connections parked 1 MiB each. Now: at most ``limits.max_connections_per_user``
authenticated connections per user on a node, at most ``limits.max_unauthenticated_per_address``
connections per address that have not authenticated yet, and the node refuses clients before
they would leave it fewer than ``limits.fd_reserve`` file descriptors. A refused connection is
told why.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ..conftest import Harness, node_config, start_node
from .helpers import Raw, RawWebSocket, tcp_frame
from .sqlite_only import sqlite_url


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    """SQLite only: these attacks exercise the transports, not the store (sqlite_only.py)."""
    return await sqlite_url(tmp_path)


@pytest.fixture
async def small(db_url: str) -> AsyncIterator[Harness]:
    limits = {"max_connections_per_user": 3, "max_unauthenticated_per_address": 5}
    h = Harness(await start_node(node_config(db_url, limits=limits)))
    try:
        for name in ("alice", "bob"):
            await h.user(name)
        yield h
    finally:
        await h.close()


async def test_one_user_is_limited_to_its_connections(small: Harness) -> None:
    address = small.node.addresses["tcp"]
    alice = [await Raw.connect(address) for _ in range(3)]
    for raw in alice:
        assert (await raw.login("alice"))["ok"]
    extra = await Raw.connect(address)
    answer = await extra.login("alice")
    assert answer == {"ev": "bye", "reason": "too_many_connections"}
    await extra.closed()
    # Other users still connect, and the first three are untouched.
    bob = await Raw.connect(address)
    assert (await bob.login("bob"))["ok"]
    alice[0].send(tcp_frame({"op": "ping", "id": 7}))
    assert (await alice[0].until(lambda m: m.get("re") == 7))["ok"]
    # A closed connection frees its place.
    alice[1].close()
    await asyncio.sleep(0.1)
    again = await Raw.connect(address)
    assert (await again.login("alice"))["ok"]
    assert sorted(small.node.connections.by_user.values()) == [1, 3]  # bob 1, alice 3
    for raw in (*alice, bob, again):
        raw.close()


async def test_unauthenticated_connections_per_address_are_limited(small: Harness) -> None:
    address = small.node.addresses["tcp"]
    waiting = [await Raw.connect(address) for _ in range(5)]
    for raw in waiting:  # they are open and answer
        raw.send(tcp_frame({"op": "ping", "id": 1}))
        assert (await raw.until(lambda m: m.get("re") == 1))["ok"]
    refused = await Raw.connect(address)
    assert await refused.closed() == [{"ev": "bye", "reason": "too_many_connections"}]
    ws = await RawWebSocket.connect(small.node.addresses["websocket"])
    assert ws.status == 429 and b"too_many_connections" in (await ws.closed())[1]
    # Authenticating frees a place for the address (NAT: many users share one address).
    assert (await waiting[0].login("alice"))["ok"]
    admitted = await Raw.connect(address)
    admitted.send(tcp_frame({"op": "ping", "id": 2}))
    assert (await admitted.until(lambda m: m.get("re") == 2))["ok"]
    for raw in (*waiting, admitted):
        raw.close()


async def test_refusals_piling_up_from_one_address_are_dropped_silently(small: Harness) -> None:
    address = small.node.addresses["tcp"]
    waiting = [await Raw.connect(address) for _ in range(5)]
    await asyncio.sleep(0.05)
    # Refused connections linger briefly (to deliver their reason); while five of them linger,
    # a sixth gets no words at all.
    lingering = [await Raw.connect(address) for _ in range(5)]
    for raw in lingering:
        await raw.until(lambda m: m.get("ev") == "bye")
    dropped = await Raw.connect(address)
    assert await dropped.closed() == []
    for raw in (*waiting, *lingering):
        raw.close()
    await asyncio.sleep(0.1)
    assert not small.node.connections.lingering


async def test_the_node_keeps_a_reserve_of_file_descriptors(db_url: str) -> None:
    """With the process's limit set just above what it uses, client connections are refused
    (``bye`` ``overloaded``) before the node runs out of descriptors for its own work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 120, hard))
    try:
        h = Harness(await start_node(node_config(db_url, limits={"fd_reserve": 40})))
        try:
            await h.user("alice")
            raws: list[Raw] = []
            refused = None
            for _ in range(100):  # each connection is two descriptors here: client and node
                raw = await Raw.connect(h.node.addresses["tcp"])
                raw.send(tcp_frame({"op": "ping", "id": 1}))
                answer = await raw.until(lambda m: "re" in m or "ev" in m)
                if answer.get("ev") == "bye":
                    refused = answer
                    await raw.closed()
                    break
                raws.append(raw)
            assert refused == {"ev": "bye", "reason": "overloaded"}
            # Refused with descriptors to spare (the reserve, minus the test's own client side).
            assert len(os.listdir("/proc/self/fd")) < in_use + 120 - 10
            # The node still does its own work: the store answers a login.
            for raw in raws:
                raw.close()
            await asyncio.sleep(1.2)  # the node counts its descriptors again at most once a second
            client = await h.login("alice")
            assert (await client.call("ping"))["ok"]
        finally:
            await h.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
