"""One chat node: the composition root that builds its parts, and its start-up and shutdown.

Every collaborator is made here, once, and passed to the parts that use it (nothing below this
module imports it)::

    Connections (transport) ─► Session ─► Services: accounts, directory, reading, posting,
                                                    governance, presence, metrics, admission
    Governance ─► Facts, Authorization, Enforcement, Hub, Publisher
    Accounts ─► Authorization, LoginThrottle (─► Metrics), Enforcement, Publisher
    Writer ─► Hub.deliver, Publisher, Capture, Metrics.observe_batch
    Pool (when pooled) ─► PeerPublisher, Hub, Governance, Enforcement, RuntimeSettings

``Node.start()`` opens the store, checks (or, on SQLite, applies) the schema, creates the first
administrator if there is none, and opens the TCP and WebSocket listeners. ``Node.stop()`` is
idempotent: stop accepting, finish the in-flight commits (so their acknowledgements go out), tell
every connection ``bye``, wait for the requests being served, close the store.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from .accounts import Accounts
from .admin.guard import ConnectionGuard
from .admin.server import ManagementServer
from .config import Config, parse_address
from .feed_metrics import FeedsCollector
from .metrics import Metrics, UnreadCollector
from .pool.failover import StoreFailover
from .protocol.errors import CONFLICT, ChatError
from .rooms.addins import Addins
from .rooms.audit import SYSTEM, Audit
from .rooms.authorization import Authorization
from .rooms.capture import Capture
from .rooms.changes import LocalOnly, Publisher
from .rooms.choices import Choices
from .rooms.directory import Directory
from .rooms.enforcement import Enforcement
from .rooms.facts import Facts
from .rooms.feeds import Feeds
from .rooms.files import Files, StorageError
from .rooms.governance import Governance
from .rooms.hub import Hub
from .rooms.lifecycle import Lifecycle
from .rooms.posting import Posting
from .rooms.presence import Presence
from .rooms.ratelimit import RateLimiter
from .rooms.reading import Reading, load_recent
from .rooms.retention import Retention
from .rooms.roster import Roster
from .rooms.search import Search
from .rooms.settings import RuntimeSettings
from .rooms.unread import Unread
from .rooms.writer import Writer
from .services import Services
from .store import messages as message_store
from .store import users as user_store
from .store.db import Database
from .store.migrate import check_schema, upgrade
from .store.search import ensure_index as ensure_search_index
from .throttle import LoginThrottle
from .transport.connection import Connection
from .transport.connections import Connections
from .transport.http import ClientHttpServer, FilesCollector
from .transport.oidc import oidc_routes
from .transport.tcp import TcpConnection
from .transport.web_manage import add_manage_pages, manage_url
from .transport.websocket import WebSocketConnection
from .userdir.setup import DirectorySetupError, directory_login, directory_sync
from .web.client import ClientPages

if TYPE_CHECKING:
    from .pool.node import Pool

log = logging.getLogger("chatserver")
# Store connections a node opens as it starts (of its pool's 20), so the first burst of requests
# (every client reconnecting after a restart) does not also pay for making them.
WARM_CONNECTIONS = 10


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


async def ensure_admin(db: Database, accounts: Accounts, announce: Callable[[str], None]) -> None:
    """Create the user ``admin`` when the store has no administrator, and say its password once.

    Nodes started together on a fresh store all see no administrator: one insert wins (the name
    is unique), and the others, refused, look again and find the administrator it made.
    """
    if await user_store.count_admins(db):
        return
    password = os.environ.get("CHATSERVER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    try:
        await accounts.add_user(
            "admin", password, by=SYSTEM, is_admin=True, display_name="Administrator"
        )
    except ChatError as exc:
        if exc.code != CONFLICT:
            raise
        if await user_store.count_admins(db):
            announce("administrator 'admin' was created by another node starting at the same time")
            return
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
        if config.pool.enabled:
            from .pool.checks import PoolError, check_store_url

            try:  # before the store is opened: an SQLite file would be created
                check_store_url(config.database.url)
            except PoolError as exc:
                raise StartupError(str(exc)) from None
        db = self.db = Database(
            config.database.url,
            timeout_s=config.database.timeout_s,
            keepalive_s=config.database.keepalive_s,
        )
        # Normal on database.url, or failed over onto database.backup_url (pool/failover.py).
        self.store_failover = StoreFailover(
            db, config.database.url, config.database.backup_url, config.database.failover_check_s
        )
        self.metrics = Metrics()
        self.presence = Presence()
        self.connections = Connections(config.limits, config.listen.websocket_origins)
        # Who hears about what this node committed: nobody on one node; the peers in a pool.
        peers = None
        if config.pool.enabled:
            from .pool.link import PeerPublisher

            peers = PeerPublisher()
        publisher: Publisher = peers if peers is not None else LocalOnly()
        facts = self.facts = Facts(db)
        auth = self.auth = Authorization(config, facts)
        self.capture = Capture(db, config.node.name, enabled=config.compliance.enabled)
        self.search = Search(db, config.search, facts, auth, self.capture)
        self.feeds = Feeds(db, config.search, self.search, auth, self.presence, publisher)
        self.hub = hub = Hub(
            cache_size=config.chat.default_chat_history,
            load_recent=functools.partial(load_recent, db),
            load_after=lambda room, seq, limit: message_store.after(
                db, room, seq, limit, include_removed=True
            ),
            on_deliver=self.feeds.observe,
        )
        self.settings = RuntimeSettings(config, db, hub, publisher)
        self.addins = addins = Addins(db)
        enforcement = self.enforcement = Enforcement(db, facts, auth, hub, self.presence, addins)
        audit = self.audit = Audit(db)
        self.governance = Governance(db, facts, auth, enforcement, hub, publisher, audit)
        self.unread = Unread(
            db,
            auth,
            self.presence,
            publisher,
            lambda room: message_store.last_seq(db, room),
            flush_interval_s=config.chat.read_marker_flush_s,
        )
        self.writer = Writer(
            db,
            hub.deliver,
            publisher,
            self.capture,
            on_batch=self.metrics.observe_batch,
            on_mentions=self.unread.mentioned,
            max_pending=config.limits.max_pending_posts,
        )
        try:
            ldap = directory_login(config)  # None without [directory]
        except DirectorySetupError as exc:
            raise StartupError(str(exc)) from None
        self.accounts = Accounts(
            config,
            db,
            auth,
            LoginThrottle(config.login, db, self.metrics, audit),
            enforcement,
            publisher,
            audit,
            directory=ldap,
        )
        self.directory_sync = directory_sync(
            config, db, ldap, self.accounts, self.governance, audit
        )
        self.reading = Reading(db, self.settings, facts, auth, hub, self.capture, addins)
        self.files = Files(
            db,
            config.files,
            config.node.name,
            self.settings,
            facts,
            auth,
            self.capture,
            hub.deliver,
            publisher,
            self.governance.messages_changed,
            chat_quiet=self.writer.quiet,
        )
        self.roster = Roster(
            config.node.name,
            hub,
            lambda: self.settings.chat.participant_update_limit,
            peers.send if peers is not None else None,
        )
        self.addresses: dict[str, tuple[str, int]] = {}
        self.pool: Pool | None = None
        if peers is not None:
            from .pool.node import Pool

            self.pool = Pool(
                config,
                db,
                publisher=peers,
                hub=hub,
                governance=self.governance,
                enforcement=enforcement,
                settings=self.settings,
                connections=self.connections,
                metrics=self.metrics,
                client_addresses=self.addresses,
                audit=audit,
                feeds_changed=self.feeds.changed,
                roster=self.roster,
                unread=self.unread,
            )
        rate_limiter = RateLimiter(config.limits.posts_per_user_per_s)
        self.services = Services(
            node_name=config.node.name,
            limits=config.limits,
            settings=self.settings,
            accounts=self.accounts,
            directory=Directory(db, facts, addins),
            reading=self.reading,
            posting=Posting(
                self.settings,
                auth,
                self.writer,
                rate_limiter,
                lambda room: message_store.last_seq(db, room),
            ),
            governance=self.governance,
            presence=self.presence,
            metrics=self.metrics,
            unread=self.unread,
            admission=self.pool,
            search=self.search,
            feeds=self.feeds,
            roster=self.roster,
            choices=Choices(db, facts, auth, addins),
            http_url=lambda: self.http_url,
            lifecycle=Lifecycle(
                db,
                self.settings,
                auth,
                self.capture,
                self.governance.messages_changed,
                rate_limiter,
            ),
        )
        self.retention = Retention(
            db, config.retention, config.node.name, self.capture, self.governance.messages_changed
        )
        self.http_url: str | None = None  # hello's http_url, once the HTTP listener listens
        self._servers: list[asyncio.Server] = []
        self._stopping: asyncio.Task[None] | None = None
        self.listening = False
        self.management: ManagementServer | None = None
        self.http: ClientHttpServer | None = None
        self.metric_refreshers: list[Callable[[], Awaitable[None]]] = []
        self.closers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        context = _ssl_context(self.config)
        if self.pool is not None:
            from .pool.checks import PoolError

            try:
                self.pool.check()
            except PoolError as exc:
                raise StartupError(str(exc)) from None
        if self.db.dialect == "sqlite":
            await asyncio.to_thread(upgrade, self.config.database.url)
        await self.store_failover.choose()
        await check_schema(self.db)
        await self.db.warm(WARM_CONNECTIONS)
        await ensure_search_index(self.db, self.config.search.language)
        await ensure_admin(self.db, self.accounts, self.announce)
        await self.settings.reload()
        try:
            await self.files.start()  # its storage backend, and the sweep of what it left
        except StorageError as exc:
            raise StartupError(str(exc)) from None
        metrics = self.metrics
        metrics.attach(self.connections, self.hub, self.writer)
        metrics.register(FeedsCollector(self.feeds))
        metrics.register(UnreadCollector(self.unread))
        metrics.start()
        if self.config.compliance.enabled:
            from compliance.metrics import ComplianceMetrics

            compliance_metrics = ComplianceMetrics(self.config, self.db)
            metrics.register(compliance_metrics)
            self.metric_refreshers.append(compliance_metrics.refresh)
            self.closers.append(compliance_metrics.close)
        self.writer.start()
        self.unread.start()
        self.retention.start()
        self.closers.append(self.retention.close)
        self.store_failover.start()
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
                return factory(self.connections, self.services)

            try:
                # A connection that never finishes its TLS handshake is closed within the
                # unauthenticated connection's deadline (asyncio's default would hold it 60 s).
                server = await loop.create_server(
                    protocol_factory,
                    host,
                    port,
                    ssl=context,
                    ssl_handshake_timeout=self.config.limits.auth_timeout_s if context else None,
                    reuse_address=True,
                    backlog=4096,
                )
            except OSError as exc:
                raise StartupError(f"listen.{name}: cannot listen on {address}: {exc}") from None
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            self.addresses[name] = (bound[0], bound[1])
            scheme = {"tcp": "tcp", "websocket": "ws"}[name] + ("s" if context else "")
            self.announce(f"listening for {name} clients on {scheme}://{bound[0]}:{bound[1]}/")
        if self.config.listen.http:
            await self._start_http(context)
        self.listening = True
        if self.config.listen.management:
            await self._start_management(context)
        if self.pool is not None:
            from .pool.checks import PoolError

            try:
                await self.pool.start()
            except PoolError as exc:
                raise StartupError(str(exc)) from None
            pool = self.pool
            assert pool.peer_address is not None
            host, port = pool.peer_address
            self.announce(f"pool: listening for peers on {host}:{port}, joined as {pool.state}")
        self.files.start_sweeping()
        if self.directory_sync is not None:
            self.directory_sync.start()
        log.info("node %s started on %s", self.config.node.name, self.db.dialect)
        compliance = self.config.compliance
        if compliance.enabled:
            self.announce(
                "compliance capture is on: events wait in the outbox until `chatserver compliance"
                f" run` moves them to the compliance database (its XML exports every"
                f" {compliance.run_interval_s} s; `chatserver compliance export` runs one now)"
            )
        else:
            self.announce("compliance capture is off (compliance.enabled)")

    async def stop(self, timeout: float = 10.0) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(timeout))
        await asyncio.shield(self._stopping)

    async def _stop(self, timeout: float) -> None:
        self.connections.stop_accepting()
        self.listening = False
        if self.management is not None:
            await self.management.stop()
        if self.http is not None:
            await self.http.stop()
        await self.metrics.stop()
        for server in self._servers:
            server.close()
        # Finish the commits in flight first, so their acknowledgements go out before ``bye``.
        try:
            await asyncio.wait_for(self.writer.close(), timeout)
        except TimeoutError:
            log.error("in-flight posts did not finish within %.0f s", timeout)
        await asyncio.sleep(0)  # let the acknowledgement callbacks run
        # Every subscription ends with the node: record their compliance PARTs while the store
        # is open (connections close after this).
        await self.capture.close()
        workers = []
        for conn in self.connections:
            worker = cast(Connection, conn).session.worker
            if worker is not None:
                workers.append(worker)
            conn.close("shutting_down")
        # Requests being served may still hold store connections: let them end before closing it.
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        # The read markers still pending, once no request can set one (a crash loses at most
        # the last flush interval of them).
        try:
            await asyncio.wait_for(self.unread.close(), timeout)
        except Exception as exc:
            log.error("writing the pending read markers failed: %s", exc)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except TimeoutError:
                pass
        if self.directory_sync is not None:
            await self.directory_sync.stop()
        if self.pool is not None:
            await self.pool.stop()
        await self.store_failover.stop()
        await self.files.close()
        for close in self.closers:
            await close()
        await self.db.close()
        log.info("node %s stopped", self.config.node.name)

    # -- client HTTP (files) ------------------------------------------------------------------

    async def _start_http(self, context: ssl.SSLContext | None) -> None:
        address = self.config.listen.http
        files = self.config.files

        def guard(factory: Callable[[], asyncio.Protocol]) -> ConnectionGuard:
            return ConnectionGuard(
                factory,
                max_connections=files.max_connections,
                header_timeout_s=files.header_timeout_s,
                name="the client HTTP listener",
            )

        pages = ClientPages(
            self._websocket_listeners,
            context is not None,
            lambda: str(self.settings.chat.room_management_url),
            sso=self.config.oidc.enabled,
        )
        self.http = ClientHttpServer(
            files, self.accounts, self.auth, self.files, guard, search=self.search, pages=pages
        )
        websocket = self.addresses.get("websocket")
        add_manage_pages(self.http.app.router, websocket[1] if websocket else None, bool(context))
        if self.config.oidc.enabled:  # single sign-on for the web client
            oidc = oidc_routes(
                self.config.oidc, self.accounts, self.db, self.governance.directory_changed
            )
            oidc.register(self.http.app)
        try:
            host, port = await self.http.start(address, context)
        except OSError as exc:
            raise StartupError(f"listen.http: cannot listen on {address}: {exc}") from None
        self.addresses["http"] = (host, port)
        self.connections.page_ports = (port,)  # the web client's WebSocket origin
        self.metrics.register(FilesCollector(self.files, self.http))
        scheme = "https" if context else "http"
        self.announce(f"room management pages on {manage_url(scheme, host, port)}")
        self.announce(f"listening for HTTP clients (files) on {scheme}://{host}:{port}/")
        shown = "localhost" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
        self.announce(f"web client: open {scheme}://{shown}:{port}/ in a browser")
        self.http_url = self._public_http_url(scheme, host, port)

    def _websocket_listeners(self) -> list[tuple[str, int]]:
        """Where the web client's WebSocket connects: this node's listener, then the other
        active nodes of the pool (for resuming when this one dies)."""
        out: list[tuple[str, int]] = []
        own = self.addresses.get("websocket")
        if own is not None:
            out.append(own)
        if self.pool is not None:
            for node in self.pool.active_nodes():
                try:
                    host, port = parse_address(node["websocket"])
                except ValueError:
                    continue
                if (host, port) != own:
                    out.append((host, port))
        return out

    def _public_http_url(self, scheme: str, host: str, port: int) -> str | None:
        """What hello advertises: ``files.public_url``, else the listener's own address (none
        for a wildcard address: clients could not use it)."""
        public = self.config.files.public_url
        if public:
            return public.rstrip("/")
        if host in ("0.0.0.0", "::", ""):
            log.warning(
                "listen.http is a wildcard address and files.public_url is not set:"
                " hello advertises no http_url"
            )
            return None
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    # -- management ---------------------------------------------------------------------------

    async def _start_management(self, context: ssl.SSLContext | None) -> None:
        address = self.config.listen.management
        self.management = ManagementServer(self)
        try:
            host, port = await self.management.start(address, context)
        except OSError as exc:
            raise StartupError(f"listen.management: cannot listen on {address}: {exc}") from None
        self.addresses["management"] = (host, port)
        scheme = "https" if context else "http"
        self.announce(f"administration pages on {scheme}://{host}:{port}/admin/")
        self.announce(
            f"management API on {scheme}://{host}:{port}/ (chatserver admin; /openapi.json"
            " describes it and, like every endpoint but /healthz and /readyz, needs an"
            " administrator's token: chatserver admin login)"
        )
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

    async def refresh_metrics(self) -> None:
        for refresh in self.metric_refreshers:
            try:
                await refresh()
            except Exception:
                log.exception("refreshing metrics failed")

    async def pool_view(self) -> dict[str, Any]:
        """The pool's nodes as the management API shows them."""
        pool = self.pool
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
                    "state": "active" if self.connections.accepting else "stopping",
                    "heartbeat_age_s": None,
                    "this_node": True,
                }
            ],
        }
