"""Replies and events of the client protocol: one small class per event, encoded in one place,
at most once per wire format.

Every event the server sends (docs/protocol.md, section "Events") is a slotted dataclass below
with an ``EV`` name and a :meth:`~Event.wire` method that builds its map; nothing else in the
code writes ``{"ev": …}`` by hand. Replies are built by :func:`reply` and :func:`error_reply`.

Fan-out sends the same event to many connections; :class:`Outgoing` encodes it lazily, once for
each format in use (a TCP frame, a WebSocket binary frame, a WebSocket text frame), and every
subscriber on that format gets the same ``bytes`` object. Server-to-client WebSocket frames are not
masked, so the frame bytes are identical for every WebSocket subscriber.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from .codec import encode_json, encode_msgpack, tcp_frame

TCP = 0
WS_BINARY = 1
WS_TEXT = 2


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final WebSocket frame (RFC 6455 section 5.2)."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 65536:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


# -- events ---------------------------------------------------------------------------------
#
# The field order of each ``wire()`` map is the documented one (it fixes the encoded bytes).


class Event:
    """A server-to-client event."""

    __slots__ = ()
    EV: ClassVar[str]

    def wire(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(slots=True)
class MessagePosted(Event):
    """``message``: a stored message (its wire form, ``Message.wire()``) delivered live."""

    EV: ClassVar[str] = "message"
    message: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"ev": "message", **self.message}


@dataclass(slots=True)
class MessageChanged(Event):
    """``message.changed``: a stored message was replaced or removed."""

    EV: ClassVar[str] = "message.changed"
    room: int
    seq: int
    state: str  # "replaced" | "removed" | "edited" | "deleted" | "" (a reaction)
    text: str = ""  # the new text; not sent when removed or deleted
    change: int | None = None  # the room's change number (users' changes)
    edited_ts: int | None = None
    reactions: dict[str, int] | None = None  # the counts now, when they changed
    reaction: dict[str, Any] | None = None  # {user, emoji, added}: the reaction that changed

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ev": self.EV, "room": self.room, "seq": self.seq}
        out["state"] = self.state
        if self.state not in ("removed", "deleted"):
            out["text"] = self.text
        if self.change is not None:
            out["change"] = self.change
        if self.edited_ts is not None:
            out["edited_ts"] = self.edited_ts
        if self.reactions is not None:
            out["reactions"] = self.reactions
        if self.reaction is not None:
            out["reaction"] = self.reaction
        return out


@dataclass(slots=True)
class RoomCleared(Event):
    """``room.cleared``: every message up to ``through_seq`` was removed."""

    EV: ClassVar[str] = "room.cleared"
    room: int
    through_seq: int

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room, "through_seq": self.through_seq}


@dataclass(slots=True)
class Resync(Event):
    """``resync``: live delivery of ``room`` stopped; rejoin with ``since``."""

    EV: ClassVar[str] = "resync"
    room: int
    reason: str

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room, "reason": self.reason}


@dataclass(slots=True)
class ReadMarker(Event):
    """``read``: the user's read marker in ``room`` moved to ``seq`` (another session set it)."""

    EV: ClassVar[str] = "read"
    room: int
    seq: int

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room, "seq": self.seq}


@dataclass(slots=True)
class MentionEvent(Event):
    """``mention``: message ``seq`` of ``room`` mentions the user (``text``: its start)."""

    EV: ClassVar[str] = "mention"
    room: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    text: str

    def wire(self) -> dict[str, Any]:
        return {
            "ev": self.EV,
            "room": self.room,
            "seq": self.seq,
            "ts": self.ts,
            "sender": {"id": self.sender_id, "name": self.sender_name},
            "text": self.text,
        }


@dataclass(slots=True)
class RoomRemoved(Event):
    """``room.removed``: the user may no longer read ``room`` (or it is disabled or deleted)."""

    EV: ClassVar[str] = "room.removed"
    room: int
    reason: str

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room, "reason": self.reason}


@dataclass(slots=True)
class FeedHit(Event):
    """``feed``: a new message matches one of the user's saved topic feeds (``hit`` as a search
    hit: room, seq, ts, sender, snippet, highlights)."""

    EV: ClassVar[str] = "feed"
    feed: int
    name: str
    hit: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "feed": self.feed, "name": self.name, "hit": self.hit}


@dataclass(slots=True)
class FeedsUpdated(Event):
    """``feeds``: the user's saved feeds changed (on this or another connection or node)."""

    EV: ClassVar[str] = "feeds"
    feeds: list[dict[str, Any]]

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "feeds": self.feeds}


@dataclass(slots=True)
class RoomUpdated(Event):
    """``room.updated``: a joined room's settings or roles changed (``room`` as the user sees
    it)."""

    EV: ClassVar[str] = "room.updated"
    room: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room}


@dataclass(slots=True)
class Invited(Event):
    """``invited``: the user was invited to ``room`` by ``by`` (a user, or None)."""

    EV: ClassVar[str] = "invited"
    room: dict[str, Any]
    by: dict[str, Any] | None

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room, "by": self.by}


@dataclass(slots=True)
class Moved(Event):
    """``moved``: this node is draining; connect to one of ``active``."""

    EV: ClassVar[str] = "moved"
    active: list[dict[str, str]]

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "active": self.active}


@dataclass(slots=True)
class Bye(Event):
    """``bye``: the last thing the server sends before it closes the connection."""

    EV: ClassVar[str] = "bye"
    reason: str

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "reason": self.reason}


@dataclass(slots=True)
class ParticipantJoined(Event):
    """``joined``: ``user`` (``{id, name}``) is now in ``room`` (the participant roster)."""

    EV: ClassVar[str] = "joined"
    room: int
    user: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room, "user": self.user}


@dataclass(slots=True)
class ParticipantLeft(Event):
    """``left``: ``user`` (``{id, name}``) is no longer in ``room``."""

    EV: ClassVar[str] = "left"
    room: int
    user: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room, "user": self.user}


@dataclass(slots=True)
class ParticipantUpdates(Event):
    """``participants.updates``: ``room`` went above ``participant_update_limit`` participants
    (``updates`` false: no more ``joined``/``left``) or back to it (true: read the roster again)."""

    EV: ClassVar[str] = "participants.updates"
    room: int
    updates: bool
    count: int

    def wire(self) -> dict[str, Any]:
        return {"ev": self.EV, "room": self.room, "updates": self.updates, "count": self.count}


# Every event class by its name (docs and tests check the documented list against it).
EVENTS: dict[str, type[Event]] = {
    cls.EV: cls
    for cls in (
        MessagePosted,
        MessageChanged,
        RoomCleared,
        Resync,
        RoomRemoved,
        RoomUpdated,
        Invited,
        Moved,
        Bye,
        ParticipantJoined,
        ParticipantLeft,
        ParticipantUpdates,
    )
}


# -- replies --------------------------------------------------------------------------------


def reply(request_id: int | None, **fields: Any) -> dict[str, Any]:
    return {"re": request_id, "ok": True, **fields}


def error_reply(request_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"re": request_id, "ok": False, "error": {"code": code, "message": message}}


# -- encoding -------------------------------------------------------------------------------


class Outgoing:
    """One reply or event and its encodings."""

    __slots__ = ("_encoded", "obj")

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self._encoded: list[bytes | None] = [None, None, None]

    @classmethod
    def event(cls, event: Event) -> Outgoing:
        return cls(event.wire())

    def encoded(self, fmt: int) -> bytes:
        data = self._encoded[fmt]
        if data is None:
            if fmt == TCP:
                data = tcp_frame(encode_msgpack(self.obj))
            elif fmt == WS_BINARY:
                data = ws_frame(0x2, encode_msgpack(self.obj))
            else:
                data = ws_frame(0x1, encode_json(self.obj))
            self._encoded[fmt] = data
        return data
