"""A lean client connection for generating load: one ``asyncio.Protocol`` per connection.

``chatserver.client.Client`` is the reference client (a reader task, an async generator, a queue
of events and one future per request). That is fine for tests but costs too much per frame to
generate load on a shared two-core machine, so the load generator uses this protocol instead. It
speaks the same wire format with the project's codec (``chatserver.protocol.codec``):

- replies are matched by ``id`` to a callback (no future, no task);
- posts are written without awaiting; the caller keeps its own window;
- in *count mode* a ``message`` event is recognised from its first key without decoding it (every
  server map starts with ``"ev"`` or ``"re"``); only the last event of each read is decoded, to
  sample the delivery latency from the send time that the load generator puts in the text.

WebSocket: the handshake is written by hand; client frames are masked with the all-zero key (a
valid mask that leaves the payload unchanged); server frames are unmasked and parsed in place.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack

from chatserver.protocol.codec import encode_msgpack, tcp_frame

Callback = Callable[[dict[str, Any], int], None]
EventSink = Callable[["Lean", dict[str, Any]], None]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_EV = b"\xa2ev\xa7message"  # a map that starts with "ev": "message": a message event
_unpackb = msgpack.unpackb
_now = time.monotonic_ns


class Failed(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        error = reply.get("error") or {}
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code", "")


def ws_client_frame(payload: bytes) -> bytes:
    """A masked binary frame with the zero mask key."""
    size = len(payload)
    if size < 126:
        header = bytes((0x82, 0x80 | size))
    elif size < 65536:
        header = bytes((0x82, 0x80 | 126)) + _U16.pack(size)
    else:
        header = bytes((0x82, 0x80 | 127)) + _U64.pack(size)
    return header + b"\0\0\0\0" + payload


class Lean(asyncio.Protocol):
    def __init__(self, websocket: bool = False, host: str = "127.0.0.1") -> None:
        loop = asyncio.get_running_loop()
        self.websocket = websocket
        self.host = host
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[int, Callback]] = {}
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.count_mode = False  # count message events, decode one per read
        self.on_event: EventSink | None = None  # called for decoded events
        self.on_sample: Callable[[bytes], None] | None = None  # last event body of each read
        self.events = 0
        self.in_flight = 0
        self.user_id = 0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.websocket:
            key = base64.b64encode(os.urandom(16)).decode()
            transport.write(  # type: ignore[attr-defined]
                (
                    f"GET / HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
        else:
            self.handshake.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("connection closed during handshake"))
        if not self.lost.done():
            self.lost.set_result(None)
        waiting, self._waiting = self._waiting, {}
        for t0, callback in waiting.values():
            callback({"ok": False, "error": {"code": "closed", "message": "closed"}}, t0)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self.handshake.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self.handshake.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self.handshake.set_result(None)
        if self.websocket:
            self._ws_frames(buf)
        else:
            self._tcp_frames(buf)

    def _tcp_frames(self, buf: bytearray) -> None:
        offset = 0
        end = len(buf)
        last_event = -1
        count_mode = self.count_mode
        while end - offset >= 4:
            (size,) = _U32.unpack_from(buf, offset)
            stop = offset + 4 + size
            if stop > end:
                break
            if count_mode and buf.startswith(_EV, offset + 5):
                self.events += 1
                last_event = offset
            else:
                self._dispatch(_unpackb(buf[offset + 4 : stop]))
            offset = stop
        if last_event >= 0 and self.on_sample is not None:
            (size,) = _U32.unpack_from(buf, last_event)
            self.on_sample(bytes(buf[last_event + 4 : last_event + 4 + size]))
        del buf[:offset]

    def _ws_frames(self, buf: bytearray) -> None:
        offset = 0
        end = len(buf)
        last = (-1, 0)
        count_mode = self.count_mode
        while end - offset >= 2:
            opcode = buf[offset] & 0x0F
            size = buf[offset + 1] & 0x7F
            head = 2
            if size == 126:
                if end - offset < 4:
                    break
                (size,) = _U16.unpack_from(buf, offset + 2)
                head = 4
            elif size == 127:
                if end - offset < 10:
                    break
                (size,) = _U64.unpack_from(buf, offset + 2)
                head = 10
            start = offset + head
            stop = start + size
            if stop > end:
                break
            if opcode == 0x2 or opcode == 0x1:
                if count_mode and buf.startswith(_EV, start + 1):
                    self.events += 1
                    last = (start, stop)
                elif opcode == 0x2:
                    self._dispatch(_unpackb(buf[start:stop]))
                else:
                    import json

                    self._dispatch(json.loads(bytes(buf[start:stop])))
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()
            offset = stop
        if last[0] >= 0 and self.on_sample is not None:
            self.on_sample(bytes(buf[last[0] : last[1]]))
        del buf[:offset]

    def _dispatch(self, obj: dict[str, Any]) -> None:
        if "ev" in obj:
            if obj["ev"] == "message":
                self.events += 1
            if self.on_event is not None:
                self.on_event(self, obj)
            return
        entry = self._waiting.pop(obj.get("re"), None)  # type: ignore[arg-type]
        if entry is not None:
            entry[1](obj, entry[0])

    # -- requests ---------------------------------------------------------------------------

    def send(self, op: str, callback: Callback, t0: int = 0, **fields: Any) -> None:
        """Write one request; ``callback(reply, t0)`` runs when its reply arrives."""
        rid = next(self._ids)
        self._waiting[rid] = (t0 or _now(), callback)
        body = encode_msgpack({"op": op, "id": rid, **fields})
        assert self.transport is not None
        self.transport.write(ws_client_frame(body) if self.websocket else tcp_frame(body))

    def call(self, op: str, **fields: Any) -> asyncio.Future[dict[str, Any]]:
        """Write one request; the future gets the reply or :class:`Failed`."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def done(reply: dict[str, Any], t0: int) -> None:
            if future.done():
                return
            if reply.get("ok"):
                future.set_result(reply)
            else:
                future.set_exception(Failed(reply))

        self.send(op, done, **fields)
        return future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(
    host: str,
    port: int,
    *,
    websocket: bool = False,
    source: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> Lean:
    """Connect (and with ``token``, say hello and authenticate)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, conn = await loop.create_connection(
            lambda: Lean(websocket, host),
            host,
            port,
            local_addr=(source, 0) if source else None,
        )
        await conn.handshake
        if token is not None:
            hello = conn.call("hello", protocol=1, client="loadtest")
            auth = conn.call("auth", token=token)
            await hello
            reply = await auth
            conn.user_id = int(reply["user"]["id"])
    return conn
