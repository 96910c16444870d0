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
import os
import struct
import time
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
        if self.closed.is_set():
            raise Closed("connection closed")
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            await self.send_raw({"op": op, "id": rid, **fields})
        except (ConnectionError, OSError) as exc:
            self._waiting.pop(rid, None)
            raise Closed(f"connection closed: {exc}") from None
        if self.closed.is_set() and not future.done():  # closed while sending
            self._waiting.pop(rid, None)
            raise Closed("connection closed")
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

    async def upload(self, http: str, room: int, source: Any, **options: Any) -> dict[str, Any]:
        """Upload a file (bytes or a path) into ``room`` over the node's HTTP listener
        (``http``: ``http://host:port``), with this session's token; see
        :func:`chatserver.client_files.upload`."""
        from . import client_files

        assert self.token is not None, "sign in first"
        return await client_files.upload(http, self.token, room, source, **options)

    async def download(self, http: str, file_id: int, dest: Any = None, **options: Any) -> Any:
        """A file's bytes (or, with ``dest``, the path written); see
        :func:`chatserver.client_files.download`."""
        from . import client_files

        assert self.token is not None, "sign in first"
        return await client_files.download(http, self.token, file_id, dest, **options)

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


class PoolClient:
    """A client that outlives its node: the failover client for a pool.

    It logs in once, then keeps a connection to some active node. When the connection drops (the
    node died, was drained, or said ``bye``) it connects to another node — first the active
    addresses the last ``hello`` listed, then the ones it was given — resumes with its token,
    rejoins each room with ``since`` = the last ``seq`` it delivered, and re-sends every post not
    yet acknowledged with the same ``cid`` (the server stores each ``cid`` once).

    :attr:`events` carries each room's ``message`` events exactly once and in ``seq`` order across
    failovers (messages a rejoin returns are queued as events too), and every other event.

        client = await PoolClient.connect([("127.0.0.1", 5041), ("127.0.0.2", 5041)], "alice", pw)
        await client.join(1)
        await client.post(1, "hello")
        event = await client.next_event("message")
    """

    def __init__(
        self,
        addresses: list[tuple[str, int]],
        user: str,
        password: str,
        *,
        connect_timeout: float = 3.0,
        max_backoff: float = 1.0,
    ) -> None:
        if not addresses:
            raise ValueError("PoolClient needs at least one address")
        self.addresses = list(addresses)
        self.active: list[tuple[str, int]] = []
        self._user = user
        self._password = password
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.token: str | None = None
        self.user: dict[str, Any] | None = None
        self.client: Client | None = None
        self.address: tuple[str, int] | None = None
        self.node: str | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.last_seq: dict[int, int] = {}
        self.rooms: set[int] = set()
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closing = False
        self._cids = itertools.count(1)
        self._prefix = os.urandom(6).hex()
        # Observations: seconds from losing a node to having rejoined every room, per failover.
        self.failovers: list[float] = []
        self.nodes_used: list[str] = []
        self.duplicates_dropped = 0
        self.retried_posts = 0

    @classmethod
    async def connect(
        cls, addresses: list[tuple[str, int]], user: str, password: str, **kwargs: Any
    ) -> PoolClient:
        client = cls(addresses, user, password, **kwargs)
        await client._connect_any(avoid=None)
        client._supervisor = asyncio.get_running_loop().create_task(client._supervise())
        return client

    # -- connecting -------------------------------------------------------------------------

    def _candidates(self, avoid: tuple[str, int] | None) -> list[tuple[str, int]]:
        ordered: list[tuple[str, int]] = []
        for address in [*self.active, *self.addresses]:
            if address not in ordered:
                ordered.append(address)
        if avoid in ordered and len(ordered) > 1:
            ordered.remove(avoid)
            ordered.append(avoid)  # the lost node last: it may be back, but try others first
        return ordered

    async def _connect_any(self, avoid: tuple[str, int] | None) -> None:
        delay = 0.05
        while not self._closing:
            for address in self._candidates(avoid):
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        await self._open(address)
                    return
                except (OSError, TimeoutError, Closed, RequestFailed, asyncio.IncompleteReadError):
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        raise Closed("client closed")

    async def _open(self, address: tuple[str, int]) -> None:
        client = await Client.connect_tcp(*address)
        try:
            hello = await client.request("hello", protocol=1, client="chatserver.PoolClient")
            if not hello.get("ok"):
                self._learn(hello.get("active"))
                raise RequestFailed(hello)
            self._learn((hello.get("pool") or {}).get("active"))
            auth = None
            if self.token is not None:
                reply = await client.request("auth", token=self.token)
                if reply.get("ok"):
                    auth = reply
                elif (reply.get("error") or {}).get("code") == "unauthenticated":
                    self.token = None  # revoked or expired: sign in with the password again
                else:
                    raise RequestFailed(reply)
            if auth is None:
                auth = await client.call("auth", user=self._user, password=self._password)
                self.token = auth["token"]
            self.user = auth["user"]
            client.token = self.token
            for room in sorted(self.rooms):
                await self._rejoin(client, room)
        except BaseException:
            await client.close()
            raise
        self.client, self.address, self.node = client, address, hello.get("node")
        self.nodes_used.append(str(self.node))
        self._pump = asyncio.get_running_loop().create_task(self._pump_events(client))
        self._ready.set()

    def _learn(self, active: Any) -> None:
        if not isinstance(active, list):
            return
        found = []
        for item in active:
            text = item.get("tcp") if isinstance(item, dict) else None
            if isinstance(text, str) and ":" in text:
                host, _, port = text.rpartition(":")
                found.append((host.strip("[]"), int(port)))
        if found:
            self.active = found

    async def _rejoin(self, client: Client, room: int) -> None:
        reply = await client.request("join", room=room, since=self.last_seq.get(room, 0))
        if not reply.get("ok"):
            self.rooms.discard(room)
            self.events.put_nowait({"ev": "room.removed", "room": room, "reason": "rejoin"})
            return
        for message in reply["messages"]:
            self._message({"ev": "message", **message})
        self.last_seq[room] = max(self.last_seq.get(room, 0), reply["last_seq"])

    async def _rejoin_quietly(self, client: Client, room: int) -> None:
        """Rejoin after a ``resync``; if the connection is lost meanwhile, failover rejoins."""
        try:
            await self._attempt_rejoin(client, room)
        except (Closed, ConnectionError, OSError, RuntimeError):
            pass

    async def _attempt_rejoin(self, client: Client, room: int) -> None:
        if client.closed.is_set():
            raise Closed("connection closed")
        await self._rejoin(client, room)

    async def _supervise(self) -> None:
        while not self._closing:
            client = self.client
            assert client is not None
            await client.closed.wait()
            if self._closing:
                return
            lost = time.monotonic()
            self._ready.clear()
            if self._pump is not None:
                await asyncio.gather(self._pump, return_exceptions=True)
            await client.close()
            try:
                await self._connect_any(avoid=self.address)
            except Closed:
                return
            self.failovers.append(time.monotonic() - lost)

    # -- events -----------------------------------------------------------------------------

    async def _pump_events(self, client: Client) -> None:
        while True:
            get = asyncio.ensure_future(client.events.get())
            closed = asyncio.ensure_future(client.closed.wait())
            await asyncio.wait([get, closed], return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                closed.cancel()
                while not client.events.empty():  # what arrived before the close still counts
                    self._event(client, client.events.get_nowait())
                return
            closed.cancel()
            self._event(client, get.result())

    def _event(self, client: Client, event: dict[str, Any]) -> None:
        kind = event.get("ev")
        if kind == "message":
            self._message(event)
        elif kind == "resync":
            room = event["room"]
            if room in self.rooms:
                asyncio.get_running_loop().create_task(self._rejoin_quietly(client, room))
        elif kind == "room.removed":
            self.rooms.discard(event["room"])
            self.events.put_nowait(event)
        elif kind not in ("bye", "moved"):
            self.events.put_nowait(event)

    def _message(self, event: dict[str, Any]) -> None:
        room, seq = event["room"], event["seq"]
        if seq <= self.last_seq.get(room, 0):
            self.duplicates_dropped += 1
            return
        self.last_seq[room] = seq
        self.events.put_nowait(event)

    async def next_event(self, ev: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if ev is None or event["ev"] == ev:
                    return event

    # -- requests ---------------------------------------------------------------------------

    @staticmethod
    async def _attempt(client: Client, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """One try on ``client``: its reply, or :class:`Closed` if the connection ends first."""
        if client.closed.is_set():
            raise Closed("connection closed")
        request = asyncio.ensure_future(client.request(op, **fields))
        closed = asyncio.ensure_future(client.closed.wait())
        try:
            await asyncio.wait([request, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not request.done():
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
            raise Closed("connection closed")
        try:
            return request.result()
        except (ConnectionError, OSError, RuntimeError) as exc:  # uvloop: closed transport
            raise Closed(str(exc)) from None

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request on the current connection, again on the next one if it is lost."""
        while True:
            await self._ready.wait()
            client = self.client
            assert client is not None
            try:
                reply = await self._attempt(client, op, fields)
            except Closed:
                await client.closed.wait()
                continue
            error = reply.get("error") or {}
            if not reply.get("ok") and error.get("code") == "unavailable":
                await asyncio.sleep(0.1)  # the node is stopping; the next connection retries
                continue
            return reply

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = await self.request(op, **fields)
        if not reply.get("ok"):
            raise RequestFailed(reply)
        return reply

    async def join(self, room: int, since: int | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"room": room}
        if since is not None:
            fields["since"] = since
        reply = await self.call("join", **fields)
        self.rooms.add(room)
        self.last_seq[room] = max(self.last_seq.get(room, 0), reply["last_seq"])
        return reply

    async def leave(self, room: int) -> None:
        self.rooms.discard(room)
        await self.call("leave", room=room)

    async def post(self, room: int, text: str, cid: str | None = None) -> dict[str, Any]:
        """Post and wait for the acknowledgement, across failovers (same ``cid`` each time)."""
        cid = cid or f"{self._prefix}-{next(self._cids)}"
        attempts = 0
        while True:
            attempts += 1
            if attempts > 1:
                self.retried_posts += 1
            await self._ready.wait()
            client = self.client
            assert client is not None
            try:
                reply = await self._attempt(
                    client, "post", {"room": room, "text": text, "cid": cid}
                )
            except Closed:
                await client.closed.wait()
                continue
            error = reply.get("error") or {}
            if reply.get("ok"):
                return reply
            if error.get("code") == "unavailable":
                await asyncio.sleep(0.1)
                continue
            raise RequestFailed(reply)

    async def close(self) -> None:
        self._closing = True
        self._ready.set()
        if self.client is not None:
            await self.client.close()
        for task in (self._supervisor, self._pump):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
