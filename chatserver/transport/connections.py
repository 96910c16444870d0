"""The open client connections of a node: admission, counts, the input they hold, and the
shared end-of-turn flush.

Admission, before anything is buffered for a connection (docs/security.md):

- at accept: refused while the node is stopping; when the open client connections would leave
  fewer than ``limits.fd_reserve`` file descriptors (at most a quarter) of the process's limit
  for the node's own work (store, peers, management port); and when
  ``limits.max_unauthenticated_per_address`` connections from the same address (an IPv6
  address's /64) have not authenticated yet;
- at authentication: refused when the user already has ``limits.max_connections_per_user``
  connections on this node.

A refused connection is told why (``bye`` with the reason; a WebSocket handshake gets an HTTP
error) and closed.

Closing lingers (:meth:`Connection._close_transport`): the node sends what it has, then a FIN,
and drops whatever the client still sends until it closes too (or briefly), so the client reads
the ``bye`` instead of a reset. A lingering connection is over for the node (not in ``open``,
not counted per address or user) but still holds a file descriptor; while
``max_unauthenticated_per_address`` of them from one address linger, another connection from
there is dropped without a word.

Input: ``buffered_input`` is the node-wide total of bytes held for frames not yet complete;
each connection reports its share after every read (:meth:`Connection.input_held`).

Output batching: everything queued for a connection during one event-loop turn goes out in one
``transport.write``; :meth:`Connections.schedule_flush` flushes every connection written to in a
turn from one ``call_soon`` callback, so a message fanned out to 1,000 subscribers schedules one
callback, not 1,000.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Protocol

from ..config import LimitsConfig
from ..protocol.events import Outgoing


class Connection(Protocol):
    """What the registry needs of a client connection (``connection.Connection``; typed here as
    a protocol so this module does not import that one)."""

    address: str  # the source address as counted (IPv6 by its /64)
    transport_name: str
    user_id: int | None

    def flush(self) -> None: ...

    def abort(self) -> None: ...

    def send(self, item: Outgoing) -> None: ...

    def close(self, reason: str) -> None: ...


# Bye reasons of refused connections (docs/protocol.md, section 7.3).
TOO_MANY_CONNECTIONS = "too_many_connections"
OVERLOADED = "overloaded"
SHUTTING_DOWN = "shutting_down"

# The values a frame may hold before authentication: hello, auth and ping are flat maps.
UNAUTHENTICATED_MAX_VALUES = 256

# How often, at most, the node counts its open file descriptors (only when near the limit).
FD_SAMPLE_INTERVAL_S = 1.0


def address_key(peer: object) -> str:
    """What the per-address limit counts: the IP address, or an IPv6 address's /64 network (one
    host is usually given a whole /64); an IPv4-mapped IPv6 address counts as the IPv4 one."""
    if not isinstance(peer, tuple) or not peer:
        return str(peer)
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return str(peer[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _fd_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc
        return None


class Connections:
    def __init__(self, limits: LimitsConfig, websocket_origins: Sequence[str] = ()) -> None:
        self.limits = limits
        self.websocket_origins = tuple(websocket_origins)
        # Ports of this node's client HTTP listener, whose pages (the web client) may open a
        # WebSocket on this node's host (set once that listener is up).
        self.page_ports: tuple[int, ...] = ()
        self.open: set[Connection] = set()
        self.by_transport: Counter[str] = Counter()
        self.authenticated_users = 0
        self.accepting = True
        # Admission counts: unauthenticated connections by address, connections by user, refused
        # connections still lingering by address; and refusals by reason (for the metrics).
        self.unauthenticated: Counter[str] = Counter()
        self.by_user: Counter[int] = Counter()
        self.lingering: set[Connection] = set()
        self._lingering_from: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        # Bytes held for frames not yet complete, on every connection.
        self.buffered_input = 0
        self._fd_limit = _fd_limit()
        self._other_fds = _open_fds() or 0  # descriptors that are not client connections
        self._fds_sampled = -FD_SAMPLE_INTERVAL_S  # when, and at how many clients
        self._clients_sampled = 0
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

    # -- admission ------------------------------------------------------------------------------

    def opened(self, conn: Connection) -> str | None:
        """Admit a connection just accepted, or return why not (the connection says it and
        closes; ``""``: close it without a word)."""
        limit = self.limits.max_unauthenticated_per_address
        address = conn.address
        if not self.accepting:
            reason = SHUTTING_DOWN
        elif self._short_of_fds():
            reason = OVERLOADED
        elif limit and self.unauthenticated[address] >= limit:
            reason = TOO_MANY_CONNECTIONS
        else:
            self.open.add(conn)
            self.by_transport[conn.transport_name] += 1
            self.unauthenticated[address] += 1
            return None
        self.refused[reason] += 1
        if limit and self._lingering_from[address] >= limit:
            return ""  # refusals from this address keep piling up: no more words for it
        return reason

    def authenticated(self, conn: Connection, user_id: int) -> str | None:
        """Count an authenticated connection, or return why it may not stay."""
        limit = self.limits.max_connections_per_user
        if conn not in self.open:
            return SHUTTING_DOWN
        if limit and self.by_user[user_id] >= limit:
            self.refused[TOO_MANY_CONNECTIONS] += 1
            return TOO_MANY_CONNECTIONS
        self._forget_address(conn.address)
        self.by_user[user_id] += 1
        conn.user_id = user_id
        self.authenticated_users += 1
        return None

    def linger(self, conn: Connection) -> None:
        """``conn`` is closing but its socket stays open a moment (see the module docstring)."""
        if conn not in self.lingering:
            self.lingering.add(conn)
            self._lingering_from[conn.address] += 1

    def gone(self, conn: Connection) -> None:
        """``conn``'s socket is closed."""
        if conn in self.lingering:
            self.lingering.discard(conn)
            self._lingering_from[conn.address] -= 1
            if not self._lingering_from[conn.address]:
                del self._lingering_from[conn.address]

    def stop_accepting(self) -> None:
        """The node is stopping: refuse new connections, and close the lingering ones now."""
        self.accepting = False
        for conn in list(self.lingering):
            conn.abort()

    def closed(self, conn: Connection) -> None:
        """``conn`` is over for the node (its socket may still linger)."""
        if conn not in self.open:
            return
        self.open.discard(conn)
        self.by_transport[conn.transport_name] -= 1
        if conn.user_id is None:
            self._forget_address(conn.address)
        else:
            self.authenticated_users -= 1
            self.by_user[conn.user_id] -= 1
            if not self.by_user[conn.user_id]:
                del self.by_user[conn.user_id]

    def _forget_address(self, address: str) -> None:
        self.unauthenticated[address] -= 1
        if not self.unauthenticated[address]:
            del self.unauthenticated[address]

    def _short_of_fds(self) -> bool:
        """Would one more client connection leave fewer than ``fd_reserve`` descriptors?

        The node counts its client connections itself, and the other descriptors (store, peers,
        management port, listeners) only near the limit: when a second has passed since it last
        counted them, or a quarter of the reserve more clients were admitted since (so at most a
        few times while the clients fill the last two reserves)."""
        if self._fd_limit is None:
            return False
        reserve = min(self.limits.fd_reserve, self._fd_limit // 4)
        clients = len(self.open) + len(self.lingering) + 1
        if clients + self._other_fds + 2 * reserve < self._fd_limit:
            return False
        now = time.monotonic()
        if (
            now - self._fds_sampled >= FD_SAMPLE_INTERVAL_S
            or clients - self._clients_sampled >= max(1, reserve // 4)
        ):
            self._fds_sampled = now
            self._clients_sampled = clients
            total = _open_fds()
            if total is not None:
                # The accepted socket is open already; it is one of the clients.
                self._other_fds = max(0, total - clients)
        return clients + self._other_fds + reserve > self._fd_limit

    # -- input ----------------------------------------------------------------------------------

    def over_input_budget(self) -> bool:
        return self.buffered_input > self.limits.max_buffered_input_bytes

    def __len__(self) -> int:
        return len(self.open)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.open))
