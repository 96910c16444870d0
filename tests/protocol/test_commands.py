"""Parsing and validation of client requests (pure: no sockets, no event loop)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from chatserver.protocol.commands import (
    MAX_ID,
    MAX_STRING,
    REQUESTS,
    Auth,
    Hello,
    History,
    Join,
    Leave,
    Ping,
    Post,
    Request,
    RoomCreate,
    Rooms,
    parse_request,
    request_id,
)
from chatserver.protocol.errors import BAD_REQUEST, ChatError

# The smallest valid request of every op: exactly its required fields.
MINIMAL: dict[str, dict[str, Any]] = {
    "hello": {"protocol": 1},
    "auth": {"token": "tok"},
    "logout": {},
    "password.change": {"password": "", "new_password": "12345678"},
    "ping": {},
    "rooms": {},
    "room.create": {"name": "lobby"},
    "join": {"room": 1},
    "leave": {"room": 1},
    "post": {"room": 1, "text": "hi", "cid": "c1"},
    "history": {"room": 1},
    "users.lookup": {"room": 1, "ids": [2]},
    "read": {"room": 1, "seq": 0},
    "mentions": {},
    "message.edit": {"room": 1, "seq": 1, "text": "x", "cid": "e1"},
    "message.delete": {"room": 1, "seq": 1, "cid": "d1"},
    "reaction.add": {"room": 1, "seq": 1, "emoji": "👍", "cid": "r1"},
    "reaction.remove": {"room": 1, "seq": 1, "emoji": "👍", "cid": "r2"},
    "thread": {"room": 1, "seq": 1},
    "room.get": {"room": 1},
    "room.update": {"room": 1},
    "room.members": {"room": 1},
    "room.participants": {"room": 1},
    "room.move": {"room": 1, "category": 2},
    "room.choices": {},
    "rooms.managed": {},
    "room.disable": {"room": 1},
    "room.enable": {"room": 1},
    "room.delete": {"room": 1},
    "categories": {},
    "invitations": {},
    "invitation.dismiss": {"room": 1},
    "category.create": {"name": "c"},
    "category.update": {"category": 1},
    "category.delete": {"category": 1},
    "group.create": {"name": "g"},
    "group.members": {"group": 1},
    "group.delete": {"group": 1},
    "user.policy": {"user": 1},
    "users": {},
    "search": {"query": "fox"},
    "feed.add": {"name": "n", "query": "fox"},
    "feed.list": {},
    "feed.remove": {"feed": 1},
    "feed.history": {"feed": 1},
}

# Every field of every op set to a valid value (History's "after" and "around" exclude "before":
# see below).
FULL: dict[str, dict[str, Any]] = {
    "hello": {"protocol": 2, "client": "cli/1.0"},
    "auth": {"user": "ann", "password": "pw", "token": "tok"},
    "logout": {},
    "password.change": {"password": "old", "new_password": "a new one"},
    "ping": {},
    "rooms": {"query": "lob", "limit": 10, "cursor": "abc", "category": 3},
    "room.create": {
        "name": "lobby",
        "description": "the lobby",
        "category": 2,
        "privacy": "secret",
        "type": "auditorium",
        "invitations": "off",
    },
    "join": {"room": 4, "since": 0, "changes": 3},
    "leave": {"room": 4},
    "post": {"room": 4, "text": "hello ✓", "cid": "c-9", "reply_to": 2},
    "history": {"room": 4, "before": 100, "limit": 50},
    "users.lookup": {"room": 4, "ids": [2, 3]},
    "read": {"room": 4, "seq": 12},
    "mentions": {"room": 4, "cursor": "1.2.3", "limit": 10},
    "message.edit": {"room": 4, "seq": 3, "text": "better", "cid": "e-1"},
    "message.delete": {"room": 4, "seq": 3, "cid": "d-1"},
    "reaction.add": {"room": 4, "seq": 3, "emoji": ":ship:", "cid": "r-1"},
    "reaction.remove": {"room": 4, "seq": 3, "emoji": ":ship:", "cid": "r-2"},
    "thread": {"room": 4, "seq": 3, "after": 5, "limit": 20},
    "room.get": {"room": 4},
    "room.participants": {"room": 4},
    "room.update": {
        "room": 4,
        "name": "n",
        "description": "d",
        "privacy": "open",
        "type": "normal",
        "invitations": "inherit",
        "addin": 0,
    },
    "room.members": {
        "room": 4,
        "add": {"members": [{"kind": "user", "id": 3}]},
        "remove": {"managers": [{"kind": "group", "id": 2}]},
    },
    "room.move": {"room": 4, "category": 2},
    "room.choices": {"room": 4, "category": 2, "query": "al"},
    "rooms.managed": {},
    "room.disable": {"room": 4},
    "room.enable": {"room": 4},
    "room.delete": {"room": 4},
    "categories": {},
    "invitations": {},
    "invitation.dismiss": {"room": 4},
    "category.create": {
        "name": "c",
        "description": "d",
        "invitations": False,
        "file_upload": True,
        "chat_history": False,
    },
    "category.update": {
        "category": 1,
        "name": "c",
        "description": "d",
        "invitations": True,
        "file_upload": False,
        "chat_history": True,
        "add": {"allowed": [{"kind": "everyone", "id": 0}]},
        "remove": {"denied": []},
    },
    "category.delete": {"category": 1},
    "group.create": {"name": "g", "description": "d"},
    "group.members": {"group": 1, "add": [{"kind": "user", "id": 1}], "remove": []},
    "group.delete": {"group": 1},
    "user.policy": {"user": 1, "persistent_chat_enabled": False},
    "users": {"query": "a"},
    "search": {"query": "fox", "room": 4, "order": "relevance", "cursor": "c", "limit": 5},
    "feed.add": {"name": "deploys", "query": "deploy*"},
    "feed.list": {},
    "feed.remove": {"feed": 2},
    "feed.history": {"feed": 2, "cursor": "c", "limit": 5},
}

CLASSES = {
    "hello": Hello,
    "auth": Auth,
    "ping": Ping,
    "rooms": Rooms,
    "room.create": RoomCreate,
    "join": Join,
    "leave": Leave,
    "post": Post,
    "history": History,
    **{
        op: REQUESTS[op]
        for op in MINIMAL
        if op
        not in ("hello", "auth", "ping", "rooms", "room.create", "join", "leave", "post", "history")
    },
}


def request(op: str, fields: dict[str, Any], rid: int = 7) -> dict[str, Any]:
    return {"op": op, "id": rid, **fields}


def assert_bad(obj: dict[str, Any], *names: str) -> ChatError:
    """parse_request(obj) raises ChatError bad_request, its message naming each of ``names``."""
    with pytest.raises(ChatError) as info:
        parse_request(obj)
    assert info.value.code == BAD_REQUEST
    for name in names:
        assert name in info.value.message, (name, info.value.message)
    return info.value


def field_names(cls: type[Request]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"id"}


def test_tables_cover_every_op() -> None:
    assert set(MINIMAL) == set(FULL) == set(CLASSES) == set(REQUESTS)
    for op, cls in CLASSES.items():
        assert REQUESTS[op] is cls
        assert cls.OP == op
        exclusive = {"after", "around"} if op == "history" else set()
        assert set(FULL[op]) | exclusive == field_names(cls)


@pytest.mark.parametrize("op", MINIMAL)
def test_minimal_request_parses(op: str) -> None:
    req = parse_request(request(op, MINIMAL[op], rid=42))
    assert type(req) is CLASSES[op]
    assert req.id == 42
    for name in field_names(CLASSES[op]):
        assert getattr(req, name) == MINIMAL[op].get(name)  # absent optionals are None


@pytest.mark.parametrize("op", FULL)
def test_full_request_parses(op: str) -> None:
    req = parse_request(request(op, FULL[op]))
    assert type(req) is CLASSES[op]
    assert req.id == 7
    for name in field_names(CLASSES[op]):
        assert getattr(req, name) == FULL[op].get(name)


@pytest.mark.parametrize("op", FULL)
def test_requests_are_frozen(op: str) -> None:
    req = parse_request(request(op, MINIMAL[op]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.id = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    ("op", "public"),
    [("hello", True), ("auth", True), ("ping", True)]
    + [(op, False) for op in MINIMAL if op not in ("hello", "auth", "ping")],
)
def test_public_ops(op: str, public: bool) -> None:
    assert REQUESTS[op].PUBLIC is public


REQUIRED = [(op, name) for op, fields in MINIMAL.items() if op != "auth" for name in fields]


@pytest.mark.parametrize(("op", "field"), REQUIRED)
def test_missing_required_field(op: str, field: str) -> None:
    fields = dict(MINIMAL[op])
    del fields[field]
    error = assert_bad(request(op, fields), repr(field))
    assert "required" in error.message


@pytest.mark.parametrize(("op", "field"), REQUIRED)
def test_null_required_field_is_missing(op: str, field: str) -> None:
    assert_bad(request(op, {**MINIMAL[op], field: None}), repr(field), "required")


def test_required_table_is_complete() -> None:
    assert set(REQUIRED) == {
        ("hello", "protocol"),
        ("users.lookup", "room"),
        ("users.lookup", "ids"),
        ("password.change", "password"),
        ("password.change", "new_password"),
        ("room.create", "name"),
        ("join", "room"),
        ("leave", "room"),
        ("read", "room"),
        *[("message.edit", f) for f in ("room", "seq", "text", "cid")],
        *[("message.delete", f) for f in ("room", "seq", "cid")],
        *[("reaction.add", f) for f in ("room", "seq", "emoji", "cid")],
        *[("reaction.remove", f) for f in ("room", "seq", "emoji", "cid")],
        ("thread", "room"),
        ("thread", "seq"),
        ("read", "seq"),
        ("post", "room"),
        ("post", "text"),
        ("post", "cid"),
        ("history", "room"),
        ("room.get", "room"),
        ("room.update", "room"),
        ("room.members", "room"),
        ("room.participants", "room"),
        ("room.move", "room"),
        ("room.move", "category"),
        ("room.disable", "room"),
        ("room.enable", "room"),
        ("room.delete", "room"),
        ("invitation.dismiss", "room"),
        ("category.create", "name"),
        ("category.update", "category"),
        ("category.delete", "category"),
        ("group.create", "name"),
        ("group.members", "group"),
        ("group.delete", "group"),
        ("user.policy", "user"),
        ("search", "query"),
        ("feed.add", "name"),
        ("feed.add", "query"),
        ("feed.remove", "feed"),
        ("feed.history", "feed"),
    }


WRONG_TYPES = [
    # a bool is not an int
    ("join", "room", True),
    ("join", "room", False),
    ("hello", "protocol", True),
    ("history", "limit", True),
    ("join", "since", False),
    # other non-ints for int fields
    ("join", "room", "1"),
    ("join", "room", 1.0),
    ("leave", "room", [1]),
    ("post", "room", {"id": 1}),
    ("rooms", "limit", b"\x01"),
    # non-strings for string fields
    ("post", "text", 5),
    ("post", "cid", 0),
    ("room.create", "name", 1),
    ("auth", "token", 7),
    ("hello", "client", True),
    ("rooms", "query", ["a"]),
    ("post", "text", b"bytes"),
    ("room.create", "description", {"a": 1}),
    # maps and lists
    ("room.members", "add", [1]),
    ("room.members", "remove", "members"),
    ("category.update", "add", 3),
    ("group.members", "add", {"kind": "user"}),
    ("user.policy", "persistent_chat_enabled", 1),
]


@pytest.mark.parametrize(("op", "field", "value"), WRONG_TYPES)
def test_wrong_type(op: str, field: str, value: Any) -> None:
    error = assert_bad(request(op, {**FULL[op], field: value}), repr(field))
    assert "must be" in error.message


BAD_LENGTHS = [
    ("room.create", "name", ""),
    ("room.create", "name", "x" * 257),
    ("room.create", "description", "x" * 257),
    ("post", "text", ""),
    ("post", "text", "x" * (MAX_STRING + 1)),
    ("post", "cid", ""),
    ("post", "cid", "c" * 65),
    ("auth", "user", ""),
    ("auth", "user", "u" * 257),
    ("auth", "password", "p" * 1025),
    ("auth", "token", ""),
    ("auth", "token", "t" * 257),
    ("hello", "client", "c" * 257),
    ("rooms", "query", "q" * 257),
    ("rooms", "cursor", "c" * 1025),
]


@pytest.mark.parametrize(
    ("op", "field", "value"), BAD_LENGTHS, ids=[f"{o}.{f}-{len(v)}" for o, f, v in BAD_LENGTHS]
)
def test_bad_string_length(op: str, field: str, value: str) -> None:
    error = assert_bad(request(op, {**FULL[op], field: value}), repr(field))
    assert "characters" in error.message


GOOD_LENGTHS = [
    ("room.create", "name", "x"),
    ("room.create", "name", "x" * 256),
    ("room.create", "description", ""),
    ("post", "text", "x"),
    ("post", "text", "x" * 100_000),
    ("post", "cid", "c" * 64),
    ("auth", "password", ""),
    ("auth", "password", "p" * 1024),
    ("auth", "token", "t" * 256),
    ("hello", "client", ""),
    ("hello", "client", "c" * 256),
    ("rooms", "query", ""),
    ("rooms", "cursor", "c" * 1024),
    ("post", "text", "😀" * 10),  # length counts characters, not bytes
    ("post", "cid", "é" * 64),
]


@pytest.mark.parametrize(
    ("op", "field", "value"), GOOD_LENGTHS, ids=[f"{o}.{f}-{len(v)}" for o, f, v in GOOD_LENGTHS]
)
def test_good_string_length(op: str, field: str, value: str) -> None:
    req = parse_request(request(op, {**FULL[op], field: value}))
    assert getattr(req, field) == value


BAD_INTS = [
    ("join", "room", 0),
    ("join", "room", -1),
    ("leave", "room", -5),
    ("post", "room", 0),
    ("history", "room", -(2**63)),
    ("hello", "protocol", 0),
    ("hello", "protocol", -1),
    ("join", "since", -1),
    ("history", "before", 0),
    ("history", "limit", 0),
    ("rooms", "limit", -3),
    ("join", "room", MAX_ID + 1),
    ("join", "since", 2**64),
]


@pytest.mark.parametrize(("op", "field", "value"), BAD_INTS)
def test_int_out_of_range(op: str, field: str, value: int) -> None:
    assert_bad(request(op, {**MINIMAL[op], field: value}), repr(field))


GOOD_INTS = [
    ("join", "room", 1),
    ("join", "room", MAX_ID),
    ("join", "since", 0),
    ("history", "after", 0),
    ("history", "before", 1),
    ("hello", "protocol", 1),
    ("rooms", "limit", 1),
]


@pytest.mark.parametrize(("op", "field", "value"), GOOD_INTS)
def test_int_in_range(op: str, field: str, value: int) -> None:
    req = parse_request(request(op, {**MINIMAL[op], field: value}))
    assert getattr(req, field) == value


BAD_IDS = [
    pytest.param(None, id="missing"),
    pytest.param("1", id="string"),
    pytest.param(1.0, id="float"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(-1, id="negative"),
    pytest.param(MAX_ID + 1, id="too-big"),
    pytest.param([1], id="list"),
]


@pytest.mark.parametrize("rid", BAD_IDS)
@pytest.mark.parametrize("op", ["ping", "post"])
def test_bad_id(op: str, rid: Any) -> None:
    obj = {"op": op, **MINIMAL[op]}
    if rid is not None:
        obj["id"] = rid
    assert_bad(obj, "'id'")


@pytest.mark.parametrize("rid", [0, 1, MAX_ID])
def test_good_id(rid: int) -> None:
    assert parse_request({"op": "ping", "id": rid}).id == rid


@pytest.mark.parametrize(
    "op",
    [
        pytest.param("nope", id="unknown"),
        pytest.param("", id="empty"),
        pytest.param("PING", id="wrong-case"),
        pytest.param(" ping", id="leading-space"),
        pytest.param("Request", id="class-name"),
    ],
)
def test_unknown_op(op: str) -> None:
    error = assert_bad({"op": op, "id": 1}, "op", repr(op))
    assert "unknown" in error.message


def test_unknown_op_message_is_bounded() -> None:
    error = assert_bad({"op": "x" * 10_000, "id": 1}, "unknown op")
    assert len(error.message) < 200


@pytest.mark.parametrize("op", [None, 1, True, ["ping"], {"op": "ping"}, b"ping"])
def test_op_not_a_string(op: Any) -> None:
    obj: dict[str, Any] = {"id": 1}
    if op is not None:
        obj["op"] = op
    assert_bad(obj, "'op'")


@pytest.mark.parametrize("op", FULL)
def test_unknown_keys_are_ignored(op: str) -> None:
    extra = {"extra": 1, "nested": {"a": [1, 2]}, "": None, "ID": "x", "Op": 5}
    # keys that belong to other ops, with values that would be invalid for them
    for other in FULL.values():
        for key in other:
            if key not in FULL[op] and key not in field_names(CLASSES[op]):
                extra[key] = object()
    req = parse_request(request(op, {**FULL[op], **extra}))
    assert req == parse_request(request(op, FULL[op]))
    assert not hasattr(req, "extra")


AUTH_CASES = [
    pytest.param({"token": "t"}, True, id="token"),
    pytest.param({"user": "u", "password": "p"}, True, id="user+password"),
    pytest.param({"user": "u", "password": ""}, True, id="user+empty-password"),
    pytest.param({"token": "t", "user": "u"}, True, id="token+user"),
    pytest.param({}, False, id="nothing"),
    pytest.param({"user": "u"}, False, id="user-only"),
    pytest.param({"password": "p"}, False, id="password-only"),
    pytest.param({"user": None, "password": "p"}, False, id="null-user"),
    pytest.param({"token": None, "user": "u"}, False, id="null-token"),
]


@pytest.mark.parametrize(("fields", "ok"), AUTH_CASES)
def test_auth_needs_token_or_user_and_password(fields: dict[str, Any], ok: bool) -> None:
    obj = request("auth", fields)
    if ok:
        req = parse_request(obj)
        assert isinstance(req, Auth)
        for key in ("user", "password", "token"):
            assert getattr(req, key) == fields.get(key)
    else:
        assert_bad(obj, "token", "user", "password")


HISTORY_CASES = [
    pytest.param({}, True, id="neither"),
    pytest.param({"before": 10}, True, id="before"),
    pytest.param({"after": 0}, True, id="after"),
    pytest.param({"before": 10, "after": None}, True, id="before+null-after"),
    pytest.param({"before": 10, "after": 5}, False, id="both"),
    pytest.param({"before": 1, "after": 0, "limit": 5}, False, id="both+limit"),
    pytest.param({"around": 7}, True, id="around"),
    pytest.param({"around": 7, "before": 9}, False, id="around+before"),
    pytest.param({"around": 7, "after": 2}, False, id="around+after"),
]


@pytest.mark.parametrize(("fields", "ok"), HISTORY_CASES)
def test_history_before_and_after(fields: dict[str, Any], ok: bool) -> None:
    obj = request("history", {"room": 3, **fields})
    if ok:
        req = parse_request(obj)
        assert isinstance(req, History)
        assert (req.before, req.after) == (fields.get("before"), fields.get("after"))
    else:
        assert_bad(obj, "before", "after")


REQUEST_IDS = [
    pytest.param({"id": 5}, 5, id="int"),
    pytest.param({"id": 0}, 0, id="zero"),
    pytest.param({"id": MAX_ID}, MAX_ID, id="max"),
    pytest.param({"id": MAX_ID + 1}, None, id="too-big"),
    pytest.param({"id": -1}, None, id="negative"),
    pytest.param({"id": True}, None, id="bool"),
    pytest.param({"id": "5"}, None, id="string"),
    pytest.param({"id": 5.0}, None, id="float"),
    pytest.param({"id": None}, None, id="null"),
    pytest.param({}, None, id="missing"),
    # usable even when the request itself is not, so the error reply can name it
    pytest.param({"op": "nope", "id": 9}, 9, id="unknown-op"),
    pytest.param({"op": 3, "id": 9}, 9, id="bad-op"),
    pytest.param({"op": "join", "id": 9, "room": "x"}, 9, id="bad-field"),
]


@pytest.mark.parametrize(("obj", "expected"), REQUEST_IDS)
def test_request_id(obj: dict[str, Any], expected: int | None) -> None:
    assert request_id(obj) == expected
