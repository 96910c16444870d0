"""Authorization matrix: every room op x principal state x privacy x type, over the real protocol.

The cells are generated from three tables: ``STATES`` (who acts, and how the world is set up for
them), ``OPS`` (what they try, and which right it needs) and the rooms (``PRIVACIES`` x ``TYPES``).
A new state or op is one row. The world (users, groups, categories, rooms, roles) is *derived* from
the tables and built once per dialect, then every cell runs in it.

The expected outcome of a cell comes from the rule functions below: an independent restatement of
the rules in the docstring of ``chatserver/rooms/access.py``. That module is deliberately not
imported: the test states the rules a second time, so a change to either side shows up here.

Outcomes: ``ok``, ``forbidden``, ``not_found`` (which must be indistinguishable from the answer for
a room id that does not exist), for ``find`` ``listed`` / ``not_listed``, for moves
``target_not_found`` (indistinguishable from a move to a category that does not exist), and
``impossible`` for a user whose persistent chat policy is off: their ``auth`` is refused, so every
op answers ``unauthenticated``. Such users also get the room-less cells of ``SESSION_CHECKS``.

State-changing ops either are undone by an administrator after each cell and the room compared
with its snapshot (``members``, ``update``, ``disable``), or run against a room of their own per
cell (``move``: moving back would strip the roles of members the source category denies). A
refused op must leave the room exactly as it was.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chatserver.client import Client
from tests.conftest import PASSWORD, Harness, node_config, start_node

PRIVACIES = ("open", "closed", "secret")
TYPES = ("normal", "auditorium")
TWINS = {"main": False, "disabled": True}  # each room exists twice: enabled and disabled
MISSING_ROOM = 2**31 - 1  # no room has this id
MISSING_CATEGORY = 2**31 - 1  # nor any category
SOURCE = "matrix"  # the category every room under test is created in
BUILDERS = 4  # admin sessions that create the rooms side by side


# -- the principal states -------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """One way of standing towards a room. Several states may share a user; the user-level facts
    (admin, allowed, denied, creator, enabled) must then agree."""

    user: str
    room: str = "main"  # which twin the cells act on: "main" or "disabled"
    admin: bool = False
    allowed: str | None = "group"  # in SOURCE's allowed list: "group" (through "staff"), "user"
    denied: str | None = None  # in SOURCE's denied list: "user", or "nested" (B in A, A denied)
    creator: bool = False  # in SOURCE's creators list
    roles: frozenset[str] = frozenset()  # room roles granted (before any denial is set)
    removed: bool = False  # granted member, then removed
    enabled: bool = True  # user.policy persistent_chat_enabled


def _roles(*names: str) -> frozenset[str]:
    return frozenset(names)


STATES: dict[str, State] = {
    "admin": State("boss", admin=True, allowed=None),  # not even in the category
    "creator": State("creator", creator=True),
    "manager": State("manager", roles=_roles("manager")),
    "presenter": State("presenter", roles=_roles("presenter")),
    "member": State("member", roles=_roles("member")),
    "allowed_non_member": State("allowed", allowed="user"),
    "denied_direct": State("denied", denied="user", roles=_roles("member")),
    "denied_nested_group": State("nested", denied="nested", roles=_roles("member")),
    "never_allowed": State("outsider", allowed=None),
    "removed_member": State("removed", removed=True),
    # Holds every role, so a policy that failed to bite would show as "ok" cells.
    "disabled_user": State("disabled", roles=_roles("member", "manager"), enabled=False),
    # The policy binds administrators too.
    "disabled_admin": State("offadmin", admin=True, allowed=None, enabled=False),
    "disabled_room_member": State("member", room="disabled", roles=_roles("member")),
    "disabled_room_manager": State("manager", room="disabled", roles=_roles("manager")),
    "admin_disabled_room": State("boss", room="disabled", admin=True, allowed=None),
}


# -- move targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    allows_everyone: bool  # allowed: [everyone], else nobody
    everyone_creates: bool  # creators: [everyone], else nobody


TARGETS = {
    # Everyone is in it and may create rooms in it: a move turns only on managing the room.
    "target": Target(allows_everyone=True, everyone_creates=True),
    # Everyone is in it, nobody creates: only administrators may move a room there.
    "target_nocreate": Target(allows_everyone=True, everyone_creates=False),
    # Nobody is in it (so creating is moot): it must look like a category that does not exist.
    "target_hidden": Target(allows_everyone=False, everyone_creates=True),
}


# -- the rules (restated from access.py's docstring; access.py itself is not used) ------------


@dataclass(frozen=True)
class RoomFacts:
    privacy: str
    type: str
    disabled: bool


# docs/governance.md: the policy never locks out an administrator (they are the ones who change
# it), so a policy-off administrator acts like any administrator.
POLICY_BINDS_ADMINS = False


def locked_out(s: State) -> bool:
    """A user whose persistent chat policy is off can neither log in nor stay connected."""
    return not s.enabled and (POLICY_BINDS_ADMINS or not s.admin)


def in_category(s: State) -> bool:
    """Allowed by some principal and denied by none (denial wins)."""
    return s.allowed is not None and s.denied is None


def effective_roles(s: State) -> frozenset[str]:
    """Room roles count only while the user is in the category."""
    return s.roles if in_category(s) else frozenset()


def may_find(s: State, r: RoomFacts) -> bool:
    if s.admin:
        return True
    if not in_category(s):
        return False
    if r.disabled:
        return "manager" in effective_roles(s)
    if r.privacy == "secret":
        return bool(effective_roles(s))
    return True


def may_read(s: State, r: RoomFacts) -> bool:
    if r.disabled or not may_find(s, r):
        return False
    return s.admin or r.privacy == "open" or bool(effective_roles(s))


def may_post(s: State, r: RoomFacts) -> bool:
    if not may_read(s, r):
        return False
    return s.admin or r.type == "normal" or bool(effective_roles(s) & {"presenter", "manager"})


def may_manage(s: State, r: RoomFacts) -> bool:
    return s.admin or "manager" in effective_roles(s)


def may_list(s: State, r: RoomFacts) -> bool:
    """The `rooms` search lists what the user may find, except that a disabled room is listed to
    administrators only: its managers find it with room.get alone. access.py's docstring does not
    say so; docs/governance.md (sections 6 "Disabled" and 7) and Directory.list_rooms do."""
    return may_find(s, r) and (s.admin or not r.disabled)


RIGHTS: dict[str, Callable[[State, RoomFacts], bool]] = {
    "find": may_find,
    "read": may_read,
    "post": may_post,
    "manage": may_manage,
}


# -- the ops --------------------------------------------------------------------------------


@dataclass
class World:
    admin: Client
    clients: dict[str, Client] = field(default_factory=dict)  # by user name
    user_ids: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    shared: dict[tuple[str, str, str], int] = field(default_factory=dict)  # twin, privacy, type
    own: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # op, state, p, t
    names: dict[int, str] = field(default_factory=dict)
    baseline: dict[int, dict[str, Any]] = field(default_factory=dict)  # the admin's view
    missing: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # user, op
    cids: Any = field(default_factory=lambda: itertools.count(1))

    def principal(self, kind: str, name: str) -> dict[str, Any]:
        return {"kind": kind, "id": (self.user_ids if kind == "user" else self.groups)[name]}


Run = Callable[[Client, World, int], Awaitable[dict[str, Any]]]
Undo = Callable[[World, int], Awaitable[None]]
# What a successful reply must show, given who asked about which room: None, or what is wrong.
Check = Callable[[World, State, RoomFacts, dict[str, Any]], str | None]
NEW_DESCRIPTION = "changed by the matrix"
# What `members` adds: an empty group SOURCE allows, so the change invites nobody.
GUESTS_MEMBER = ("group", "guests")


@dataclass(frozen=True)
class Op:
    need: str  # the right in RIGHTS it needs
    run: Run
    changes: str | None = None  # None; "undo": an admin undoes it; "own": a fresh room per cell
    undo: Undo | None = None
    target: str | None = None  # a key of TARGETS, for moves
    check: Check | None = None


async def _find(c: Client, w: World, room: int) -> dict[str, Any]:
    return await c.request("rooms", query=w.names[room])


async def _get(c: Client, w: World, room: int) -> dict[str, Any]:
    return await c.request("room.get", room=room)


async def _join(c: Client, w: World, room: int) -> dict[str, Any]:
    reply = await c.request("join", room=room)
    if reply.get("ok"):
        await c.call("leave", room=room)
    return reply


async def _history(c: Client, w: World, room: int) -> dict[str, Any]:
    return await c.request("history", room=room, limit=1)


async def _post(c: Client, w: World, room: int) -> dict[str, Any]:
    return await c.request("post", room=room, text="matrix", cid=f"m{next(w.cids)}")


async def _members(c: Client, w: World, room: int) -> dict[str, Any]:
    return await c.request(
        "room.members", room=room, add={"members": [w.principal(*GUESTS_MEMBER)]}
    )


async def _undo_members(w: World, room: int) -> None:
    await w.admin.call("room.members", room=room, remove={"members": [w.principal(*GUESTS_MEMBER)]})


async def _update(c: Client, w: World, room: int) -> dict[str, Any]:
    return await c.request("room.update", room=room, description=NEW_DESCRIPTION)


async def _undo_update(w: World, room: int) -> None:
    await w.admin.call("room.update", room=room, description=w.baseline[room]["description"])


async def _disable(c: Client, w: World, room: int) -> dict[str, Any]:
    return await c.request("room.disable", room=room)


async def _undo_disable(w: World, room: int) -> None:
    await w.admin.call("room.disable" if w.baseline[room]["disabled"] else "room.enable", room=room)


def _move(target: str) -> Run:
    async def run(c: Client, w: World, room: int) -> dict[str, Any]:
        return await c.request("room.move", room=room, category=w.categories[target])

    return run


def _shows(what: str, ok: Callable[[World, dict[str, Any]], bool]) -> Check:
    def check(w: World, s: State, r: RoomFacts, reply: dict[str, Any]) -> str | None:
        if not isinstance(reply.get("room"), dict):
            return f"the reply has no room: {reply}"
        return None if ok(w, reply["room"]) else f"the reply does not show {what}"

    return check


def _view_agrees(w: World, s: State, r: RoomFacts, reply: dict[str, Any]) -> str | None:
    """room.get tells the user their roles and rights: they must agree with the rules too."""
    view = reply["room"]
    want = {
        "roles": sorted(effective_roles(s)),
        "can_post": may_post(s, r),
        "can_manage": may_manage(s, r),
    }
    got = {k: view.get(k) for k in want}
    return None if got == want else f"the view says {got}, the rules {want}"


OPS: dict[str, Op] = {
    "find": Op("find", _find),
    "get": Op("find", _get, check=_view_agrees),
    "join": Op("read", _join),
    "history": Op("read", _history),
    "post": Op("post", _post),
    "members": Op(
        "manage",
        _members,
        changes="undo",
        undo=_undo_members,
        check=_shows("the new member", lambda w, v: w.principal(*GUESTS_MEMBER) in v["members"]),
    ),
    "update": Op(
        "manage",
        _update,
        changes="undo",
        undo=_undo_update,
        check=_shows("the description", lambda w, v: v["description"] == NEW_DESCRIPTION),
    ),
    "disable": Op(
        "manage",
        _disable,
        changes="undo",
        undo=_undo_disable,
        check=_shows("the room disabled", lambda w, v: v["disabled"]),
    ),
    "move": Op(
        "manage",
        _move("target"),
        changes="own",
        target="target",
        check=_shows("the move", lambda w, v: v["category"] == w.categories["target"]),
    ),
    "move_nocreate": Op(
        "manage",
        _move("target_nocreate"),
        changes="own",
        target="target_nocreate",
        check=_shows("the move", lambda w, v: v["category"] == w.categories["target_nocreate"]),
    ),
    "move_hidden": Op(
        "manage",
        _move("target_hidden"),
        changes="own",
        target="target_hidden",
        check=_shows("the move", lambda w, v: v["category"] == w.categories["target_hidden"]),
    ),
}


def expected(state: State, op_name: str, room: RoomFacts) -> str:
    op = OPS[op_name]
    if locked_out(state):
        return "impossible"
    if op_name == "find":
        return "listed" if may_list(state, room) else "not_listed"
    if not may_find(state, room):
        return "not_found"
    if not RIGHTS[op.need](state, room):
        return "forbidden"
    if op.target is not None:  # "may create rooms in the target category"
        target = TARGETS[op.target]
        if not (state.admin or target.allows_everyone):
            return "target_not_found"
        if not (state.admin or target.everyone_creates):
            return "forbidden"
    return "ok"


# Room-less cells for each state whose policy is off (privacy and type "-"): the live session
# when the policy is turned off, then logging in again by token and by password.
SESSION_CHECKS = {
    "bye": lambda s: "closed" if locked_out(s) else "open",
    "resume": lambda s: "forbidden" if locked_out(s) else "ok",
    "auth": lambda s: "forbidden" if locked_out(s) else "ok",
}


# Cells where the server is known to disagree with the rules, (state, op, privacy, type) -> what
# it answers instead. Each must still fail: when one is fixed, the test fails until its entry is
# removed. None today.
KNOWN_BUGS: dict[tuple[str, str, str, str], str] = {}


# -- building the world ---------------------------------------------------------------------


def _user_facts() -> dict[str, State]:
    """One state per user, for the user-level facts; they must agree across a user's states."""
    out: dict[str, State] = {}
    for name, s in STATES.items():
        facts = (s.admin, s.allowed, s.denied, s.creator, s.enabled)
        seen = out.setdefault(s.user, s)
        assert (seen.admin, seen.allowed, seen.denied, seen.creator, seen.enabled) == facts, name
    return out


def _grants(states: list[State]) -> tuple[dict[str, list[str]], list[str]]:
    """The users granted each role in a room ``states`` act on, and those to remove again."""
    grants: dict[str, set[str]] = {"members": set(), "managers": set(), "presenters": set()}
    removed: set[str] = set()
    for s in states:
        for role in s.roles:
            grants[role + "s"].add(s.user)
        if s.removed:
            grants["members"].add(s.user)
            removed.add(s.user)
    return {k: sorted(v) for k, v in grants.items()}, sorted(removed)


def _view(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply["room"].items() if k != "last_seq"}


async def _make_room(
    w: World, by: Client, name: str, states: list[State], privacy: str, type_: str
) -> int:
    """A room in SOURCE set up for ``states`` (all on one twin), created by the admin ``by``."""
    created = await by.call(
        "room.create", category=w.categories[SOURCE], name=name, privacy=privacy, type=type_
    )
    room = int(created["room"]["id"])
    w.names[room] = name
    grants, removed = _grants(states)
    add = {k: [w.principal("user", u) for u in users] for k, users in grants.items() if users}
    if add:
        await by.call("room.members", room=room, add=add)
    if removed:
        gone = [w.principal("user", u) for u in removed]
        await by.call("room.members", room=room, remove={"members": gone})
    if TWINS[states[0].room]:
        await by.call("room.disable", room=room)
    return room


async def _turn_policy_off(w: World, h: Harness, name: str) -> dict[str, str]:
    """Turn ``name``'s policy off while they are connected; what SESSION_CHECKS observe. Their
    client for the room cells becomes a new connection that tried to log in by password: refused,
    it stays unauthenticated, and every op on it must answer ``unauthenticated``."""
    live = w.clients[name]
    token = live.token
    assert token is not None
    await w.admin.call("user.policy", user=w.user_ids[name], persistent_chat_enabled=False)
    out = {}
    # The server closes the connection before it answers the administrator: a ping must find
    # the connection closed (with a bye) or, if the policy did not bite, answered.
    ping = asyncio.ensure_future(live.request("ping"))
    closed = asyncio.ensure_future(live.closed.wait())
    await asyncio.wait([ping, closed], timeout=5, return_when=asyncio.FIRST_COMPLETED)
    if live.closed.is_set():
        events = [live.events.get_nowait() for _ in range(live.events.qsize())]
        bye = {"ev": "bye", "reason": "disabled"} in events
        out["bye"] = "closed" if bye else f"closed without bye/disabled: {events}"
    elif ping.done() and not ping.exception():
        out["bye"] = "open" if ping.result().get("ok") else f"ping answered {ping.result()}"
    else:
        out["bye"] = "neither closed nor answering"
    for future in (ping, closed):
        future.cancel()
    await asyncio.gather(ping, closed, return_exceptions=True)

    async def auth(**how: str) -> tuple[Client, dict[str, Any]]:
        client = await h.connect()
        await client.call("hello", protocol=1)
        return client, await client.request("auth", **how)

    def said(reply: dict[str, Any]) -> str:
        return "ok" if reply.get("ok") else str(reply["error"]["code"])

    out["resume"] = said((await auth(token=token))[1])
    w.clients[name], reply = await auth(user=name, password=PASSWORD)
    out["auth"] = said(reply)
    return out


async def build_world(h: Harness) -> tuple[World, dict[str, dict[str, str]]]:
    """The world the tables describe; and for each user whose policy is off, SESSION_CHECKS'
    outcomes."""
    users = _user_facts()
    await asyncio.gather(*(h.user(u, admin=s.admin) for u, s in users.items()))
    admin_name = next(u for u, s in users.items() if s.admin and s.enabled)
    w = World(admin=await h.login(admin_name))
    logged_in = await asyncio.gather(*(h.login(u) for u in users))
    w.clients = dict(zip(users, logged_in, strict=True))
    w.user_ids = {u: c.user["id"] for u, c in w.clients.items() if c.user}

    for group in ("staff", "outer", "inner", "guests"):
        w.groups[group] = (await w.admin.call("group.create", name=group))["group"]["id"]
    staff = [w.principal("user", u) for u, s in users.items() if s.allowed == "group"]
    await w.admin.call("group.members", group=w.groups["staff"], add=staff)
    await w.admin.call(
        "group.members", group=w.groups["outer"], add=[w.principal("group", "inner")]
    )
    nested = [w.principal("user", u) for u, s in users.items() if s.denied == "nested"]
    if nested:
        await w.admin.call("group.members", group=w.groups["inner"], add=nested)

    everyone = [{"kind": "everyone", "id": 0}]
    for name in (SOURCE, *TARGETS):
        w.categories[name] = (await w.admin.call("category.create", name=name))["category"]["id"]
    allowed = [w.principal("group", "staff"), w.principal("group", "guests")]
    allowed += [w.principal("user", u) for u, s in users.items() if s.allowed == "user"]
    creators = [w.principal("user", u) for u, s in users.items() if s.creator]
    await w.admin.call(
        "category.update",
        category=w.categories[SOURCE],
        add={"allowed": allowed, "creators": creators},
    )
    for name, target in TARGETS.items():
        lists = {"allowed": everyone if target.allows_everyone else []}
        lists["creators"] = everyone if target.everyone_creates else []
        await w.admin.call("category.update", category=w.categories[name], add=lists)

    # Rooms and roles, before any denial (a denied user could not be given a role). A few admin
    # sessions share the work: each session serves its requests one at a time.
    builders = [w.admin, *await asyncio.gather(*(h.login(admin_name) for _ in range(BUILDERS - 1)))]
    # The shared rooms: one per twin, privacy and type, for every state on that twin. A room of
    # its own: for the one state whose cell uses it.
    Spec = tuple[dict[Any, int], Any, str, list[State], str, str]
    by_twin = {tw: [s for s in STATES.values() if s.room == tw] for tw in TWINS}
    rooms: list[Spec] = [
        (w.shared, (tw, p, t), f"mx-{tw}-{p}-{t}", by_twin[tw], p, t)
        for tw in TWINS
        for p in PRIVACIES
        for t in TYPES
    ]
    rooms += [
        (w.own, (op, s, p, t), f"mv-{op}-{s}-{p}-{t}", [STATES[s]], p, t)
        for op, spec in OPS.items()
        if spec.changes == "own"
        for s in STATES
        for p in PRIVACIES
        for t in TYPES
    ]

    async def make(by: Client, batch: list[Spec]) -> None:
        for into, key, name, states, p, t in batch:
            into[key] = await _make_room(w, by, name, states, p, t)

    await asyncio.gather(*(make(by, rooms[i :: len(builders)]) for i, by in enumerate(builders)))

    denied = [w.principal("user", u) for u, s in users.items() if s.denied == "user"]
    if nested:
        denied.append(w.principal("group", "outer"))
    await w.admin.call("category.update", category=w.categories[SOURCE], add={"denied": denied})

    sessions = {
        name: await _turn_policy_off(w, h, name) for name, s in users.items() if not s.enabled
    }

    w.names[MISSING_ROOM] = "no-such-room"
    ids = [*w.shared.values(), *w.own.values()]
    views = await asyncio.gather(*(w.admin.call("room.get", room=r) for r in ids))
    w.baseline = {r: _view(v) for r, v in zip(ids, views, strict=True)}
    return w, sessions


# -- running a cell -------------------------------------------------------------------------


def _shape(reply: dict[str, Any], thing: int) -> dict[str, Any]:
    """A reply as a client sees it, with the id of the room or category taken out of the error."""
    out = {k: v for k, v in reply.items() if k != "re"}
    if "error" in out:
        error = dict(out["error"])
        error["message"] = str(error.get("message", "")).replace(str(thing), "<id>")
        out["error"] = error
    return out


async def outcome(
    w: World, state: State, facts: RoomFacts, op_name: str, room: int, reply: dict[str, Any]
) -> str:
    op, user = OPS[op_name], state.user
    if op_name == "find" and reply.get("ok"):
        return "listed" if room in [r["id"] for r in reply["rooms"]] else "not_listed"
    if reply.get("ok"):
        problem = op.check(w, state, facts, reply) if op.check is not None else None
        return "ok" if problem is None else f"ok, but {problem}"
    code, message = reply["error"]["code"], reply["error"]["message"]
    if code == "unauthenticated":
        return "impossible"
    if code == "not_found":
        if (user, op_name) not in w.missing:
            w.missing[user, op_name] = await op.run(w.clients[user], w, MISSING_ROOM)
        if _shape(reply, room) == _shape(w.missing[user, op_name], MISSING_ROOM):
            return "not_found"
        if op.target is not None:  # the same move, to a category that does not exist
            gone = await w.clients[user].request("room.move", room=room, category=MISSING_CATEGORY)
            if _shape(reply, w.categories[op.target]) == _shape(gone, MISSING_CATEGORY):
                return "target_not_found"
        return f"not_found, unlike a missing room or category: {message!r}"
    if code == "forbidden":
        return "forbidden"
    return f"{code}: {message}"


@dataclass(frozen=True)
class Result:
    state: str
    op: str
    privacy: str
    type: str
    expected: str
    actual: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.state, self.op, self.privacy, self.type)


async def run_cell(w: World, state_name: str, op_name: str, privacy: str, type_: str) -> Result:
    state, op = STATES[state_name], OPS[op_name]
    facts = RoomFacts(privacy, type_, TWINS[state.room])
    if op.changes == "own":
        room = w.own[op_name, state_name, privacy, type_]
    else:
        room = w.shared[state.room, privacy, type_]
    reply = await op.run(w.clients[state.user], w, room)
    actual = await outcome(w, state, facts, op_name, room, reply)
    if op.changes is not None:
        if op.changes == "undo" and reply.get("ok"):
            assert op.undo is not None
            await op.undo(w, room)
        if op.changes == "undo" or not reply.get("ok"):
            now = _view(await w.admin.call("room.get", room=room))
            if now != w.baseline[room]:
                changed = {k: v for k, v in now.items() if w.baseline[room].get(k) != v}
                what = "undone" if reply.get("ok") else "refused"
                actual += f"; the room changed though the op was {what}: {changed}"
    return Result(state_name, op_name, privacy, type_, expected(state, op_name, facts), actual)


def _table(results: list[Result]) -> str:
    head = f"{'state':<22} {'op':<14} {'privacy':<7} {'type':<10} {'expected':<10} actual"
    lines = [
        f"{r.state:<22} {r.op:<14} {r.privacy:<7} {r.type:<10} {r.expected:<10} {r.actual}"
        for r in sorted(results, key=lambda r: r.key)
    ]
    return "\n".join([head, *lines])


async def run_matrix(w: World) -> list[Result]:
    """Every cell. Cells on the same shared room that change it run one after another; the rest
    run concurrently (each user's requests are still served in order)."""
    cells = [(s, op, p, t) for s in STATES for op in OPS for p in PRIVACIES for t in TYPES]
    results: list[Result] = []

    async def in_order(batch: list[tuple[str, str, str, str]]) -> None:
        for cell in batch:
            results.append(await run_cell(w, *cell))

    serial: dict[tuple[str, str, str], list[tuple[str, str, str, str]]] = {}
    free = []
    for cell in cells:
        s, op, p, t = cell
        if OPS[op].changes == "undo":
            serial.setdefault((STATES[s].room, p, t), []).append(cell)
        else:
            free.append(cell)
    results += await asyncio.gather(*(run_cell(w, *cell) for cell in free))
    await asyncio.gather(*(in_order(batch) for batch in serial.values()))
    assert len(results) == len(cells)
    return results


async def test_authorization_matrix(db_url: str) -> None:
    h = Harness(await start_node(node_config(db_url)))
    try:
        w, sessions = await build_world(h)
        results = await run_matrix(w)
    finally:
        await h.close()
    results += [
        Result(name, check, "-", "-", rule(s), sessions[s.user][check])
        for name, s in STATES.items()
        if not s.enabled
        for check, rule in SESSION_CHECKS.items()
    ]

    # The world is not degenerate: every kind of outcome is expected somewhere.
    assert {r.expected for r in results} >= {
        "ok",
        "forbidden",
        "not_found",
        "listed",
        "not_listed",
        "impossible",
        "target_not_found",
        "closed",
    }
    wrong = [r for r in results if r.expected != r.actual]
    unknown = [r for r in wrong if KNOWN_BUGS.get(r.key) != r.actual]
    still_broken = {r.key for r in wrong if KNOWN_BUGS.get(r.key) == r.actual}
    fixed = sorted(set(KNOWN_BUGS) - still_broken)
    report = []
    if unknown:
        report.append(f"{len(unknown)} of {len(results)} cells disagree with the rules:")
        report.append(_table(unknown))
    if fixed:
        report.append("KNOWN_BUGS entries that no longer answer as recorded (remove them):")
        report += [f"  {key} was {KNOWN_BUGS[key]!r}" for key in fixed]
    assert not report, "\n".join(report)
