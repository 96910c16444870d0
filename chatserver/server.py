"""One chat node: its listeners, its shared state, start-up and graceful shutdown.

``Node.start()`` opens the store, checks (or, on SQLite, applies) the schema, creates the first
administrator if there is none, and opens the TCP and WebSocket listeners. ``Node.stop()`` is
idempotent: stop accepting, finish the in-flight commits (so their acknowledgements go out), tell
every connection ``bye``, wait for the requests being served, close the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Config, parse_address
from .protocol.errors import ChatError
from .rooms.service import ChatService
from .store import users as user_store
from .store.db import Database
from .store.migrate import check_schema, upgrade
from .transport.tcp import TcpConnection
from .transport.websocket import WebSocketConnection

if TYPE_CHECKING:
    from .store.users import User
    from .transport.connection import Connection

log = logging.getLogger("chatserver")


@dataclass
class NodeState:
    """What every connection of a node shares."""

    config: Config
    service: ChatService
    connections: set[Connection] = field(default_factory=set)
    by_transport: Counter[str] = field(default_factory=Counter)
    authenticated_users: int = 0
    resyncs: int = 0
    accepting: bool = True

    def connection_opened(self, conn: Connection) -> None:
        if not self.accepting:
            conn.close("shutting_down")
            return
        self.connections.add(conn)
        self.by_transport[conn.transport_name] += 1

    def connection_closed(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.by_transport[conn.transport_name] -= 1
            if conn.session.user is not None:
                self.authenticated_users -= 1

    def user_authenticated(self, conn: Connection, user: User) -> None:
        self.authenticated_users += 1


class StartupError(Exception):
    """The node cannot start; the message says why and what to do."""


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls.certificate, config.tls.key or None)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"tls.certificate / tls.key: cannot load {config.tls.certificate}: {exc}"
        ) from None
    return context


async def ensure_admin(service: ChatService, announce: Callable[[str], None]) -> None:
    """Create the user ``admin`` when the store has no administrator, and say its password once."""
    if await user_store.count_admins(service.db):
        return
    password = os.environ.get("CHATSERVER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    try:
        await service.add_user("admin", password, is_admin=True, display_name="Administrator")
    except ChatError:
        raise StartupError(
            "the store has no administrator and the name 'admin' belongs to an ordinary user;"
            " add one with `chatserver user add NAME --admin`"
        ) from None
    if os.environ.get("CHATSERVER_ADMIN_PASSWORD"):
        announce("created administrator 'admin' with the password from CHATSERVER_ADMIN_PASSWORD")
    else:
        announce(f"created administrator 'admin' with password: {password}  (shown only once)")


class Node:
    def __init__(self, config: Config, *, announce: Callable[[str], None] = print) -> None:
        self.config = config
        self.announce = announce
        self.db = Database(config.database.url)
        self.service = ChatService(config, self.db)
        self.state = NodeState(config, self.service)
        self._servers: list[asyncio.Server] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        context = _ssl_context(self.config)
        if self.db.dialect == "sqlite":
            await asyncio.to_thread(upgrade, self.config.database.url)
        await check_schema(self.db)
        await ensure_admin(self.service, self.announce)
        self.service.start()
        loop = asyncio.get_running_loop()
        listeners: list[tuple[str, str, type[Connection]]] = [
            ("tcp", self.config.listen.tcp, TcpConnection),
            ("websocket", self.config.listen.websocket, WebSocketConnection),
        ]
        for name, address, factory in listeners:
            if not address:
                continue
            host, port = parse_address(address)

            def protocol_factory(factory: type[Connection] = factory) -> Connection:
                return factory(self.state)

            try:
                server = await loop.create_server(
                    protocol_factory, host, port, ssl=context, reuse_address=True, backlog=4096
                )
            except OSError as exc:
                raise StartupError(f"listen.{name}: cannot listen on {address}: {exc}") from None
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            self.addresses[name] = (bound[0], bound[1])
            scheme = {"tcp": "tcp", "websocket": "ws"}[name] + ("s" if context else "")
            self.announce(f"listening for {name} clients on {scheme}://{bound[0]}:{bound[1]}/")
        log.info("node %s started on %s", self.config.node.name, self.db.dialect)

    async def stop(self, timeout: float = 10.0) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(timeout))
        await asyncio.shield(self._stopping)

    async def _stop(self, timeout: float) -> None:
        self.state.accepting = False
        for server in self._servers:
            server.close()
        # Finish the commits in flight first, so their acknowledgements go out before ``bye``.
        try:
            await asyncio.wait_for(self.service.close(), timeout)
        except TimeoutError:
            log.error("in-flight posts did not finish within %.0f s", timeout)
        await asyncio.sleep(0)  # let the acknowledgement callbacks run
        workers = []
        for conn in list(self.state.connections):
            if conn.session.worker is not None:
                workers.append(conn.session.worker)
            conn.close("shutting_down")
        # Requests being served may still hold store connections: let them end before closing it.
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except TimeoutError:
                pass
        await self.db.close()
        log.info("node %s stopped", self.config.node.name)
