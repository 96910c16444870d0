"""The content store's connection: one SQLAlchemy async engine per node, for either dialect.

- SQLite (the embedded default) through aiosqlite, in WAL mode with ``synchronous=FULL`` so a
  committed transaction survives power loss. Write transactions begin ``IMMEDIATE`` so two writers
  queue on the lock instead of failing to upgrade a read lock.
- PostgreSQL through asyncpg. The group-commit fast path also keeps a small asyncpg pool of its own
  (:meth:`Database.pg_pool`), for statements SQLAlchemy cannot express as cheaply. With
  ``timeout_s`` (a node's ``database.timeout_s``) every use of a connection of either pool is
  bounded, a stuck one is dropped, and a store that fails raises :class:`StoreUnavailable`
  (:mod:`chatserver.store.health`); every connection has TCP keepalive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, event, literal, literal_column
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .connect import connect
from .dsn import StoreUrl, parse
from .health import (
    BoundedPgPool,
    Deadline,
    StoreHealth,
    StoreUnavailable,
    acquire_failed,
    as_unavailable,
    keepalive_class,
    raise_failed,
    unreachable,
)

__all__ = ["Database", "StoreUnavailable", "now_ms"]

log = logging.getLogger(__name__)

# How long closing the asyncpg pool may wait for its connections before it drops them.
PG_POOL_CLOSE_TIMEOUT_S = 10.0


def now_ms() -> int:
    return int(time.time() * 1000)


# The escape character of :func:`contains_pattern`'s patterns: pass ``escape=LIKE_ESCAPE`` to
# ``like`` / ``ilike``.
LIKE_ESCAPE = "\\"


def contains_pattern(text: str) -> str:
    """A LIKE pattern matching values that contain ``text`` literally: its ``%``, ``_`` and
    ``\\`` are escaped (with :data:`LIKE_ESCAPE`), so ``_`` matches an underscore, not any
    character, on either dialect."""
    for special in (LIKE_ESCAPE, "%", "_"):
        text = text.replace(special, LIKE_ESCAPE + special)
    return f"%{text}%"


def dialect_of(url: str) -> str:
    return parse(url).dialect


def sqlite_path(url: str) -> Path | None:
    database = parse(url).database
    return Path(database) if database is not None and parse(url).dialect == "sqlite" else None


# The store's clock in epoch ms, read inside a statement (PostgreSQL): times that several nodes
# compare (message times, session expiry) come from one clock, whatever the nodes' clocks say.
PG_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


class Database:
    """The store. ``timeout_s`` bounds each use of a PostgreSQL connection (None: unbounded, for
    the command-line tools); ``keepalive_s`` is the TCP keepalive of every connection."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        timeout_s: float | None = None,
        keepalive_s: float = 10.0,
    ) -> None:
        self.url = url
        # Raises UrlError (a ValueError) with the reason for a URL that cannot be used.
        self.target: StoreUrl = parse(url)
        self.dialect = self.target.dialect
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self.health = StoreHealth()
        self._pg_pool: BoundedPgPool | None = None
        self._pg_pool_made: asyncio.Task[None] | None = None
        self._pool_size = pool_size
        if self.dialect == "sqlite":
            path = sqlite_path(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(self.target.engine_url())
            _configure_sqlite(self.engine)
        else:
            self.engine = self._pg_engine()

    def _pg_engine(self) -> AsyncEngine:
        # Hosts, ports and target_session_attrs are the asyncpg pool's too (dsn.py).
        engine = create_async_engine(
            self.target.engine_url(),
            connect_args=self._connect_args(self.target.connect_args()),
            # Up to twice pool_size connections, all kept once made: with an overflow, every
            # connection past pool_size was closed when given back, and a burst of requests
            # (clients reconnecting after a restart, 50 uploads starting) made and dropped
            # connections over and over, ~10 ms of this process's CPU each.
            pool_size=2 * self._pool_size,
            max_overflow=0,
            pool_timeout=self._acquire_s() or 30,
        )
        _configure_postgres(engine)
        return engine

    def _connect_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """``args`` (the URL's) with the connect timeout (unless the URL sets one) and the
        keepalive connection class, for both pools."""
        return {
            "timeout": self.timeout_s if self.timeout_s is not None else 60,
            "connection_class": keepalive_class(self.keepalive_s),
            **args,
        }

    def _acquire_s(self) -> float | None:
        """The bound on getting a connection: ``timeout_s`` for each host of the URL (a
        multi-host URL's hosts are tried in turn, each within its limit: store/connect.py)."""
        if self.timeout_s is None:
            return None
        return self.timeout_s * max(1, len(self.target.hosts))

    @property
    def use_bound_s(self) -> float | None:
        """The longest one use can take on PostgreSQL: getting the connection, then using it
        (None: unbounded)."""
        acquire = self._acquire_s()
        if acquire is None or self.timeout_s is None:
            return None
        return acquire + self.timeout_s

    async def switch(self, url: str) -> None:
        """Use another PostgreSQL store from now on (the pool's failover onto its backup store,
        pool/failover.py): new connections go to ``url``; the connections to the old one are
        closed (those in use when they are returned, the asyncpg pool's within a bound)."""
        target = parse(url)
        if not (self.is_postgres and target.is_postgres):
            raise ValueError("only a PostgreSQL store can switch to another PostgreSQL store")
        if self._pg_pool_made is not None and not self._pg_pool_made.done():
            await asyncio.wait([self._pg_pool_made])
        old_engine, old_pool = self.engine, self._pg_pool
        self.url, self.target = url, target
        self.engine = self._pg_engine()
        self._pg_pool, self._pg_pool_made = None, None
        await _close_pg_pool(old_pool)
        await old_engine.dispose()

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def now_ms(self) -> ColumnElement[int]:
        """The store's clock in epoch ms, as an SQL expression (SQLite: this machine's, which is
        the store's)."""
        if self.is_postgres:
            return literal_column(PG_NOW_MS, BigInteger)
        return literal(now_ms())

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._connection() as conn:
            yield conn

    @asynccontextmanager
    async def write(self, *, hold_s: float | None = None) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block exits normally and rolls back otherwise.
        ``hold_s``: a longer bound for this use, which waits on something else meanwhile (its
        own statements are then the caller's to bound)."""
        async with self._connection(hold_s) as conn:
            conn = await conn.execution_options(chat_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _connection(self, hold_s: float | None = None) -> AsyncIterator[AsyncConnection]:
        """A connection of the engine's pool, its use bounded by ``timeout_s`` (or ``hold_s``)
        on PostgreSQL (see :mod:`chatserver.store.health`)."""
        timeout = self.timeout_s
        if timeout is None or not self.is_postgres:
            async with self.engine.connect() as conn:
                yield conn
            return
        started = time.monotonic()
        conn = self.engine.connect()
        try:
            async with asyncio.timeout(self._acquire_s()):
                await conn.start()
            # (no I/O: the connection was just checked out, and no greenlet is needed to read it)
            assert conn.sync_connection is not None
            driver: Any = conn.sync_connection.connection.driver_connection
        except Exception as exc:
            raise_failed(
                acquire_failed(exc, timeout_s=timeout, health=self.health, started=started), exc
            )
        deadline = Deadline(max(timeout, hold_s or 0), driver.terminate)
        try:
            yield conn
        except Exception as exc:
            error = as_unavailable(
                exc,
                expired=deadline.expired,
                timeout_s=timeout,
                health=self.health,
                started=started,
            )
            if error is not exc and not driver.is_closed():
                driver.terminate()  # not given back to the pool as it is
            raise_failed(error, exc)
        else:
            self.health.succeeded()
        finally:
            try:
                if driver.is_closed() and not conn.invalidated:
                    await conn.invalidate()  # dropped from the pool, no rollback tried
                await conn.close()  # still under the deadline: a stuck rollback is cut short
            except Exception as exc:
                if not unreachable(exc):
                    raise
            finally:
                deadline.cancel()

    async def warm(self, connections: int) -> int:
        """Open up to ``connections`` of the engine's pool now (PostgreSQL; kept, see
        :meth:`_pg_engine`), so that the first burst of requests after a node starts does not
        also pay for making them (asyncpg's connect and TLS negotiation, PostgreSQL's backend
        start). Returns how many opened; one that fails is made later, on demand."""
        if not self.is_postgres or connections <= 0:
            return 0
        opening = [self.engine.connect() for _ in range(connections)]
        opened = await asyncio.gather(*(c.start() for c in opening), return_exceptions=True)
        made = 0
        for conn, outcome in zip(opening, opened, strict=True):
            if not isinstance(outcome, BaseException):
                made += 1
                await conn.close()  # back to the pool, open
        return made

    async def pg_pool(self) -> BoundedPgPool:
        """An asyncpg pool on the same database, for the PostgreSQL fast paths: the group
        commit (two batches in flight) and the reads every node makes per room (the room and its
        roles, its newest messages, the pool's catch-up of last_seq)."""
        assert self.is_postgres
        if self._pg_pool is None:
            # Made once even when several callers ask at the same time (the writer keeps two
            # batches in flight): the second would otherwise make a second pool and leak it.
            if self._pg_pool_made is None:
                self._pg_pool_made = asyncio.get_running_loop().create_task(self._make_pg_pool())
            try:
                await asyncio.shield(self._pg_pool_made)
            except Exception:
                self._pg_pool_made = None
                raise
        assert self._pg_pool is not None
        return self._pg_pool

    async def _make_pg_pool(self) -> None:
        import asyncpg

        started = time.monotonic()
        try:
            pool = await asyncpg.create_pool(
                **self._connect_args(self.target.asyncpg_args()),
                connect=connect,  # a time limit per host (store/connect.py)
                # No floor: asyncpg would restore it with a traceback per attempt while the
                # store is away; connections are made on demand instead.
                min_size=0,
                max_size=6,
                reset=_keep_session,
            )
        except Exception as exc:
            raise_failed(
                acquire_failed(exc, timeout_s=self.timeout_s, health=self.health, started=started),
                exc,
            )
        self._pg_pool = BoundedPgPool(pool, self.timeout_s, self._acquire_s(), self.health)

    async def close(self) -> None:
        if self._pg_pool_made is not None and not self._pg_pool_made.done():
            await asyncio.wait([self._pg_pool_made])
        self._pg_pool_made = None
        pool, self._pg_pool = self._pg_pool, None
        await _close_pg_pool(pool)
        await self.engine.dispose()


async def _close_pg_pool(pool: Any) -> None:
    if pool is None:
        return
    try:
        # close() waits for every connection to come back; one held by a task that was
        # cancelled mid-release never does (seen when a node was stopped in a join storm), so
        # the wait is bounded.
        await asyncio.wait_for(pool.close(), PG_POOL_CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("closing the asyncpg pool timed out; terminating its connections")
        pool.terminate()


async def _keep_session(_conn: Any) -> None:
    """The asyncpg pool's reset on release, which does nothing: the fast paths never change
    session state (no SET, LISTEN, advisory locks or cursors), and asyncpg still rolls back a
    transaction left open. The default reset is one more round trip for every statement."""


def _configure_postgres(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # A pooled connection the server or the network closed meanwhile (asyncpg saw it go):
        # the pool drops it and takes another, so the request does not fail on it.
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the pooled connection was closed")


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's own is always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("chat_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")
