"""A TCP link to another node of the pool, and the publisher that sends events over every link.

:class:`PeerLink` runs the sans-I/O :class:`~chatserver.pool.protocol.PeerProtocol` over one
connection: it feeds it bytes, writes what it returns, and hands the commands of an open link to
its owner (the :class:`~chatserver.pool.node.Pool`). Events queued in one loop turn go out in one
``EVENTS`` frame.

:class:`PeerPublisher` is the rooms layer's :class:`~chatserver.rooms.changes.Publisher` in a
pool: it encodes each committed change (:func:`chatserver.pool.events.encode`) and queues it on
every open link. The node makes it before anything that publishes; the pool registers its links
in it as they open and close.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, Protocol, cast

from ..rooms.changes import Change
from ..store.db import now_ms
from ..store.messages import Message
from .events import MessageStored, PeerEvent, encode
from .protocol import ADMIT, CLOSED, Command, PeerProtocol
from .trust import Admission, Refusals

log = logging.getLogger("chatserver.pool")

HANDSHAKE_TIMEOUT_S = 5.0

# A link whose peer has not drained this much output is dropped (the peer catches up from the
# store instead of this node holding an unbounded backlog).
MAX_LINK_BACKLOG = 64 * 1024 * 1024


class LinkOwner(Protocol):
    """What a link needs of the pool it belongs to."""

    name: str
    secret: str
    admission: Admission
    refusals: Refusals

    async def admit(self, name: str) -> str | None:
        """Why a node of this name may not link here, or ``None`` if it may."""
        ...

    def tls_failed(self, address: str, exc: BaseException) -> None: ...

    def link_opened(self, link: PeerLink) -> None: ...

    def link_closed(self, link: PeerLink) -> None: ...

    def received(self, link: PeerLink, command: Command) -> None: ...


class PeerLink(asyncio.Protocol):
    """One authenticated (or authenticating) TCP link to another node.

    An acceptor's link holds a slot of the pool's :class:`~chatserver.pool.trust.Admission` until
    it is authenticated or closed; with ``tls`` it runs the server side of TLS first, inside the
    same handshake deadline (:data:`HANDSHAKE_TIMEOUT_S`), and a failed TLS handshake is reported to
    the owner (``tls_failed``).
    """

    def __init__(
        self,
        owner: LinkOwner,
        role: str,
        expect: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.pool = owner
        self.proto = PeerProtocol(role, owner.name, owner.secret, expect=expect)
        self.transport: asyncio.Transport | None = None
        self.pending: list[dict[str, Any]] = []
        self._flush_scheduled = False
        self.last_heard = time.monotonic()
        self.opened = False
        self.closed = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._tls = tls
        self._sslobj: ssl.SSLObject | None = None
        self._handshaking = True  # (TLS only) until the TLS handshake completes
        self._tls_spoke = False  # (TLS only) bytes arrived, and no failure was reported yet
        self._host: str | None = None  # set while this link holds an admission slot
        self._admitting: asyncio.Task[None] | None = None
        self._reported = False  # a failure of this link was logged and counted
        self.address = "?"
        self.frames_sent = 0  # EVENTS frames sent on this link
        # Until then (time.monotonic()), messages received here are checked against the store.
        self.trusted_after = float("inf")

    @property
    def peer(self) -> str | None:
        return self.proto.peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self.proto.role == "acceptor" and self._host is None and not self.opened:
            host = str(peer[0]) if isinstance(peer, tuple) else self.address
            if not self.pool.admission.enter(host):
                self.pool.refusals.record(
                    "too_many",
                    f"peer {self.address}: refused, too many unauthenticated peer connections"
                    " (from this address or in all)",
                )
                self.transport.abort()
                return
            self._host = host
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(HANDSHAKE_TIMEOUT_S, self._too_slow)
        if self._tls is not None and self._sslobj is None:
            # Server-side TLS in memory (ssl.SSLObject), so its failures reach the log with their
            # reason (asyncio's own TLS logs them at debug only) and the deadline covers it.
            self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._sslobj = self._tls.wrap_bio(self._tls_in, self._tls_out, server_side=True)
            return
        self._write()

    def _tls_received(self, data: bytes) -> bytes | None:
        """Decrypt ``data``; ``None`` once the TLS layer failed (reported, connection aborted)."""
        assert self._sslobj is not None and self.transport is not None
        self._tls_in.write(data)
        self._tls_spoke = not self._reported
        plain = bytearray()
        try:
            if self._handshaking:
                self._sslobj.do_handshake()
                self._handshaking = False
                self._write()  # a connector's HELLO may already wait
            while chunk := self._sslobj.read(65536):
                plain += chunk
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLError, ValueError) as exc:
            self._tls_flush()
            if self._handshaking and not self._reported:
                self.pool.tls_failed(self.address, exc)
            self._reported = True
            self._tls_spoke = False
            self.transport.abort()
            return None
        self._tls_flush()
        return bytes(plain)

    def _tls_flush(self) -> None:
        pending = self._tls_out.read()
        if pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(pending)

    def _too_slow(self) -> None:
        if not self.proto.is_open and self.transport is not None:
            self._reported = True
            self._tls_spoke = False
            what = (
                "TLS handshake" if self._sslobj is not None and self._handshaking else "handshake"
            )
            self.pool.refusals.record(
                "timeout",
                f"peer {self.address}: no {what} within {HANDSHAKE_TIMEOUT_S:.0f} s",
            )
            self.transport.abort()

    def _release(self) -> None:
        """Give back the admission slot (idempotent); the link is authenticated or gone."""
        if self._host is not None:
            self.pool.admission.leave(self._host)
            self._host = None
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        if self._sslobj is not None:
            plain = self._tls_received(data)
            if not plain:
                return
            data = plain
        commands = self.proto.receive_data(data)
        if self.proto.state == ADMIT and self._admitting is None:
            name = self.proto.peer
            assert name is not None
            self._admitting = asyncio.get_running_loop().create_task(self._admit(name))
        self._after_input(commands)

    async def _admit(self, name: str) -> None:
        try:
            refusal = await self.pool.admit(name)
        except Exception as exc:  # the registry could not be read: refuse, the peer redials
            refusal = f"cannot check node {name!r} against the registry: {exc}"
        if self.proto.state != ADMIT:
            return
        if refusal is None:
            self.proto.admit()
        else:
            self.proto.fail(refusal, "unregistered")
        self._after_input([])

    def _after_input(self, commands: list[Command]) -> None:
        if self.proto.is_open and not self.opened:
            self.opened = True
            self._release()
            self.pool.link_opened(self)
        self._write()
        for command in commands:
            self.pool.received(self, command)
        if self.proto.state == CLOSED and self.transport is not None:
            if not self.opened:
                self.pool.refusals.record(
                    self.proto.close_code or "protocol",
                    f"peer {self.peer or '?'} at {self.address}: handshake refused:"
                    f" {self.proto.close_reason}",
                )
            elif self.proto.close_reason:
                log.warning("peer %s: %s", self.peer or self.address, self.proto.close_reason)
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sslobj is not None and self._handshaking and self._tls_spoke:
            # (a connection that closes without a byte is a port probe, not a TLS failure)
            closed = "the peer closed the connection during the TLS handshake (does it trust"
            closed += " this node's certificate? its log says)"
            self.pool.tls_failed(self.address, ConnectionError(closed))
        self._release()
        if self._admitting is not None:
            self._admitting.cancel()
        self.pool.link_closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def _write(self) -> None:
        if self._sslobj is not None and self._handshaking:
            return  # written once the TLS handshake is done
        data = self.proto.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            if self._sslobj is not None:
                self._sslobj.write(data)
                data = self._tls_out.read()
            self.transport.write(data)
            if self.transport.get_write_buffer_size() > MAX_LINK_BACKLOG:
                log.warning("peer %s: not keeping up; dropping the link", self.peer)
                self.transport.abort()

    def queue(self, event: dict[str, Any]) -> None:
        self.pending.append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.pending or not self.proto.is_open:
            self.pending.clear()
            return
        events, self.pending = self.pending, []
        self.proto.send_events(events)
        self.frames_sent += 1
        self._write()

    def ping(self) -> None:
        if self.proto.is_open:
            self.proto.send_ping(now_ms())
            self._write()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class PeerPublisher:
    """Sends what this node committed to every open peer link (in the frame of this loop turn)."""

    def __init__(self) -> None:
        self.links: dict[str, PeerLink] = {}
        self.frames_sent_closed = 0  # EVENTS frames sent on links since closed

    def publish(self, change: Change) -> None:
        self.send(change)

    def publish_messages(self, messages: list[Message]) -> None:
        if not self.links:
            return
        for m in messages:
            self.send(MessageStored(m))

    def send(self, event: PeerEvent) -> None:
        if not self.links:
            return
        wire = encode(event)
        for link in self.links.values():
            if link.proto.is_open:
                link.queue(wire)

    @property
    def frames_sent(self) -> int:
        return self.frames_sent_closed + sum(link.frames_sent for link in self.links.values())
