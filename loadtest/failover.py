"""Failover of the content store onto its streaming replica, under a posting load.

::

    python -m loadtest.failover [--async] [--delay-ms 0] [--posters 8] [--before 3] [--after 4]
                                [--runs 1]

Two real PostgreSQL clusters on this machine (a primary and a ``pg_basebackup -R`` replica,
synchronous unless ``--async``), one real node (``chatserver run``) whose URL names both hosts
(``?host=primary&host=replica``, the form that once failed every post), clients posting with
client ids. Mid-load the primary is killed (``pg_ctl stop -m immediate``) and the replica
promoted (``pg_ctl promote``); the clients retry ``unavailable`` and timeouts with the same cid.
Then every acknowledged post is looked up on the new primary:

- ``lost``: acknowledged, but not stored (or stored under another seq); ``reused_seqs``: how
  many of those seqs a later post now holds (a client that saw the lost post at seq N sees
  another post at seq N: it must not trust a message it holds past the room's new history);
- ``duplicates``: one cid stored twice; ``gaps``: a seq missing below the room's last;
- ``first_ack_s``: from the crash to the first post acknowledged on the new primary.

With synchronous replication all three counts must be 0 (tests/pool/test_failover.py asserts
it); with asynchronous replication this measures what an operator risks (docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from chatserver.client import Client, Closed, RequestFailed
from chatserver.passwords import hash_password
from chatserver.pool.local import LocalPool
from chatserver.store import rooms as room_store
from chatserver.store import users as user_store
from chatserver.store.db import Database
from chatserver.store.dsn import parse
from chatserver.store.migrate import upgrade
from chatserver.testing import PostgresCluster, ReplicaCluster

PASSWORD = "correct horse battery"
NODE_ENV = {
    "CHATSERVER_POOL_HEARTBEAT_S": "0.3",
    "CHATSERVER_POOL_LINK_TIMEOUT_S": "1.5",
    "CHATSERVER_POOL_DEAD_AFTER_S": "3",
    "CHATSERVER_LIMITS_POSTS_PER_USER_PER_S": "100000",
    "CHATSERVER_ADMIN_PASSWORD": PASSWORD,
}
REQUEST_TIMEOUT_S = 3.0


@dataclass
class Result:
    synchronous: bool
    acked: int = 0
    lost: int = 0
    reused_seqs: int = 0  # lost posts whose seq a later post now holds (async replication)
    duplicates: int = 0
    gaps: int = 0
    stored: int = 0
    retries: int = 0
    unavailable: int = 0
    timeouts: int = 0
    reconnects: int = 0
    first_ack_s: float | None = None  # crash -> first acknowledgement after the crash
    acked_per_s: float = 0.0  # before the crash
    delay_ms: float = 0.0  # one-way latency between the sites
    promote_s: float = 0.0  # how long pg_ctl promote took
    lost_cids: list[str] = field(default_factory=list)


class SiteLink:
    """A TCP proxy standing for the network between two sites: every byte is delivered
    ``delay_s`` after it was read (latency, not a bandwidth cap), and :meth:`cut` drops the
    connections with everything still in flight, as losing the primary's site does."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port, self.delay_s = target_port, delay_s
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> SiteLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    dst.close()
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if dst.is_closing():  # cut() aborted it while the bytes were in flight
                    return
                dst.write(data)
                await dst.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await src.read(65536):
                queue.put_nowait((time.monotonic() + self.delay_s, data))
            queue.put_nowait((0.0, b""))
            await sender
        except (OSError, RuntimeError, asyncio.CancelledError):
            pass  # RuntimeError: uvloop refuses a write on a transport cut() just aborted
        finally:
            sender.cancel()

    def cut(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Poster:
    """One client posting steadily with client ids, retrying each post (same cid) until it is
    acknowledged: on ``unavailable``, on a timeout and on a closed connection (reconnecting)."""

    def __init__(self, index: int, address: tuple[str, int], user: str, room: int) -> None:
        self.index, self.address, self.user, self.room = index, address, user, room
        self.client: Client | None = None
        self.acked: dict[str, tuple[int, float]] = {}  # cid -> (seq, when acknowledged)
        self.retries = self.unavailable = self.timeouts = self.reconnects = 0

    async def _connection(self) -> Client:
        while self.client is None or self.client.closed.is_set():
            if self.client is not None:
                await self.client.close()
                self.client = None
                self.reconnects += 1
            try:
                client = await asyncio.wait_for(Client.connect_tcp(*self.address), 3)
                await asyncio.wait_for(client.login(self.user, PASSWORD), REQUEST_TIMEOUT_S)
                self.client = client
            except (OSError, TimeoutError, Closed, RequestFailed):
                await asyncio.sleep(0.1)
        return self.client

    async def post(self, cid: str) -> None:
        attempt = 0
        while True:
            if attempt:
                self.retries += 1
            attempt += 1
            client = await self._connection()
            try:
                reply = await asyncio.wait_for(
                    client.request("post", room=self.room, text=cid, cid=cid), REQUEST_TIMEOUT_S
                )
            except TimeoutError:
                self.timeouts += 1
                continue
            except (Closed, OSError):
                continue
            if reply.get("ok"):
                self.acked[cid] = (int(reply["seq"]), time.monotonic())
                return
            if (reply.get("error") or {}).get("code") == "unavailable":
                self.unavailable += 1
                await asyncio.sleep(0.05)
                continue
            raise RequestFailed(reply)

    async def run(self, stop: asyncio.Event) -> None:
        k = 0
        while not stop.is_set():
            await self.post(f"p{self.index}-{k}")
            k += 1

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def prepare(url: str, posters: int) -> int:
    """The schema, ``posters`` users (w0, w1, …) and one room; returns the room's id."""
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    try:
        password_hash = await asyncio.to_thread(hash_password, PASSWORD)
        for i in range(posters):
            await user_store.create_user(db, f"w{i}", password_hash)
        return (await room_store.create_room(db, "lobby")).id
    finally:
        await db.close()


async def stored_messages(url: str, room: int) -> list[tuple[int, str]]:
    import asyncpg

    conn = await asyncpg.connect(**parse(url).asyncpg_args())  # store/dsn.py
    try:
        rows = await conn.fetch(
            "SELECT seq, cid FROM messages WHERE room_id = $1 ORDER BY seq", room
        )
        return [(int(r["seq"]), str(r["cid"])) for r in rows]
    finally:
        await conn.close()


def count(result: Result, posters: list[Poster], stored: list[tuple[int, str]]) -> None:
    by_cid: dict[str, list[int]] = {}
    by_seq = {seq: cid for seq, cid in stored}
    for seq, cid in stored:
        by_cid.setdefault(cid, []).append(seq)
    result.stored = len(stored)
    result.duplicates = sum(len(seqs) - 1 for seqs in by_cid.values())
    seqs = [seq for seq, _ in stored]
    result.gaps = (max(seqs) - len(set(seqs))) if seqs else 0
    for p in posters:
        result.acked += len(p.acked)
        result.retries += p.retries
        result.unavailable += p.unavailable
        result.timeouts += p.timeouts
        result.reconnects += p.reconnects
        for cid, (seq, _) in p.acked.items():
            if by_cid.get(cid) != [seq]:
                result.lost += 1
                result.lost_cids.append(cid)
                if by_seq.get(seq, cid) != cid:
                    result.reused_seqs += 1


async def failover_under_load(
    primary: PostgresCluster,
    replica: ReplicaCluster,
    *,
    posters: int = 8,
    before_s: float = 3.0,
    after_s: float = 4.0,
    echo: bool = False,
    link: SiteLink | None = None,
) -> Result:
    """The scenario of the module docstring on a streaming pair already running (through
    ``link`` when given: it is cut together with the primary's crash)."""
    database = f"failover_{os.getpid()}"
    await primary.create_database(database)
    url = primary.url(database)
    room = await prepare(url, posters)
    await replica.wait_streaming()
    both = (
        f"postgresql://{primary.user}@/{database}"
        f"?host=127.0.0.1:{primary.port}&host=127.0.0.1:{replica.port}"
    )
    result = Result(synchronous=replica.synchronous)
    pool = LocalPool(both, env=NODE_ENV, echo=echo)
    clients: list[Poster] = []
    try:
        node = (await pool.start(1))[0]
        clients = [Poster(i, node.tcp, f"w{i}", room) for i in range(posters)]
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(p.run(stop)) for p in clients]
        began = time.monotonic()
        await asyncio.sleep(before_s)
        crashed = time.monotonic()
        result.acked_per_s = sum(len(p.acked) for p in clients) / (crashed - began)
        if link is not None:
            link.cut()
        await asyncio.to_thread(primary.crash)
        down = time.monotonic()
        await asyncio.to_thread(replica.promote)
        result.promote_s = time.monotonic() - down
        await asyncio.sleep(after_s)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        after = [t for p in clients for _, t in p.acked.values() if t > down]
        result.first_ack_s = (min(after) - crashed) if after else None
        count(result, clients, await stored_messages(replica.url(database), room))
    finally:
        for p in clients:
            await p.close()
        await pool.stop()
    return result


async def run_once(synchronous: bool, *, delay_ms: float = 0.0, **kwargs: Any) -> Result:
    primary = await asyncio.to_thread(PostgresCluster().start)
    replica: ReplicaCluster | None = None
    link = await SiteLink(primary.port, delay_ms / 1000).start() if delay_ms else None
    try:
        replica = ReplicaCluster(
            primary, synchronous=synchronous, via_port=link.port if link else None
        )
        await asyncio.to_thread(replica.start)
        result = await failover_under_load(primary, replica, link=link, **kwargs)
        result.delay_ms = delay_ms
        return result
    finally:
        if link is not None:
            await link.close()
        if replica is not None:
            await asyncio.to_thread(replica.stop)
        await asyncio.to_thread(primary.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--async", dest="asynchronous", action="store_true")
    parser.add_argument("--posters", type=int, default=8)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--after", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="one-way latency between the sites (a proxy on the replication link, cut with the"
        " primary's crash)",
    )
    parser.add_argument("--echo", action="store_true", help="print the node's output")
    args = parser.parse_args()
    for _ in range(args.runs):
        result = asyncio.run(
            run_once(
                not args.asynchronous,
                posters=args.posters,
                before_s=args.before,
                after_s=args.after,
                echo=args.echo,
                delay_ms=args.delay_ms,
            )
        )
        print(json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main()
