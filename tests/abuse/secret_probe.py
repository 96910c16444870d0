"""Probe a node from the outside: does ``not_found`` for a secret room look like ``not_found`` for
a room that does not exist? (issue 14, item 6)

A raw TCP client (length-prefixed MessagePack, nothing of the project's client) times requests
for a secret room's id and for missing ids, interleaved in random order so that drift of the
machine (other processes, CPU frequency) hits both kinds alike, and keeps the raw reply frames.

Run it by hand for the numbers in docs/security.md::

    python -m tests.abuse.secret_probe [--n 1000] [--dialect sqlite|postgresql]

It starts ``chatserver run`` in a separate process on a fresh store, the way an operator does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack

from chatserver.testing import PostgresCluster, free_port

OPS = ("room.get", "join", "history", "post")
PASSWORD = "correct horse battery"


class RawClient:
    """One TCP connection speaking the client protocol with as little client work as possible."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r = reader
        self._w = writer
        self._ids = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def frame(self, obj: dict[str, Any]) -> bytes:
        """Send one request and return the body of the next frame (the reply: no events are
        expected on this connection)."""
        body = msgpack.packb(obj, use_bin_type=True)
        self._w.write(struct.pack(">I", len(body)) + body)
        header = await self._r.readexactly(4)
        return await self._r.readexactly(struct.unpack(">I", header)[0])

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        reply: dict[str, Any] = msgpack.unpackb(
            await self.frame({"op": op, "id": self._ids, **fields}), raw=False
        )
        return reply

    async def timed(self, op: str, **fields: Any) -> tuple[float, bytes]:
        """(milliseconds from the request's first byte written to the reply's last byte read,
        the reply's raw bytes)."""
        self._ids += 1
        body = msgpack.packb({"op": op, "id": self._ids, **fields}, use_bin_type=True)
        data = struct.pack(">I", len(body)) + body
        started = time.perf_counter_ns()
        self._w.write(data)
        header = await self._r.readexactly(4)
        reply = await self._r.readexactly(struct.unpack(">I", header)[0])
        return (time.perf_counter_ns() - started) / 1e6, reply

    async def login(self, user: str, password: str) -> None:
        await self.request("hello", protocol=1, client="secret-probe")
        reply = await self.request("auth", user=user, password=password)
        assert reply.get("ok"), reply

    async def close(self) -> None:
        self._w.close()
        try:
            await self._w.wait_closed()
        except (ConnectionError, OSError):
            pass


@asynccontextmanager
async def logged_in(host: str, port: int, user: str, password: str) -> AsyncIterator[RawClient]:
    """A :class:`RawClient` logged in as ``user``, closed however the block ends."""
    client = await RawClient.connect(host, port)
    try:
        await client.login(user, password)
        yield client
    finally:
        await client.close()


def request_fields(op: str, room: int, n: int) -> dict[str, Any]:
    if op == "post":
        return {"room": room, "text": "probe", "cid": f"probe-{n}"}
    return {"room": room}


@dataclass
class Sample:
    secret: list[float] = field(default_factory=list)
    missing: list[float] = field(default_factory=list)
    replies: set[tuple[str, bytes]] = field(default_factory=set)  # (kind, reply minus its id)

    @staticmethod
    def stats(values: list[float]) -> tuple[float, float]:
        ordered = sorted(values)
        return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def line(self, op: str) -> str:
        (sm, sp), (mm, mp) = self.stats(self.secret), self.stats(self.missing)
        return (
            f"{op:9} secret median {sm:.3f} ms p99 {sp:.3f} ms | "
            f"missing median {mm:.3f} ms p99 {mp:.3f} ms | ratio of medians {mm / sm:.2f}"
        )


async def probe(
    client: RawClient, op: str, secret: int, missing: list[int], n: int, seed: int = 14
) -> Sample:
    """``n`` requests for the secret room and ``n`` for missing ids (one each, in turn), each
    pair in random order."""
    rng = random.Random(seed)
    sample = Sample()
    for i in range(n):
        kinds = [("secret", secret), ("missing", missing[i % len(missing)])]
        rng.shuffle(kinds)
        for kind, room in kinds:
            ms, raw = await client.timed(op, **request_fields(op, room, i))
            getattr(sample, kind).append(ms)
            reply = msgpack.unpackb(raw, raw=False)
            reply.pop("re", None)
            if "error" in reply:  # the room's id appears in the message: normalise it
                reply["error"]["message"] = reply["error"]["message"].replace(str(room), "<id>")
            sample.replies.add((kind, msgpack.packb(reply, use_bin_type=True)))
    return sample


# -- a node in its own process ---------------------------------------------------------------


def node_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env.update(
        CHATSERVER_DATABASE_URL=url,
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_MANAGEMENT=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_HTTP=f"127.0.0.1:{free_port()}",
        # the probe posts too; its rate must not be what answers
        CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="1000000",
    )
    return env


async def _chatserver(*args: str, env: dict[str, str], stdin: str = "") -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatserver",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
    if proc.returncode != 0:
        raise RuntimeError(f"chatserver {' '.join(args)}: {err.decode()}")
    return out.decode()


@dataclass
class Setup:
    host: str
    port: int
    secret: int  # a secret room in General with no roles: only administrators find it
    admin_password: str


@asynccontextmanager
async def running_node(url: str) -> AsyncIterator[Setup]:
    """``chatserver run`` on a fresh store at ``url`` with user ``mallory`` (in General, like
    everyone) and one secret room she may not find."""
    env = node_env(url)
    if url.startswith("postgresql"):
        await _chatserver("migrate", env=env)
    await _chatserver("user", "add", "mallory", "--password-stdin", env=env, stdin=PASSWORD + "\n")
    out = await _chatserver("room", "add", "Project Falcon", "--privacy", "secret", env=env)
    made = re.search(r"\(id (\d+)\)", out)
    assert made is not None, out
    secret = int(made.group(1))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatserver",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    drain: asyncio.Future[bytes] | None = None
    try:
        password = tcp = None
        async with asyncio.timeout(60):
            while tcp is None:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("the node exited:\n" + "".join(lines))
                lines.append(line)
                if m := re.search(r"administrator 'admin' with password: (\S+)", line):
                    password = m.group(1)
                if m := re.search(r"tcp clients on tcp://([\d.]+):(\d+)/", line):
                    tcp = (m.group(1), int(m.group(2)))
        assert password is not None
        # keep draining its output so that the node never blocks on a full pipe
        drain = asyncio.ensure_future(proc.stdout.read())
        yield Setup(tcp[0], tcp[1], secret, password)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if drain is not None:
            await asyncio.gather(drain, return_exceptions=True)


async def main(n: int, dialect: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = None
        if dialect == "postgresql":
            cluster = PostgresCluster().start()
            url = cluster.url()
        else:
            url = f"sqlite:///{tmp}/chat.db"
        try:
            async with (
                running_node(url) as node,
                logged_in(node.host, node.port, "mallory", PASSWORD) as client,
            ):
                missing = list(range(1_000_000, 1_000_000 + n))  # every missing id asked once
                for op in OPS:
                    sample = await probe(client, op, node.secret, missing, n)
                    print(sample.line(op))
                    kinds = {kind: raw for kind, raw in sample.replies}
                    same = len(sample.replies) == 2 and kinds["secret"] == kinds["missing"]
                    print(f"{'':9} replies identical: {same}  {sorted(sample.replies)[:2]}")
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dialect", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.dialect))
