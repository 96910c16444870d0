"""A node's side of the pool: membership, peer links, event fan-out and catch-up.

::

     writer commit ──► hub.deliver (local)          governance change ──► publish
            │                                                │
            └──────────────► Pool.publish ◄──────────────────┘
                                  │  one EVENTS frame per peer per loop turn
                                  ▼
                      PeerLink ─── TCP 8011 ─── PeerLink (other node)
                                                    │
                                  Pool._apply ◄─────┘  hub.deliver / cache drop + enforce

    heartbeat task: upsert own row, read the registry, expire stale rows, dial missing links,
                    follow state changes (standby, draining)
    keep-alive task: ping links, close silent ones (no store access: a busy store must not
                    make a node look dead to its peers)
    catch-up task:  every catchup_interval_s while a peer link is down or after one was lost
                    (else every SAFETY_POLL_ROUNDS intervals), for each loaded room compare the
                    hub's last_seq with the store's and deliver what is missing (the bound on
                    delivery delay when a peer link is down)

A peer's word is never a store write: received messages only reach the hub, which delivers
them in ``seq`` order and fills any gap from the store; received changes only drop caches, which
are then re-read from the store.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import Config, parse_address
from ..protocol.events import Outgoing
from ..rooms.hub import MessageChange
from ..store import messages as message_store
from ..store import users as user_store
from ..store.db import now_ms
from ..store.messages import Message
from . import registry
from .protocol import CLOSED, EVENT_TYPES, EVENTS, PING, Command, PeerProtocol
from .registry import ACTIVE, DRAINING, STANDBY, NodeRow

if TYPE_CHECKING:
    from ..rooms.service import ChatService
    from ..server import Node, NodeState

log = logging.getLogger("chatserver.pool")

HANDSHAKE_TIMEOUT_S = 5.0
# With every peer linked, the catch-up still polls the store every this many intervals (a safety
# net for an event lost some way nobody noticed).
SAFETY_POLL_ROUNDS = 15

# A link whose peer has not drained this much output is dropped (the peer catches up from the
# store instead of this node holding an unbounded backlog).
MAX_LINK_BACKLOG = 64 * 1024 * 1024
MAX_BACKOFF_S = 2.0


class PoolError(Exception):
    """The pool cannot start; the message says why."""


def is_loopback(address: str) -> bool:
    host, _ = parse_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _advertised(address: str, bound: tuple[str, int] | None) -> str:
    """``host:port`` others should use: the configured host with the bound port."""
    if not address:
        return ""
    host, port = parse_address(address)
    if bound is not None:
        port = bound[1]
    if host in ("0.0.0.0", "::", ""):
        raise PoolError(
            f"cannot advertise wildcard address {address!r}: set pool.advertise_tcp,"
            " pool.advertise_websocket and pool.advertise_peer"
        )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerLink(asyncio.Protocol):
    """One authenticated (or authenticating) TCP link to another node."""

    def __init__(self, pool: Pool, role: str, expect: str | None = None) -> None:
        self.pool = pool
        self.proto = PeerProtocol(role, pool.name, pool.secret, expect=expect)
        self.transport: asyncio.Transport | None = None
        self.pending: list[dict[str, Any]] = []
        self._flush_scheduled = False
        self.last_heard = time.monotonic()
        self.opened = False
        self.closed = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None
        self.address = "?"

    @property
    def peer(self) -> str | None:
        return self.proto.peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._too_slow)
        self._write()

    def _too_slow(self) -> None:
        if not self.proto.is_open and self.transport is not None:
            log.warning("peer %s: no handshake within %.0f s", self.address, HANDSHAKE_TIMEOUT_S)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        commands = self.proto.receive_data(data)
        if self.proto.is_open and not self.opened:
            self.opened = True
            if self._timer is not None:
                self._timer.cancel()
            self.pool.link_opened(self)
        self._write()
        for command in commands:
            self.pool.received(self, command)
        if self.proto.state == CLOSED and self.transport is not None:
            if not self.opened or self.proto.close_reason:
                log.warning("peer %s: %s", self.peer or self.address, self.proto.close_reason)
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.pool.link_closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def _write(self) -> None:
        data = self.proto.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            if self.transport.get_write_buffer_size() > MAX_LINK_BACKLOG:
                log.warning("peer %s: not keeping up; dropping the link", self.peer)
                self.transport.abort()

    def queue(self, event: dict[str, Any]) -> None:
        self.pending.append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.pending or not self.proto.is_open:
            self.pending.clear()
            return
        events, self.pending = self.pending, []
        self.proto.send_events(events)
        self.pool.frames_sent += 1
        self._write()

    def ping(self) -> None:
        if self.proto.is_open:
            self.proto.send_ping(now_ms())
            self._write()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Pool:
    """This node's membership in a pool; see the module docstring."""

    def __init__(
        self,
        config: Config,
        service: ChatService,
        node: NodeState,
        client_addresses: dict[str, tuple[str, int]],
        *,
        host: Node | None = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.host = host  # the Node, for its hooks (settings reload, message edits)
        self.settings = config.pool
        self.service = service
        self.node = node
        self.name = config.node.name
        self.secret = config.pool.secret
        self._client_addresses = client_addresses
        self.on_drained = on_drained or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self.started_ms = now_ms()
        self.state = ACTIVE
        self.nodes: list[NodeRow] = []
        self.links: dict[str, PeerLink] = {}
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, float] = {}
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._inbox: deque[tuple[str, list[dict[str, Any]]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._refresh = asyncio.Event()
        self._stopping = False
        self.addresses: dict[str, str] = {}
        self.peer_address: tuple[str, int] | None = None
        # Observations (metrics, tests, the management API).
        self.frames_sent = 0
        self.events_received = 0
        self.events_by_type: dict[str, int] = dict.fromkeys(sorted(EVENT_TYPES), 0)
        self.frames_received: dict[str, int] = {PING: 0, EVENTS: 0}
        self.caught_up = 0
        self.catch_up_polls = 0
        self.links_opened = 0
        # Set when a peer link is lost (and at start): the next catch-up interval polls the
        # store even if every link is up again by then.
        self._link_lost = True

    # -- start and stop ---------------------------------------------------------------------

    def check(self) -> None:
        """Refuse configurations that cannot work, before anything starts."""
        if not self.service.db.is_postgres:
            raise PoolError(
                "pool.enabled needs a PostgreSQL store shared by every node: database.url is"
                " SQLite, which one node owns alone; set database.url to postgresql://…"
                " or turn pool.enabled off"
            )
        if not self.config.listen.peer:
            raise PoolError("pool.enabled needs listen.peer (the TCP 8011 peer port)")
        if not self.secret and not is_loopback(self.config.listen.peer):
            raise PoolError(
                f"listen.peer {self.config.listen.peer} is not a loopback address:"
                " set pool.secret (the same on every node) so peers can prove who they are"
            )

    def _server_tls(self) -> ssl.SSLContext | None:
        if not (self.config.tls.enabled and self.settings.peer_tls):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls.certificate, self.config.tls.key or None)
        return context

    def _client_tls(self) -> ssl.SSLContext | None:
        if not (self.config.tls.enabled and self.settings.peer_tls):
            return None
        context = ssl.create_default_context(
            cafile=self.settings.peer_ca or self.config.tls.certificate
        )
        context.check_hostname = False  # peers are known by their proof, not their host name
        return context

    async def _previous_is_dead(self) -> bool:
        """Is a registered process with this node's name gone (crashed, not yet expired)?

        Asked before this node listens on its peer port: if the name's advertised peer port
        refuses connections, nothing serves it any more.
        """
        rows = await registry.list_nodes(self.service.db)
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
        takeover = await self._previous_is_dead()
        loop = asyncio.get_running_loop()
        host, port = parse_address(self.config.listen.peer)
        try:
            self._server = await loop.create_server(
                lambda: PeerLink(self, "acceptor"),
                host,
                port,
                ssl=self._server_tls(),
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
            or _advertised(self.config.listen.tcp, self._client_addresses.get("tcp")),
            "websocket": s.advertise_websocket
            or _advertised(self.config.listen.websocket, self._client_addresses.get("websocket")),
            "peer": s.advertise_peer or _advertised(self.config.listen.peer, self.peer_address),
            "management": "",
        }
        try:
            self.state = await registry.join(
                self.service.db,
                self.name,
                self.addresses,
                started_ms=self.started_ms,
                max_active=s.max_active,
                dead_after_ms=int(s.dead_after_s * 1000),
                takeover=takeover,
            )
        except registry.NameTaken as exc:
            raise PoolError(str(exc)) from None
        self._hook_service()
        self.node.metrics.registry.register(PoolCollector(self))
        await self._beat()
        self._tasks = [
            loop.create_task(self._heartbeats(), name="pool-heartbeat"),
            loop.create_task(self._keepalive(), name="pool-keepalive"),
            loop.create_task(self._catch_up_loop(), name="pool-catch-up"),
        ]
        log.info("pool: node %s joined as %s, peer port %s", self.name, self.state, bound[1])

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for task in [*self._tasks, *self._dialing.values()]:
            task.cancel()
        if self._worker is not None:
            self._worker.cancel()
        if self._server is not None:
            self._server.close()
        links = list(self.links.values())
        for link in links:
            link.close()
        if links:
            await asyncio.wait([link.closed for link in links], timeout=2)
        try:
            await registry.leave(self.service.db, self.name, self.started_ms)
        except Exception as exc:  # the store may be gone; the row expires by itself
            log.warning("pool: could not leave the registry: %s", exc)

    # -- hooks into this node ---------------------------------------------------------------

    def _hook_service(self) -> None:
        service = self.service
        service.writer.add_listener(self.publish_messages)
        service.governance.publish = self.publish
        # The node's hooks (chatserver.server.Node): message edits made here go to the peers.
        if self.host is not None:
            self.host.message_change_listeners.append(self.publish_message_changes)

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

    # -- sending ----------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        """Send a committed event to every peer (in the frame of this loop turn)."""
        for link in self.links.values():
            if link.proto.is_open:
                link.queue(event)

    def publish_messages(self, messages: list[Message]) -> None:
        if not self.links:
            return
        for m in messages:
            self.publish({"t": "msg", "m": {**m.wire(), "kept": m.kept}})

    def publish_message_changes(
        self, room_id: int, changes: list[MessageChange], cleared_through: int | None
    ) -> None:
        self.publish(
            {
                "t": "edit",
                "room": room_id,
                "changes": [[c.seq, c.state, c.text] for c in changes],
                "clear": cleared_through,
            }
        )

    def publish_config(self, key: str = "", node: str | None = None) -> None:
        """Tell the peers run-time settings changed in the store; each reloads them."""
        self.publish({"t": "config", "key": key, "node": node})

    def publish_disconnect(self, user_id: int, reason: str) -> None:
        """Tell the peers to close every connection of ``user_id``."""
        self.publish({"t": "disconnect", "user": user_id, "reason": reason})

    # -- links ------------------------------------------------------------------------------

    def link_opened(self, link: PeerLink) -> None:
        name = link.peer
        assert name is not None
        old = self.links.get(name)
        if old is not None and old is not link:
            old.close()
        self.links[name] = link
        self._backoff.pop(name, None)
        self.links_opened += 1
        log.info("pool: peer link %s up (%s)", name, link.address)
        # Events may have been missed while the link was down: re-read what caches hold (rights,
        # run-time settings) and re-check the policy of every user connected here.
        self.service.hub.drop_idle()
        self._enqueue(name, [{"t": "categories"}, {"t": "config"}, {"t": "recheck"}])

    def link_closed(self, link: PeerLink) -> None:
        name = link.peer
        if name is not None and self.links.get(name) is link:
            del self.links[name]
            self._link_lost = True
            log.info("pool: peer link %s down", name)
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
                    _transport, link = await loop.create_connection(
                        lambda: PeerLink(self, "connector", expect=name),
                        host,
                        port,
                        ssl=self._client_tls(),
                    )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
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
        if command.name == PING:
            return
        if command.name == EVENTS:
            events: list[dict[str, Any]] = command.fields["events"]
            self.events_received += len(events)
            for event in events:
                self.events_by_type[event["t"]] += 1
            assert link.peer is not None
            self._enqueue(link.peer, events)

    def _enqueue(self, peer: str, events: list[dict[str, Any]]) -> None:
        if not self._inbox and self._worker is None and all(e["t"] == "msg" for e in events):
            self._deliver(events)  # the common case: no await, no task
            return
        self._inbox.append((peer, events))
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        messages = []
        for event in events:
            m = event.get("m")
            try:
                assert isinstance(m, dict)
                messages.append(
                    Message(
                        room=int(m["room"]),
                        seq=int(m["seq"]),
                        ts=int(m["ts"]),
                        sender_id=int(m["sender"]["id"]),
                        sender_name=str(m["sender"]["name"]),
                        text=str(m["text"]),
                        cid=str(m["cid"]),
                        kept=bool(m.get("kept", True)),
                        state=str(m.get("state", "")),
                    )
                )
            except (AssertionError, KeyError, TypeError, ValueError):
                log.warning("pool: ignoring a malformed message event")
        if messages:
            self.service.hub.deliver(messages)

    async def _work(self) -> None:
        """Apply received events in arrival order; changes are enforced before later messages."""
        try:
            while self._inbox:
                peer, events = self._inbox.popleft()
                batch: list[dict[str, Any]] = []
                for event in events:
                    if event["t"] == "msg":
                        batch.append(event)
                        continue
                    if batch:
                        self._deliver(batch)
                        batch = []
                    try:
                        await self._apply(event)
                    except Exception:
                        log.exception("pool: applying %s from %s failed", event.get("t"), peer)
                if batch:
                    self._deliver(batch)
        finally:
            self._worker = None
            if self._inbox:
                self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _apply(self, event: dict[str, Any]) -> None:
        gov = self.service.governance
        kind = event["t"]
        if kind == "room":
            room_id = int(event["room"])
            gov.forget_room(room_id, publish=False)
            room = await gov.room(room_id)
            if room is None:
                await gov.enforce([room_id], reason="deleted")
                self.service.hub.forget(room_id)
            else:
                await gov.enforce([room_id])
                await gov.announce_room(room_id)
        elif kind == "categories":
            gov.forget_all(publish=False)
            await gov.enforce()
        elif kind == "membership":
            gov.forget_membership(publish=False)
            await gov.enforce()
        elif kind == "disconnect":
            for member in list(gov.members.get(int(event["user"]), ())):
                member.disconnect(str(event.get("reason", "disabled")))
        elif kind == "invited":
            await self._apply_invited(event)
        elif kind == "edit":
            self._apply_edit(event)
        elif kind == "config":
            if self.host is not None:
                await self.host.settings_changed(publish=False)
        elif kind == "nodes":
            self._refresh.set()
        elif kind == "recheck":
            await self._recheck_policies()

    async def _recheck_policies(self) -> None:
        """Disconnect the users connected here whose persistent-chat policy was turned off
        while a link was down (the peer's ``disconnect`` event was lost)."""
        gov = self.service.governance
        connected = list(gov.members)
        # One query for every user connected here (a node holds thousands), not one each.
        users = await user_store.get_users(self.service.db, connected)
        for user_id in connected:
            user = users.get(user_id)
            if user is None or not gov.policy_enabled(user):
                for member in list(gov.members.get(user_id, ())):
                    member.disconnect("disabled")

    async def _apply_invited(self, event: dict[str, Any]) -> None:
        """Tell the invitees' sessions on this node, as the inviting node told its own."""
        gov = self.service.governance
        room_id = int(event["room"])
        room = await gov.room(room_id)
        category = await gov.category(room.category_id) if room else None
        if room is None or category is None:
            return
        for uid in event.get("users", []):
            for member in list(gov.members.get(int(uid), ())):
                if member.user is None:
                    continue
                member.invited_rooms.add(room_id)
                view = await gov.room_view(member.user, room, category)
                member.send(Outgoing({"ev": "invited", "room": view, "by": event.get("by")}))

    def _apply_edit(self, event: dict[str, Any]) -> None:
        """Messages replaced or removed on another node: this node's cache and subscribers."""
        changes = [MessageChange(int(s), str(st), str(t)) for s, st, t in event.get("changes", [])]
        clear = event.get("clear")
        self.service.hub.change_messages(
            int(event["room"]), changes, int(clear) if clear is not None else None
        )

    # -- membership -------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = self.settings.heartbeat_s
        while True:
            try:
                await asyncio.wait_for(self._refresh.wait(), interval)
            except TimeoutError:
                pass
            self._refresh.clear()
            try:
                await self._beat()
            except Exception as exc:
                log.warning("pool: heartbeat failed: %s", exc)

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
        db = self.service.db
        dead_after_ms = int(self.settings.dead_after_s * 1000)
        state, rows, now = await registry.heartbeat(
            db, self.name, self.addresses, state=self.state, started_ms=self.started_ms
        )
        stale = [r.name for r in rows if now - r.heartbeat_ms > dead_after_ms]
        if stale:
            gone = await registry.expire(db, dead_after_ms)
            if gone:
                log.info("pool: expired stale nodes %s", ", ".join(gone))
        self.nodes = [r for r in rows if r.name not in stale]
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
        for conn in list(self.node.connections):
            conn.send(Outgoing({"ev": "moved", "active": self.active_nodes()}))
            conn.close("moved")
        await asyncio.sleep(0.1)
        self.on_drained()

    # -- catch-up ---------------------------------------------------------------------------

    def _all_linked(self) -> bool:
        return all(row.name in self.links for row in self.nodes if row.name != self.name)

    async def _catch_up_loop(self) -> None:
        # While every peer is linked (and none was lost since the last poll), messages arrive
        # over the links and the store is polled only every SAFETY_POLL_ROUNDS intervals: a node
        # follows tens of thousands of rooms, and each poll reads all their last_seqs.
        quiet = 0
        while True:
            await asyncio.sleep(self.settings.catchup_interval_s)
            if not self._link_lost and self._all_linked() and quiet < SAFETY_POLL_ROUNDS:
                quiet += 1
                continue
            quiet = 0
            self._link_lost = False
            try:
                await self.catch_up()
            except Exception as exc:
                self._link_lost = True  # try again next interval
                log.warning("pool: catch-up failed: %s", exc)

    async def catch_up(self) -> int:
        """Deliver what the store has beyond the hub, for every room whose cache is loaded here
        (rooms with subscribers, and the idle ones a join would be answered from)."""
        hub = self.service.hub
        self.catch_up_polls += 1
        rooms = hub.loaded_rooms()
        if not rooms:
            return 0
        stored = await registry.room_seqs(self.service.db, rooms)
        found = 0
        for room_id, last in stored.items():
            known = hub.known_last_seq(room_id)
            if known is None or last <= known:
                continue
            missing = await message_store.after(
                self.service.db, room_id, known, 1000, include_removed=True
            )
            if missing:
                found += len(missing)
                hub.deliver(missing)
        if found:
            self.caught_up += found
            log.info("pool: caught up %d messages from the store", found)
        return found

    async def view(self) -> dict[str, Any]:
        """The pool's nodes as the management API shows them (``GET /api/v1/pool``)."""
        rows, now = await registry.list_nodes_at(self.service.db)
        nodes = []
        for row in rows:
            out = row.public(now)
            del out["started_ms"], out["heartbeat_ms"]
            out["this_node"] = row.name == self.name
            out["linked"] = row.name in self.links
            nodes.append(out)
        return {"pooled": True, "nodes": nodes}

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "state": self.state,
            "links": sorted(self.links),
            "frames_sent": self.frames_sent,
            "events_received": self.events_received,
            "caught_up": self.caught_up,
        }


class PoolCollector:
    """Prometheus series of the pool, read at scrape time (bounded labels: event types, states)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self.pool
        links = GaugeMetricFamily("chatserver_pool_links", "Open peer links")
        links.add_metric([], len(pool.links))
        yield links
        state = GaugeMetricFamily("chatserver_pool_state", "This node's state", labels=["state"])
        for name in (ACTIVE, STANDBY, DRAINING):
            state.add_metric([name], 1.0 if pool.state == name else 0.0)
        yield state
        sent = CounterMetricFamily("chatserver_pool_frames_sent", "EVENTS frames sent to peers")
        sent.add_metric([], pool.frames_sent)
        yield sent
        frames = CounterMetricFamily(
            "chatserver_pool_frames_received", "Frames received from peers", labels=["command"]
        )
        for name, count in sorted(pool.frames_received.items()):
            frames.add_metric([name], count)
        yield frames
        events = CounterMetricFamily(
            "chatserver_pool_events_received", "Events received from peers", labels=["type"]
        )
        for name, count in pool.events_by_type.items():
            events.add_metric([name], count)
        yield events
        caught = CounterMetricFamily(
            "chatserver_pool_caught_up_messages", "Messages delivered from the store by catch-up"
        )
        caught.add_metric([], pool.caught_up)
        yield caught
        polls = CounterMetricFamily(
            "chatserver_pool_catch_up_polls",
            "Catch-up polls of the store (while a peer link is down, after one was lost, and"
            " every few intervals otherwise)",
        )
        polls.add_metric([], pool.catch_up_polls)
        yield polls
