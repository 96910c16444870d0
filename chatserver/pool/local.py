"""Run a pool of ``chatserver run`` processes on this machine (``chatserver pool up``, tests).

Each node is a separate process with its own addresses; they share one PostgreSQL database (a
throwaway cluster from :mod:`chatserver.testing` unless a URL is given). Their output is read
continuously, so a test can wait for a line (``peer link node2 up``) without the pipe filling.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..testing import PostgresCluster


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1 (the sockets are held until all are picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class NodeProcess:
    name: str
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    lines: list[str] = field(default_factory=list)
    tcp: tuple[str, int] = ("", 0)
    websocket: tuple[str, int] = ("", 0)
    peer: tuple[str, int] = ("", 0)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None
    echo: bool = False
    # The chatserver command it runs: a node, or another role (``compliance run``).
    args: tuple[str, ...] = ("run",)

    async def start(self) -> None:
        self.lines = []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatserver",
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor only
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = (await self.proc.stdout.readline()).decode(errors="replace")
            if not line:
                break
            self.lines.append(line)
            if self.echo:
                print(f"[{self.name}] {line}", end="", flush=True)
            self._changed.set()
        self._changed.set()

    async def wait_for(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match[str]:
        """The first output line from index ``start`` on that matches ``pattern``."""
        async with asyncio.timeout(timeout):
            index = start
            while True:
                while index < len(self.lines):
                    if match := re.search(pattern, self.lines[index]):
                        return match
                    index += 1
                if self._reader is not None and self._reader.done():
                    raise RuntimeError(f"{self.name} exited; output:\n" + "".join(self.lines))
                self._changed.clear()
                await self._changed.wait()

    async def started(self, timeout: float = 30) -> None:
        tcp = await self.wait_for(r"tcp clients on tcps?://([\d.]+):(\d+)/", timeout)
        self.tcp = (tcp.group(1), int(tcp.group(2)))
        ws = await self.wait_for(r"websocket clients on wss?://([\d.]+):(\d+)/", timeout)
        self.websocket = (ws.group(1), int(ws.group(2)))
        peer = await self.wait_for(r"listening for peers on ([\d.]+):(\d+)", timeout)
        self.peer = (peer.group(1), int(peer.group(2)))

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        return self.proc.returncode

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()


class LocalPool:
    """Nodes ``node1`` … ``nodeN`` sharing ``database_url``.

    With ``addresses="hosts"`` node *i* listens on 127.0.0.*i* with the standard ports (5041,
    5080, 8011, 8012); with ``"free"`` every node listens on free ports of 127.0.0.1.
    """

    def __init__(
        self,
        database_url: str,
        *,
        secret: str = "",
        addresses: str = "free",
        env: dict[str, str] | None = None,
        echo: bool = False,
    ) -> None:
        self.database_url = database_url
        self.secret = secret or secrets.token_hex(32)  # 256 bits (pool.secret needs 128)
        self.addresses = addresses
        self.extra = dict(env or {})
        self.echo = echo
        self.nodes: list[NodeProcess] = []

    def node_env(self, index: int, **overrides: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
        if self.addresses == "hosts":
            host = f"127.0.0.{index}"
            ports = {"tcp": 5041, "websocket": 5080, "peer": 8011, "management": 8012, "http": 5081}
        else:
            host = "127.0.0.1"
            names = ("tcp", "websocket", "peer", "management", "http")
            ports = dict(zip(names, free_ports(len(names)), strict=True))
        base.update(
            CHATSERVER_NODE_NAME=f"node{index}",
            CHATSERVER_DATABASE_URL=self.database_url,
            CHATSERVER_POOL_ENABLED="true",
            CHATSERVER_POOL_SECRET=self.secret,
            PYTHONUNBUFFERED="1",
            **{f"CHATSERVER_LISTEN_{k.upper()}": f"{host}:{p}" for k, p in ports.items()},
        )
        base.update(self.extra)
        base.update(overrides)
        return base

    async def add(self, **overrides: str) -> NodeProcess:
        """Start one more node and wait until it listens."""
        index = len(self.nodes) + 1
        node = NodeProcess(f"node{index}", self.node_env(index, **overrides), echo=self.echo)
        self.nodes.append(node)
        await node.start()
        await node.started()
        return node

    async def start(self, count: int, **overrides: str) -> list[NodeProcess]:
        for _ in range(count):
            await self.add(**overrides)
        return self.nodes

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for node in self.nodes:
            out.append(
                {
                    "node": node.name,
                    "tcp": f"{node.tcp[0]}:{node.tcp[1]}",
                    "websocket": f"ws://{node.websocket[0]}:{node.websocket[1]}/",
                    "peer": f"{node.peer[0]}:{node.peer[1]}",
                    "management": node.env.get("CHATSERVER_LISTEN_MANAGEMENT", ""),
                    "state": "standby"
                    if any("joined as standby" in line for line in node.lines)
                    else "active",
                }
            )
        return out


class LocalPostgres(PostgresCluster):
    """A PostgreSQL cluster for ``pool up``: temporary, or kept in ``root`` across runs."""

    def __init__(self, root: Path | None) -> None:
        if not shutil.which("initdb"):  # Debian and Ubuntu keep them off PATH
            found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
            if found:
                os.environ["PATH"] = f"{found[-1].parent}{os.pathsep}{os.environ.get('PATH', '')}"
        super().__init__()
        self.keep = root is not None
        if root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = root.resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            if self._as_user:
                shutil.chown(self.root, "postgres")
            self.data = self.root / "data"

    def start(self) -> LocalPostgres:
        if not (self.data / "PG_VERSION").exists():
            super().start()
            return self
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.root} -c max_connections=300"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        return self

    def stop(self) -> None:
        if not self.keep:
            super().stop()
            return
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
