"""Measure the transport attacks of issue 14 against a node run as a separate process.

Not a test (pytest does not collect it): the numbers in docs/security.md come from it. It starts
``python -m chatserver run`` from a source tree (``--server-dir``, default: this checkout) on a
fresh SQLite store, logs in a bystander who pings the node back to back, runs one attack, and
prints what the attack cost::

    python -m tests.abuse.measure                       # every attack, this checkout
    python -m tests.abuse.measure --server-dir /tmp/base tcp-preauth-arrays

For each attack: the bytes the attacker sent, the node's resident memory (before, peak, and after
the attack ended), the longest event-loop stall the node reported (``/healthz``
``event_loop_lag_s``, sampled every 0.25 s), the bystander's ping round trips (p50, p99, max) and
what the attacker saw.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from websockets.asyncio.client import connect as ws_connect

from chatserver.client import Client
from chatserver.protocol.codec import FrameDecoder
from chatserver.testing import free_port

PASSWORD = "abuse-measure-password"
CHECKOUT = str(Path(__file__).resolve().parents[2])
MIB = 1 << 20


def _set_nofile(soft: int) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class NodeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, env: dict[str, str], data: str) -> None:
        self.proc = proc
        self.env = env
        self.data = data
        self.tcp = ("127.0.0.1", int(env["CHATSERVER_LISTEN_TCP"].rsplit(":", 1)[1]))
        self.ws = "ws://{}/".format(env["CHATSERVER_LISTEN_WEBSOCKET"])
        self.http = "http://{}".format(env["CHATSERVER_LISTEN_MANAGEMENT"])
        self.lines: list[str] = []

    @classmethod
    async def start(
        cls, server_dir: str, extra: dict[str, str], nofile: int | None = None
    ) -> NodeProcess:
        data = tempfile.mkdtemp(prefix="chatserver-abuse-")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
        env.update(
            PYTHONPATH=server_dir,
            CHATSERVER_DATABASE_URL=f"sqlite:///{data}/chat.db",
            CHATSERVER_LISTEN_TCP=f"127.0.0.1:{free_port()}",
            CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{free_port()}",
            CHATSERVER_LISTEN_MANAGEMENT=f"127.0.0.1:{free_port()}",
            CHATSERVER_LISTEN_HTTP=f"127.0.0.1:{free_port()}",
            CHATSERVER_ADMIN_PASSWORD=PASSWORD,
            CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="1000000",
            **extra,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatserver",
            "run",
            "--log-level",
            "warning",
            env=env,
            cwd=data,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=None if nofile is None else lambda: _set_nofile(nofile),
        )
        node = cls(proc, env, data)
        assert proc.stdout is not None
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise SystemExit("the node did not start:\n" + "".join(node.lines))
            node.lines.append(line)
            if "management API" in line:
                break
        asyncio.get_running_loop().create_task(node._drain())
        return node

    async def _drain(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode())

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+)", status)
        assert match is not None
        return int(match.group(1)) / 1024

    async def add_user(self, http: aiohttp.ClientSession, name: str) -> None:
        auth = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        async with http.post(
            f"{self.http}/api/v1/users",
            json={"name": name, "password": PASSWORD},
            headers={"Authorization": f"Basic {auth}"},
        ) as response:
            assert response.status == 201, await response.text()

    async def stop(self) -> None:
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def bystander_main(address: str) -> None:
    """The bystander, in a process of its own (so the attacker's work in this one does not
    delay it): log in, then ping back to back until stdin closes; print the round trips."""
    import select
    import socket

    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = FrameDecoder(1 << 24)
    pending: list[dict[str, Any]] = []

    def call(request: dict[str, Any]) -> dict[str, Any]:
        body = msgpack.packb(request, use_bin_type=True)
        sock.sendall(struct.pack(">I", len(body)) + body)
        while True:
            for reply in pending:
                if reply.get("re") == request["id"]:
                    pending.clear()
                    return reply
            data = sock.recv(65536)
            if not data:
                raise SystemExit("the node closed the bystander's connection")
            pending.extend(msgpack.unpackb(b, raw=False) for b in decoder.feed(data))

    call({"op": "hello", "id": 1, "protocol": 1})
    assert call({"op": "auth", "id": 2, "user": "bystander", "password": PASSWORD})["ok"]
    print("ready", flush=True)
    rtts = []
    rid = 3
    while not select.select([sys.stdin], [], [], 0)[0]:
        started = time.perf_counter()
        call({"op": "ping", "id": rid})
        rtts.append(time.perf_counter() - started)
        rid += 1
        time.sleep(0.005)
    print(json.dumps(rtts), flush=True)


class Watch:
    """Samples the node's memory and loop lag, and a bystander's ping round trips."""

    def __init__(self, node: NodeProcess, http: aiohttp.ClientSession) -> None:
        self.node = node
        self.http = http
        self.rss_peak = 0.0
        self.lag_max = 0.0
        self._stop = asyncio.Event()

    async def _bystander(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.abuse.measure",
            "--bystander",
            "{}:{}".format(*self.node.tcp),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=CHECKOUT,
        )
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
        return proc

    async def _sample(self) -> None:
        last_lag = 0.0
        while not self._stop.is_set():
            self.rss_peak = max(self.rss_peak, self.node.rss_mib())
            if time.monotonic() - last_lag > 0.25:
                last_lag = time.monotonic()
                try:
                    async with self.http.get(f"{self.node.http}/healthz") as response:
                        body = await response.json(content_type=None)
                    self.lag_max = max(self.lag_max, float(body["event_loop_lag_s"]))
                except (aiohttp.ClientError, KeyError, ValueError):
                    pass
            await asyncio.sleep(0.02)

    async def run(self, attack: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        await asyncio.sleep(1.0)
        before = self.node.rss_mib()
        self.rss_peak = before
        bystander = await self._bystander()
        sampler = asyncio.create_task(self._sample())
        started = time.perf_counter()
        outcome = await attack
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.5)
        self._stop.set()
        await sampler
        out, _ = await bystander.communicate(b"stop\n")
        rtts = sorted(json.loads(out.decode().strip().splitlines()[-1]))
        ms = [r * 1000 for r in rtts]
        return {
            **outcome,
            "attack_s": round(elapsed, 2),
            "rss_before_mib": round(before, 1),
            "rss_peak_mib": round(self.rss_peak, 1),
            "rss_after_mib": round(self.node.rss_mib(), 1),
            "loop_lag_max_s": round(self.lag_max, 3),
            "pings": len(ms),
            "ping_p50_ms": round(statistics.median(ms), 1) if ms else None,
            "ping_p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1) if ms else None,
            "ping_max_ms": round(ms[-1], 1) if ms else None,
            # The stalls the bystander sat through: pings slower than 50 ms, and their total.
            "pings_over_50ms": sum(1 for m in ms if m > 50),
            "stalled_s": round(sum(m for m in ms if m > 50) / 1000, 2),
        }


# --- the attacks --------------------------------------------------------------------------------


def arrays_frame(size: int = MIB) -> bytes:
    """A MessagePack map of about ``size`` bytes holding one array of empty arrays."""
    count = size - 32
    body = msgpack.packb({"op": "ping", "id": 1, "x": [[]] * count}, use_bin_type=True)
    return body


def arrays_json(size: int = MIB) -> str:
    return json.dumps(
        {"op": "ping", "id": 1, "x": [[]] * ((size - 40) // 3)}, separators=(",", ":")
    )


async def read_outcome(reader: asyncio.StreamReader, timeout: float) -> tuple[float, list[Any]]:
    """Read the node's frames until it closes (or ``timeout``); when it closed, and what it said."""
    decoder = FrameDecoder(1 << 30)
    said: list[Any] = []
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            while data := await reader.read(65536):
                for body in decoder.feed(data):
                    obj = msgpack.unpackb(body, raw=False)
                    said.append(f"bye {obj['reason']}" if obj.get("ev") else obj.get("error"))
    except TimeoutError:
        said.append("(still open)")
    except ConnectionError:
        said.append("(reset)")
    return time.perf_counter() - started, said


def summary(said: list[list[Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for items in said:
        key = json.dumps(items, default=str)[:120]
        out[key] = out.get(key, 0) + 1
    return out


async def tcp_preauth_arrays(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """Ten connections each send one 1 MiB frame of ~a million empty arrays, before login."""
    frame = arrays_frame()
    wire = struct.pack(">I", len(frame)) + frame

    async def one() -> tuple[float, list[Any]]:
        reader, writer = await asyncio.open_connection(*node.tcp)
        writer.write(wire)
        await writer.drain()
        result = await read_outcome(reader, 30)
        writer.close()
        return result

    results = await asyncio.gather(*(one() for _ in range(10)))
    return {
        "bytes_sent": 10 * len(wire),
        "answered_within_s": round(max(r[0] for r in results), 2),
        "answers": summary([r[1][:3] for r in results]),
    }


async def _ws_preauth(node: NodeProcess, messages: list[bytes | str]) -> dict[str, Any]:
    async def one(message: bytes | str) -> tuple[float, str]:
        async with ws_connect(node.ws, compression=None, max_size=None) as ws:
            started = time.perf_counter()
            try:
                await ws.send(message)
                async with asyncio.timeout(30):
                    while True:
                        await ws.recv()
            except TimeoutError:
                return time.perf_counter() - started, "(still open)"
            except Exception as exc:
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                return time.perf_counter() - started, f"closed {code}"

    results = await asyncio.gather(*(one(m) for m in messages))
    return {
        "bytes_sent": sum(len(m) for m in messages),
        "answered_within_s": round(max(r[0] for r in results), 2),
        "answers": summary([[r[1]] for r in results]),
    }


async def ws_preauth_arrays(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """Three WebSocket connections each send one 1 MiB binary message of empty arrays."""
    return await _ws_preauth(node, [arrays_frame()] * 3)


async def ws_preauth_json(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """Three WebSocket connections each send one 1 MiB JSON text message of empty arrays."""
    return await _ws_preauth(node, [arrays_json()] * 3)


async def tcp_auth_arrays(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """A logged-in user sends ten 1 MiB frames of empty arrays on one connection."""
    return await _after_login(node, arrays_frame())


async def tcp_auth_nested(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """The same with 1000 arrays of 1000 empty arrays each: the bound's worst case (every
    container is counted, up to the budget)."""
    frame = msgpack.packb({"op": "ping", "id": 1, "x": [[[]] * 1000] * 1000}, use_bin_type=True)
    return await _after_login(node, frame)


async def _after_login(node: NodeProcess, frame: bytes) -> dict[str, Any]:
    client = await Client.connect_tcp(*node.tcp)
    await client.login("mallory0", PASSWORD)
    wire = struct.pack(">I", len(frame)) + frame
    started = time.perf_counter()
    await client.send_bytes(wire * 10)  # type: ignore[attr-defined]
    try:
        async with asyncio.timeout(60):
            while len(client.unmatched) < 10 and not client.closed.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        pass
    answers = [(r.get("error") or {}).get("code", "ok") for r in client.unmatched]
    elapsed = time.perf_counter() - started
    await client.close()
    return {
        "bytes_sent": len(wire) * 10,
        "answered_within_s": round(elapsed, 2),
        "answers": summary([[a] for a in answers]),
    }


async def _park(
    node: NodeProcess, count: int, users: list[str] | None, hold: float
) -> dict[str, Any]:
    """``count`` connections each send a header for 1 MiB and 1 MiB - 1 of its body, then wait."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused = 0
    for i in range(count):
        try:
            reader, writer = await asyncio.open_connection(*node.tcp)
        except OSError:
            refused += 1
            continue
        if users is not None:
            client_ok = await _login_raw(reader, writer, users[i % len(users)])
            if not client_ok:
                refused += 1
                writer.close()
                continue
        writer.write(struct.pack(">I", MIB) + b"\x00" * (MIB - 1))
        conns.append((reader, writer))
    sent = len(conns) * (MIB + 3)
    await asyncio.sleep(hold)
    results = await asyncio.gather(*(read_outcome(r, 0.5) for r, _ in conns))
    for _, writer in conns:
        writer.close()
    return {
        "bytes_sent": sent,
        "connections_parked": len(conns),
        "refused_before_parking": refused,
        "held_s": hold,
        "answers_after_hold": summary([r[1][-2:] for r in results]),
    }


async def _login_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str) -> bool:
    decoder = FrameDecoder(1 << 24)
    for i, request in enumerate(
        [
            {"op": "hello", "id": 1, "protocol": 1},
            {"op": "auth", "id": 2, "user": user, "password": PASSWORD},
        ]
    ):
        body = msgpack.packb(request, use_bin_type=True)
        writer.write(struct.pack(">I", len(body)) + body)
        while True:
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                return False
            frames = [msgpack.unpackb(b, raw=False) for b in decoder.feed(data)]
            if any(f.get("re") == i + 1 for f in frames):
                if not all(f.get("ok", True) for f in frames if f.get("re") == i + 1):
                    return False
                if any(f.get("ev") == "bye" for f in frames):
                    return False
                break
            if any(f.get("ev") == "bye" for f in frames):
                return False
    return True


async def parked_after_login(node: NodeProcess, hold: float, **_: Any) -> dict[str, Any]:
    """60 logged-in connections (two users) each park 1 MiB - 1 of an unfinished frame."""
    return await _park(node, 60, ["mallory0", "mallory1"], hold)


async def parked_before_login(node: NodeProcess, hold: float, **_: Any) -> dict[str, Any]:
    """200 connections that never log in each try to park 1 MiB - 1 of an unfinished frame."""
    return await _park(node, 200, None, min(hold, 5.0))


async def one_account_many(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """One account opens 235 connections; then another user tries to log in."""
    conns = []
    accepted = 0
    for _ in range(235):
        reader, writer = await asyncio.open_connection(*node.tcp)
        if await _login_raw(reader, writer, "mallory0"):
            accepted += 1
        conns.append(writer)
    other = await Client.connect_tcp(*node.tcp)
    try:
        await other.login("mallory1", PASSWORD)
        other_ok = True
    except Exception:
        other_ok = False
    await other.close()
    for writer in conns:
        writer.close()
    return {"bytes_sent": None, "logins_accepted": accepted, "other_user_logged_in": other_ok}


async def fd_exhaustion(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """Ten accounts open 30 connections each (run it with --nofile 300); then the management
    port is asked whether the node is ready (a new connection, and a store query)."""
    conns = []
    outcomes: dict[str, int] = {}
    for i in range(300):
        try:
            reader, writer = await asyncio.open_connection(*node.tcp)
            conns.append(writer)
            ok = await _login_raw(reader, writer, f"mallory{i % 10}")
            outcome = "logged in" if ok else "refused or closed"
        except (OSError, TimeoutError) as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.http}/readyz", timeout=aiohttp.ClientTimeout(10)) as r:
                ready = f"{r.status} {await r.text()}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        ready = f"failed: {type(exc).__name__}"
    refusals = [line.strip() for line in node.lines if "Too many open files" in line][:1]
    for writer in conns:
        writer.close()
    return {"bytes_sent": None, "outcomes": outcomes, "readyz": ready, "node_log": refusals}


async def _flood(
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], wire: bytes, frames: int
) -> dict[str, Any]:
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[Any]:
        writer.write(wire * frames)
        decoder = FrameDecoder(1 << 24)
        said: list[Any] = []
        try:
            async with asyncio.timeout(120):
                while len(said) < frames and (data := await reader.read(65536)):
                    for body in decoder.feed(data):
                        obj = msgpack.unpackb(body, raw=False)
                        if obj.get("ev"):
                            said.append(f"bye {obj['reason']}")
                        else:
                            said.append((obj.get("error") or {}).get("code", "ok"))
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        return said

    results = await asyncio.gather(*(one(r, w) for r, w in conns))
    return {
        "bytes_sent": len(wire) * frames * len(conns),
        "answers": summary([sorted(set(r)) for r in results]),
        "answered": sum(len(r) for r in results),
    }


async def flood_preauth(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """20 connections each send 20 frames of 16 KiB of empty arrays (the most a frame may be
    before login) back to back, before login."""
    body = msgpack.packb({"op": "ping", "id": 1, "x": [[]] * (16_384 - 40)}, use_bin_type=True)
    wire = struct.pack(">I", len(body)) + body
    conns = [await asyncio.open_connection(*node.tcp) for _ in range(20)]
    return await _flood(conns, wire, 20)


async def flood_auth_nested(node: NodeProcess, **_: Any) -> dict[str, Any]:
    """A logged-in user sends 50 frames of 1000 x 1000 nested empty arrays back to back."""
    body = msgpack.packb({"op": "ping", "id": 1, "x": [[[]] * 1000] * 1000}, use_bin_type=True)
    wire = struct.pack(">I", len(body)) + body
    reader, writer = await asyncio.open_connection(*node.tcp)
    assert await _login_raw(reader, writer, "mallory0")
    return await _flood([(reader, writer)], wire, 50)


ATTACKS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "tcp-preauth-arrays": tcp_preauth_arrays,
    "ws-preauth-arrays": ws_preauth_arrays,
    "ws-preauth-json": ws_preauth_json,
    "tcp-auth-arrays": tcp_auth_arrays,
    "tcp-auth-nested": tcp_auth_nested,
    "parked-after-login": parked_after_login,
    "parked-before-login": parked_before_login,
    "one-account-many": one_account_many,
    "flood-preauth": flood_preauth,
    "flood-auth-nested": flood_auth_nested,
    "fd-exhaustion": fd_exhaustion,
}


async def measure(
    server_dir: str, name: str, hold: float, extra: dict[str, str], nofile: int | None
) -> None:
    node = await NodeProcess.start(server_dir, extra, nofile)
    try:
        async with aiohttp.ClientSession() as http:
            for user in ("bystander", *(f"mallory{i}" for i in range(10))):
                await node.add_user(http, user)
            watch = Watch(node, http)
            result = await watch.run(ATTACKS[name](node, hold=hold))
        print(json.dumps({"attack": name, **result}), flush=True)
    finally:
        await node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attacks", nargs="*", help=f"some of: {', '.join(ATTACKS)} (default: all)")
    parser.add_argument("--server-dir", default=CHECKOUT)
    parser.add_argument("--hold", type=float, default=35.0, help="how long parked frames wait")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the node (repeatable)"
    )
    parser.add_argument("--nofile", type=int, help="the node's open-files limit (ulimit -n)")
    parser.add_argument("--bystander", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bystander:
        bystander_main(args.bystander)
        return
    extra = dict(item.split("=", 1) for item in args.env)
    for name in args.attacks or list(ATTACKS):
        if name not in ATTACKS:
            parser.error(f"no attack {name!r}")
    for name in args.attacks or list(ATTACKS):
        asyncio.run(measure(args.server_dir, name, args.hold, extra, args.nofile))


if __name__ == "__main__":
    main()
