"""The participant roster across a pool of real node processes: joins on every node, one user on
two nodes, a node killed with SIGKILL (its users leave within the bound), a node that joins later
(it gets the others' participants when its links open), and the limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chatserver.client import Client
from chatserver.testing import PostgresCluster
from tests.conftest import scaled
from tests.pool.test_pool import FAST, login, new_database, running_pool, seed, wait_mesh


async def participants(client: Client, room: int) -> list[str]:
    return [p["name"] for p in (await client.call("room.participants", room=room))["participants"]]


async def until_participants(client: Client, room: int, want: list[str], timeout: float) -> None:
    async with asyncio.timeout(scaled(timeout)):
        while await participants(client, room) != want:  # noqa: ASYNC110 (other processes)
            await asyncio.sleep(0.05)


async def next_roster_event(client: Client, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(scaled(timeout)):
        while True:
            event = await client.events.get()
            if event["ev"] in ("joined", "left", "participants.updates"):
                return event


async def test_roster_across_nodes_and_a_killed_node(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob", "carol", "dave", "erin"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 3) as pool:
        n1, n2, n3 = pool.nodes
        alice = await login(n1, "alice")
        await alice.call("join", room=lobby)
        bob2, bob3, carol = await login(n2, "bob"), await login(n3, "bob"), await login(n3, "carol")
        dave = await login(n2, "dave")
        await bob2.call("join", room=lobby)
        event = await next_roster_event(alice)
        assert (event["ev"], event["user"]["name"]) == ("joined", "bob")
        await bob3.call("join", room=lobby)  # bob again, on another node: counts once
        await carol.call("join", room=lobby)
        event = await next_roster_event(alice)
        assert (event["ev"], event["user"]["name"]) == ("joined", "carol")
        await dave.call("join", room=lobby)
        event = await next_roster_event(alice)
        assert (event["ev"], event["user"]["name"]) == ("joined", "dave")
        everyone = ["alice", "bob", "carol", "dave"]
        for client in (alice, carol, dave):
            await until_participants(client, lobby, everyone, 10)

        # kill -9 node2: dave (only there) leaves; bob stays (joined on node3 too). The bound:
        # at once when the kernel resets the link, else link_timeout_s + heartbeat_s.
        bound = float(FAST["CHATSERVER_POOL_LINK_TIMEOUT_S"]) + float(
            FAST["CHATSERVER_POOL_HEARTBEAT_S"]
        )
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await n2.kill()
        event = await next_roster_event(alice, timeout=bound + 5)
        took = loop.time() - killed_at
        assert (event["ev"], event["user"]["name"]) == ("left", "dave")
        assert took <= scaled(bound + 1), took
        await until_participants(alice, lobby, ["alice", "bob", "carol"], 5)
        await until_participants(carol, lobby, ["alice", "bob", "carol"], 5)

        # A node that starts now learns who is in the room from its peers' snapshots.
        n4 = await pool.add()
        await wait_mesh([n1, n3, n4])
        erin = await login(n4, "erin")
        await until_participants(erin, lobby, ["alice", "bob", "carol"], 10)
        await erin.call("join", room=lobby)
        event = await next_roster_event(alice)
        assert (event["ev"], event["user"]["name"]) == ("joined", "erin")
        await until_participants(carol, lobby, ["alice", "bob", "carol", "erin"], 5)
        await bob3.close()  # bob's last connection
        event = await next_roster_event(erin)
        assert (event["ev"], event["user"]["name"]) == ("left", "bob")
        for client in (alice, carol, erin, bob2, dave):
            await client.close()


async def test_roster_limit_across_nodes(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob", "carol", "dave"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 2, CHATSERVER_CHAT_PARTICIPANT_UPDATE_LIMIT="2") as pool:
        n1, n2 = pool.nodes
        alice, bob = await login(n1, "alice"), await login(n2, "bob")
        carol, dave = await login(n2, "carol"), await login(n1, "dave")
        await alice.call("join", room=lobby)
        await bob.call("join", room=lobby)
        assert (await next_roster_event(alice))["ev"] == "joined"
        await carol.call("join", room=lobby)
        assert await next_roster_event(alice) == {
            "ev": "participants.updates",
            "room": lobby,
            "updates": False,
            "count": 3,
        }
        await dave.call("join", room=lobby)
        with pytest.raises(TimeoutError):
            await next_roster_event(alice, timeout=0.5)
        listing = await bob.call("room.participants", room=lobby)
        assert listing["updates"] is False and listing["count"] == 4
        for client in (alice, bob, carol, dave):
            await client.close()


async def test_a_peers_roster_events_name_only_itself(pg_cluster: PostgresCluster) -> None:
    """An impostor holding the secret and node1's name: a roster event naming another node and
    malformed ones are refused and logged, and reach nobody; the roster converges on the truth
    once the real node1 has dialled again."""
    from tests.pool.test_peer_trust import Impostor

    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 2) as pool:
        n1, n2 = pool.nodes
        alice, bob = await login(n2, "alice"), await login(n1, "bob")
        await alice.call("join", room=lobby)
        await bob.call("join", room=lobby)
        assert (await next_roster_event(alice))["user"]["name"] == "bob"

        impostor = Impostor("node1", pool.secret, expect="node2")
        await impostor.connect(n2.peer)
        assert await impostor.handshake()
        seat = {"room": lobby, "user": 999, "name": "ghost", "joined": True}
        impostor.send_events(
            [
                {"t": "roster", "node": "node3", **seat},
                {"t": "roster", "node": "node1", **seat, "joined": "yes"},
                {"t": "roster.all", "node": "node1", "seats": [[lobby]], "first": 1, "last": 1},
            ]
        )
        await n2.wait_for(r"WARNING.*ignoring an event from node1: a roster event naming 'node3'")
        await n2.wait_for(r"WARNING.*ignoring an event from node1: joined must be a bool")
        await n2.wait_for(r"WARNING.*ignoring an event from node1: a seat is \[room, user, name\]")
        impostor.close()
        await until_participants(alice, lobby, ["alice", "bob"], 15)
        await asyncio.sleep(0.5)
        while not alice.events.empty():
            event = alice.events.get_nowait()
            assert event.get("user", {}).get("name") != "ghost", event
        for client in (alice, bob):
            await client.close()


async def test_a_silent_node_leaves_the_roster_and_comes_back(pg_cluster: PostgresCluster) -> None:
    """SIGSTOP: no reset, the link goes silent; its users leave within link_timeout_s +
    heartbeat_s. SIGCONT: the link opens again and the node's snapshot brings them back."""
    import signal

    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "dave"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 2) as pool:
        n1, n2 = pool.nodes
        alice, dave = await login(n1, "alice"), await login(n2, "dave")
        await alice.call("join", room=lobby)
        await dave.call("join", room=lobby)
        assert (await next_roster_event(alice))["user"]["name"] == "dave"
        bound = float(FAST["CHATSERVER_POOL_LINK_TIMEOUT_S"]) + float(
            FAST["CHATSERVER_POOL_HEARTBEAT_S"]
        )
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        n2.signal(signal.SIGSTOP)
        try:
            event = await next_roster_event(alice, timeout=bound + 5)
            took = loop.time() - stopped_at
            assert (event["ev"], event["user"]["name"]) == ("left", "dave")
            assert took <= scaled(bound + 1), took
        finally:
            n2.signal(signal.SIGCONT)
        event = await next_roster_event(alice, timeout=20)
        assert (event["ev"], event["user"]["name"]) == ("joined", "dave")
        assert await participants(alice, lobby) == ["alice", "dave"]
        for client in (alice, dave):
            await client.close()
