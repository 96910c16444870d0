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

Input (docs/security.md): before authentication a frame may hold at most
``limits.max_unauthenticated_frame_bytes`` bytes and ``UNAUTHENTICATED_MAX_VALUES`` values; the
connection raises both to ``max_frame_bytes`` and ``max_frame_values`` when the session tells it
the user authenticated. A frame (a WebSocket message) must complete within
``limits.frame_timeout_s`` of its first byte while the node is reading (``bye``
``frame_timeout``), and a connection whose unfinished frame grows while the node-wide total of
such bytes is above ``limits.max_buffered_input_bytes`` is closed (``bye`` ``overloaded``).
A connection the node refuses (:mod:`.connections`) gets its reason, then a lingering close.

Closing (:meth:`Connection._close_transport`) lingers on TCP: a FIN after the output, then the
client's input is read and dropped until it closes or ``LINGER_S`` passes. Closing at once
with input unread would make the kernel reset the connection, and the client could lose the
``bye`` it was sent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Any, cast

from ..logs import CONNECTIONS_LOGGER
from ..protocol.events import Bye, Outgoing
from ..services import Services
from ..sessions import Session
from .connections import (
    OVERLOADED,
    SHUTTING_DOWN,
    UNAUTHENTICATED_MAX_VALUES,
    Connections,
    address_key,
)

if TYPE_CHECKING:
    from ..store.users import User

log = logging.getLogger("chatserver.connection")
# One line per connection opened and closed, when [log] connections is on (chatserver/logs.py).
conn_log = logging.getLogger(CONNECTIONS_LOGGER)
_connection_ids = itertools.count(1)

# A connection that fell behind and has not drained its output within this time is closed.
DRAIN_TIMEOUT_S = 30.0
# A closed connection's socket stays open at most this long after the node's FIN (until the
# client closes too), reading and dropping input; a refused WebSocket waits this long at most
# for its handshake.
LINGER_S = 2.0
FRAME_TIMEOUT = "frame_timeout"


class Connection(asyncio.Protocol):
    transport_name = "?"
    fmt = 0

    def __init__(self, connections: Connections, services: Services) -> None:
        self.id = next(_connection_ids)  # in log lines (chatserver/logs.py)
        self._opened_at = 0.0
        self._close_reason = ""
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
        # Admission (kept by Connections): the address counted, and the user once counted.
        self.address = "?"
        self.user_id: int | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._released = False
        # Input bounds: the unauthenticated ones until the session authenticates.
        limits = self.limits
        if limits.max_unauthenticated_frame_bytes < limits.max_frame_bytes:
            self.max_frame_bytes = limits.max_unauthenticated_frame_bytes
            self.frame_setting = "max_unauthenticated_frame_bytes"
        else:
            self.max_frame_bytes = limits.max_frame_bytes
            self.frame_setting = "max_frame_bytes"
        self.max_values = min(UNAUTHENTICATED_MAX_VALUES, limits.max_frame_values)
        # Unfinished input: bytes held (counted in Connections.buffered_input), since when.
        self._held = 0
        self._partial_since: float | None = None
        self._frame_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.address = address_key(peer)
        limit = self.limits.output_buffer_bytes
        transport.set_write_buffer_limits(high=limit // 4, low=limit // 16)
        refusal = self.connections.opened(self)
        if refusal is None:
            loop = asyncio.get_running_loop()
            self._auth_timer = loop.call_later(self.limits.auth_timeout_s, self._auth_expired)
            self._opened_at = loop.time()
            if conn_log.isEnabledFor(logging.INFO):
                conn_log.info(
                    "%s %s: connection %d open",
                    self.transport_name,
                    self.peer,
                    self.id,
                    extra={
                        "event": "connection_open",
                        "conn": self.id,
                        "transport": self.transport_name,
                        "peer": self.peer,
                    },
                )
        elif refusal == SHUTTING_DOWN:
            self.close(refusal)
        elif refusal:
            log.info("%s %s: refused, %s", self.transport_name, self.peer, refusal)
            self.refuse(refusal)
        else:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._release()
        self.connections.gone(self)

    def _release(self) -> None:
        """The connection is over for the node (its socket may still linger)."""
        if self._released:
            return
        self._released = True
        for timer in (self._auth_timer, self._drain_timer, self._frame_timer):
            if timer is not None:
                timer.cancel()
        self._out.clear()
        self.connections.buffered_input -= self._held
        self._held = 0
        self._drop_input()
        self.session.close()
        self.connections.closed(self)
        if self._opened_at and conn_log.isEnabledFor(logging.INFO):
            duration = asyncio.get_running_loop().time() - self._opened_at
            reason = self._close_reason or "closed"
            conn_log.info(
                "%s %s: connection %d closed (%s) after %.1f s, user %s",
                self.transport_name,
                self.peer,
                self.id,
                reason,
                duration,
                self.user_id,
                extra={
                    "event": "connection_close",
                    "conn": self.id,
                    "transport": self.transport_name,
                    "peer": self.peer,
                    "user": self.user_id,
                    "reason": reason,
                    "duration_s": round(duration, 3),
                },
            )

    def _drop_input(self) -> None:
        """Let go of any input held for an unfinished message (the transport's own buffers), so a
        closed connection holds no memory until the cyclic collector finds it."""

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

    def input_held(self, held: int, completed: bool) -> None:
        """After a read: ``held`` bytes wait for a frame to complete (at least 1 while one is
        under way); ``completed``: a frame completed during this read (so any rest began in it).
        """
        change = held - self._held
        if change:
            self._held = held
            self.connections.buffered_input += change
        if not held:
            self._partial_since = None
            return
        if completed or self._partial_since is None:
            loop = asyncio.get_running_loop()
            self._partial_since = loop.time()
            if self._frame_timer is None:
                self._frame_timer = loop.call_later(
                    self.limits.frame_timeout_s, self._frame_deadline
                )
        if change > 0 and self.connections.over_input_budget():
            log.info(
                "%s %s: closing, unfinished input on the node passed %d bytes",
                self.transport_name,
                self.peer,
                self.limits.max_buffered_input_bytes,
            )
            self.connections.refused[OVERLOADED] += 1
            self.close(OVERLOADED)

    def _frame_deadline(self) -> None:
        self._frame_timer = None
        if self._closing or self._partial_since is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._reading_paused or self._writing_paused:
            self._partial_since = now  # the node stopped reading, not the client
        timeout = self.limits.frame_timeout_s
        left = self._partial_since + timeout - now
        if left > 0:
            self._frame_timer = loop.call_later(left, self._frame_deadline)
            return
        log.info(
            "%s %s: closing, a frame did not complete within %g s",
            self.transport_name,
            self.peer,
            timeout,
        )
        self.connections.refused[FRAME_TIMEOUT] += 1
        self.close(FRAME_TIMEOUT)

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
        refusal = self.connections.authenticated(self, user.id)
        if refusal is not None:
            log.info("%s %s: refused user %d, %s", self.transport_name, self.peer, user.id, refusal)
            self.close(refusal)
            return
        self.max_frame_bytes = self.limits.max_frame_bytes
        self.frame_setting = "max_frame_bytes"
        self.max_values = self.limits.max_frame_values
        self._limits_raised()

    def _limits_raised(self) -> None:
        """Apply ``max_frame_bytes`` to the transport's framing (after authentication)."""

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if self.session.user is None:
            self.close("auth_timeout")

    # -- closing ----------------------------------------------------------------------------

    def refuse(self, reason: str) -> None:
        """Say ``bye`` with ``reason`` (nothing the client sends is read) and close."""
        self.send(Outgoing.event(Bye(reason)))
        self.flush()
        self._close_transport()

    def close(self, reason: str) -> None:
        """Say ``bye`` with ``reason``, flush, and close."""
        if self._closing or self.transport is None:
            return
        self._close_reason = reason
        self.send(Outgoing.event(Bye(reason)))
        self._end_stream(reason)
        self.flush()
        self._close_transport()

    def _end_stream(self, reason: str) -> None:
        """Anything the transport's own protocol sends before closing (a WebSocket close frame)."""

    def _close_transport(self) -> None:
        """Close after the output; on TCP (not TLS) lingering: a FIN, then read and drop the
        client's input until it closes or ``LINGER_S`` passes (see the module docstring)."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._closing = True
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return
        if not (self.connections.accepting and transport.can_write_eof()):
            transport.close()
            return
        self.connections.linger(self)
        transport.write_eof()
        if not transport.is_reading():
            transport.resume_reading()
        loop = asyncio.get_running_loop()
        self._linger_timer = loop.call_later(LINGER_S, transport.close)
        loop.call_soon(self._release)  # as soon as a plain close would have

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()
