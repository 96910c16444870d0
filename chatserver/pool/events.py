"""The events nodes of a pool send each other, one class each, with their encoding in one place.

An ``EVENTS`` frame (:mod:`chatserver.pool.protocol`) carries a list of maps with a type ``t``:

=================  ========================================================================
``msg``            a committed message (:class:`MessageStored`): ``m`` = the message as
                   clients see it, plus ``kept``
``room``           a room's settings or roles changed, or it was deleted (``room``: id)
``categories``     categories (and so possibly every room's rights) changed
``membership``     group membership changed
``edit``           messages were replaced or removed, or a room cleared (``room``, ``changes``:
                   ``[[seq, state, text], …]``, ``clear``: seq or null)
``disconnect``     a user's live sessions must end (``user``, ``reason``)
``revoked``        session tokens were revoked (``user``, ``token``: a token hash or null for
                   all of the user's, ``keep``: a token hash or null, ``reason``)
``invited``        users were invited to a room (``room``, ``users``, ``by``)
``config``         run-time settings changed in the store (``key``, ``node``)
``nodes``          the pool's registry changed (a node was activated, moved to standby, drained)
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
    MembershipChanged,
    MessageChange,
    MessagesChanged,
    RoomChanged,
    SettingsChanged,
    TokensRevoked,
    UserDisconnected,
    UsersInvited,
)
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


PeerEvent = Change | MessageStored | NodesChanged | Recheck


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
                "changes": [[c.seq, c.state, c.text] for c in changes],
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
        case NodesChanged():
            return {"t": "nodes"}
        case Recheck():
            return {"t": "recheck"}
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


def _edit(e: dict[str, Any]) -> MessagesChanged:
    changes = e.get("changes", [])
    if not isinstance(changes, list):
        raise ValueError("changes must be a list")
    out = []
    for change in changes:
        if not isinstance(change, list) or len(change) != 3:
            raise ValueError("a change is [seq, state, text]")
        out.append(MessageChange(_int(change[0]), _str(change[1]), _str(change[2])))
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


def _config(e: dict[str, Any]) -> SettingsChanged:
    node = e.get("node")
    return SettingsChanged(_str(e.get("key", "")), _str(node) if node is not None else None)


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
    "recheck": lambda e: Recheck(),
}

# The event types a peer may send (``recheck`` is only ever queued locally).
EVENT_TYPES = frozenset(_DECODERS) - {"recheck"}


def decode(e: dict[str, Any]) -> PeerEvent:
    """The event a map from a peer stands for; ``ValueError`` if it is malformed."""
    try:
        return _DECODERS[e["t"]](e)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {e.get('t')!r} event: {exc}") from None
