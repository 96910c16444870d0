"""How a node lives with a PostgreSQL store that fails: bounded uses, dropped connections, one log
line per change of state.

::

    a use of a store connection (db.read(), db.write(), the asyncpg fast paths)
      │  waiting for a free connection, connecting      ── bounded by timeout_s (per host of
      │                                                    a multi-host URL)
      │  every statement until the connection is given back
      │        └── a timer: at timeout_s the connection is terminated (closed, not politely:
      │            a frozen network would hold a polite close, or the rollback, forever), so
      │            every wait on it ends at once and the pool replaces it
      ▼
    StoreUnavailable (a ChatError ``unavailable``) ◄── also a refused connection, a connection
                                                       the server or the network closed
    StoreHealth: "store unavailable: …" once, "store available again after …" once

Every connection also has TCP keepalive (and ``TCP_USER_TIMEOUT``), so an idle connection whose
peer vanished is found by the kernel instead of by the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import asyncpg
from sqlalchemy import exc as sa_exc

from ..protocol.errors import UNAVAILABLE, ChatError

log = logging.getLogger("chatserver.store")


class StoreUnavailable(ChatError):
    """The store did not answer in time, refused the connection, or the connection broke: the
    request is answered ``unavailable`` and may be retried."""

    def __init__(self, message: str = "the store is unavailable now; try again later") -> None:
        super().__init__(UNAVAILABLE, message)


# asyncpg's errors that say the server or the path to it failed, not the statement.
_ASYNCPG_UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin / crash shutdown, cannot connect now
    asyncpg.exceptions.TooManyConnectionsError,
    # No host of a multi-host URL is the primary (mid-failover, before the promotion).
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)


def unreachable(exc: BaseException) -> bool:
    """The store itself failed (down, unreachable, too slow), not one statement: retrying the
    same statement later may succeed."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, StoreUnavailable | OSError | TimeoutError):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.TimeoutError):  # no connection free in the pool in time
            return True
        if isinstance(current, _ASYNCPG_UNREACHABLE):
            return True
        if isinstance(current, asyncpg.exceptions.InterfaceError) and "closed" in str(current):
            return True
        current = current.__cause__ or getattr(current, "orig", None)
        seen += 1
    return False


def describe(exc: BaseException) -> str:
    """An exception as a log line: its type, and its message when it has one."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StoreHealth:
    """Whether the store answered the last use, with one log line per change of state."""

    def __init__(self, label: str = "store") -> None:
        self.label = label
        self.available = True
        self.down_since = 0.0
        self.failures = 0  # uses that failed since the store became unavailable
        self.outages = 0  # times it became unavailable (a metric)
        self.failed_total = 0
        self._last_ok = 0.0  # monotonic time of the last use that succeeded

    def failed(self, exc: BaseException, started: float | None = None) -> None:
        """A use that began at ``started`` (monotonic) failed. When another use succeeded since
        it began, the store is back (or never left): it is counted, and changes nothing."""
        self.failures += 1
        self.failed_total += 1
        if started is not None and started < self._last_ok:
            return
        if self.available:
            self.available = False
            self.down_since = time.monotonic()
            self.outages += 1
            log.warning(
                "%s unavailable: %s (requests that need it get `unavailable` until it answers)",
                self.label,
                describe(exc),
            )

    def succeeded(self) -> None:
        self._last_ok = time.monotonic()
        if not self.available:
            self.available = True
            log.warning(
                "%s available again after %.1f s; %d store operations failed meanwhile",
                self.label,
                time.monotonic() - self.down_since,
                self.failures,
            )
            self.failures = 0


# A deadline that fires this much late means the node itself stood still (SIGSTOP, a long
# pause): the store's answers may be waiting in the socket, unread.
STALL_S = 1.0


class Deadline:
    """A timer that terminates a connection when one use of it takes longer than its bound.

    When it fires late because the node stood still, the store was not given its time: it
    waits once more, as long again, before it terminates the connection.
    """

    def __init__(self, timeout_s: float, terminate: Callable[[], None]) -> None:
        self.expired = False
        self._terminate = terminate
        self._timeout_s = timeout_s
        self._extended = False
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + timeout_s
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        if now - self._due > STALL_S and not self._extended:
            self._extended = True
            self._due = now + self._timeout_s
            self._handle = self._loop.call_at(self._due, self._fire)
            return
        self.expired = True
        try:
            self._terminate()
        except Exception:  # already closed
            pass

    def cancel(self) -> None:
        self._handle.cancel()


class KeepaliveConnection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection whose socket has TCP keepalive (``keepalive_s`` on the class that
    :func:`keepalive_class` makes) and ``TCP_USER_TIMEOUT``."""

    keepalive_s = 10.0

    def __init__(self, protocol: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, transport, *args, **kwargs)
        set_keepalive(transport.get_extra_info("socket"), self.keepalive_s)


def keepalive_class(keepalive_s: float) -> type[KeepaliveConnection]:
    return type("KeepaliveConnection", (KeepaliveConnection,), {"keepalive_s": keepalive_s})


def set_keepalive(sock: Any, idle_s: float) -> None:
    """Probe an idle TCP connection after ``idle_s``, then every third of it; three probes
    unanswered (or data unacknowledged for twice ``idle_s``) and the kernel drops it."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: the server is on this machine
    idle = max(1, int(idle_s))
    interval = max(1, int(idle_s / 3))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(2 * idle_s * 1000)),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _terminate(conn: Any) -> None:
    """Close a pool's connection at once (a no-op when it is closed, or already gone back to the
    pool because it closed)."""
    with contextlib.suppress(asyncpg.exceptions.InterfaceError):
        if not conn.is_closed():
            conn.terminate()


def acquire_failed(
    exc: BaseException, *, timeout_s: float | None, health: StoreHealth, started: float
) -> BaseException:
    """What failing to get a connection raises. Not getting one in time (every connection busy,
    or a slow connect) is ``unavailable`` but does not mark the store down: busy is not down, and
    the uses holding the connections say whether the store answers."""
    if isinstance(exc, TimeoutError | sa_exc.TimeoutError):
        return StoreUnavailable(f"no store connection within {timeout_s:g} s; try again later")
    return as_unavailable(exc, expired=False, timeout_s=timeout_s, health=health, started=started)


def raise_failed(error: BaseException, cause: BaseException) -> NoReturn:
    """Raise ``error`` (what :meth:`BoundedPgPool._failed` made of ``cause``)."""
    if error is cause:
        raise error
    raise error from cause


class BoundedPgPool:
    """The asyncpg pool of the fast paths, with every use bounded as the module docstring says.

    It offers what the callers use of :class:`asyncpg.Pool`: ``acquire()``, ``fetch``,
    ``fetchval`` and ``execute``.
    """

    def __init__(
        self, pool: Any, timeout_s: float | None, acquire_s: float | None, health: StoreHealth
    ) -> None:
        self.pool = pool
        self.timeout_s = timeout_s  # the bound on one use, once the connection is got
        self.acquire_s = acquire_s  # the bound on getting it
        self.health = health

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        timeout = self.timeout_s
        started = time.monotonic()
        try:
            conn = await self.pool.acquire(timeout=self.acquire_s)
        except Exception as exc:
            raise_failed(
                acquire_failed(exc, timeout_s=self.acquire_s, health=self.health, started=started),
                exc,
            )
        deadline = None
        if timeout is not None:
            deadline = Deadline(timeout, lambda: _terminate(conn))
        try:
            yield conn
        except Exception as exc:
            if (deadline is not None and deadline.expired) or unreachable(exc):
                _terminate(conn)  # a broken or stuck connection is not given back
                raise_failed(self._failed(exc, deadline, started), exc)
            raise
        else:
            self.health.succeeded()
        finally:
            if deadline is not None:
                deadline.cancel()
            await self.pool.release(conn, timeout=timeout)

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        async with self.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return str(await conn.execute(query, *args))

    async def close(self) -> None:
        await self.pool.close()

    def terminate(self) -> None:
        self.pool.terminate()

    def _failed(
        self, exc: BaseException, deadline: Deadline | None, started: float
    ) -> BaseException:
        expired = deadline is not None and deadline.expired
        return as_unavailable(
            exc, expired=expired, timeout_s=self.timeout_s, health=self.health, started=started
        )


def as_unavailable(
    exc: BaseException,
    *,
    expired: bool,
    timeout_s: float | None,
    health: StoreHealth,
    started: float,
) -> BaseException:
    """What a failed use of the store (begun at ``started``, monotonic) raises:
    :class:`StoreUnavailable` when the store failed (recorded in ``health``), else ``exc``
    itself (a statement's own error)."""
    if isinstance(exc, StoreUnavailable):
        health.failed(exc, started)
        return exc
    if expired or (isinstance(exc, TimeoutError) and timeout_s is not None):
        health.failed(TimeoutError(f"no answer within {timeout_s:g} s"), started)
        return StoreUnavailable(f"the store did not answer within {timeout_s:g} s; try again later")
    if unreachable(exc):
        health.failed(exc, started)
        return StoreUnavailable()
    return exc
