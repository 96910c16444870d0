"""One chat node: its listeners, its shared state, start-up and graceful shutdown.

``Node.start()`` opens the store, checks (or, on SQLite, applies) the schema, creates the first
administrator if there is none, and opens the TCP and WebSocket listeners. ``Node.stop()`` is
idempotent: stop accepting, finish the in-flight commits (so their acknowledgements go out), tell
every connection ``bye``, wait for the requests being served, close the store.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .admin.server import ManagementServer
from .config import Config, parse_address
from .metrics import Metrics
from .protocol.errors import ChatError
from .rooms.hub import MessageChange
from .rooms.service import ChatService
from .store import admin as admin_store
from .store import users as user_store
from .store.db import Database
from .store.migrate import check_schema, upgrade
from .transport.tcp import TcpConnection
from .transport.websocket import WebSocketConnection

if TYPE_CHECKING:
    from .pool.node import Pool
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
    request_errors: int = 0  # requests that failed with an unexpected exception
    accepting: bool = True
    pool: Pool | None = None  # this node's pool membership, when [pool] enabled
    metrics: Metrics = field(default_factory=Metrics)
    _dirty: list[Connection] = field(default_factory=list)
    _flush_scheduled: bool = False

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
            conn._flush()

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
        self.listening = False
        self.management: ManagementServer | None = None
        # Run-time settings from the store (management API): deployment-wide, then this node.
        self.settings: dict[str, dict[str, Any]] = {}
        # Called after an administrator changed messages here (the pool forwards them).
        self.message_change_listeners: list[
            Callable[[int, list[MessageChange], int | None], None]
        ] = []
        self.metric_refreshers: list[Callable[[], Awaitable[None]]] = []
        self.closers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        context = _ssl_context(self.config)
        if self.config.pool.enabled:
            from .pool.node import Pool, PoolError

            self.state.pool = Pool(self.config, self.service, self.state, self.addresses, host=self)
            try:
                self.state.pool.check()
            except PoolError as exc:
                raise StartupError(str(exc)) from None
        if self.db.dialect == "sqlite":
            await asyncio.to_thread(upgrade, self.config.database.url)
        await check_schema(self.db)
        await ensure_admin(self.service, self.announce)
        await self.settings_changed()
        metrics = self.state.metrics
        metrics.attach(self.state)
        metrics.start()
        if self.config.compliance.enabled:
            from compliance.metrics import ComplianceMetrics

            compliance_metrics = ComplianceMetrics(self.config, self.db)
            metrics.register(compliance_metrics)
            self.metric_refreshers.append(compliance_metrics.refresh)
            self.closers.append(compliance_metrics.close)
        self.service.writer.on_batch = metrics.observe_batch
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
        self.listening = True
        if self.config.listen.management:
            await self._start_management(context)
        if self.state.pool is not None:
            from .pool.node import PoolError

            try:
                await self.state.pool.start()
            except PoolError as exc:
                raise StartupError(str(exc)) from None
            pool = self.state.pool
            assert pool.peer_address is not None
            host, port = pool.peer_address
            self.announce(f"pool: listening for peers on {host}:{port}, joined as {pool.state}")
        log.info("node %s started on %s", self.config.node.name, self.db.dialect)

    async def stop(self, timeout: float = 10.0) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(timeout))
        await asyncio.shield(self._stopping)

    async def _stop(self, timeout: float) -> None:
        self.state.accepting = False
        self.listening = False
        if self.management is not None:
            await self.management.stop()
        await self.state.metrics.stop()
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
        if self.state.pool is not None:
            await self.state.pool.stop()
        for close in self.closers:
            await close()
        await self.db.close()
        log.info("node %s stopped", self.config.node.name)

    # -- management ---------------------------------------------------------------------------

    async def _start_management(self, context: ssl.SSLContext | None) -> None:
        address = self.config.listen.management
        self.management = ManagementServer(self)
        try:
            host, port = await self.management.start(address, context)
        except OSError as exc:
            raise StartupError(f"listen.management: cannot listen on {address}: {exc}") from None
        scheme = "https" if context else "http"
        self.announce(f"management API on {scheme}://{host}:{port}/ (see /openapi.json)")
        if context is None and not ipaddress.ip_address(host).is_loopback:
            log.warning(
                "the management port listens on %s without TLS: tokens and passwords cross the"
                " network in clear; set [tls] or bind it to 127.0.0.1",
                host,
            )

    @property
    def compliance_node(self) -> str | None:
        """This node's name when compliance capture is on (outbox rows carry it), else None."""
        return self.config.node.name if self.config.compliance.enabled else None

    def messages_changed(
        self, room_id: int, changes: list[MessageChange], cleared_through: int | None
    ) -> None:
        """An administrator replaced or removed messages (committed): update caches, tell
        subscribers here, and let the pool tell the other nodes."""
        self.service.hub.change_messages(room_id, changes, cleared_through)
        for listener in self.message_change_listeners:
            listener(room_id, changes, cleared_through)

    def disconnect_user(self, user_id: int, reason: str) -> int:
        """Close every connection of the user on this node; returns how many."""
        members = list(self.service.governance.members.get(user_id, ()))
        for member in members:
            member.disconnect(reason)
        if self.state.pool is not None:
            self.state.pool.publish_disconnect(user_id, reason)
        return len(members)

    def default_settings(self) -> dict[str, Any]:
        chat = self.config.chat
        return {key: getattr(chat, key) for key in RUNTIME_SETTINGS}

    def effective_settings(self) -> dict[str, Any]:
        out = self.default_settings()
        out.update(self.settings.get("", {}))
        out.update(self.settings.get(self.config.node.name, {}))
        return {key: out[key] for key in RUNTIME_SETTINGS}

    async def settings_changed(self, *, publish: bool = True) -> None:
        """Reload the run-time settings from the store and apply them to this node (and tell the
        pool's other nodes to do the same, unless the change came from one of them)."""
        self.settings = await admin_store.load_settings(self.db)
        effective = self.effective_settings()
        chat = self.service.config.chat.model_copy(update=effective)
        self.service.config = self.service.config.model_copy(update={"chat": chat})
        self.service.hub.set_cache_size(effective["default_chat_history"])
        if publish and self.state.pool is not None:
            self.state.pool.publish_config()

    async def refresh_metrics(self) -> None:
        for refresh in self.metric_refreshers:
            try:
                await refresh()
            except Exception:
                log.exception("refreshing metrics failed")

    async def pool_view(self) -> dict[str, Any]:
        """The pool's nodes as the management API shows them."""
        pool = self.state.pool
        if pool is not None:
            return await pool.view()
        tcp = self.addresses.get("tcp")
        websocket = self.addresses.get("websocket")
        management = self.management.address if self.management else None
        return {
            "pooled": False,
            "nodes": [
                {
                    "name": self.config.node.name,
                    "tcp": f"{tcp[0]}:{tcp[1]}" if tcp else "",
                    "websocket": f"{websocket[0]}:{websocket[1]}" if websocket else "",
                    "peer": "",
                    "management": f"{management[0]}:{management[1]}" if management else "",
                    "state": "active" if self.state.accepting else "stopping",
                    "heartbeat_age_s": None,
                    "this_node": True,
                }
            ],
        }


# The settings an administrator can change at run time (global or per node).
RUNTIME_SETTINGS = (
    "default_chat_history",
    "max_file_size_kb",
    "participant_update_limit",
    "room_management_url",
)
