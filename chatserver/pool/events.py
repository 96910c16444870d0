"""The events nodes of a pool send each other, one class each, with their encoding in one place.

An ``EVENTS`` frame (:mod:`chatserver.pool.protocol`) carries a list of maps with a type ``t``:

=================  ========================================================================
``msg``            a committed message (:class:`MessageStored`): ``m`` = the message as
                   clients see it, plus ``kept``
``room``           a room's settings or roles changed, or it was deleted (``room``: id)
``categories``     categories (and so possibly every room's rights) changed
``membership``     group membership changed
``edit``           messages were changed (replaced, removed, edited, deleted, reacted to), or
                   a room cleared (``room``, ``changes``: ``[[seq, state, text, {…}?], …]``,
                   ``clear``: seq or null); receivers re-read each seq from the store
``disconnect``     a user's live sessions must end (``user``, ``reason``)
``revoked``        session tokens were revoked (``user``, ``token``: a token hash or null for
                   all of the user's, ``keep``: a token hash or null, ``reason``)
``invited``        users were invited to a room (``room``, ``users``, ``by``)
``config``         run-time settings changed in the store (``key``, ``node``)
``read``           a user's read marker moved (``user``, ``room``, ``seq``)
``mentioned``      a stored message mentions users (``room``, ``seq``, ``ts``, ``sender``:
                   ``[id, name]``, ``text``: its start, ``users``)
``nodes``          the pool's registry changed (a node was activated, moved to standby, drained)
``feeds``          a user's saved topic feeds changed (``user``): re-read them from the store
``roster``         a user's first connection on ``node`` joined a room, or the last left
                   (``node``, ``room``, ``user``, ``name``, ``joined``: bool)
``roster.all``     part of ``node``'s participant seats, sent when a link opens (``node``,
                   ``seats``: ``[[room, user, name], …]``, ``first``, ``last``)
``recheck``        never sent: queued locally when a link comes up, to re-check every
                   connected user's policy (a ``disconnect`` may have been missed)
=================  ========================================================================

The governance changes are the rooms layer's own types (:mod:`chatserver.rooms.changes`); the
others are defined here. :func:`encode` and :func:`decode` are the only code that knows the wire
form. A peer is authenticated but still untrusted input: :func:`decode` checks every field and
raises :class:`ValueError` for a malformed event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..rooms.changes import (
    CategoriesChanged,
    Change,
    FeedsChanged,
    MembershipChanged,
    MessageChange,
    MessagesChanged,
    ReadMoved,
    RoomChanged,
    SettingsChanged,
    TokensRevoked,
    UserDisconnected,
    UsersInvited,
    UsersMentioned,
)
from ..rooms.roster import RosterChanged, RosterSnapshot
from ..store.messages import FileRef, Message


@dataclass(frozen=True, slots=True)
class MessageStored:
    message: Message


@dataclass(frozen=True, slots=True)
class NodesChanged:
    """The pool's registry changed: read it now rather than at the next heartbeat."""


@dataclass(frozen=True, slots=True)
class Recheck:
    """Re-check the policy of every user connected here (after a link came up)."""


PeerEvent = Change | MessageStored | NodesChanged | Recheck | RosterChanged | RosterSnapshot


def encode(event: PeerEvent) -> dict[str, Any]:
    match event:
        case MessageStored(message=m):
            return {"t": "msg", "m": {**m.wire(), "kept": m.kept}}
        case RoomChanged(room=room):
            return {"t": "room", "room": room}
        case CategoriesChanged():
            return {"t": "categories"}
        case MembershipChanged():
            return {"t": "membership"}
        case MessagesChanged(room=room, changes=changes, cleared_through=clear):
            return {
                "t": "edit",
                "room": room,
                "changes": [_change_wire(c) for c in changes],
                "clear": clear,
            }
        case UserDisconnected(user=user, reason=reason):
            return {"t": "disconnect", "user": user, "reason": reason}
        case TokensRevoked(user=user, token=token, keep=keep, reason=reason):
            return {"t": "revoked", "user": user, "token": token, "keep": keep, "reason": reason}
        case UsersInvited(room=room, users=users, by=by):
            return {"t": "invited", "room": room, "users": sorted(users), "by": by}
        case SettingsChanged(key=key, node=node):
            return {"t": "config", "key": key, "node": node}
        case ReadMoved(user=user, room=room, seq=seq):
            return {"t": "read", "user": user, "room": room, "seq": seq}
        case UsersMentioned():
            return {
                "t": "mentioned",
                "room": event.room,
                "seq": event.seq,
                "ts": event.ts,
                "sender": [event.sender_id, event.sender_name],
                "text": event.excerpt,
                "users": list(event.users),
            }
        case NodesChanged():
            return {"t": "nodes"}
        case FeedsChanged(user=user):
            return {"t": "feeds", "user": user}
        case Recheck():
            return {"t": "recheck"}
        case RosterChanged(node=node, room=room, user=user, name=name, joined=joined):
            return {
                "t": "roster",
                "node": node,
                "room": room,
                "user": user,
                "name": name,
                "joined": joined,
            }
        case RosterSnapshot(node=node, seats=seats, first=first, last=last):
            return {
                "t": "roster.all",
                "node": node,
                "seats": [list(s) for s in seats],
                "first": first,
                "last": last,
            }
    raise TypeError(f"not a peer event: {event!r}")


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("not an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _message(e: dict[str, Any]) -> MessageStored:
    m = e["m"]
    if not isinstance(m, dict) or not isinstance(m.get("sender"), dict):
        raise ValueError("a message event needs a message map")
    return MessageStored(
        Message(
            room=_int(m["room"]),
            seq=_int(m["seq"]),
            ts=_int(m["ts"]),
            sender_id=_int(m["sender"]["id"]),
            sender_name=_str(m["sender"]["name"]),
            text=_str(m["text"]),
            cid=_str(m["cid"]),
            kept=bool(m.get("kept", True)),
            state=_str(m.get("state", "")),
            file=_file(m.get("file")),
            reply_to=_opt_int(m.get("reply_to")),
        )
    )


def _file(f: Any) -> FileRef | None:
    """The file a message event carries (``m.file``), if any."""
    if f is None:
        return None
    if not isinstance(f, dict):
        raise ValueError("a message's file must be a map")
    return FileRef(
        _int(f["id"]), _str(f["name"]), _int(f["size"]), _str(f["media_type"]), _str(f["sha256"])
    )


def _change_wire(c: MessageChange) -> list[Any]:
    """``[seq, state, text]``, and for users' changes a fourth item: ``{change, edited_ts,
    reactions: [[emoji, count], …], reaction: [user, emoji, added]}``."""
    out: list[Any] = [c.seq, c.state, c.text]
    if c.change_no is not None or c.reactions is not None or c.reaction is not None:
        extra: dict[str, Any] = {"change": c.change_no, "edited_ts": c.edited_ts}
        extra["reactions"] = None if c.reactions is None else [list(r) for r in c.reactions]
        extra["reaction"] = None if c.reaction is None else list(c.reaction)
        out.append(extra)
    return out


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _change(change: Any) -> MessageChange:
    if not isinstance(change, list) or len(change) not in (3, 4):
        raise ValueError("a change is [seq, state, text] or [seq, state, text, {…}]")
    seq, state, text = _int(change[0]), _str(change[1]), _str(change[2])
    if len(change) == 3:
        return MessageChange(seq, state, text)
    extra = change[3]
    if not isinstance(extra, dict):
        raise ValueError("a change's fourth item is a map")
    counts = extra.get("reactions")
    reactions = None
    if counts is not None:
        if not isinstance(counts, list) or len(counts) > 1000:
            raise ValueError("reactions must be a list of [emoji, count]")
        reactions = tuple((_str(r[0]), _int(r[1])) for r in counts)
    what = extra.get("reaction")
    reaction = None
    if what is not None:
        if not isinstance(what, list) or len(what) != 3 or not isinstance(what[2], bool):
            raise ValueError("reaction must be [user, emoji, added]")
        reaction = (_int(what[0]), _str(what[1]), what[2])
    return MessageChange(
        seq,
        state,
        text,
        _opt_int(extra.get("change")),
        _opt_int(extra.get("edited_ts")),
        reactions,
        reaction,
    )


def _edit(e: dict[str, Any]) -> MessagesChanged:
    changes = e.get("changes", [])
    if not isinstance(changes, list):
        raise ValueError("changes must be a list")
    out = [_change(change) for change in changes]
    clear = e.get("clear")
    return MessagesChanged(_int(e["room"]), tuple(out), _int(clear) if clear is not None else None)


def _invited(e: dict[str, Any]) -> UsersInvited:
    users = e.get("users", [])
    if not isinstance(users, list):
        raise ValueError("users must be a list")
    by = e.get("by")
    if by is not None and not isinstance(by, dict):
        raise ValueError("by must be a map or null")
    return UsersInvited(_int(e["room"]), tuple(_int(u) for u in users), by)


def _hash_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("a token hash is 64 hex digits or null")
    return value


def _revoked(e: dict[str, Any]) -> TokensRevoked:
    return TokensRevoked(
        _int(e["user"]),
        _hash_or_none(e.get("token")),
        _hash_or_none(e.get("keep")),
        _str(e.get("reason", "revoked")),
    )


def _mentioned(e: dict[str, Any]) -> UsersMentioned:
    users, sender = e["users"], e["sender"]
    if not isinstance(users, list) or len(users) > 1000:
        raise ValueError("users must be a list")
    if not isinstance(sender, list) or len(sender) != 2:
        raise ValueError("sender is [id, name]")
    return UsersMentioned(
        _int(e["room"]),
        _int(e["seq"]),
        _int(e["ts"]),
        _int(sender[0]),
        _str(sender[1]),
        _str(e["text"]),
        tuple(_int(u) for u in users),
    )


def _config(e: dict[str, Any]) -> SettingsChanged:
    node = e.get("node")
    return SettingsChanged(_str(e.get("key", "")), _str(node) if node is not None else None)


def _roster(e: dict[str, Any]) -> RosterChanged:
    joined = e["joined"]
    if not isinstance(joined, bool):
        raise ValueError("joined must be a bool")
    return RosterChanged(_str(e["node"]), _int(e["room"]), _int(e["user"]), _str(e["name"]), joined)


def _roster_all(e: dict[str, Any]) -> RosterSnapshot:
    seats = e["seats"]
    if not isinstance(seats, list):
        raise ValueError("seats must be a list")
    out = []
    for seat in seats:
        if not isinstance(seat, list) or len(seat) != 3:
            raise ValueError("a seat is [room, user, name]")
        out.append((_int(seat[0]), _int(seat[1]), _str(seat[2])))
    first, last = e["first"], e["last"]
    if not isinstance(first, bool) or not isinstance(last, bool):
        raise ValueError("first and last must be bools")
    return RosterSnapshot(_str(e["node"]), tuple(out), first, last)


_DECODERS: dict[str, Callable[[dict[str, Any]], PeerEvent]] = {
    "msg": _message,
    "room": lambda e: RoomChanged(_int(e["room"])),
    "categories": lambda e: CategoriesChanged(),
    "membership": lambda e: MembershipChanged(),
    "edit": _edit,
    "disconnect": lambda e: UserDisconnected(_int(e["user"]), _str(e.get("reason", "disabled"))),
    "revoked": _revoked,
    "invited": _invited,
    "config": _config,
    "nodes": lambda e: NodesChanged(),
    "feeds": lambda e: FeedsChanged(_int(e["user"])),
    "read": lambda e: ReadMoved(_int(e["user"]), _int(e["room"]), _int(e["seq"])),
    "mentioned": _mentioned,
    "recheck": lambda e: Recheck(),
    "roster": _roster,
    "roster.all": _roster_all,
}

# The event types a peer may send (``recheck`` is only ever queued locally).
EVENT_TYPES = frozenset(_DECODERS) - {"recheck"}


def decode(e: dict[str, Any]) -> PeerEvent:
    """The event a map from a peer stands for; ``ValueError`` if it is malformed."""
    try:
        return _DECODERS[e["t"]](e)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {e.get('t')!r} event: {exc}") from None
