"""``kill -9`` while clients post, on PostgreSQL (issue 14, the abuse suite; architecture
invariants 1-3: durable before acknowledged, one gap-free order per room, idempotent posts).

The long version is ``tests/test_faults.py::test_kill_9_mid_traffic_loses_no_acknowledged_post``
(``--run-slow``: three crashes, both dialects). This short one runs by default (~4 s once the
PostgreSQL cluster is up) and adds what a client does after a crash: it retries every post
it got no answer to, with the same ``cid``, on the restarted node.

Checks: every acknowledged post is stored with the ``seq`` it was acknowledged with; a retry of
a post the crash left unanswered is stored once (``duplicate`` tells whether the crash had
already committed it); a retry of an acknowledged post answers its first ``seq`` and stores
nothing; the room's ``seq`` runs 1..n without a gap, and no ``cid`` is stored twice.

Not measured here: the bystander and the node's memory (the node is the thing killed).
Measured: 4,000-10,000 posts acknowledged in 0.3-0.8 s, 128 in flight at the kill (8 connections x
16), of which 0-70 had been committed without their acknowledgement reaching the client.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from pathlib import Path
from typing import Any

import pytest

from chatserver.client import Client, Closed
from chatserver.testing import PostgresCluster
from tests.abuse.attack import PASSWORD, NodeProcess, scaled

pytestmark = pytest.mark.postgres

POSTERS = 4  # users, with two connections each
WINDOW = 16  # posts in flight on each connection


async def poster(
    client: Client, user: str, conn: int, acked: dict[str, int], sent: dict[str, str]
) -> None:
    """Post to room 1 with ``WINDOW`` posts in flight until the node dies."""
    room = 1
    counter = itertools.count()

    async def one() -> None:
        while True:
            cid = f"{user}-{conn}-{next(counter)}"
            sent[cid] = user
            try:
                reply = await client.request("post", room=room, text=cid, cid=cid)
            except Closed:
                return
            assert reply.get("ok"), reply
            acked[cid] = reply["seq"]

    try:
        await asyncio.gather(*(one() for _ in range(WINDOW)))
    finally:
        await client.close()


async def test_kill_9_mid_burst_loses_nothing_acknowledged(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Eight connections of four users post with 16 posts in flight each; after 0.3-0.8 s the
    node gets SIGKILL; it is restarted; the posters retry what was left unanswered.

    Would catch: an acknowledgement sent before the commit (an acknowledged post missing after
    the restart), a ``seq`` handed out outside the storing transaction (a gap, or a ``seq``
    that changed), and a retry that stores a second copy (a ``cid`` twice)."""
    url = await pg_cluster.create_database(f"abuse_kill9_{os.getpid()}", template="postgres")
    env = NodeProcess.environment(tmp_path, url, CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="1000000")
    node = await NodeProcess.start(tmp_path, env)
    users = [f"poster{i}" for i in range(POSTERS)]
    try:
        for name in users:
            await node.add_user(name)
        admin = await Client.connect_tcp(*node.tcp)
        await admin.login("admin", PASSWORD)
        made = await admin.call("room.create", name="lobby", privacy="open")
        assert made["room"]["id"] == 1
        await admin.close()

        acked: dict[str, int] = {}
        sent: dict[str, str] = {}  # cid -> its poster
        connections = []  # all logged in before the clock starts: the kill comes mid-post
        for user in users:
            for conn in (0, 1):
                client = await Client.connect_tcp(*node.tcp)
                await client.login(user, PASSWORD)
                connections.append((client, user, conn))
        posting = asyncio.ensure_future(
            asyncio.gather(*(poster(*c, acked, sent) for c in connections))
        )
        await asyncio.sleep(random.uniform(0.3, 0.8))
        assert not posting.done(), posting
        await node.kill()
        await asyncio.wait_for(posting, scaled(10))
    finally:
        await node.kill()
    unanswered = sorted(set(sent) - set(acked))
    assert len(acked) > 50, "too little traffic before the kill to mean anything"
    assert unanswered, "nothing was in flight at the kill: the crash window was not tested"

    node = await NodeProcess.start(tmp_path, env)
    clients: dict[str, Client] = {}
    try:
        for name in users:
            clients[name] = await Client.connect_tcp(*node.tcp)
        for name in users:
            await clients[name].login(name, PASSWORD)

        async def retry(cid: str) -> dict[str, Any]:
            reply = await clients[sent[cid]].call("post", room=1, text=cid, cid=cid)
            return reply

        retried = await asyncio.gather(*(retry(cid) for cid in unanswered))
        again = random.Random(9).sample(sorted(acked), min(50, len(acked)))
        repeated = await asyncio.gather(*(retry(cid) for cid in again))

        stored: list[tuple[str, int]] = []
        after = 0
        reader = clients[users[0]]
        while page := (await reader.call("history", room=1, after=after, limit=500))["messages"]:
            stored.extend((m["cid"], m["seq"]) for m in page)
            after = page[-1]["seq"]
    finally:
        for client in clients.values():
            await client.close()
        assert await node.stop() == 0, node.output()

    seqs = [seq for _, seq in stored]
    assert seqs == list(range(1, len(seqs) + 1)), "the room's seq has a gap"
    cids = [cid for cid, _ in stored]
    assert len(cids) == len(set(cids)), "a post is stored twice"
    by_cid = dict(stored)
    for cid, seq in acked.items():
        assert by_cid.get(cid) == seq, f"acknowledged post {cid} (seq {seq}) was lost or moved"
    for cid, reply in zip(unanswered, retried, strict=True):
        assert by_cid[cid] == reply["seq"], (cid, reply)
    for cid, reply in zip(again, repeated, strict=True):
        assert reply["duplicate"] is True and reply["seq"] == acked[cid], (cid, reply)
    assert set(by_cid) == set(sent), "a post nobody sent, or one sent and never stored"
    print(
        f"kill -9: {len(acked)} acknowledged, {len(unanswered)} unanswered at the kill of which"
        f" {sum(r['duplicate'] for r in retried)} had been stored; {len(stored)} stored"
    )
