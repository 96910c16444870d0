"""Search and topic feeds (issue 17's numbers).

    python -m loadtest.search [--messages 1000000] [--rooms 1000] [--readable 100] [--sqlite]

Starts a throwaway PostgreSQL cluster (or a SQLite file with ``--sqlite``), bulk-loads
``--messages`` messages into ``--rooms`` closed rooms straight into the store (COPY on
PostgreSQL, executemany on SQLite; the full-text index built after the load), makes a user who is
a member of ``--readable`` of the rooms, starts ``chatserver run`` on it and measures:

1. the top ingest rate: posts through the server's posting path (closed loop, pipelined), their
   texts drawn like the loaded ones (``--ingest-text counter``: "ingest <n>", the first runs');
2. while ingest runs at half that rate: search latency for one-word queries and two-word
   phrases (taken from the loaded text) by the reader, p50 / p99 over ``--queries`` of each;
3. feed matching cost, in this process: ``--feeds`` saved feeds in the node's keyword index
   (:class:`chatserver.rooms.feedindex.FeedIndex`), CPU µs per post matched.

Nothing is asserted: the numbers are printed (the issue's targets: p99 ≤ 50 ms on PostgreSQL;
≤ 20 µs of CPU per post for feed matching with 10,000 feeds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatserver.client import Client
from chatserver.passwords import hash_password
from chatserver.rooms.feedindex import Entry, FeedIndex
from chatserver.rooms.query import parse
from chatserver.store.db import Database, now_ms
from chatserver.store.messages import Message
from chatserver.store.migrate import upgrade
from chatserver.store.schema import room_principals, rooms, users
from chatserver.testing import PostgresCluster, free_port

PASSWORD = "search-benchmark-password"
ROOT = str(Path(__file__).resolve().parent.parent)
VOCABULARY = 20_000
YEAR_MS = 365 * 86_400_000


def vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))))
    return sorted(words, key=lambda w: rng.random())


class Texts:
    """Message texts of 6-14 words drawn from a Zipf-like distribution (rank r: weight 1/r)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = vocabulary(rng)
        self.weights = [1 / (r + 1) for r in range(len(self.words))]
        self._cum = list(__import__("itertools").accumulate(self.weights))

    def text(self, rng: random.Random | None = None) -> str:
        rng = rng or self.rng
        n = rng.randint(6, 14)
        return " ".join(rng.choices(self.words, cum_weights=self._cum, k=n))


async def load(url: str, args: argparse.Namespace, texts: Texts) -> tuple[int, list[int], int]:
    """Users, rooms and messages straight into the store: (reader id, readable rooms, admin)."""
    db = Database(url)
    rng = random.Random(7)
    try:
        password_hash = await asyncio.to_thread(hash_password, PASSWORD)
        async with db.write() as conn:
            senders = []
            for i in range(50):
                row = await conn.execute(
                    users.insert()
                    .values(
                        name=f"user{i}",
                        display_name=f"user{i}",
                        password_hash=password_hash,
                        is_admin=False,
                        created_ms=now_ms(),
                    )
                    .returning(users.c.id)
                )
                senders.append(int(row.scalar_one()))
            reader = senders[0]
            room_ids = []
            for i in range(args.rooms):
                row = await conn.execute(
                    rooms.insert()
                    .values(
                        name=f"room{i}",
                        description="",
                        last_seq=0,
                        created_ms=now_ms(),
                        category_id=1,
                        privacy="closed",
                        type="normal",
                        disabled=False,
                        invitations="inherit",
                    )
                    .returning(rooms.c.id)
                )
                room_ids.append(int(row.scalar_one()))
            readable = rng.sample(room_ids, args.readable)
            await conn.execute(
                room_principals.insert(),
                [
                    {"room_id": r, "role": "member", "principal_kind": "user", "principal_id": s}
                    for r in room_ids
                    for s in ([reader] if r in readable else []) + senders[1:]
                ],
            )
    finally:
        await db.close()
    started = time.perf_counter()
    per_room = args.messages // args.rooms
    base = now_ms() - YEAR_MS

    def rows() -> Any:
        for room in room_ids:
            for seq in range(1, per_room + 1):
                ts = base + (seq * YEAR_MS) // (per_room + 1)
                yield (room, seq, rng.choice(senders[1:]), f"c{seq}", texts.text(), ts, "")

    if url.startswith("sqlite"):
        conn3 = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn3.executemany(
            "INSERT INTO messages (room_id, seq, sender_id, cid, text, ts, state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
        conn3.execute("UPDATE rooms SET last_seq = ?", (per_room,))
        conn3.commit()
        conn3.execute("ANALYZE")
        conn3.close()
    else:
        import asyncpg

        pg = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await pg.execute("DROP INDEX ix_messages_tsv")
            await pg.copy_records_to_table(
                "messages",
                records=rows(),
                columns=["room_id", "seq", "sender_id", "cid", "text", "ts", "state"],
            )
            await pg.execute("UPDATE rooms SET last_seq = $1", per_room)
            indexed = time.perf_counter()
            await pg.execute(  # as migration 0014 makes it
                "CREATE INDEX ix_messages_tsv ON messages USING gin (room_id, tsv)"
                " WITH (fastupdate = off)"
            )
            print(f"  GIN index built in {time.perf_counter() - indexed:.1f} s")
            await pg.execute("ANALYZE")
        finally:
            await pg.close()
    print(f"  loaded {per_room * args.rooms:,} messages in {time.perf_counter() - started:.1f} s")
    return reader, readable, senders[1]


async def ingest(
    port: int, room_ids: list[int], seconds: float, rate: float | None, say: Callable[[int], str]
) -> float:
    """Posts/s acknowledged over ``seconds``: closed loop (``rate`` None) or paced; the n-th
    post of a client says ``say(n)``."""
    clients = []
    for i in range(1, 9):
        c = await Client.connect_tcp("127.0.0.1", port)
        await c.login(f"user{i}", PASSWORD)
        clients.append(c)
    done = 0
    stop = time.perf_counter() + seconds
    rng = random.Random(11)

    async def worker(c: Client, share: float | None) -> None:
        nonlocal done
        n = 0
        start = time.perf_counter()
        while time.perf_counter() < stop:
            if share is not None:
                due = start + n / share
                if due > time.perf_counter():
                    await asyncio.sleep(due - time.perf_counter())
            batch = [
                c.request(
                    "post",
                    room=rng.choice(room_ids),
                    text=say(n + k),
                    cid=f"i{id(c)}-{n + k}",
                )
                for k in range(1 if share is not None else 64)
            ]
            await asyncio.gather(*batch)
            n += len(batch)
            done += len(batch)

    share = rate / len(clients) if rate is not None else None
    await asyncio.gather(*(worker(c, share) for c in clients))
    for c in clients:
        await c.close()
    return done / seconds


async def searches(port: int, queries: list[str]) -> tuple[list[float], int]:
    """Milliseconds per query, and how many pages came back short with a cursor (never, if
    every plan gives whole pages)."""
    c = await Client.connect_tcp("127.0.0.1", port)
    await c.login("user0", PASSWORD)
    out = []
    short = 0
    try:
        for q in queries:
            started = time.perf_counter()
            reply = await c.call("search", query=q, limit=20)
            out.append((time.perf_counter() - started) * 1000)
            assert isinstance(reply["hits"], list)
            short += len(reply["hits"]) < 20 and reply["cursor"] is not None
    finally:
        await c.close()
    return out, short


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def feed_cost(texts: Texts, feeds: int, posts: int) -> tuple[float, float]:
    """CPU µs per post to find the candidate feeds among ``feeds``, and candidates per post."""
    rng = random.Random(3)
    index = FeedIndex()
    words = texts.words
    for i in range(feeds):
        kind = rng.random()
        if kind < 0.6:  # one or two words, from the long tail (topics)
            q = " ".join(rng.sample(words[100:], rng.randint(1, 2)))
        elif kind < 0.8:
            q = f'"{rng.choice(words[50:])} {rng.choice(words[50:])}"'
        elif kind < 0.9:
            q = rng.choice(words[200:])[:4] + "*"
        else:
            q = f"from:user{rng.randint(1, 49)} {rng.choice(words[100:])}"
        index.add(Entry(i, i, f"f{i}", parse(q, max_chars=256, max_terms=8)))
    messages = [Message(1, n, 0, 2, "user1", texts.text(), "c") for n in range(posts)]
    found = 0
    started = time.process_time()
    for m in messages:
        found += len(index.candidates(m))
    cpu = time.process_time() - started
    return cpu / posts * 1e6, found / posts


async def run(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="chatserver-search-")
    cluster = None
    if args.sqlite:
        url = f"sqlite:///{workdir}/chat.db"
    else:
        cluster = PostgresCluster().start()
        url = cluster.url()
    upgrade(url)
    texts = Texts(random.Random(5))
    print(f"store: {'sqlite' if args.sqlite else 'postgresql'}; loading")
    _reader, readable, _ = await load(url, args, texts)
    port = free_port()
    env = dict(
        os.environ,
        CHATSERVER_DATABASE_URL=url,
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{port}",
        CHATSERVER_LISTEN_WEBSOCKET="",
        CHATSERVER_LISTEN_MANAGEMENT="",
        CHATSERVER_LISTEN_HTTP="",
        CHATSERVER_ADMIN_PASSWORD=PASSWORD,
        CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="1000000",
        CHATSERVER_SEARCH_PER_USER_PER_S="100000",
        PYTHONPATH=ROOT,  # this checkout's server
    )
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "chatserver", "run", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=workdir,
    )
    try:
        assert proc.stdout is not None
        while "tcp clients" not in proc.stdout.readline():
            if proc.poll() is not None:
                raise SystemExit("the node did not start")
        rng = random.Random(9)
        # What the posts say: drawn like the loaded messages (the chat goes on), or "ingest
        # <n>" (``--ingest-text counter``, the first runs': a band of new messages in every
        # searched room that hold none of the words searched, which a walk newest first must
        # pass).
        said = random.Random(13)
        say: Callable[[int], str] = (
            (lambda n: f"ingest {n}")
            if args.ingest_text == "counter"
            else (lambda n: texts.text(said))
        )
        top = await ingest(port, readable, args.ingest_s, None, say)
        print(f"top ingest rate: {top:,.0f} posts/s ({args.ingest_text} texts)")
        sample = [texts.text().split() for _ in range(args.queries)]
        # One-word queries: mid-frequency words (ranks 50-2,000) and some common ones (< 50).
        one = [
            rng.choice(texts.words[:50] if i % 5 == 0 else texts.words[50:2000])
            for i in range(args.queries)
        ]
        two = [f'"{w[0]} {w[1]}"' for w in sample]
        loader = asyncio.ensure_future(
            ingest(port, readable, args.queries * 0.2 + 30, top / 2, say)
        )
        await asyncio.sleep(1)
        # The node's first search reads every room it has not cached (once per node, one
        # batch): timed apart.
        (first_ms,), _ = await searches(port, ["warmup"])
        print(f"first search of the node (reads its {args.rooms:,} rooms): {first_ms:.0f} ms")
        one_ms, one_short = await searches(port, one)
        two_ms, two_short = await searches(port, two)
        loader.cancel()
        try:
            await loader
        except asyncio.CancelledError:
            pass
        for label, ms, asked, short in (
            ("one word", one_ms, one, one_short),
            ("two-word phrase", two_ms, two, two_short),
        ):
            print(
                f"{label}: p50 {statistics.median(ms):.1f} ms, p99 {pct(ms, 99):.1f} ms,"
                f" max {max(ms):.1f} ms ({len(ms)} queries, ingest at {top / 2:,.0f} posts/s;"
                f" {short} pages short, with a cursor)"
            )
            if args.slowest:
                worst = sorted(zip(ms, asked, strict=True), reverse=True)[: args.slowest]
                rank = {w: r for r, w in enumerate(texts.words)}
                print(
                    "  slowest (word ranks): "
                    + ", ".join(
                        "/".join(str(rank[w]) for w in q.strip('"').split()) + f" {t:.0f} ms"
                        for t, q in worst
                    )
                )
        per_post, candidates = feed_cost(texts, args.feeds, 20_000)
        print(
            f"feed matching: {per_post:.2f} µs CPU per post with {args.feeds:,} feeds"
            f" ({candidates:.2f} candidate hits per post)"
        )
    finally:
        proc.terminate()
        proc.wait(10)
        if cluster is not None:
            cluster.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.search", description=__doc__)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--rooms", type=int, default=1000)
    p.add_argument("--readable", type=int, default=100, help="rooms the searching user reads")
    p.add_argument("--queries", type=int, default=300, help="queries of each kind")
    p.add_argument("--feeds", type=int, default=10_000)
    p.add_argument("--ingest-s", type=float, default=5.0, help="seconds to find the top rate")
    p.add_argument("--sqlite", action="store_true", help="SQLite storage instead")
    p.add_argument(
        "--ingest-text",
        choices=("corpus", "counter"),
        default="corpus",
        help="what the ingested posts say: words drawn like the loaded messages', or"
        ' "ingest <n>" (the first runs)',
    )
    p.add_argument("--slowest", type=int, default=0, help="print the N slowest queries of each")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
