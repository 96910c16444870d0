"""Committed changes that other nodes of a pool must hear about, and who tells them.

The rooms layer makes these changes and says so through a :class:`Publisher` passed in by the
node; it never imports the pool. On a single node the publisher is :class:`LocalOnly` (it tells
nobody); in a pool it is the pool's, which encodes each change as a peer event
(``chatserver.pool.events``) and sends it over every open link. A node that receives one hands it
back to :meth:`chatserver.rooms.governance.Governance.apply_remote`, which drops the caches the
change touched and enforces it on this node's live sessions, exactly as for a local change.

A change is published after it committed, never before; it carries ids, not data: receivers
re-read what changed from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..protocol.events import MessageChanged
from ..store.messages import GONE, Message


@dataclass(frozen=True, slots=True)
class MessageChange:
    """A change to one stored message: an administrator's (replaced, removed) or its sender's
    (edited, deleted), or a reaction (the message's state unchanged); the message as it is
    after the change."""

    seq: int
    state: str  # "replaced" | "removed" | "edited" | "deleted" | "" (a reaction only)
    text: str = ""  # the message's text now; "" when removed or deleted
    change_no: int | None = None  # the room's change number (users' changes)
    edited_ts: int | None = None
    reactions: tuple[tuple[str, int], ...] | None = None  # counts now, when they changed
    reaction: tuple[int, str, bool] | None = None  # (user, emoji, added): what changed

    @classmethod
    def of(
        cls, message: Message, change_no: int | None, reaction: tuple[int, str, bool] | None = None
    ) -> MessageChange:
        counts = tuple(sorted((message.reactions or {}).items()))
        return cls(
            message.seq,
            message.state,
            message.text,
            change_no,
            message.edited_ts,
            counts if reaction is not None or message.state == "deleted" else None,
            reaction,
        )

    def apply(self, wire: dict[str, Any]) -> dict[str, Any] | None:
        """A cached message (wire form) after this change; None: it leaves the cache."""
        if self.state == "removed":
            return None
        out = {**wire, "text": self.text, "state": self.state}
        if not self.state:
            del out["state"]
        if self.state in GONE:
            out.pop("file", None)
            out.pop("reactions", None)
        if self.edited_ts is not None:
            out["edited_ts"] = self.edited_ts
        if self.reactions is not None:
            if self.reactions:
                out["reactions"] = dict(self.reactions)
            else:
                out.pop("reactions", None)
        return out

    def event(self, room: int) -> MessageChanged:
        reaction = None
        if self.reaction is not None:
            user, emoji, added = self.reaction
            reaction = {"user": user, "emoji": emoji, "added": added}
        return MessageChanged(
            room,
            self.seq,
            self.state,
            self.text,
            self.change_no,
            self.edited_ts,
            None if self.reactions is None else dict(self.reactions),
            reaction,
        )


@dataclass(frozen=True, slots=True)
class RoomChanged:
    """A room's settings or roles changed, or it was deleted (receivers re-read it)."""

    room: int


@dataclass(frozen=True, slots=True)
class CategoriesChanged:
    """Categories changed (and so, possibly, every room's rights)."""


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """Group membership changed."""


@dataclass(frozen=True, slots=True)
class UserDisconnected:
    """Every live session of ``user`` must end (a policy switched off, an administrator's act)."""

    user: int
    reason: str


@dataclass(frozen=True, slots=True)
class TokensRevoked:
    """Session tokens of ``user`` were revoked (their rows deleted): every live session using
    one ends with ``bye`` ``reason``.

    ``token``: the hash of the one token revoked (a logout), or None for every token of the user
    but ``keep`` (a password change keeps the changing session's; a reset keeps none).
    """

    user: int
    token: str | None = None
    keep: str | None = None
    reason: str = "revoked"

    def ends(self, token_hash: str | None) -> bool:
        """Whether a session authenticated with the token hashing to ``token_hash`` must end."""
        if self.token is not None:
            return token_hash == self.token
        return token_hash is None or token_hash != self.keep


@dataclass(frozen=True, slots=True)
class UsersInvited:
    """``users`` were invited to ``room`` by ``by`` (a user's public form, or None)."""

    room: int
    users: tuple[int, ...]
    by: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class MessagesChanged:
    """Stored messages were replaced or removed, or a room cleared through ``cleared_through``."""

    room: int
    changes: tuple[MessageChange, ...]
    cleared_through: int | None = None


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """Run-time settings changed in the store (``node``: only that node's overrides)."""

    key: str = ""
    node: str | None = None


@dataclass(frozen=True, slots=True)
class FeedsChanged:
    """A user's saved topic feeds changed: nodes where the user is connected re-read them."""

    user: int


@dataclass(frozen=True, slots=True)
class ReadMoved:
    """``user``'s read marker in ``room`` moved to ``seq`` (their other sessions hear of it)."""

    user: int
    room: int
    seq: int


@dataclass(frozen=True, slots=True)
class UsersMentioned:
    """A stored message (``room``, ``seq``) mentions ``users``: each gets a ``mention`` event
    wherever they are connected, if they may read the room then."""

    room: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    excerpt: str
    users: tuple[int, ...]


Change = (
    RoomChanged
    | CategoriesChanged
    | MembershipChanged
    | UserDisconnected
    | TokensRevoked
    | UsersInvited
    | MessagesChanged
    | SettingsChanged
    | FeedsChanged
    | ReadMoved
    | UsersMentioned
)


class Publisher(Protocol):
    """Tells the other nodes of a pool what this node committed."""

    def publish(self, change: Change) -> None: ...

    def publish_messages(self, messages: list[Message]) -> None: ...


class LocalOnly:
    """The publisher of a node without a pool: there is nobody to tell."""

    def publish(self, change: Change) -> None:
        pass

    def publish_messages(self, messages: list[Message]) -> None:
        pass
