"""Attack a node run as a separate process, and measure what each attack costs it.

The abuse tests that check "other clients are unaffected" and "memory comes back" need the node
out of the test's own process: the attacker's work must not delay the node's event loop, and the
node's resident memory must be the node's alone. So:

- :class:`NodeProcess` runs ``python -m chatserver run`` the way an operator does (its output
  goes to a file, so a node that logs a lot never blocks on a full pipe) and reads its resident
  memory from ``/proc/<pid>/status`` (``VmRSS``);
- :class:`Bystander` is a logged-in client in a third process (``python -m tests.abuse.attack
  bystander …``): it pings the node back to back, and reports its round trips on request;
- :meth:`Watch.attack` wraps one attack: it samples the node's RSS every 10 ms and its event-loop
  lag (``/healthz`` ``event_loop_lag_s``, the node's own lag metric) every 0.25 s, and collects
  the bystander's pings, into a :class:`Cost` that the test asserts on and prints;
- :meth:`Watch.rounds` runs an attack as waves, repeated for at least 0.5 s so that the
  bystander's p99 is that of pings sent during the attack, in two rounds (or more): the first
  finds the node cold, the last shows whether the node keeps memory for an attack it has seen
  before (:class:`Rounds`).

Every test module starts its own node (a module-scoped fixture), creates its users through the
management API and runs its attacks one after another against it. The attackers sign in with
session tokens, not passwords: a password check is scrypt, 16 MiB of the node's memory for
~50 ms, which would drown what the attack costs. ``pytest -s`` prints every round's cost.

Run against another source tree (the code before a fix, say) with
``CHATSERVER_ABUSE_SERVER_DIR=/path/to/tree``: the node runs from there, the tests from here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from chatserver.testing import free_port
from tests.rawclients import RawTcp, RawWebSocket

MIB = 1 << 20
PASSWORD = "correct horse battery"  # every user's; the administrator is "admin"
CHECKOUT = Path(__file__).resolve().parents[2]
# The source tree the node runs from: this checkout, or (to measure another version, such as
# the code before a fix) the directory in CHATSERVER_ABUSE_SERVER_DIR.
SERVER_DIR = os.environ.get("CHATSERVER_ABUSE_SERVER_DIR") or str(CHECKOUT)
TIMEOUT_SCALE = float(os.environ.get("CHATSERVER_TEST_TIMEOUT_SCALE", "1"))


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_SCALE


# -- the node --------------------------------------------------------------------------------


class NodeProcess:
    """``chatserver run`` in a process of its own, on a store of its own."""

    def __init__(self, proc: asyncio.subprocess.Process, env: dict[str, str], log: Path) -> None:
        self.proc = proc
        self.env = env
        self.log = log
        self.tcp = _address(env["CHATSERVER_LISTEN_TCP"])
        self.websocket = _address(env["CHATSERVER_LISTEN_WEBSOCKET"])
        self.management = "http://{}:{}".format(*_address(env["CHATSERVER_LISTEN_MANAGEMENT"]))
        self.http = "http://{}:{}".format(*_address(env["CHATSERVER_LISTEN_HTTP"]))

    @staticmethod
    def environment(directory: Path, url: str | None = None, **extra: str) -> dict[str, str]:
        """The environment of a node on free loopback ports with a known admin password; a
        SQLite store in ``directory`` unless ``url`` names another."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
        env.update(
            PYTHONPATH=SERVER_DIR,
            CHATSERVER_NODE_NAME="abuse-node",
            CHATSERVER_DATABASE_URL=url or f"sqlite:///{directory}/chat.db",
            CHATSERVER_LISTEN_TCP=f"127.0.0.1:{free_port()}",
            CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{free_port()}",
            CHATSERVER_LISTEN_MANAGEMENT=f"127.0.0.1:{free_port()}",
            CHATSERVER_LISTEN_HTTP=f"127.0.0.1:{free_port()}",
            CHATSERVER_ADMIN_PASSWORD=PASSWORD,
            # glibc serves allocations of 128 KiB and more with mmap, and returns them at free;
            # but after the first such block is freed it raises that threshold to the block's
            # size (up to 32 MiB), and from then on keeps blocks of that size in the thread's
            # heap. A password check is scrypt with 16 MiB of working memory in a worker
            # thread: without this, the first concurrent logins of a node's life add up to
            # 16 MiB per thread's heap to its RSS for good (measured: +22 MiB for two, +33 MiB
            # for three), noise that an attack's round would be charged for. Setting the
            # threshold keeps it where it starts, so RSS shows what the node holds.
            MALLOC_MMAP_THRESHOLD_="131072",
        )
        env.update(extra)
        return env

    @classmethod
    async def start(cls, directory: Path, env: dict[str, str]) -> NodeProcess:
        log = _new_log(directory)
        with open(log, "wb") as out:  # noqa: ASYNC230 - a local file, opened once
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chatserver",
                "run",
                "--log-level",
                "warning",
                env=env,
                cwd=directory,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        node = cls(proc, env, log)
        try:
            async with asyncio.timeout(scaled(60)):
                while "management API on" not in node.output():
                    if proc.returncode is not None:
                        raise AssertionError("the node exited:\n" + node.output())
                    await asyncio.sleep(0.05)
        except BaseException:
            await node.kill()
            raise
        return node

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        """The node's resident memory now (``VmRSS``)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert found is not None, status
        return int(found.group(1)) / 1024

    async def stop(self) -> int:
        """SIGTERM, as an operator stops a node; SIGKILL if it has not gone within 30 s."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), scaled(30))
            except TimeoutError:
                await self.kill()
        return await self.proc.wait()

    async def kill(self) -> None:
        """``kill -9``."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    # -- the management API, as the administrator -------------------------------------------

    async def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        status: int = 200,
    ) -> Any:
        auth = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method,
                self.management + path,
                json=body,
                headers={"Authorization": f"Basic {auth}"},
            ) as response,
        ):
            text = await response.text()
            assert response.status == status, (method, path, response.status, text)
            return json.loads(text) if text else None

    async def add_user(self, name: str) -> int:
        made = await self.api(
            "POST", "/api/v1/users", {"name": name, "password": PASSWORD}, status=201
        )
        return int(made["id"])


def _new_log(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"node-{time.monotonic_ns()}.log"


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


# -- the bystander ---------------------------------------------------------------------------


def bystander_main(host: str, port: int, user: str, password: str) -> None:
    """The bystander's process: log in, then ping back to back (2 ms apart) until stdin closes.

    Each line on stdin asks for the round trips (seconds) of the pings completed since the
    previous line: they are printed as one JSON list. A connection the node closes ends the
    process with an error, which the test sees as a failed report.
    """
    import queue
    import socket
    import threading

    from chatserver.protocol.codec import FrameDecoder

    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = FrameDecoder(1 << 24)
    arrived: list[dict[str, Any]] = []

    def call(request: dict[str, Any]) -> dict[str, Any]:
        body = msgpack.packb(request, use_bin_type=True)
        sock.sendall(struct.pack(">I", len(body)) + body)
        while True:
            for i, reply in enumerate(arrived):
                if reply.get("re") == request["id"]:
                    del arrived[: i + 1]
                    return reply
            data = sock.recv(65536)
            if not data:
                raise SystemExit("bystander: the node closed the connection")
            arrived.extend(msgpack.unpackb(b, raw=False) for b in decoder.feed(data))

    call({"op": "hello", "id": 1, "protocol": 1, "client": "bystander"})
    reply = call({"op": "auth", "id": 2, "user": user, "password": password})
    if not reply.get("ok"):
        raise SystemExit(f"bystander: cannot log in: {reply}")
    asks: queue.Queue[str | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            asks.put(line)
        asks.put(None)

    threading.Thread(target=read_stdin, daemon=True).start()
    print("ready", flush=True)
    rtts: list[float] = []
    rid = 3
    while True:
        try:
            ask = asks.get_nowait()
        except queue.Empty:
            pass
        else:
            if ask is None:
                return
            print(json.dumps(rtts), flush=True)
            rtts = []
        started = time.perf_counter()
        answer = call({"op": "ping", "id": rid})
        rtts.append(time.perf_counter() - started)
        if not answer.get("ok"):
            raise SystemExit(f"bystander: ping failed: {answer}")
        rid += 1
        time.sleep(0.002)


class Bystander:
    """A client in its own process that pings the node while attacks run."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, node: NodeProcess, user: str) -> Bystander:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.abuse.attack",
            "bystander",
            node.tcp[0],
            str(node.tcp[1]),
            user,
            PASSWORD,
            cwd=CHECKOUT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,  # a report is one line: ~20 bytes per ping
        )
        bystander = cls(proc)
        line = await bystander._line()
        assert line == "ready", line
        return bystander

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), scaled(30))
        if not line:
            raise AssertionError(f"the bystander exited ({await self.proc.wait()})")
        return line.decode().strip()

    async def round_trips(self) -> list[float]:
        """The round trips (seconds) of the pings since the previous call."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"report\n")
        await self.proc.stdin.drain()
        rtts: list[float] = json.loads(await self._line())
        return rtts

    async def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), scaled(10))
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# -- measuring an attack ---------------------------------------------------------------------


@dataclass
class Cost:
    """What one round of an attack cost the node and the bystander."""

    name: str
    waves: int = 0
    bytes_sent: int = 0
    attack_s: float = 0.0
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    lag_max_s: float = 0.0
    pings: list[float] = field(default_factory=list)

    def ping_ms(self, q: float) -> float:
        """The ``q`` quantile of the bystander's round trips, in milliseconds."""
        if not self.pings:
            return float("nan")
        ordered = sorted(self.pings)
        return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    def line(self) -> str:
        return (
            f"{self.name}: {self.waves} wave(s), sent {self.bytes_sent:,} B in"
            f" {self.attack_s:.2f} s; RSS {self.rss_before_mib:.1f} -> peak"
            f" {self.rss_peak_mib:.1f} -> after {self.rss_after_mib:.1f} MiB; loop lag max"
            f" {1000 * self.lag_max_s:.0f} ms; bystander {len(self.pings)} pings p50"
            f" {self.ping_ms(0.5):.2f} p99 {self.ping_ms(0.99):.2f} max {self.ping_ms(1.0):.2f} ms"
        )


@dataclass
class Rounds:
    """An attack run in rounds on the same node: the first round finds the node cold, each
    further one in the state the one before left it in.

    Memory is judged on the first and the last (see :meth:`check`). The first round may leave
    some behind for good: caches filled, the store's pool opening more connections, pymalloc
    arenas that a few live objects keep. What the last round leaves behind *again*, on a node
    that has already seen the same attack, is memory the node holds for the attack: a leak.
    """

    costs: list[Cost]

    @property
    def first(self) -> Cost:
        return self.costs[0]

    @property
    def last(self) -> Cost:
        return self.costs[-1]

    def check(self, *, p99_ms: float, rss_first_mib: float = 16, rss_repeat_mib: float = 4) -> None:
        """The bystander's ping p99 stayed under ``p99_ms`` in every round; the first round
        left the node's RSS within ``rss_first_mib`` of where it started, and the last within
        ``rss_repeat_mib`` of where the one before left it."""
        for cost in self.costs:
            assert len(cost.pings) >= 100, f"too few pings to mean anything: {cost.line()}"
            assert cost.ping_ms(0.99) < scaled(p99_ms), f"the bystander was slowed: {cost.line()}"
        grew = self.first.rss_after_mib - self.first.rss_before_mib
        assert grew < rss_first_mib, f"the node kept the attack's memory: {self.first.line()}"
        grew = self.last.rss_after_mib - self.last.rss_before_mib
        assert grew < rss_repeat_mib, (
            f"the node kept memory again when attacked again: {self.last.line()}"
        )

    def peak_mib(self) -> float:
        """The largest rise of the node's RSS during a round."""
        return max(c.rss_peak_mib - c.rss_before_mib for c in self.costs)


class Watch:
    """A node, a bystander pinging it, and the means to measure attacks on it."""

    def __init__(self, node: NodeProcess, bystander: Bystander) -> None:
        self.node = node
        self.bystander = bystander
        self._tokens: dict[str, str] = {}
        # The attackers' connections of the round under way: closed at its end whatever
        # happened (a failed check leaves no socket open for the loop's close to complain of).
        self._opened: list[RawTcp | RawWebSocket] = []

    @classmethod
    async def start(cls, node: NodeProcess, bystander_name: str = "bystander") -> Watch:
        await node.add_user(bystander_name)
        return cls(node, await Bystander.start(node, bystander_name))

    async def stop(self) -> None:
        await self.bystander.stop()

    async def token(self, user: str) -> str:
        """A session token of ``user`` (logged in once: a password check is scrypt, 16 MiB of
        the node's memory and ~50 ms of its CPU, which the attacks' connections would otherwise
        pay, and be charged for, every time)."""
        if user not in self._tokens:
            from chatserver.client import Client

            client = await Client.connect_tcp(*self.node.tcp)
            await client.login(user, PASSWORD)
            await client.close()
            assert client.token is not None
            self._tokens[user] = client.token
        return self._tokens[user]

    async def tcp(self, user: str | None = None) -> RawTcp:
        """A raw TCP connection, after ``hello`` and signed in as ``user`` (with its token)
        unless ``user`` is None."""
        client = await RawTcp.connect(*self.node.tcp)
        self._opened.append(client)
        if user is not None:
            token = await self.token(user)
            await client.request("hello", protocol=1)
            reply = await client.request("auth", token=token)
            assert reply.get("ok"), reply
        return client

    async def websocket(self, user: str | None = None, *, text: bool = False) -> RawWebSocket:
        """A raw WebSocket connection (speaking JSON if ``text``), signed in as for
        :meth:`tcp`."""
        client = await RawWebSocket.connect(*self.node.websocket)
        self._opened.append(client)
        if user is not None:
            token = await self.token(user)
            await client.send({"op": "hello", "id": 1, "protocol": 1}, text=text)
            await client.send({"op": "auth", "id": 2, "token": token}, text=text)
            while (reply := await client.recv()).get("re") != 2:
                assert "ev" not in reply, reply
            assert reply.get("ok"), reply
            client._ids = 2
        return client

    async def rounds(
        self,
        name: str,
        wave: Callable[[Cost], Awaitable[None]],
        *,
        rounds: int = 2,
        min_s: float = 0.5,
        max_waves: int = 25,
    ) -> Rounds:
        """Attack in ``rounds`` rounds, each measured by :meth:`attack`. A round repeats ``wave``
        (which adds what it sends to the :class:`Cost` it is given, and checks the node's
        answers) until it has lasted ``min_s`` or run ``max_waves`` times: the bystander's p99
        is then that of pings sent while the node was under attack. (The cap keeps a round's
        work the same on a faster machine: a closed connection's objects form reference cycles
        that only the node's cyclic collector frees, so a round's RSS after it grows with the
        number of connections it made, ~3 KiB each, until a collection comes.)"""
        costs = []
        for round_ in range(1, rounds + 1):
            async with self.attack(f"{name} (round {round_})") as cost:
                started = time.perf_counter()
                while cost.waves < max_waves and time.perf_counter() - started < min_s:
                    await wave(cost)
                    cost.waves += 1
            costs.append(cost)
        return Rounds(costs)

    @asynccontextmanager
    async def attack(self, name: str, *, aftermath_s: float = 0.2) -> AsyncIterator[Cost]:
        """Measure the attack run in the block and the ``aftermath_s`` after it: the
        bystander's pings, the node's peak RSS and largest loop lag, and its RSS afterwards,
        sampled until it stops falling (for at most 2 s)."""
        cost = Cost(name)
        await self.bystander.round_trips()  # drop what came before
        cost.rss_before_mib = cost.rss_peak_mib = self.node.rss_mib()
        stop = asyncio.Event()
        sampler = asyncio.create_task(self._sample(cost, stop))
        started = time.perf_counter()
        try:
            yield cost
            cost.attack_s = time.perf_counter() - started
            await asyncio.sleep(aftermath_s)
            cost.pings = await self.bystander.round_trips()
            cost.rss_after_mib = self.node.rss_mib()
            deadline = time.monotonic() + 2
            while cost.rss_after_mib > cost.rss_before_mib and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                now = self.node.rss_mib()
                if now >= cost.rss_after_mib:
                    break
                cost.rss_after_mib = now
        finally:
            stop.set()
            await sampler
            opened, self._opened = self._opened, []
            for client in opened:
                await client.close()
        print(cost.line())

    async def _sample(self, cost: Cost, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            last_lag = 0.0
            while not stop.is_set():
                if self.node.proc.returncode is not None:
                    return
                cost.rss_peak_mib = max(cost.rss_peak_mib, self.node.rss_mib())
                if time.monotonic() - last_lag >= 0.25:
                    last_lag = time.monotonic()
                    try:
                        async with http.get(
                            self.node.management + "/healthz",
                            timeout=aiohttp.ClientTimeout(total=5),
                        ) as response:
                            health = await response.json()
                        cost.lag_max_s = max(cost.lag_max_s, float(health["event_loop_lag_s"]))
                    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                        pass
                try:
                    await asyncio.wait_for(stop.wait(), 0.01)
                except TimeoutError:
                    pass


@asynccontextmanager
async def watched_node(directory: Path, **env: str) -> AsyncIterator[Watch]:
    """A node (settings in ``env``, as ``CHATSERVER_…`` variables) with a bystander pinging it;
    stopped however the block ends."""
    node = await NodeProcess.start(directory, NodeProcess.environment(directory, **env))
    try:
        watch = await Watch.start(node)
        try:
            yield watch
        finally:
            await watch.stop()
    finally:
        code = await node.stop()
    assert code == 0, f"the node exited with {code}:\n{node.output()}"


# -- the attacker's side ---------------------------------------------------------------------


def tcp_bytes(body: bytes) -> bytes:
    """One TCP frame: the 4-byte big-endian length, then ``body``."""
    return struct.pack(">I", len(body)) + body


def packed(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


if __name__ == "__main__":
    if sys.argv[1:2] == ["bystander"]:
        bystander_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        raise SystemExit("usage: python -m tests.abuse.attack bystander HOST PORT USER PASSWORD")
