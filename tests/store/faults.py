"""Helpers of the store fault tests: a TCP proxy between a node and PostgreSQL that can freeze or
cut the node's store connections, and a single ``chatserver run`` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from chatserver.pool.local import NodeProcess, free_ports
from tests.conftest import PASSWORD, scaled

T = TypeVar("T")
STATIC = "static-management-token-for-tests-0123456789"


class StoreProxy:
    """Passes bytes between a node and PostgreSQL until told otherwise.

    - ``freeze()``: no byte passes either way and nothing closes (a partition, or a stalled
      server); bytes already read are held, and passed on at ``thaw()``. New connections are
      accepted and frozen too.
    - ``freeze(drop=True)``: the same, but the bytes are dropped (a firewall dropping packets
      whose retransmission comes too late): a statement sent meanwhile never gets its answer,
      even after ``thaw()``; only a new connection works again.
    - ``cut()``: every connection is closed and new ones are closed at once, until ``heal()``.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.refusing = False
        self.dropping = False
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def url(self, url: str) -> str:
        """``url`` (a database of the target cluster) through the proxy."""
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return re.sub(rf":{self.target[1]}/", f":{port}/", url, count=1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_w}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    if self.dropping:
                        continue
                    await self.flowing.wait()
                    if w.is_closing():
                        break
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()
                self.writers.discard(w)

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    def freeze(self, drop: bool = False) -> None:
        if drop:
            self.dropping = True
        else:
            self.flowing.clear()

    def thaw(self) -> None:
        self.dropping = False
        self.flowing.set()

    def cut(self) -> None:
        self.refusing = True
        for w in list(self.writers):
            w.close()
        self.writers.clear()
        self.flowing.set()  # pumps held by a freeze see their peer closed and end

    def heal(self) -> None:
        self.refusing = False

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


def node_env(url: str, name: str = "node1", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    tcp, websocket, management, http = free_ports(4)
    env.update(
        CHATSERVER_NODE_NAME=name,
        CHATSERVER_DATABASE_URL=url,
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{tcp}",
        CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{websocket}",
        CHATSERVER_LISTEN_MANAGEMENT=f"127.0.0.1:{management}",
        CHATSERVER_LISTEN_HTTP=f"127.0.0.1:{http}",  # the client HTTP listener (files)
        CHATSERVER_MANAGEMENT_TOKEN=STATIC,
        CHATSERVER_ADMIN_PASSWORD=PASSWORD,
        CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="100000",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


async def start_single(env: dict[str, str], name: str = "node1") -> NodeProcess:
    """``chatserver run`` (no pool), once it listens for clients and management."""
    node = NodeProcess(name, env, echo=bool(os.environ.get("CHATSERVER_TEST_ECHO")))
    await node.start()
    tcp = await node.wait_for(r"tcp clients on tcp://([\d.]+):(\d+)/", scaled(30))
    node.tcp = (tcp.group(1), int(tcp.group(2)))
    await node.wait_for(r"management API on", scaled(30))
    return node


def management_url(node: NodeProcess) -> str:
    return "http://" + node.env["CHATSERVER_LISTEN_MANAGEMENT"]


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


def lines_with(node: NodeProcess, text: str, start: int = 0) -> list[str]:
    return [line for line in node.lines[start:] if text in line]


def errors_and_tracebacks(node: NodeProcess, start: int = 0) -> list[str]:
    return [
        line for line in node.lines[start:] if " ERROR " in line or line.startswith("Traceback")
    ]


def describe(node: NodeProcess) -> str:
    return "".join(node.lines[-80:])


Json = dict[str, Any]
