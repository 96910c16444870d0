"""A small asyncio client for the chat protocol, over TCP or WebSocket.

Used by the tests; also a reference for writing clients. Replies are matched to requests by
``id``; events wait in :attr:`Client.events`.

    client = await Client.connect_tcp("127.0.0.1", 5041)
    await client.login("alice", "secret")
    joined = await client.call("join", room=1)
    await client.call("post", room=1, text="hello", cid="c1")
    event = await client.next_event("message")
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
from typing import Any

import msgpack

from .protocol.codec import FrameDecoder


class RequestFailed(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        error = reply.get("error") or {}
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code: str = error.get("code", "")
        self.reply = reply


class Closed(Exception):
    pass


class Client:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unmatched: list[dict[str, Any]] = []  # replies without a waiting request (re: null)
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.token: str | None = None
        self.user: dict[str, Any] | None = None
        self.trace: list[dict[str, Any]] | None = None  # set to a list to record every arrival

    # -- transports -------------------------------------------------------------------------

    @classmethod
    async def connect_tcp(
        cls, host: str, port: int, *, local_addr: tuple[str, int] | None = None, ssl: Any = None
    ) -> Client:
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=local_addr, ssl=ssl, limit=2**22
        )
        client = _TcpClient(reader, writer)
        client._start()
        return client

    @classmethod
    async def connect_websocket(cls, url: str, *, text: bool = False, **kwargs: Any) -> Client:
        from websockets.asyncio.client import connect

        ws = await connect(url, compression=None, max_size=2**22, **kwargs)
        client = _WebSocketClient(ws, text)
        client._start()
        return client

    def _start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            async for obj in self._incoming():
                self._dispatch(obj)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except Exception as exc:  # a closed WebSocket raises its own exception types
            if not type(exc).__module__.startswith("websockets"):
                raise
        finally:
            self.closed.set()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(Closed("connection closed"))
            self._waiting.clear()

    def _dispatch(self, obj: dict[str, Any]) -> None:
        if self.trace is not None:
            self.trace.append(obj)
        if "ev" in obj:
            self.events.put_nowait(obj)
            return
        future = self._waiting.pop(obj.get("re"), None)  # type: ignore[arg-type]
        if future is None:
            self.unmatched.append(obj)
        elif not future.done():
            future.set_result(obj)

    async def _incoming(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    async def send_raw(self, obj: dict[str, Any]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- requests ---------------------------------------------------------------------------

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its reply, successful or not."""
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        await self.send_raw({"op": op, "id": rid, **fields})
        return await future

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request; return the reply, or raise :class:`RequestFailed`."""
        reply = await self.request(op, **fields)
        if not reply.get("ok"):
            raise RequestFailed(reply)
        return reply

    async def login(self, user: str, password: str) -> dict[str, Any]:
        await self.call("hello", protocol=1, client="chatserver.client")
        reply = await self.call("auth", user=user, password=password)
        self.token = reply["token"]
        self.user = reply["user"]
        return reply

    async def resume(self, token: str) -> dict[str, Any]:
        await self.call("hello", protocol=1, client="chatserver.client")
        reply = await self.call("auth", token=token)
        self.token = token
        self.user = reply["user"]
        return reply

    async def next_event(self, ev: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The next event (of kind ``ev``, skipping others), or ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if ev is None or event["ev"] == ev:
                    return event


class _TcpClient(Client):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self._r = reader
        self._w = writer
        self._decoder = FrameDecoder(2**24)

    async def _incoming(self) -> Any:
        while True:
            data = await self._r.read(65536)
            if not data:
                return
            for body in self._decoder.feed(data):
                yield msgpack.unpackb(body, raw=False)

    async def send_raw(self, obj: dict[str, Any]) -> None:
        body = msgpack.packb(obj, use_bin_type=True)
        self._w.write(struct.pack(">I", len(body)) + body)
        await self._w.drain()

    async def send_bytes(self, data: bytes) -> None:
        self._w.write(data)
        await self._w.drain()

    async def close(self) -> None:
        self._w.close()
        try:
            await self._w.wait_closed()
        except (ConnectionError, OSError):
            pass
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class _WebSocketClient(Client):
    def __init__(self, ws: Any, text: bool) -> None:
        super().__init__()
        self._ws = ws
        self._text = text

    async def _incoming(self) -> Any:
        async for message in self._ws:
            if isinstance(message, str):
                yield json.loads(message)
            else:
                yield msgpack.unpackb(message, raw=False)

    async def send_raw(self, obj: dict[str, Any]) -> None:
        if self._text:
            await self._ws.send(json.dumps(obj))
        else:
            await self._ws.send(msgpack.packb(obj, use_bin_type=True))

    async def close(self) -> None:
        await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
