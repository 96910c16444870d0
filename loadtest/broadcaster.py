"""The fan-out ceiling: a minimal asyncio broadcaster that writes the same frames as a node.

    python -m loadtest.broadcaster --tcp PORT --ws PORT

It speaks just enough of the protocol for the load generator's clients: every request gets an
``ok`` reply (``auth`` with a user, ``join`` with an empty backchat); a ``post`` becomes a
``message`` event with the same fields a node sends, encoded once per wire format with the
project's codec, appended to every subscriber of the room and flushed with one write per
connection per event-loop turn (the best practice from PERF-NOTES.md); then the poster gets its
reply. No store, no authorization, no backpressure: what is left is the cost of the writes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import struct
import time
from typing import Any

import msgpack

from chatserver.protocol.codec import encode_msgpack, tcp_frame
from chatserver.protocol.events import ws_frame

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Room:
    def __init__(self) -> None:
        self.seq = 0
        self.subscribers: set[Conn] = set()


ROOMS: dict[int, Room] = {}


class Conn(asyncio.Protocol):
    def __init__(self, websocket: bool) -> None:
        self.websocket = websocket
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.open = not websocket  # WebSocket: after the handshake
        self.rooms: set[int] = set()
        self.user_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for room in self.rooms:
            ROOMS[room].subscribers.discard(self)

    def write(self, data: bytes) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def send(self, obj: dict[str, Any]) -> None:
        body = encode_msgpack(obj)
        self.write(ws_frame(0x2, body) if self.websocket else tcp_frame(body))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            key = b""
            for line in bytes(buf[:end]).split(b"\r\n"):
                if line.lower().startswith(b"sec-websocket-key:"):
                    key = line.split(b":", 1)[1].strip()
            del buf[: end + 4]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.open = True
        offset, end = 0, len(buf)
        while True:
            if self.websocket:
                if end - offset < 2:
                    break
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
                masked = buf[offset + 1] & 0x80
                start = offset + head + (4 if masked else 0)
                stop = start + size
                if stop > end:
                    break
                payload = bytes(buf[start:stop])
                if masked:
                    mask = bytes(buf[start - 4 : start]) * (size // 4 + 1)
                    payload = (
                        int.from_bytes(payload, "big") ^ int.from_bytes(mask[:size], "big")
                    ).to_bytes(size, "big")
                opcode = buf[offset] & 0x0F
                offset = stop
                if opcode == 0x8:
                    assert self.transport is not None
                    self.transport.close()
                    return
                if opcode != 0x2:
                    continue
            else:
                if end - offset < 4:
                    break
                (size,) = _U32.unpack_from(buf, offset)
                if end - offset - 4 < size:
                    break
                payload = bytes(buf[offset + 4 : offset + 4 + size])
                offset += 4 + size
            self.request(msgpack.unpackb(payload))
        del buf[:offset]

    def request(self, req: dict[str, Any]) -> None:
        op, rid = req.get("op"), req.get("id")
        if op == "auth":
            self.user_id = abs(hash(req.get("token"))) % 1_000_000
            self.send(
                {"re": rid, "ok": True, "user": {"id": self.user_id, "name": "u"}, "token": "t"}
            )
        elif op == "join":
            room_id = int(req["room"])
            room = ROOMS.setdefault(room_id, Room())
            room.subscribers.add(self)
            self.rooms.add(room_id)
            self.send(
                {
                    "re": rid,
                    "ok": True,
                    "room": room_id,
                    "last_seq": room.seq,
                    "messages": [],
                    "gap": False,
                    "cleared": False,
                }
            )
        elif op == "post":
            room_id = int(req["room"])
            room = ROOMS.setdefault(room_id, Room())
            room.seq += 1
            ts = int(time.time() * 1000)
            event = {
                "ev": "message",
                "room": room_id,
                "seq": room.seq,
                "ts": ts,
                "sender": {"id": self.user_id, "name": "u"},
                "text": req.get("text", ""),
                "cid": req.get("cid", ""),
            }
            body = encode_msgpack(event)
            frames = {False: tcp_frame(body), True: ws_frame(0x2, body)}
            for sub in room.subscribers:
                sub.write(frames[sub.websocket])
            self.send({"re": rid, "ok": True, "seq": room.seq, "ts": ts, "duplicate": False})
        else:
            self.send({"re": rid, "ok": True})


async def serve(tcp_port: int, ws_port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Conn(False), "127.0.0.1", tcp_port, backlog=4096)
    await loop.create_server(lambda: Conn(True), "127.0.0.1", ws_port, backlog=4096)
    print("broadcaster ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    import resource

    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--tcp", type=int, required=True)
    parser.add_argument("--ws", type=int, required=True)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(args.tcp, args.ws))


if __name__ == "__main__":
    main()
