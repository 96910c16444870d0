"""A node's side of the pool: membership, peer links and what arrives over them.

::

     writer commit ──► hub.deliver (local)       governance change ──► Governance._changed
            │                                                │
            └────────────► PeerPublisher (link.py) ◄─────────┘
                                  │  one EVENTS frame per peer per loop turn
                                  ▼
                      PeerLink ─── TCP 8011 ─── PeerLink (other node)
                                                    │
                     Pool.received ─► Inbox (inbox.py) ─► hub.deliver / handler table

    heartbeat task: upsert own row, read the registry, expire stale rows (expiry.py: not one
                    this node still hears; a standby may take an active one's place), dial
                    missing links, follow state changes (standby, draining)
    keep-alive task: ping links, close silent ones (no store access: a busy store must not
                    make a node look dead to its peers)
    catch-up task:  CatchUp.loop (catchup.py): every catchup_interval_s while a peer link is
                    down, at once and for two intervals after a link opened or a node
                    (re)appeared in the registry, else every SAFETY_POLL_ROUNDS intervals

The events and their encoding are in :mod:`chatserver.pool.events`; what each type does on
arrival is :meth:`Pool._handlers` (most go to
:meth:`~chatserver.rooms.governance.Governance.apply_remote`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..config import Config, parse_address
from ..metrics import Metrics
from ..protocol.events import Moved, Outgoing
from ..rooms.audit import Audit
from ..rooms.changes import (
    CategoriesChanged,
    FeedsChanged,
    MembershipChanged,
    MessagesChanged,
    ReadMoved,
    RoomChanged,
    SettingsChanged,
    TokensRevoked,
    UserDisconnected,
    UsersInvited,
    UsersMentioned,
)
from ..rooms.enforcement import Enforcement
from ..rooms.governance import Governance
from ..rooms.hub import Hub
from ..rooms.roster import Roster, RosterChanged, RosterSnapshot
from ..rooms.settings import RuntimeSettings
from ..rooms.unread import Unread
from ..store.db import Database, now_ms
from ..store.health import describe
from ..transport.connections import Connections
from . import expiry, registry, trust
from .catchup import CatchUp
from .checks import PoolError, advertised, check_store_url
from .events import EVENT_TYPES, NodesChanged, PeerEvent, Recheck, decode
from .inbox import Handler, Inbox
from .link import HANDSHAKE_TIMEOUT_S, PeerLink, PeerPublisher
from .metrics import PoolCollector
from .protocol import EVENTS, PING, Command
from .registry import ACTIVE, DRAINING, STANDBY, NodeRow

log = logging.getLogger("chatserver.pool")

MAX_BACKOFF_S = 2.0
# A handshake from a name not in the last heartbeat's list reads the registry at most this often.
REGISTRY_READ_S = 0.5


class Pool:
    """This node's membership in a pool; see the module docstring."""

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        publisher: PeerPublisher,
        hub: Hub,
        governance: Governance,
        enforcement: Enforcement,
        settings: RuntimeSettings,
        connections: Connections,
        metrics: Metrics,
        client_addresses: dict[str, tuple[str, int]],
        on_drained: Callable[[], None] | None = None,
        audit: Audit | None = None,
        feeds_changed: Handler | None = None,
        roster: Roster,
        unread: Unread | None = None,
    ) -> None:
        self.config = config
        self.settings = config.pool
        self.db = db
        self.publisher = publisher
        self.hub = hub
        self._connections = connections
        self._metrics = metrics
        self._audit = audit
        self._roster = roster
        self._unread = unread
        self._feeds_changed = feeds_changed
        self.name = config.node.name
        self.secret = config.pool.secret
        self._client_addresses = client_addresses
        self.on_drained = on_drained or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self.started_ms = now_ms()
        self.state = ACTIVE
        self.nodes: list[NodeRow] = []
        self.links: dict[str, PeerLink] = publisher.links
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, float] = {}
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh = asyncio.Event()
        self._stopping = False
        self._joined = False
        self.addresses: dict[str, str] = {}
        self.peer_address: tuple[str, int] | None = None
        self.catch_up = CatchUp(db, hub)
        self.admission = trust.Admission()
        self.refusals = trust.Refusals()
        self._registry_read: asyncio.Task[list[NodeRow]] | None = None
        self._registry_read_at = 0.0
        self.inbox = Inbox(
            lambda messages: hub.deliver(messages, remote=True),
            self._handlers(governance, enforcement, settings),
            hub.deliver_from_store,
        )
        # A new link's messages are checked against the store for this long (see received()).
        self.probation_s = config.pool.dead_after_s + 2 * config.pool.heartbeat_s
        self._unbeating: set[str] = set()  # peers heard over a link, their heartbeat stale
        # Observations (metrics, tests, the management API).
        self.events_received = 0
        self.events_by_type: dict[str, int] = dict.fromkeys(sorted(EVENT_TYPES), 0)
        self.frames_received: dict[str, int] = {PING: 0, EVENTS: 0}

    def _handlers(
        self, governance: Governance, enforcement: Enforcement, settings: RuntimeSettings
    ) -> Mapping[type, Handler]:
        """What each kind of event from a peer does here."""

        async def reload_settings(_event: SettingsChanged) -> None:
            await settings.reload(publish=False)

        async def nodes_changed(_event: NodesChanged) -> None:
            self._refresh.set()

        async def recheck(_event: Recheck) -> None:
            await enforcement.recheck_policies()
            await enforcement.recheck_tokens()

        # Events that act (end sessions, change what subscribers see) are re-checked against
        # the store first; the others only drop caches that are then re-read from it.
        async def tokens_revoked(event: TokensRevoked) -> None:
            await enforcement.confirm_revoked(event)

        async def disconnected(event: UserDisconnected) -> None:
            if not await enforcement.confirm_disabled(event.user, "disabled"):
                log.info("pool: user %d not disconnected: the store shows no reason", event.user)

        async def invited(event: UsersInvited) -> None:
            await enforcement.confirm_invited(event.room, event.users)

        async def roster_event(event: RosterChanged | RosterSnapshot) -> None:
            if event.node in self.links:  # not after node_gone
                self._roster.apply(event)

        async def messages_changed(event: MessagesChanged) -> None:
            confirmed = await self.hub.verify_changes(event)
            if confirmed is not None:
                await governance.apply_remote(confirmed)

        handlers: dict[type, Handler] = {
            RoomChanged: governance.apply_remote,
            CategoriesChanged: governance.apply_remote,
            MembershipChanged: governance.apply_remote,
            UserDisconnected: disconnected,
            TokensRevoked: tokens_revoked,
            UsersInvited: invited,
            MessagesChanged: messages_changed,
            SettingsChanged: reload_settings,
            NodesChanged: nodes_changed,
            Recheck: recheck,
            RosterChanged: roster_event,
            RosterSnapshot: roster_event,
        }
        if self._unread is not None:
            handlers[ReadMoved] = self._unread.remote_read
            handlers[UsersMentioned] = self._unread.remote_mention
        if self._feeds_changed is not None:
            handlers[FeedsChanged] = self._feeds_changed
        return handlers

    # -- start and stop ---------------------------------------------------------------------

    def check(self) -> None:
        """Refuse configurations that cannot work, before anything starts."""
        check_store_url(self.db.url)
        if not self.config.listen.peer:
            raise PoolError("pool.enabled needs listen.peer (the TCP 8011 peer port)")
        try:
            self.secret = trust.load_secret(self.settings)
        except trust.SecretError as exc:
            raise PoolError(str(exc)) from None

    # -- who may link (trust.py) ------------------------------------------------------------

    async def admit(self, name: str) -> str | None:
        """Why a node named ``name`` may not link to this one, or ``None``: it must be in the
        registry (the list of the last heartbeat, else a fresh read), and only the node whose
        name sorts first dials (see :meth:`_beat`)."""
        if name > self.name:
            return f"node {name!r} does not dial node {self.name!r} (the lower name dials)"
        if any(row.name == name for row in self.nodes):
            return None
        if name in await self._registered():
            return None
        return f"node {name!r} is not registered in this pool"

    async def _registered(self) -> set[str]:
        """The names in the registry, read at most once per REGISTRY_READ_S (the read is
        shared by every handshake waiting for it: unknown names cannot flood the store)."""
        now = time.monotonic()
        if self._registry_read is None or (
            self._registry_read.done() and now - self._registry_read_at > REGISTRY_READ_S
        ):
            self._registry_read_at = now
            self._registry_read = asyncio.get_running_loop().create_task(
                registry.list_nodes(self.db)
            )
        rows = await asyncio.shield(self._registry_read)
        return {row.name for row in rows}

    def tls_failed(self, address: str, exc: BaseException) -> None:
        reason, text = trust.tls_reason(exc, self.config)
        self.refusals.record(reason, f"peer {address}: {text}")

    async def _previous_is_dead(self) -> bool:
        """Is a registered process with this node's name gone (crashed, not yet expired)?

        Asked before this node listens on its peer port: if the name's advertised peer port
        refuses connections, nothing serves it any more.
        """
        rows = await registry.list_nodes(self.db)
        old = next((r for r in rows if r.name == self.name), None)
        if old is None or not old.peer:
            return False
        try:
            host, port = parse_address(old.peer)
            async with asyncio.timeout(1.0):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError, ValueError):
            return True
        writer.close()
        return False

    async def start(self) -> None:
        self.check()
        if self.config.tls.enabled and self.settings.peer_tls:
            warning = trust.certificate_warning(self.config.tls.certificate)
            if warning:
                log.warning("pool: %s", warning)
        takeover = await self._previous_is_dead()
        loop = asyncio.get_running_loop()
        host, port = parse_address(self.config.listen.peer)
        tls = trust.server_context(self.config)  # the files were checked by the node's start
        try:
            self._server = await loop.create_server(
                lambda: PeerLink(self, "acceptor", tls=tls),
                host,
                port,
                reuse_address=True,
            )
        except OSError as exc:
            raise PoolError(
                f"listen.peer: cannot listen on {self.config.listen.peer}: {exc}"
            ) from None
        bound = self._server.sockets[0].getsockname()
        self.peer_address = (bound[0], bound[1])
        s = self.settings
        self.addresses = {
            "tcp": s.advertise_tcp
            or advertised(self.config.listen.tcp, self._client_addresses.get("tcp")),
            "websocket": s.advertise_websocket
            or advertised(self.config.listen.websocket, self._client_addresses.get("websocket")),
            "peer": s.advertise_peer or advertised(self.config.listen.peer, self.peer_address),
            "management": s.advertise_management
            or advertised(self.config.listen.management, self._client_addresses.get("management")),
        }
        try:
            self.state = await registry.join(
                self.db,
                self.name,
                self.addresses,
                started_ms=self.started_ms,
                max_active=s.max_active,
                dead_after_ms=int(s.dead_after_s * 1000),
                takeover=takeover,
            )
        except registry.NameTaken as exc:
            raise PoolError(str(exc)) from None
        self._joined = True
        self._metrics.register(PoolCollector(self))
        await self._beat()
        self._tasks = [
            loop.create_task(self._heartbeats(), name="pool-heartbeat"),
            loop.create_task(self._keepalive(), name="pool-keepalive"),
            loop.create_task(
                self.catch_up.loop(s.catchup_interval_s, self._all_linked), name="pool-catch-up"
            ),
        ]
        log.info("pool: node %s joined as %s, peer port %s", self.name, self.state, bound[1])

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for task in [*self._tasks, *self._dialing.values()]:
            task.cancel()
        self.inbox.stop()
        if self._server is not None:
            self._server.close()
        links = list(self.links.values())
        for link in links:
            link.close()
        if links:
            await asyncio.wait([link.closed for link in links], timeout=2)
        if not self._joined:
            return
        try:
            await registry.leave(self.db, self.name, self.started_ms)
        except Exception as exc:  # the store may be gone; the row expires by itself
            log.warning("pool: could not leave the registry: %s", exc)

    def refresh(self) -> None:
        """Read the registry now rather than at the next heartbeat."""
        self._refresh.set()

    # -- what clients are told --------------------------------------------------------------

    def active_nodes(self) -> list[dict[str, str]]:
        return [
            {"node": row.name, "tcp": row.tcp, "websocket": row.websocket}
            for row in self.nodes
            if row.state == ACTIVE
        ]

    def hello_info(self) -> dict[str, Any]:
        return {"state": self.state, "active": self.active_nodes()}

    def refusal(self) -> str | None:
        """Why this node takes no new clients now (standby, draining), or None."""
        if self.state == STANDBY:
            return f"node {self.name} is a standby node; connect to an active node"
        if self.state == DRAINING:
            return f"node {self.name} is draining; connect to an active node"
        return None

    def announce_nodes(self) -> None:
        """The registry changed (pool control): tell the peers and read it now."""
        self.publisher.send(NodesChanged())
        self.refresh()

    # -- links ------------------------------------------------------------------------------

    def link_opened(self, link: PeerLink) -> None:
        name = link.peer
        assert name is not None
        old = self.links.get(name)
        if old is not None and old is not link:
            log.warning(
                "pool: peer link %s (%s) replaces the open one from %s (a restart, or an"
                " impostor holding the pool secret)",
                name,
                link.address,
                old.address,
            )
            old.close()
        self.links[name] = link
        link.trusted_after = time.monotonic() + self.probation_s
        self._backoff.pop(name, None)
        log.info("pool: peer link %s up (%s)", name, link.address)
        # Events may have been missed while the link was down: re-read what caches hold (rights,
        # run-time settings) and re-check the policy of every user connected here.
        self.hub.drop_idle()
        self.inbox.put(name, [CategoriesChanged(), SettingsChanged(), Recheck()])
        self.catch_up.suspect(now=True)  # the peer's commits before its side opened went nowhere
        self._roster.link_opened()  # this node's participants, for the new peer

    def link_closed(self, link: PeerLink) -> None:
        name = link.peer
        if name is not None and self.links.get(name) is link:
            del self.links[name]
            self.publisher.frames_sent_closed += link.frames_sent
            self.catch_up.suspect()
            log.info("pool: peer link %s down", name)
            self._roster.node_gone(name)
            if not self._stopping:
                self._refresh.set()

    async def _dial(self, row: NodeRow) -> None:
        name = row.name
        try:
            delay = self._backoff.get(name, 0.0)
            if delay:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            self._backoff[name] = min(max(delay * 2, 0.1), MAX_BACKOFF_S)
            host, port = parse_address(row.peer)
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    tls = trust.client_context(self.config)
                    _transport, link = await loop.create_connection(
                        lambda: PeerLink(self, "connector", expect=name),
                        host,
                        port,
                        ssl=tls,
                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if tls else None,
                    )
            except ssl.SSLError as exc:
                self.tls_failed(f"{name} at {row.peer}", exc)
                return
            except (OSError, TimeoutError) as exc:
                log.debug("pool: cannot reach %s at %s: %s", name, row.peer, exc)
                return
            await link.closed
        finally:
            self._dialing.pop(name, None)
            if not self._stopping:
                self._refresh.set()

    # -- receiving --------------------------------------------------------------------------

    def received(self, link: PeerLink, command: Command) -> None:
        self.frames_received[command.name] = self.frames_received.get(command.name, 0) + 1
        if command.name != EVENTS:
            return
        raw: list[dict[str, Any]] = command.fields["events"]
        self.events_received += len(raw)
        events: list[PeerEvent] = []
        for wire in raw:
            self.events_by_type[wire["t"]] += 1
            try:
                event = decode(wire)
                if isinstance(event, RosterChanged | RosterSnapshot) and event.node != link.peer:
                    raise ValueError(f"a roster event naming {event.node!r}")
                events.append(event)
            except ValueError as exc:
                log.warning("pool: ignoring an event from %s: %s", link.peer, exc)
        assert link.peer is not None
        if events:
            # Messages are checked against the store on a link's first probation_s seconds, and
            # while the peer's heartbeat is stale (a node that cannot write the store commits
            # nothing): an impostor using the name of a node that died, or displacing a live
            # one, is on such a link.
            verify = time.monotonic() < link.trusted_after or link.peer in self._unbeating
            closing = link.transport is None or link.transport.is_closing()
            if not self.inbox.put(link.peer, events, verify=verify) and not closing:
                log.warning("pool: events from %s pile up unapplied; closing the link", link.peer)
                self.catch_up.suspect(now=True)
                link.close()

    # -- membership -------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = self.settings.heartbeat_s
        failed = 0
        while True:
            try:
                await asyncio.wait_for(self._refresh.wait(), interval)
            except TimeoutError:
                pass
            self._refresh.clear()
            try:
                await self._beat()
            except Exception as exc:
                failed += 1
                if failed == 1:  # one line per change of state, not one per beat
                    log.warning("pool: heartbeat failed: %s (retrying)", describe(exc))
                continue
            if failed:
                log.warning("pool: heartbeat written again after %d failed attempts", failed)
                failed = 0

    async def _keepalive(self) -> None:
        """Ping every link and close the silent ones, every ``heartbeat_s``.

        Apart from the registry heartbeat on purpose: that one waits for a store connection,
        and a node whose store connections are all busy (a join storm) is slow, not silent. Tied
        together, such a node stopped pinging, its peers closed their links, and the caches every
        link-up re-reads made the storm worse.
        """
        interval = self.settings.heartbeat_s
        timeout = self.settings.link_timeout_s
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for link in list(self.links.values()):
                if now - link.last_heard > timeout:
                    log.warning(
                        "pool: peer %s silent for %.1f s; closing the link", link.peer, timeout
                    )
                    link.close()
                    if link.transport is not None:
                        link.transport.abort()
                else:
                    link.ping()

    async def _beat(self) -> None:
        db, s = self.db, self.settings
        dead_after_ms = int(s.dead_after_s * 1000)
        state, rows, now = await registry.heartbeat(
            db,
            self.name,
            self.addresses,
            state=self.state,
            started_ms=self.started_ms,
            max_active=s.max_active,
            dead_after_ms=dead_after_ms,
        )
        stale, heard = expiry.judge(rows, now, self.links, s)  # a heard node is kept
        self._unbeating = set(heard)  # ... but what its link carries is checked (received())
        if stale and (await expiry.expire(db, s, stale, heard, self._audit)).promoted:
            self.announce_nodes()  # the standby hears it now, not at its next heartbeat
        known = {r.name for r in self.nodes}
        self.nodes = [r for r in rows if r.name not in stale]
        if any(r.name not in known and r.name != self.name for r in self.nodes):
            # It may have committed while no link carried it (stopped, expired, resumed).
            self.catch_up.suspect(now=True)
        self._follow_state(state)
        live = {r.name: r for r in self.nodes if r.name != self.name}
        for name, link in list(self.links.items()):
            if name not in live:
                link.close()
        for name, row in live.items():
            if name > self.name and name not in self.links and name not in self._dialing:
                self._dialing[name] = asyncio.get_running_loop().create_task(self._dial(row))

    def _follow_state(self, state: str) -> None:
        if state == self.state:
            return
        log.info("pool: node %s is now %s (was %s)", self.name, state, self.state)
        previous, self.state = self.state, state
        if state == DRAINING and previous != DRAINING:
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Tell every client to move to an active node, then stop this node."""
        for conn in self._connections:
            conn.send(Outgoing.event(Moved(self.active_nodes())))
            conn.close("moved")
        await asyncio.sleep(0.1)
        self.on_drained()

    # -- catch-up ---------------------------------------------------------------------------

    def _all_linked(self) -> bool:
        return all(row.name in self.links for row in self.nodes if row.name != self.name)

    async def view(self) -> dict[str, Any]:
        """The pool's nodes as the management API shows them (``GET /api/v1/pool``)."""
        rows, now = await registry.list_nodes_at(self.db)
        nodes = []
        for row in rows:
            out = row.public(now)
            del out["started_ms"], out["heartbeat_ms"]
            out["this_node"] = row.name == self.name
            out["linked"] = row.name in self.links
            nodes.append(out)
        return {"pooled": True, "nodes": nodes}
