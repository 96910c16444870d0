"""The participant roster: who is in a room right now, on any node of the pool.

A user is *in* a room while at least one of their connections has joined it (on any node); a
user joined from several connections, or on several nodes, counts once. Each node knows its own
joined sessions (:meth:`Roster.enter` / :meth:`Roster.exit`, called by the session) and hears
the others' over the pool:

- when a user's first connection on this node joins a room, or their last one here leaves it,
  the node sends its peers a :class:`RosterChanged`;
- when a peer link opens, the node sends a full :class:`RosterSnapshot` of its own seats (in
  chunks), which replaces what the peers held for it;
- when a peer link closes (a node stopped, died, or went silent for ``link_timeout_s``), its
  seats are dropped at once (:meth:`Roster.node_gone`): a killed node's users leave the roster
  when the kernel resets its links, at the latest ``link_timeout_s + heartbeat_s`` later.

Live ``joined`` / ``left`` events go to the room's live subscribers on this node (sessions that
passed the read check when they joined and lose the subscription when they lose the right:
:class:`~chatserver.rooms.enforcement.Enforcement`), except the user concerned — unless the room
has more than ``participant_update_limit`` participants: then no roster events are sent, and a
``participants.updates`` event says so when the room crosses the limit (either way).

Memory: one seat per (room, user) joined here, plus the peers' seats, which are capped at
:data:`MAX_REMOTE_SEATS` (a peer's word beyond that is dropped and logged).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..protocol.events import Outgoing, ParticipantJoined, ParticipantLeft, ParticipantUpdates
from .hub import Hub

log = logging.getLogger(__name__)

# Seats held for all peers together at most.
MAX_REMOTE_SEATS = 1_000_000
# Seats per snapshot event (a snapshot is sent as several events).
SNAPSHOT_CHUNK = 1000
# Participants listed in a reply at most (``count`` is always the whole number).
MAX_LISTED = 1000


@dataclass(frozen=True, slots=True)
class RosterChanged:
    """A user's first connection on ``node`` joined ``room`` (``joined``), or their last left."""

    node: str
    room: int
    user: int
    name: str
    joined: bool


@dataclass(frozen=True, slots=True)
class RosterSnapshot:
    """Part of ``node``'s seats: ``(room, user, name)``. ``first`` starts a snapshot, ``last``
    ends it (then it replaces what was held for ``node``)."""

    node: str
    seats: tuple[tuple[int, int, str], ...]
    first: bool
    last: bool


RosterEvent = RosterChanged | RosterSnapshot


class _Seat:
    """One user in one room: their name, the nodes they are joined on, their connections here."""

    __slots__ = ("local", "name", "nodes")

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: set[str] = set()
        self.local = 0


class Roster:
    def __init__(
        self,
        node: str,
        hub: Hub,
        limit: Callable[[], int],
        send: Callable[[RosterEvent], None] | None = None,
    ) -> None:
        """``limit`` reads ``participant_update_limit`` (a run-time setting); ``send`` tells
        the pool's other nodes (``None`` on a single node)."""
        self._node = node
        self._hub = hub
        self._limit = limit
        self._send = send
        self._rooms: dict[int, dict[int, _Seat]] = {}
        # node -> room -> users: what each peer said it holds.
        self._remote: dict[str, dict[int, set[int]]] = {}
        self._remote_count = 0
        self._incoming: dict[str, list[tuple[int, int, str]]] = {}
        self._warned = False

    # -- reading ----------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._limit()

    def count(self, room: int) -> int:
        return len(self._rooms.get(room, ()))

    def listing(self, room: int) -> dict[str, Any]:
        """The reply fields of ``room.participants`` (the caller checked the right to read)."""
        seats = self._rooms.get(room, {})
        people = heapq.nsmallest(MAX_LISTED, seats.items(), key=lambda i: (i[1].name, i[0]))
        return {
            "room": room,
            "participants": [{"id": uid, "name": seat.name} for uid, seat in people],
            "count": len(seats),
            "updates": len(seats) <= self.limit,
            "limit": self.limit,
        }

    def remote_seats(self) -> int:
        return self._remote_count

    # -- this node's sessions ---------------------------------------------------------------

    def enter(self, room: int, user: int, name: str) -> None:
        """A connection of ``user`` here joined ``room``."""
        seat = self._rooms.setdefault(room, {}).get(user)
        if seat is None:
            seat = self._rooms[room][user] = _Seat(name)
        seat.local += 1
        if seat.local == 1:
            self._publish(RosterChanged(self._node, room, user, name, True))
            self._add_node(room, user, seat, self._node)

    def exit(self, room: int, user: int) -> None:
        """A connection of ``user`` here left ``room`` (or closed, or lost the room)."""
        seat = self._rooms.get(room, {}).get(user)
        if seat is None or seat.local == 0:
            return
        seat.local -= 1
        if seat.local == 0:
            self._publish(RosterChanged(self._node, room, user, seat.name, False))
            self._remove_node(room, user, self._node)

    def _publish(self, event: RosterEvent) -> None:
        if self._send is not None:
            self._send(event)

    def link_opened(self) -> None:
        """A peer link opened: send this node's seats, which replace what peers held for it."""
        mine = [
            (room, user, seat.name)
            for room, seats in self._rooms.items()
            for user, seat in seats.items()
            if seat.local
        ]
        chunks = [mine[i : i + SNAPSHOT_CHUNK] for i in range(0, len(mine), SNAPSHOT_CHUNK)]
        chunks = chunks or [[]]
        for i, chunk in enumerate(chunks):
            self._publish(RosterSnapshot(self._node, tuple(chunk), i == 0, i == len(chunks) - 1))

    # -- peers ------------------------------------------------------------------------------

    def apply(self, event: RosterEvent) -> None:
        """What a peer said (its link is open; the pool checked ``event.node`` is the peer)."""
        if event.node == self._node:
            return
        if isinstance(event, RosterChanged):
            if event.joined:
                self._remote_join(event.node, event.room, event.user, event.name)
            else:
                self._remote_leave(event.node, event.room, event.user)
            return
        if event.first:
            self._incoming[event.node] = []
        incoming = self._incoming.get(event.node)
        if incoming is None:
            return  # the start was missed (the link reopened meanwhile): a new one follows
        if len(incoming) + len(event.seats) > MAX_REMOTE_SEATS:
            self._refuse(event.node)
            self._incoming.pop(event.node, None)
            return
        incoming.extend(event.seats)
        if event.last:
            del self._incoming[event.node]
            self._replace(event.node, incoming)

    def node_gone(self, node: str) -> None:
        """``node``'s link closed: its users are no longer in any room (unless joined elsewhere)."""
        self._incoming.pop(node, None)
        held = self._remote.pop(node, {})
        for room, users in held.items():
            self._remote_count -= len(users)
            for user in users:
                self._remove_node(room, user, node)
        if held:
            log.info("roster: dropped the participants of node %s", node)

    def _replace(self, node: str, seats: list[tuple[int, int, str]]) -> None:
        new: dict[int, dict[int, str]] = {}
        for room, user, name in seats:
            new.setdefault(room, {})[user] = name
        old = self._remote.get(node, {})
        for room, users in list(old.items()):
            for user in list(users):
                if user not in new.get(room, {}):
                    self._remote_leave(node, room, user)
        for room, users_names in new.items():
            for user, name in users_names.items():
                self._remote_join(node, room, user, name)

    def _remote_join(self, node: str, room: int, user: int, name: str) -> None:
        users = self._remote.setdefault(node, {}).setdefault(room, set())
        if user in users:
            return
        if self._remote_count >= MAX_REMOTE_SEATS:
            self._refuse(node)
            return
        users.add(user)
        self._remote_count += 1
        seat = self._rooms.setdefault(room, {}).get(user)
        if seat is None:
            seat = self._rooms[room][user] = _Seat(name)
        self._add_node(room, user, seat, node)

    def _remote_leave(self, node: str, room: int, user: int) -> None:
        rooms = self._remote.get(node)
        users = rooms.get(room) if rooms is not None else None
        if users is None or user not in users:
            return
        users.discard(user)
        self._remote_count -= 1
        if not users:
            del rooms[room]  # type: ignore[union-attr]
        self._remove_node(room, user, node)

    def _refuse(self, node: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "roster: node %s claims more than %d participants; ignoring the excess",
                node,
                MAX_REMOTE_SEATS,
            )

    # -- the combined view and its events ---------------------------------------------------

    def _add_node(self, room: int, user: int, seat: _Seat, node: str) -> None:
        first = not seat.nodes
        seat.nodes.add(node)
        if first:
            count = len(self._rooms[room])
            self._announce(room, user, seat.name, True, count)

    def _remove_node(self, room: int, user: int, node: str) -> None:
        seats = self._rooms.get(room)
        seat = seats.get(user) if seats is not None else None
        if seats is None or seat is None:
            return
        seat.nodes.discard(node)
        if seat.nodes:
            return
        del seats[user]
        if not seats:
            del self._rooms[room]
        self._announce(room, user, seat.name, False, len(seats))

    def _announce(self, room: int, user: int, name: str, joined: bool, count: int) -> None:
        """Tell the room's subscribers here (not ``user``), unless the room is above the limit."""
        subscribers = self._hub.subscribers(room)
        if not subscribers:
            return
        limit = self.limit
        event: Any
        if count > limit:
            if not (joined and count == limit + 1):
                return
            event = ParticipantUpdates(room, False, count)  # it just went above the limit
        elif not joined and count == limit:
            event = ParticipantUpdates(room, True, count)  # back at the limit: read it again
        elif joined:
            event = ParticipantJoined(room, {"id": user, "name": name})
        else:
            event = ParticipantLeft(room, {"id": user, "name": name})
        item = Outgoing.event(event)
        for subscriber in subscribers:
            who = getattr(subscriber, "user", None)
            if who is not None and who.id == user and not isinstance(event, ParticipantUpdates):
                continue
            subscriber.send(item)
