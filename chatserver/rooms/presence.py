"""Who is connected to this node: every authenticated live session, by user id.

Sessions add themselves when they authenticate and remove themselves when they close; the rooms
layer reaches a user's connections here (invitations, policy changes, disconnects, enforcement),
without knowing about transports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..protocol.events import Outgoing
    from ..store.users import User


class Member(Protocol):
    """A live session, as the rooms layer sees it."""

    @property
    def user(self) -> User | None: ...

    @property
    def invited_rooms(self) -> set[int]: ...

    @property
    def token_hash(self) -> str | None:
        """The hash of the session token the session authenticated with."""
        ...

    def send(self, item: Outgoing) -> None: ...

    def removed(self, room: int, reason: str) -> None: ...

    def disconnect(self, reason: str) -> None: ...


class Presence:
    __slots__ = ("_by_user",)

    def __init__(self) -> None:
        self._by_user: dict[int, set[Member]] = {}

    def add(self, user_id: int, member: Member) -> None:
        self._by_user.setdefault(user_id, set()).add(member)

    def remove(self, user_id: int, member: Member) -> None:
        mine = self._by_user.get(user_id)
        if mine is not None:
            mine.discard(member)
            if not mine:
                del self._by_user[user_id]

    def of(self, user_id: int) -> list[Member]:
        """The user's live sessions on this node (a copy: callers may close them)."""
        return list(self._by_user.get(user_id, ()))

    def users(self) -> list[int]:
        """Every user with a live session here."""
        return list(self._by_user)

    def __contains__(self, user_id: int) -> bool:
        return user_id in self._by_user

    def __len__(self) -> int:
        return len(self._by_user)
