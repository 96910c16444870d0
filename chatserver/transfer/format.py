"""The export format, version 1: gzip-compressed JSON Lines, one record per line.

Every line is one JSON object whose ``t`` names the record type; the other keys are the record's
fields (docs/export-format.md). The first line is the :class:`Header`, the last the
:class:`End` (its counts let an import see a truncated file). In between, in this order: users,
groups, group members, add-ins, categories, category principals, rooms, room principals,
messages (per room in ``seq`` order), files, file chunks (per file in ``idx`` order).

Records are parsed strictly: an unknown type or field, a missing field, a wrong type, a line
longer than :data:`MAX_LINE` is a :class:`FormatError` naming the line — an import file is input
from outside and is checked before anything is written.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

FORMAT = "chatserver-export"
VERSION = 1
# A chunk's base64 ([files] chunk_kb is at most 16 MiB) plus its keys; a message's text is smaller.
MAX_LINE = 16 * 1024 * 1024 * 4 // 3 + 64 * 1024
MAX_NAME = 256


class FormatError(ValueError):
    """An export file that cannot be read: it names the line and what is wrong."""


@dataclass(frozen=True, slots=True)
class Header:
    T: ClassVar[str] = "header"
    format: str
    version: int
    source: str  # the exporting deployment's UUID
    created_ms: int
    scope: str  # "all" | "category" | "room"
    scope_name: str | None  # the category's or room's name
    since_ms: int | None
    until_ms: int | None
    messages: bool
    files: bool
    password_hashes: bool


@dataclass(frozen=True, slots=True)
class User:
    T: ClassVar[str] = "user"
    id: int
    name: str
    display_name: str
    is_admin: bool
    created_ms: int
    persistent_chat_enabled: bool | None
    password_hash: str | None  # only with --with-password-hashes


@dataclass(frozen=True, slots=True)
class Group:
    T: ClassVar[str] = "group"
    id: int
    name: str
    description: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class GroupMember:
    T: ClassVar[str] = "group_member"
    group: int
    kind: str  # user | group
    member: int


@dataclass(frozen=True, slots=True)
class Addin:
    T: ClassVar[str] = "addin"
    id: int
    name: str
    url: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class Category:
    T: ClassVar[str] = "category"
    id: int
    name: str
    description: str
    invitations: bool
    file_upload: bool
    chat_history: bool
    created_ms: int


@dataclass(frozen=True, slots=True)
class Principal:
    """A category's (allowed | denied | creator) or a room's (member | manager | presenter)."""

    T: ClassVar[str] = "principal"
    on: str  # category | room
    id: int  # the category's or room's (source) id
    role: str
    kind: str  # user | group | everyone
    principal: int


@dataclass(frozen=True, slots=True)
class Room:
    T: ClassVar[str] = "room"
    id: int
    name: str
    description: str
    category: int
    last_seq: int
    created_ms: int
    privacy: str
    type: str
    disabled: bool
    invitations: str
    addin: int | None


@dataclass(frozen=True, slots=True)
class Message:
    T: ClassVar[str] = "message"
    room: int
    seq: int
    sender: int
    cid: str
    text: str
    ts: int
    state: str


@dataclass(frozen=True, slots=True)
class File:
    T: ClassVar[str] = "file"
    id: int
    room: int
    seq: int
    uploader: int
    name: str
    media_type: str
    size: int
    sha256: str
    chunk_size: int
    created_ms: int
    state: str  # ready | removed (a removed file has no chunks)


@dataclass(frozen=True, slots=True)
class Chunk:
    T: ClassVar[str] = "chunk"
    file: int
    idx: int
    data: str  # base64

    def raw(self) -> bytes:
        return base64.b64decode(self.data, validate=True)


@dataclass(frozen=True, slots=True)
class End:
    T: ClassVar[str] = "end"
    counts: dict[str, int] = field(default_factory=dict)


Record = (
    (Header | User | Group | GroupMember | Addin | Category | Principal | Room | Message | File)
    | Chunk
    | End
)
TYPES: dict[str, type[Any]] = {
    cls.T: cls
    for cls in (
        Header,
        User,
        Group,
        GroupMember,
        Addin,
        Category,
        Principal,
        Room,
        Message,
        File,
        Chunk,
        End,
    )
}
_HINTS = {name: get_type_hints(cls) for name, cls in TYPES.items()}


# The values an import accepts for the fields that name a state, role or kind.
CHOICES: dict[tuple[str, str], frozenset[str]] = {
    ("room", "privacy"): frozenset({"open", "closed", "secret"}),
    ("room", "type"): frozenset({"normal", "auditorium"}),
    ("room", "invitations"): frozenset({"inherit", "off"}),
    ("message", "state"): frozenset({"", "replaced", "removed"}),
    ("file", "state"): frozenset({"ready", "removed"}),
    ("group_member", "kind"): frozenset({"user", "group"}),
    ("principal", "on"): frozenset({"category", "room"}),
    ("principal", "kind"): frozenset({"user", "group", "everyone"}),
    ("principal", "role"): frozenset(
        {"allowed", "denied", "creator", "member", "manager", "presenter"}
    ),
}


def dumps(record: Any) -> str:
    """One line (with its newline): compact, keys in field order, ``t`` first."""
    values = {"t": record.T}
    values.update({f.name: getattr(record, f.name) for f in dataclasses.fields(record)})
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")) + "\n"


def _accepts(hint: Any, value: Any) -> bool:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_accepts(option, value) for option in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in value.items()
        )
    return False


def loads(line: str | bytes, number: int) -> Any:
    """Parse line ``number`` (1-based) into its record; :class:`FormatError` if it is not one."""
    if len(line) > MAX_LINE:
        raise FormatError(f"line {number}: longer than {MAX_LINE} bytes")
    try:
        values = json.loads(line)
    except ValueError as exc:
        raise FormatError(f"line {number}: not JSON ({exc})") from None
    if not isinstance(values, dict):
        raise FormatError(f"line {number}: not a JSON object")
    kind = values.pop("t", None)
    cls = TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FormatError(f"line {number}: unknown record type {kind!r}")
    hints = _HINTS[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    extra = set(values) - set(names)
    if extra:
        raise FormatError(f"line {number}: {kind} has unknown fields {sorted(extra)}")
    for name in names:
        if name not in values:
            raise FormatError(f"line {number}: {kind} lacks {name!r}")
        if not _accepts(hints[name], values[name]):
            raise FormatError(f"line {number}: {kind}.{name} = {values[name]!r} has the wrong type")
        allowed = CHOICES.get((kind, name))
        if allowed is not None and values[name] not in allowed:
            raise FormatError(f"line {number}: {kind}.{name} = {values[name]!r} is not allowed")
        if isinstance(values[name], str) and name in ("name", "display_name", "description"):
            if len(values[name]) > MAX_NAME:
                raise FormatError(f"line {number}: {kind}.{name} is longer than {MAX_NAME}")
    return cls(**values)
