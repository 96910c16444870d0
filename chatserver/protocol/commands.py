"""Client requests: one frozen dataclass per op, validated when parsed.

``parse_request(map)`` looks up the op, checks every declared field's presence and type (ints are
not bools, strings have bounded length and are text the store can hold: :mod:`.text`) and
returns the request object, or raises :class:`ChatError` ``bad_request`` naming the field.
Unknown keys are ignored, so clients may send extra fields to newer servers.

Limits that depend on configuration (message length, page size) are checked by the session layer.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

from .errors import BAD_REQUEST, ChatError
from .text import text_problem

# Upper bound on any string field not otherwise limited; the frame size bounds the rest.
MAX_STRING = 1_000_000
MAX_ID = 2**63 - 1


def _field(*, min_len: int = 0, max_len: int = MAX_STRING, min_value: int = 0) -> Any:
    return dataclasses.field(metadata={"min_len": min_len, "max_len": max_len, "min": min_value})


def _optional(*, min_len: int = 0, max_len: int = MAX_STRING, min_value: int = 0) -> Any:
    return dataclasses.field(
        default=None, metadata={"min_len": min_len, "max_len": max_len, "min": min_value}
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    OP: ClassVar[str] = ""
    # Ops served before authentication.
    PUBLIC: ClassVar[bool] = False
    id: int


@dataclasses.dataclass(frozen=True, slots=True)
class Hello(Request):
    OP = "hello"
    PUBLIC = True
    protocol: int = _field(min_value=1)
    client: str | None = _optional(max_len=256)


@dataclasses.dataclass(frozen=True, slots=True)
class Auth(Request):
    OP = "auth"
    PUBLIC = True
    user: str | None = _optional(min_len=1, max_len=256)
    password: str | None = _optional(max_len=1024)
    token: str | None = _optional(min_len=1, max_len=256)

    def __post_init__(self) -> None:
        if self.token is None and (self.user is None or self.password is None):
            raise ChatError(BAD_REQUEST, "auth needs either token, or user and password")


@dataclasses.dataclass(frozen=True, slots=True)
class Logout(Request):
    """Revoke the session's token; every connection using it is closed."""

    OP = "logout"


@dataclasses.dataclass(frozen=True, slots=True)
class PasswordChange(Request):
    """The user's own password change; revokes the user's other tokens."""

    OP = "password.change"
    password: str = _field(max_len=1024)  # the current password
    new_password: str = _field(min_len=8, max_len=1024)


@dataclasses.dataclass(frozen=True, slots=True)
class Ping(Request):
    OP = "ping"
    PUBLIC = True


@dataclasses.dataclass(frozen=True, slots=True)
class Rooms(Request):
    OP = "rooms"
    query: str | None = _optional(max_len=256)
    limit: int | None = _optional(min_value=1)
    cursor: str | None = _optional(max_len=1024)
    category: int | None = _optional(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomCreate(Request):
    OP = "room.create"
    name: str = _field(min_len=1, max_len=256)
    description: str | None = _optional(max_len=256)
    category: int | None = _optional(min_value=1)  # default: 1, "General"
    privacy: str | None = _optional(max_len=16)
    type: str | None = _optional(max_len=16)
    invitations: str | None = _optional(max_len=16)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomGet(Request):
    OP = "room.get"
    room: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomUpdate(Request):
    OP = "room.update"
    room: int = _field(min_value=1)
    name: str | None = _optional(min_len=1, max_len=256)
    description: str | None = _optional(max_len=256)
    privacy: str | None = _optional(max_len=16)
    type: str | None = _optional(max_len=16)
    invitations: str | None = _optional(max_len=16)
    addin: int | None = _optional(min_value=0)  # 0 removes the add-in


@dataclasses.dataclass(frozen=True, slots=True)
class RoomParticipants(Request):
    """Who is in the room right now (joined on any node of the pool)."""

    OP = "room.participants"
    room: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomMembers(Request):
    """``add`` / ``remove``: ``{"members"|"managers"|"presenters": [principal, …]}``."""

    OP = "room.members"
    room: int = _field(min_value=1)
    add: dict[str, Any] | None = _optional()
    remove: dict[str, Any] | None = _optional()


@dataclasses.dataclass(frozen=True, slots=True)
class RoomChoices(Request):
    """Whom a manager may give a role (``room``) or a creator may name (``category``): users and
    groups by ``query``, the role holders' names, the add-ins (docs/protocol.md)."""

    OP = "room.choices"
    room: int | None = _optional(min_value=1)
    category: int | None = _optional(min_value=1)
    query: str | None = _optional(max_len=256)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomsManaged(Request):
    """The rooms the caller holds a manager role in, disabled ones included."""

    OP = "rooms.managed"


@dataclasses.dataclass(frozen=True, slots=True)
class RoomMove(Request):
    OP = "room.move"
    room: int = _field(min_value=1)
    category: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomDisable(Request):
    OP = "room.disable"
    room: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomEnable(Request):
    OP = "room.enable"
    room: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomDelete(Request):
    OP = "room.delete"
    room: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Categories(Request):
    OP = "categories"


@dataclasses.dataclass(frozen=True, slots=True)
class Invitations(Request):
    OP = "invitations"


@dataclasses.dataclass(frozen=True, slots=True)
class InvitationDismiss(Request):
    OP = "invitation.dismiss"
    room: int = _field(min_value=1)


# -- administrators ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CategoryCreate(Request):
    OP = "category.create"
    name: str = _field(min_len=1, max_len=256)
    description: str | None = _optional(max_len=256)
    invitations: bool | None = _optional()
    file_upload: bool | None = _optional()
    chat_history: bool | None = _optional()


@dataclasses.dataclass(frozen=True, slots=True)
class CategoryUpdate(Request):
    """``add`` / ``remove``: ``{"allowed"|"denied"|"creators": [principal, …]}``."""

    OP = "category.update"
    category: int = _field(min_value=1)
    name: str | None = _optional(min_len=1, max_len=256)
    description: str | None = _optional(max_len=256)
    invitations: bool | None = _optional()
    file_upload: bool | None = _optional()
    chat_history: bool | None = _optional()
    add: dict[str, Any] | None = _optional()
    remove: dict[str, Any] | None = _optional()


@dataclasses.dataclass(frozen=True, slots=True)
class CategoryDelete(Request):
    OP = "category.delete"
    category: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupCreate(Request):
    OP = "group.create"
    name: str = _field(min_len=1, max_len=256)
    description: str | None = _optional(max_len=256)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupMembers(Request):
    OP = "group.members"
    group: int = _field(min_value=1)
    add: list[Any] | None = _optional()
    remove: list[Any] | None = _optional()


@dataclasses.dataclass(frozen=True, slots=True)
class GroupDelete(Request):
    OP = "group.delete"
    group: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class UserPolicy(Request):
    """``persistent_chat_enabled``: true, false, or absent/null for the global default."""

    OP = "user.policy"
    user: int = _field(min_value=1)
    persistent_chat_enabled: bool | None = _optional()


@dataclasses.dataclass(frozen=True, slots=True)
class Users(Request):
    OP = "users"
    query: str | None = _optional(max_len=256)


@dataclasses.dataclass(frozen=True, slots=True)
class Join(Request):
    OP = "join"
    room: int = _field(min_value=1)
    since: int | None = _optional(min_value=0)
    # The room's change number the client has seen: the reply carries ``change_no`` and the
    # messages up to ``since`` changed after it (docs/protocol.md, "Edits, deletes, reactions").
    changes: int | None = _optional(min_value=0)


@dataclasses.dataclass(frozen=True, slots=True)
class Leave(Request):
    OP = "leave"
    room: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Post(Request):
    OP = "post"
    room: int = _field(min_value=1)
    text: str = _field(min_len=1)
    cid: str = _field(min_len=1, max_len=64)
    reply_to: int | None = _optional(min_value=1)  # the seq of the message it answers


@dataclasses.dataclass(frozen=True, slots=True)
class MessageEdit(Request):
    """Replace the text of one's own message (docs/protocol.md, "Edits, deletes, reactions")."""

    OP = "message.edit"
    room: int = _field(min_value=1)
    seq: int = _field(min_value=1)
    text: str = _field(min_len=1)
    cid: str = _field(min_len=1, max_len=64)


@dataclasses.dataclass(frozen=True, slots=True)
class MessageDelete(Request):
    OP = "message.delete"
    room: int = _field(min_value=1)
    seq: int = _field(min_value=1)
    cid: str = _field(min_len=1, max_len=64)


@dataclasses.dataclass(frozen=True, slots=True)
class ReactionAdd(Request):
    OP = "reaction.add"
    room: int = _field(min_value=1)
    seq: int = _field(min_value=1)
    emoji: str = _field(min_len=1, max_len=32)
    cid: str = _field(min_len=1, max_len=64)


@dataclasses.dataclass(frozen=True, slots=True)
class ReactionRemove(Request):
    OP = "reaction.remove"
    room: int = _field(min_value=1)
    seq: int = _field(min_value=1)
    emoji: str = _field(min_len=1, max_len=32)
    cid: str = _field(min_len=1, max_len=64)


@dataclasses.dataclass(frozen=True, slots=True)
class Thread(Request):
    """A message and a page of the answers to it."""

    OP = "thread"
    room: int = _field(min_value=1)
    seq: int = _field(min_value=1)
    after: int | None = _optional(min_value=0)
    limit: int | None = _optional(min_value=1)


# How many users one `users.lookup` names at most.
LOOKUP_MAX = 100


@dataclasses.dataclass(frozen=True, slots=True)
class UsersLookup(Request):
    """Display names of the senders of a room the caller may read (any member may ask)."""

    OP = "users.lookup"
    room: int = _field(min_value=1)
    ids: list[Any] = _field()

    def __post_init__(self) -> None:
        if not 1 <= len(self.ids) <= LOOKUP_MAX:
            raise ChatError(BAD_REQUEST, f"field 'ids' must hold 1 to {LOOKUP_MAX} user ids")
        for value in self.ids:
            if type(value) is not int or not 1 <= value <= MAX_ID:
                raise ChatError(BAD_REQUEST, "field 'ids' must hold positive integers")


@dataclasses.dataclass(frozen=True, slots=True)
class History(Request):
    OP = "history"
    room: int = _field(min_value=1)
    before: int | None = _optional(min_value=1)
    after: int | None = _optional(min_value=0)
    limit: int | None = _optional(min_value=1)
    around: int | None = _optional(min_value=1)  # a page centred on this seq (a search hit)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.before, self.after, self.around)) > 1:
            raise ChatError(BAD_REQUEST, "history takes one of before, after and around")


@dataclasses.dataclass(frozen=True, slots=True)
class Search(Request):
    """Full-text search of the rooms the user may read (or of ``room``); docs/protocol.md."""

    OP = "search"
    query: str = _field(min_len=1, max_len=500)
    room: int | None = _optional(min_value=1)
    order: str | None = _optional(max_len=16)  # newest (default) | relevance
    cursor: str | None = _optional(max_len=256)
    limit: int | None = _optional(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class FeedAdd(Request):
    """Save a topic feed: a query in the search syntax whose new matches arrive live."""

    OP = "feed.add"
    name: str = _field(min_len=1, max_len=100)
    query: str = _field(min_len=1, max_len=500)


@dataclasses.dataclass(frozen=True, slots=True)
class FeedList(Request):
    OP = "feed.list"


@dataclasses.dataclass(frozen=True, slots=True)
class FeedRemove(Request):
    OP = "feed.remove"
    feed: int = _field(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class FeedHistory(Request):
    """A page of a feed's matches, newest first (a search with its query)."""

    OP = "feed.history"
    feed: int = _field(min_value=1)
    cursor: str | None = _optional(max_len=256)
    limit: int | None = _optional(min_value=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Read(Request):
    """Move the read marker of ``room`` to ``seq`` (docs/protocol.md, "Read markers")."""

    OP = "read"
    room: int = _field(min_value=1)
    seq: int = _field(min_value=0)


@dataclasses.dataclass(frozen=True, slots=True)
class Mentions(Request):
    """A page of one's mentions, newest first (docs/protocol.md, "Mentions")."""

    OP = "mentions"
    room: int | None = _optional(min_value=1)
    cursor: str | None = _optional(max_len=64)
    limit: int | None = _optional(min_value=1)


REQUESTS: dict[str, type[Request]] = {
    cls.OP: cls
    for cls in (
        UsersLookup,
        Hello,
        Auth,
        Logout,
        PasswordChange,
        Ping,
        Rooms,
        RoomCreate,
        Join,
        Leave,
        Post,
        MessageEdit,
        MessageDelete,
        ReactionAdd,
        ReactionRemove,
        Thread,
        History,
        Search,
        FeedAdd,
        FeedList,
        FeedRemove,
        FeedHistory,
        Read,
        Mentions,
        RoomGet,
        RoomUpdate,
        RoomMembers,
        RoomChoices,
        RoomsManaged,
        RoomParticipants,
        RoomMove,
        RoomDisable,
        RoomEnable,
        RoomDelete,
        Categories,
        Invitations,
        InvitationDismiss,
        CategoryCreate,
        CategoryUpdate,
        CategoryDelete,
        GroupCreate,
        GroupMembers,
        GroupDelete,
        UserPolicy,
        Users,
    )
}


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    kind: type
    required: bool
    min_len: int
    max_len: int
    min_value: int


def _specs(cls: type[Request]) -> tuple[_FieldSpec, ...]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if f.name == "id":
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        kind = next(a for a in args if a is not type(None)) if optional else hint
        kind = typing.get_origin(kind) or kind  # dict[str, Any] -> dict
        specs.append(
            _FieldSpec(
                f.name,
                kind,
                not optional,
                f.metadata.get("min_len", 0),
                f.metadata.get("max_len", MAX_STRING),
                f.metadata.get("min", 0),
            )
        )
    return tuple(specs)


_SPECS = {op: _specs(cls) for op, cls in REQUESTS.items()}


def _bad(message: str) -> ChatError:
    return ChatError(BAD_REQUEST, message)


def _check(spec: _FieldSpec, value: Any) -> Any:
    if spec.kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(f"field {spec.name!r} must be an integer")
        if not spec.min_value <= value <= MAX_ID:
            raise _bad(f"field {spec.name!r} must be from {spec.min_value} to {MAX_ID}")
    elif spec.kind is str:
        if not isinstance(value, str):
            raise _bad(f"field {spec.name!r} must be a string")
        if not spec.min_len <= len(value) <= spec.max_len:
            raise _bad(
                f"field {spec.name!r} must be {spec.min_len} to {spec.max_len} characters long"
            )
        problem = text_problem(value)
        if problem is not None:
            raise _bad(f"field {spec.name!r} {problem}")
    elif spec.kind is bool:
        if not isinstance(value, bool):
            raise _bad(f"field {spec.name!r} must be true or false")
    elif spec.kind is dict:
        if not isinstance(value, dict):
            raise _bad(f"field {spec.name!r} must be a map")
    elif spec.kind is list:
        if not isinstance(value, list):
            raise _bad(f"field {spec.name!r} must be a list")
    return value


def request_id(obj: dict[str, Any]) -> int | None:
    """The request's id if it has a usable one, for error replies to unparseable requests."""
    value = obj.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    return None


def parse_request(obj: dict[str, Any]) -> Request:
    op = obj.get("op")
    if not isinstance(op, str):
        raise _bad("field 'op' must be a string")
    rid = request_id(obj)
    if rid is None:
        raise _bad("field 'id' must be a non-negative integer")
    cls = REQUESTS.get(op)
    if cls is None:
        raise _bad(f"unknown op {op[:64]!r}")
    values: dict[str, Any] = {"id": rid}
    for spec in _SPECS[op]:
        value = obj.get(spec.name)
        if value is None:
            if spec.required:
                raise _bad(f"field {spec.name!r} is required")
            continue
        values[spec.name] = _check(spec, value)
    return cls(**values)
