"""Fault and soak runs (``--run-slow``): a node killed mid-traffic loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import pytest

from chatserver.client import Client, Closed
from tests.conftest import PASSWORD, scaled
from tests.test_cli import Running, chatserver, env_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_kill_9_mid_traffic_loses_no_acknowledged_post(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if dialect == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        url = await cluster.create_database(f"kill9_{os.getpid()}", template="postgres")
    else:
        url = None
    env = env_for(
        tmp_path,
        url,
        CHATSERVER_ADMIN_PASSWORD=PASSWORD,
        CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="100000",
    )
    code, _, err = await chatserver("room", "add", "lobby", env=env)
    assert code == 0, err
    acked: dict[str, int] = {}

    for round_ in range(3):
        server = await Running.start(env)
        tcp = await server.wait_for(r"tcp clients on tcp://([\d.]+):(\d+)/")
        clients = []
        for _ in range(8):
            client = await Client.connect_tcp(tcp.group(1), int(tcp.group(2)))
            await client.login("admin", PASSWORD)
            clients.append(client)

        async def post_forever(i: int, client: Client, round_: int = round_) -> None:
            k = 0
            while True:
                cid = f"{round_}-{i}-{k}"
                try:
                    reply = await client.request("post", room=1, text=cid, cid=cid)
                except Closed:
                    return
                if reply.get("ok"):
                    acked[cid] = reply["seq"]
                k += 1

        tasks = [asyncio.ensure_future(post_forever(i, c)) for i, c in enumerate(clients)]
        await asyncio.sleep(random.uniform(0.5, 1.5))
        server.proc.send_signal(signal.SIGKILL)
        await server.proc.wait()
        await asyncio.wait_for(asyncio.gather(*tasks), scaled(10))
        for client in clients:
            await client.close()

    server = await Running.start(env)
    try:
        tcp = await server.wait_for(r"tcp clients on tcp://([\d.]+):(\d+)/")
        reader = await Client.connect_tcp(tcp.group(1), int(tcp.group(2)))
        await reader.login("admin", PASSWORD)
        stored: dict[str, int] = {}
        after = 0
        while True:
            page = await reader.call("history", room=1, after=after, limit=500)
            for m in page["messages"]:
                stored[m["cid"]] = m["seq"]
            if not page["messages"]:
                break
            after = page["messages"][-1]["seq"]
        await reader.close()
    finally:
        await server.stop()
    assert len(acked) > 100, "too little traffic to mean anything"
    seqs = sorted(stored.values())
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free after three crashes
    for cid, seq in acked.items():
        assert stored.get(cid) == seq, f"acknowledged post {cid} (seq {seq}) was lost"


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
async def test_soak_many_clients_join_post_leave(
    transport: str, request: pytest.FixtureRequest
) -> None:
    """Two minutes' worth of churn, compressed: every subscriber sees every room in order."""
    from tests.conftest import Harness, node_config, start_node

    cluster = request.getfixturevalue("pg_cluster")
    url = await cluster.create_database(f"soak_{transport}", template="postgres")
    node = await start_node(node_config(url))
    h = Harness(node)
    try:
        rooms = [await h.room(f"r{i}") for i in range(5)]
        names = [f"u{i}" for i in range(40)]
        for name in names:
            await h.user(name)
        rng = random.Random(42)
        problems: list[str] = []

        async def user(name: str) -> None:
            for _session in range(3):
                client = await h.login(name, transport)
                seen: dict[int, int] = {}
                for room in rng.sample(rooms, 2):
                    reply = await client.call("join", room=room)
                    seen[room] = reply["last_seq"]
                for k in range(30):
                    room = rng.choice(list(seen))
                    await client.call("post", room=room, text=f"{name} {k}", cid=f"{_session}-{k}")
                while not client.events.empty():
                    event = client.events.get_nowait()
                    if event["ev"] != "message":
                        continue
                    if event["seq"] != seen[event["room"]] + 1:
                        problems.append(
                            f"{name}: room {event['room']} jumped "
                            f"{seen[event['room']]} -> {event['seq']}"
                        )
                    seen[event["room"]] = event["seq"]
                await client.close()
                h.clients.remove(client)

        await asyncio.gather(*(user(n) for n in names))
        assert problems == []
        for room in rooms:
            last = 0
            while True:
                page = await (await h.login("u0")).call("history", room=room, after=last, limit=500)
                if not page["messages"]:
                    break
                assert [m["seq"] for m in page["messages"]] == list(
                    range(last + 1, last + 1 + len(page["messages"]))
                )
                last = page["messages"][-1]["seq"]
    finally:
        await h.close()
