"""Clients on plain sockets that do only what a test tells them.

The bundled :class:`chatserver.client.Client` always reads and always sends whole messages.
These read only when asked (so a test can stall one) and let a test send a WebSocket message in
any fragments (``websockets``' sans-I/O :class:`~websockets.client.ClientProtocol` builds the
frames). Both decode what the server sends into maps.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import msgpack
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from chatserver.protocol.codec import FrameDecoder


async def _open(
    host: str, port: int, rcvbuf: int | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream whose reader buffers at most 64 KiB before the socket stops being read; with
    ``rcvbuf`` the kernel's receive buffer is made small too (set before connecting, so the
    window the server sees is small from the start)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=2**15)


class RawTcp:
    """The TCP transport by hand: 4-byte big-endian length, then a MessagePack map."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = FrameDecoder(2**24)
        self._ready: list[dict[str, Any]] = []
        self._ids = 0

    @classmethod
    async def connect(cls, host: str, port: int, *, rcvbuf: int | None = None) -> RawTcp:
        return cls(*await _open(host, port, rcvbuf))

    async def send(self, obj: dict[str, Any]) -> None:
        body = msgpack.packb(obj, use_bin_type=True)
        self.writer.write(struct.pack(">I", len(body)) + body)
        await self.writer.drain()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request and read until its reply (events before it are dropped)."""
        self._ids += 1
        await self.send({"op": op, "id": self._ids, **fields})
        while True:
            obj = await self.recv()
            if obj.get("re") == self._ids:
                return obj

    async def recv(self) -> dict[str, Any]:
        """The next map from the server; ``EOFError`` at the end of the stream."""
        while not self._ready:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self._ready.extend(msgpack.unpackb(b, raw=False) for b in self._decoder.feed(data))
        return self._ready.pop(0)

    async def read_to_end(self) -> list[dict[str, Any]]:
        """Everything the server sent until it closed the connection (or reset it)."""
        out: list[dict[str, Any]] = []
        try:
            while True:
                out.append(await self.recv())
        except (EOFError, ConnectionError):
            return out

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class RawWebSocket:
    """A WebSocket client whose frames a test chooses; it answers pings and closes itself."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self._frames: list[Frame] = []
        self._parts: list[bytes] = []
        self._text = False
        self._eof = False
        self._ids = 0

    @classmethod
    async def connect(cls, host: str, port: int, *, rcvbuf: int | None = None) -> RawWebSocket:
        client = cls(*await _open(host, port, rcvbuf), f"ws://{host}:{port}/")
        client.ws.send_request(client.ws.connect())
        await client._flush()
        while True:
            for event in client.ws.events_received():
                if isinstance(event, Response):
                    if event.status_code != 101:
                        raise ConnectionError(f"handshake refused: {event.status_code}")
                    return client
                client._frames.append(event)  # type: ignore[arg-type]
            await client._read_more()

    async def _flush(self) -> None:
        for data in self.ws.data_to_send():
            if self.writer.is_closing():
                return
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                self.writer.write_eof()
        try:
            await self.writer.drain()
        except ConnectionError:
            pass  # the server went first: reading tells the test

    async def _read_more(self) -> None:
        if self._eof:
            raise EOFError("the server closed the connection")
        data = await self.reader.read(65536)
        if data:
            self.ws.receive_data(data)
        else:
            self._eof = True
            self.ws.receive_eof()
        await self._flush()  # pongs, the reply to a close

    # -- sending ----------------------------------------------------------------------------

    async def send_fragments(
        self, pieces: list[bytes], *, text: bool = False, ping_after: int | None = None
    ) -> None:
        """One message in ``len(pieces)`` frames (a ping between two of them, if asked)."""
        first, *rest = pieces
        if text:
            self.ws.send_text(first, fin=not rest)
        else:
            self.ws.send_binary(first, fin=not rest)
        for i, piece in enumerate(rest):
            if ping_after == i:
                self.ws.send_ping(b"between fragments")
            self.ws.send_continuation(piece, fin=i == len(rest) - 1)
        await self._flush()

    async def send(self, obj: dict[str, Any], *, text: bool = False) -> None:
        await self.send_fragments([encode(obj, text)], text=text)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        await self.send({"op": op, "id": self._ids, **fields})
        while True:
            obj = await self.recv()
            if obj.get("re") == self._ids:
                return obj

    # -- receiving --------------------------------------------------------------------------

    async def next_frame(self) -> Frame:
        while True:
            for event in self.ws.events_received():
                assert isinstance(event, Frame)
                self._frames.append(event)
            if self._frames:
                return self._frames.pop(0)
            await self._read_more()

    async def recv(self) -> dict[str, Any]:
        """The next message from the server as a map (control frames are skipped)."""
        while True:
            frame = await self.next_frame()
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._text = frame.opcode is Opcode.TEXT
                self._parts = [bytes(frame.data)]
            elif frame.opcode is Opcode.CONT:
                self._parts.append(bytes(frame.data))
            elif frame.opcode is Opcode.CLOSE:
                raise EOFError(f"the server closed the WebSocket: {Close.parse(frame.data)}")
            else:
                continue
            if frame.fin:
                data = b"".join(self._parts)
                return json.loads(data) if self._text else msgpack.unpackb(data, raw=False)

    async def read_to_end(self) -> list[dict[str, Any]]:
        """Every message until the server closed (or reset) the connection."""
        out: list[dict[str, Any]] = []
        try:
            while True:
                out.append(await self.recv())
        except (EOFError, ConnectionError):
            return out

    async def close_received(self) -> Close:
        """Read until the server's close frame; its code and reason."""
        while True:
            frame = await self.next_frame()
            if frame.opcode is Opcode.CLOSE:
                return Close.parse(frame.data)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def encode(obj: dict[str, Any], text: bool) -> bytes:
    return json.dumps(obj).encode() if text else msgpack.packb(obj, use_bin_type=True)
