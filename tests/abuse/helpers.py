"""Tools of the abuse suite: a raw attacker connection, and a bystander who measures the node.

The node runs in the test's own process (``tests/conftest.py``'s harness), so a loop stall in the
node is a stall of the bystander's pings too, and the process's memory is the node's.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from typing import Any

import msgpack

from chatserver.client import Client
from chatserver.protocol.codec import FrameDecoder

from ..conftest import PASSWORD, scaled

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / MIB


def tcp_frame(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def empty_arrays(size: int = MIB) -> bytes:
    """A MessagePack map of about ``size`` bytes holding ~``size`` empty arrays."""
    return msgpack.packb({"op": "ping", "id": 1, "x": [[]] * (size - 32)}, use_bin_type=True)


def empty_arrays_json(size: int = MIB) -> str:
    return json.dumps(
        {"op": "ping", "id": 1, "x": [[]] * ((size - 64) // 3)}, separators=(",", ":")
    )


class Raw:
    """A TCP connection that sends whatever bytes it is given and records what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received: list[dict[str, Any]] = []
        self._decoder = FrameDecoder(1 << 26)

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> Raw:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def login(self, user: str) -> dict[str, Any]:
        self.send(tcp_frame({"op": "hello", "id": 1, "protocol": 1}))
        self.send(tcp_frame({"op": "auth", "id": 2, "user": user, "password": PASSWORD}))
        return await self.until(lambda m: m.get("re") == 2 or m.get("ev") == "bye")

    async def until(self, match: Any, timeout: float = 10) -> dict[str, Any]:
        """The first message (received or to come) that ``match`` accepts."""
        seen = 0
        async with asyncio.timeout(scaled(timeout)):
            while True:
                for message in self.received[seen:]:
                    if match(message):
                        return message
                seen = len(self.received)
                if not await self._read():
                    raise EOFError(f"closed; received {self.received}")

    async def collect(self, match: Any, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Read until ``count`` messages that ``match`` accepts have arrived; those messages."""
        async with asyncio.timeout(scaled(timeout)):
            while len(found := [m for m in self.received if match(m)]) < count:
                if not await self._read():
                    raise EOFError(f"closed; received {self.received}")
        return found

    async def closed(self, timeout: float = 10) -> list[dict[str, Any]]:
        """Read until the node closes the connection; everything it said."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while await self._read():
                    pass
        finally:
            self.writer.close()
        return self.received

    async def _read(self) -> bool:
        try:
            data = await self.reader.read(1 << 16)
        except ConnectionResetError:
            return False
        if not data:
            return False
        for body in self._decoder.feed(data):
            self.received.append(msgpack.unpackb(body, raw=False))
        return True

    def bye(self) -> str | None:
        for message in self.received:
            if message.get("ev") == "bye":
                return str(message["reason"])
        return None

    def close(self) -> None:
        self.writer.close()


def ws_handshake(host: str, port: int, origin: str | None = None, path: str = "/") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ws_client_frame(payload: bytes, opcode: int, fin: bool = True) -> bytes:
    """A client's (masked) WebSocket frame; the mask is zero, so the payload stays as it is."""
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", size)
    return head + b"\0\0\0\0" + payload


class RawWebSocket:
    """A WebSocket client on a plain socket: the frames are built by the test, byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.response = b""

    @classmethod
    async def connect(cls, address: tuple[str, int], origin: str | None = None) -> RawWebSocket:
        reader, writer = await asyncio.open_connection(*address)
        ws = cls(reader, writer)
        writer.write(ws_handshake(*address, origin=origin))
        ws.response = await reader.readuntil(b"\r\n\r\n")
        return ws

    @property
    def status(self) -> int:
        return int(self.response.split(b" ", 2)[1])

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def closed(self, timeout: float = 10) -> tuple[int | None, bytes]:
        """Read until the node closes; the close code it sent (if any) and every byte."""
        data = b""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while chunk := await self.reader.read(1 << 16):
                    data += chunk
        except ConnectionResetError:
            pass
        finally:
            self.writer.close()
        code = None
        at = data.find(b"\x88")  # a close frame: opcode 8, FIN
        if at >= 0 and len(data) >= at + 4:
            code = struct.unpack(">H", data[at + 2 : at + 4])[0]
        return code, data


class Bystander:
    """A logged-in client that pings back to back while an attack runs, and samples RSS."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.rtts: list[float] = []
        self.rss_peak = rss_mib()
        self._task: asyncio.Task[None] | None = None
        self._stop = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stop:
            started = time.perf_counter()
            await self.client.call("ping")
            self.rtts.append(time.perf_counter() - started)
            self.rss_peak = max(self.rss_peak, rss_mib())
            await asyncio.sleep(0.002)

    async def after(self, seconds: float) -> None:
        """Keep pinging ``seconds`` more (the attack's aftermath counts), then stop."""
        await asyncio.sleep(seconds)
        await self.stop()

    async def stop(self) -> None:
        self._stop = True
        assert self._task is not None
        await self._task

    def percentile(self, p: float) -> float:
        ordered = sorted(self.rtts)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]

    def report(self) -> str:
        return (
            f"{len(self.rtts)} pings, p50 {1000 * self.percentile(0.5):.1f} ms,"
            f" p99 {1000 * self.percentile(0.99):.1f} ms, max {1000 * max(self.rtts):.1f} ms,"
            f" RSS peak {self.rss_peak:.0f} MiB"
        )
