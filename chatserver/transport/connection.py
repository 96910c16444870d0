"""The part every client transport shares: output batching, backpressure, timers, closing.

Output: everything queued for a connection during one event-loop turn goes out in one
``transport.write`` of the joined frames. The node flushes every connection written to in a turn
from one ``call_soon`` callback (:meth:`Connections.schedule_flush`, below, which also counts
the node's open connections), so a message fanned out to 1,000 subscribers schedules one
callback, not 1,000. Fan-out hands every subscriber the same pre-encoded bytes, so a delivery
costs an append here and one system call per turn.

Backpressure: when the output the socket would not take (the transport's buffer) passes
``output_buffer_bytes``, the session is told to fall behind: every joined room gets ``resync`` and
live events stop. If it has not drained below half the limit within ``DRAIN_TIMEOUT_S``, or its
backlog grows by another ``output_buffer_bytes`` meanwhile, or one loop turn queues more than four
times the limit, the connection is aborted.
When the transport asks us to pause writing, we stop reading requests too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from ..config import LimitsConfig
from ..protocol.events import Bye, Outgoing
from ..services import Services
from ..sessions import Session

if TYPE_CHECKING:
    from ..store.users import User

log = logging.getLogger("chatserver.connection")

# A connection that fell behind and has not drained its output within this time is closed.
DRAIN_TIMEOUT_S = 30.0


class Connections:
    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.open: set[Connection] = set()
        self.by_transport: Counter[str] = Counter()
        self.authenticated_users = 0
        self.accepting = True
        self._dirty: list[Connection] = []
        self._flush_scheduled = False

    def schedule_flush(self, conn: Connection) -> None:
        """Flush ``conn`` at the end of this loop turn, with every other connection written to."""
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    def opened(self, conn: Connection) -> None:
        if not self.accepting:
            conn.close("shutting_down")
            return
        self.open.add(conn)
        self.by_transport[conn.transport_name] += 1

    def closed(self, conn: Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.by_transport[conn.transport_name] -= 1
            if conn.session.user is not None:
                self.authenticated_users -= 1

    def authenticated(self, conn: Connection) -> None:
        self.authenticated_users += 1

    def __len__(self) -> int:
        return len(self.open)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.open))


class Connection(asyncio.Protocol):
    transport_name = "?"
    fmt = 0

    def __init__(self, connections: Connections, services: Services) -> None:
        self.connections = connections
        self.limits = connections.limits
        self.session = Session(services, self)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._out: list[bytes] = []
        self._out_size = 0
        self._max_turn_bytes = 4 * self.limits.output_buffer_bytes
        self._flush_scheduled = False
        self._reading_paused = False
        self._writing_paused = False
        self._behind = False
        self._behind_backlog = 0
        self._drain_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._auth_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        limit = self.limits.output_buffer_bytes
        transport.set_write_buffer_limits(high=limit // 4, low=limit // 16)
        loop = asyncio.get_running_loop()
        self._auth_timer = loop.call_later(self.limits.auth_timeout_s, self._auth_expired)
        self.connections.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        for timer in (self._auth_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._out.clear()
        self.session.close()
        self.connections.closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._check_backlog()
        self._update_reading()

    # -- reading ----------------------------------------------------------------------------

    def pause_reading(self) -> None:
        self._reading_paused = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        if self.transport is None or self._closing:
            return
        if self._reading_paused or self._writing_paused:
            if self.transport.is_reading():
                self.transport.pause_reading()
        elif not self.transport.is_reading():
            self.transport.resume_reading()

    def deliver(self, obj: dict[str, Any]) -> None:
        """One decoded map from the client."""
        self.session.receive(obj)

    # -- writing ----------------------------------------------------------------------------

    def send(self, item: Outgoing) -> None:
        self.write(item.encoded(self.fmt))

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._out.append(data)
        self._out_size += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.connections.schedule_flush(self)
        elif self._out_size > self._max_turn_bytes:
            # One loop turn queued more than a slow client may ever hold: protect the node.
            log.info("%s %s: closing, output limit exceeded", self.transport_name, self.peer)
            self.abort()

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._closing or self.transport is None or not self._out:
            return
        out, self._out = self._out, []
        self._out_size = 0
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._check_backlog()

    def _check_backlog(self) -> None:
        """What the socket did not take stays in the transport; bound it."""
        assert self.transport is not None
        backlog = self.transport.get_write_buffer_size()
        limit = self.limits.output_buffer_bytes
        if not self._behind:
            if backlog > limit:
                self._behind = True
                self._behind_backlog = backlog
                self.session.fall_behind()
                self._drain_timer = asyncio.get_running_loop().call_later(
                    DRAIN_TIMEOUT_S, self._drain_expired
                )
        elif backlog > self._behind_backlog + limit:
            log.info("%s %s: closing, output keeps growing", self.transport_name, self.peer)
            self.abort()
        elif backlog < limit // 2:
            self._behind = False
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if self._behind and not self._closing and self.transport is not None:
            self._check_backlog()  # it may have drained without a write or a low-water mark
        if self._behind and not self._closing:
            log.info("%s %s: closing, output did not drain", self.transport_name, self.peer)
            self.abort()

    # -- session hooks ----------------------------------------------------------------------

    def authenticated(self, user: User) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        self.connections.authenticated(self)

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if self.session.user is None:
            self.close("auth_timeout")

    # -- closing ----------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Say ``bye`` with ``reason``, flush, and close."""
        if self._closing or self.transport is None:
            return
        self.send(Outgoing.event(Bye(reason)))
        self._end_stream(reason)
        self.flush()
        self._close_transport()

    def _end_stream(self, reason: str) -> None:
        """Anything the transport's own protocol sends before closing (a WebSocket close frame)."""

    def _close_transport(self) -> None:
        self._closing = True
        assert self.transport is not None
        self.transport.close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()
