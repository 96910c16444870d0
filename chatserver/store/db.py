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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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


def sqlalchemy_url(url: str) -> str:
    """Map a configured URL (``sqlite:///…``, ``postgresql://…``) to its async driver URL."""
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://") :]
    raise ValueError(f"unsupported database URL {url!r}")


def dialect_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def sqlite_path(url: str) -> Path | None:
    database = make_url(sqlalchemy_url(url)).database
    if not database or database == ":memory:":
        return None
    return Path(database)


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
        self.dialect = dialect_of(url)
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self.health = StoreHealth()
        self._pg_pool: BoundedPgPool | None = None
        self._pg_pool_made: asyncio.Task[None] | None = None
        if self.dialect == "sqlite":
            path = sqlite_path(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(sqlalchemy_url(url))
            _configure_sqlite(self.engine)
        else:
            self.engine = create_async_engine(
                sqlalchemy_url(url),
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=timeout_s if timeout_s is not None else 30,
                connect_args=self._connect_args(),
            )
            _configure_postgres(self.engine)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def _connect_args(self) -> dict[str, Any]:
        """asyncpg's connect arguments for both pools: the connect timeout and keepalive."""
        return {
            "timeout": self.timeout_s if self.timeout_s is not None else 60,
            "connection_class": keepalive_class(self.keepalive_s),
        }

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
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block exits normally and rolls back otherwise."""
        async with self._connection() as conn:
            conn = await conn.execution_options(chat_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection of the engine's pool, its use bounded by ``timeout_s`` on PostgreSQL
        (see :mod:`chatserver.store.health`)."""
        timeout = self.timeout_s
        if timeout is None or not self.is_postgres:
            async with self.engine.connect() as conn:
                yield conn
            return
        started = time.monotonic()
        conn = self.engine.connect()
        try:
            async with asyncio.timeout(timeout):
                await conn.start()
            # (no I/O: the connection was just checked out, and no greenlet is needed to read it)
            assert conn.sync_connection is not None
            driver: Any = conn.sync_connection.connection.driver_connection
        except Exception as exc:
            raise_failed(
                acquire_failed(exc, timeout_s=timeout, health=self.health, started=started), exc
            )
        deadline = Deadline(max(0.001, timeout - (time.monotonic() - started)), driver.terminate)
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

        dsn = make_url(self.url.replace("postgres://", "postgresql://", 1))
        started = time.monotonic()
        try:
            pool = await asyncpg.create_pool(
                dsn.render_as_string(hide_password=False),
                # No floor: asyncpg would restore it with a traceback per attempt while the
                # store is away; connections are made on demand instead.
                min_size=0,
                max_size=6,
                reset=_keep_session,
                **self._connect_args(),
            )
        except Exception as exc:
            raise_failed(
                as_unavailable(
                    exc,
                    expired=False,
                    timeout_s=self.timeout_s,
                    health=self.health,
                    started=started,
                ),
                exc,
            )
        self._pg_pool = BoundedPgPool(pool, self.timeout_s, self.health)

    async def close(self) -> None:
        if self._pg_pool_made is not None and not self._pg_pool_made.done():
            await asyncio.wait([self._pg_pool_made])
        self._pg_pool_made = None
        if self._pg_pool is not None:
            pool, self._pg_pool = self._pg_pool, None
            try:
                # close() waits for every connection to come back; one held by a task that
                # was cancelled mid-release never does (seen when a node was stopped in a
                # join storm), so the wait is bounded.
                await asyncio.wait_for(pool.close(), PG_POOL_CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("closing the asyncpg pool timed out; terminating its connections")
                pool.terminate()
        await self.engine.dispose()


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
