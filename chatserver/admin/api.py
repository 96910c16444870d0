"""The management API's resources: request and response models, and one handler per route.

Handlers call the same domain functions the client protocol uses (``rooms/governance.py``), as
an administrator, so a change made here is enforced on live connections exactly like one made by
a client. Every mutating handler records an audit entry (who, what, when, before and after).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from ..protocol.errors import BAD_REQUEST, CONFLICT, FORBIDDEN, NOT_FOUND, ChatError
from ..rooms import access
from ..rooms.access import Actor
from ..rooms.changes import MessageChange
from ..store import admin as admin_store
from ..store import principals as principal_store
from ..store import rooms as room_store
from ..store import users as user_store
from ..store.principals import Principal as StorePrincipal
from .routes import route

if TYPE_CHECKING:
    from ..server import Node
    from ..store.users import User

log = logging.getLogger("chatserver.admin")

# -- models ---------------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# Text that reaches the store: PostgreSQL cannot store NUL characters in text columns.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Field(min_length=1, max_length=256, pattern=NO_NUL)]
Description = Annotated[str, Field(max_length=256, pattern=NO_NUL)]
Id = Annotated[int, Field(ge=1, le=2**53)]


class Principal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["user", "group", "everyone"]
    id: Annotated[int, Field(ge=0, le=2**53)] = 0

    def store(self) -> StorePrincipal:
        return StorePrincipal(self.kind, 0 if self.kind == "everyone" else self.id)


class UserOut(BaseModel):
    id: int
    name: str
    display_name: str
    is_admin: bool
    persistent_chat_enabled: bool
    policy: bool | None = Field(description="The user's own setting; null: the global default")


class UserBrief(BaseModel):
    id: int
    name: str
    display_name: str


class UserIn(_In):
    name: Name
    password: Annotated[str, Field(min_length=8, max_length=1024)]
    display_name: Name | None = None
    is_admin: bool = False


class PolicyIn(_In):
    persistent_chat_enabled: bool | None


class UserQuery(_In):
    query: Description | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class GroupOut(BaseModel):
    id: int
    name: str
    description: str
    members: list[Principal] | None = None


class GroupIn(_In):
    name: Name
    description: Description = ""


class Member(BaseModel):
    """A group member: a user or a group (a group cannot hold "everyone")."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["user", "group"]
    id: Id

    def store(self) -> StorePrincipal:
        return StorePrincipal(self.kind, self.id)


class MembersIn(_In):
    add: list[Member] = Field(default_factory=list, max_length=1000)
    remove: list[Member] = Field(default_factory=list, max_length=1000)


class CategoryOut(BaseModel):
    id: int
    name: str
    description: str
    invitations: bool
    file_upload: bool
    chat_history: bool
    allowed: list[Principal]
    denied: list[Principal]
    creators: list[Principal]


class CategoryIn(_In):
    name: Name
    description: Description = ""
    invitations: bool = True
    file_upload: bool = True
    chat_history: bool = True
    allowed: list[Principal] = Field(default_factory=list, max_length=1000)
    denied: list[Principal] = Field(default_factory=list, max_length=1000)
    creators: list[Principal] = Field(default_factory=list, max_length=1000)


class CategoryLists(_In):
    allowed: list[Principal] = Field(default_factory=list, max_length=1000)
    denied: list[Principal] = Field(default_factory=list, max_length=1000)
    creators: list[Principal] = Field(default_factory=list, max_length=1000)


class CategoryPatch(_In):
    name: Name | None = None
    description: Description | None = None
    invitations: bool | None = None
    file_upload: bool | None = None
    chat_history: bool | None = None
    add: CategoryLists = Field(default_factory=CategoryLists)
    remove: CategoryLists = Field(default_factory=CategoryLists)


Privacy = Literal["open", "closed", "secret"]
RoomType = Literal["normal", "auditorium"]
Invitations = Literal["inherit", "off"]


class RoomOut(BaseModel):
    id: int
    name: str
    description: str
    category: int
    privacy: Privacy
    type: RoomType
    disabled: bool
    invitations: Invitations
    addin: int | None
    last_seq: int
    members: list[Principal]
    managers: list[Principal]
    presenters: list[Principal]


class RoomPage(BaseModel):
    rooms: list[RoomOut]
    next: int | None = Field(description="Pass as `after` for the next page; null: no more")


class RoleLists(_In):
    member: list[Principal] = Field(default_factory=list, max_length=1000)
    manager: list[Principal] = Field(default_factory=list, max_length=1000)
    presenter: list[Principal] = Field(default_factory=list, max_length=1000)


class RoomIn(_In):
    name: Name
    description: Description = ""
    category: Id = 1
    privacy: Privacy = "closed"
    type: RoomType = "normal"
    invitations: Invitations = "inherit"
    addin: Id | None = None
    members: list[Principal] = Field(default_factory=list, max_length=1000)
    managers: list[Principal] = Field(default_factory=list, max_length=1000)
    presenters: list[Principal] = Field(default_factory=list, max_length=1000)


class RoomPatch(_In):
    name: Name | None = None
    description: Description | None = None
    category: Id | None = Field(None, description="Move the room to this category")
    privacy: Privacy | None = None
    type: RoomType | None = None
    invitations: Invitations | None = None
    addin: Id | None = Field(None, description="Attach this add-in; see `detach_addin`")
    detach_addin: bool = False
    add: RoleLists = Field(default_factory=RoleLists)
    remove: RoleLists = Field(default_factory=RoleLists)


PrincipalText = Annotated[str, Field(pattern=r"^(user|group):[1-9][0-9]{0,15}$")]


def _query_bool(value: Any) -> Any:
    """A boolean query parameter is ``true`` or ``false`` (not yes, on, 1, …)."""
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("give true or false")
        return value == "true"
    return value


QueryBool = Annotated[bool, BeforeValidator(_query_bool)]


class RoomQuery(_In):
    category: Id | None = None
    privacy: Privacy | None = None
    type: RoomType | None = None
    disabled: QueryBool | None = None
    member: PrincipalText | None = Field(
        None, description="`user:ID` or `group:ID`, a direct grant"
    )
    manager: PrincipalText | None = None
    addin: Id | None = None
    contains: Name | None = Field(None, description="In the name or description, any case")
    content_exceeds_mb: Annotated[float, Field(ge=0, le=1e9)] | None = None
    after: Annotated[int, Field(ge=0, le=2**53)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


_DAY_MS = 86_400_000
_BARE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _when(value: int | str | None, *, end_of_day: bool = False) -> int | None:
    """Epoch milliseconds, or an ISO 8601 date or date-time (UTC when no offset), to epoch ms.

    A bare date is its first millisecond, or with ``end_of_day`` its last: "until 2026-11-28"
    includes the messages posted on the 28th.
    """
    if value is None or isinstance(value, int):
        return value
    try:
        if _BARE_DATE.fullmatch(value):
            day = dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
            start = int(day.timestamp() * 1000)
            return start + _DAY_MS - 1 if end_of_day else start
        parsed = _DATETIME.validate_python(value)
    except (ValueError, ValidationError):
        raise ValueError(f"{value!r} is not an ISO 8601 date or date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


_DATETIME: TypeAdapter[dt.datetime] = TypeAdapter(dt.datetime)

When = (
    Annotated[int, Field(ge=0, le=2**53)]
    | Annotated[
        str,
        Field(min_length=10, max_length=64),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "format": "date"},
                    {"type": "string", "format": "date-time"},
                ]
            }
        ),
    ]
)


class ClearIn(_In):
    until: When = Field(
        description="Messages posted on or before this instant are removed: epoch ms, or an ISO"
        " 8601 date or date-time (UTC unless an offset is given; a bare date means the whole"
        " day: its messages are removed too)"
    )

    @field_validator("until")
    @classmethod
    def _check(cls, value: int | str) -> int | str:
        _when(value)
        return value


class ClearOut(BaseModel):
    removed: int
    through_seq: int


class MessageFilterIn(_In):
    room: Id | None = None
    user: Id | None = None
    since: When | None = None
    until: When | None = None
    keywords: list[Name] = Field(default_factory=list, max_length=50)
    match: Literal["all", "any", "exact"] = "all"
    case_sensitive: bool = False
    limit: Annotated[int, Field(ge=1, le=10_000)] = 1000

    @field_validator("since", "until")
    @classmethod
    def _check(cls, value: int | str | None) -> int | str | None:
        _when(value)
        return value

    def store(self) -> admin_store.MessageFilter:
        return admin_store.MessageFilter(
            room_id=self.room,
            user_id=self.user,
            since_ms=_when(self.since),
            until_ms=_when(self.until, end_of_day=True),
            keywords=tuple(self.keywords),
            match=self.match,
            case_sensitive=self.case_sensitive,
        )


# A change must select by room or user (or both); the document says so too.
_ROOM_OR_USER: JsonDict = {
    "anyOf": [
        {"required": ["room"], "properties": {"room": {"type": "integer"}}},
        {"required": ["user"], "properties": {"user": {"type": "integer"}}},
    ]
}


class RemoveIn(MessageFilterIn):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_ROOM_OR_USER)

    @model_validator(mode="after")
    def _room_or_user(self) -> Self:
        if self.room is None and self.user is None:
            raise ValueError("select messages by room or user (or both)")
        return self


DEFAULT_REPLACEMENT = "This message was replaced by the administrator."


class ReplaceIn(RemoveIn):
    text: Annotated[str, Field(min_length=1, max_length=8000, pattern=NO_NUL)] = DEFAULT_REPLACEMENT


class Sender(BaseModel):
    id: int
    name: str


class MessageOut(BaseModel):
    room: int
    seq: int
    ts: int
    sender: Sender
    text: str
    state: str


class MessagesOut(BaseModel):
    messages: list[MessageOut]


class ChangedOut(BaseModel):
    changed: int
    messages: list[MessageOut] = Field(description="The messages as they were before the change")


class AddinOut(BaseModel):
    id: int
    name: str
    url: str
    created: int


# An absolute http(s) URL with a host (a name, an IPv4 or a bracketed IPv6 address), an optional
# port, then any printable ASCII: what a browser can open (IDN hosts in their xn-- form).
URL_PATTERN = (
    r"^https?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
    r"([/?#][!-~]*)?$"
)
Url = Annotated[str, Field(min_length=8, max_length=2048, pattern=URL_PATTERN)]


class AddinIn(_In):
    name: Name
    url: Url


class AddinPatch(_In):
    name: Name | None = None
    url: Url | None = None


class Settings(BaseModel):
    default_chat_history: int
    max_file_size_kb: int
    participant_update_limit: int
    room_management_url: str


class SettingsPatch(_In):
    """Set a value, or give null to clear an override (back to the inherited value)."""

    default_chat_history: Annotated[int, Field(ge=1, le=500)] | None = None
    max_file_size_kb: Annotated[int, Field(ge=1, le=1_048_576)] | None = None
    participant_update_limit: Annotated[int, Field(ge=0, le=100_000)] | None = None
    room_management_url: (
        Annotated[str, Field(max_length=2048, pattern=r"^(https?://[!-~]+)?$")] | None
    ) = None


class SettingsOut(BaseModel):
    node: str
    defaults: Settings = Field(description="From the configuration file and environment")
    global_: dict[str, Any] = Field(alias="global", description="Deployment-wide overrides")
    nodes: dict[str, dict[str, Any]] = Field(description="Per-node overrides, by node name")
    effective: Settings = Field(description="What this node uses now")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class SessionOut(BaseModel):
    user: UserBrief
    transport: str
    peer: str
    rooms: int


class SessionsOut(BaseModel):
    node: str
    sessions: list[SessionOut]


class DisconnectOut(BaseModel):
    disconnected: int


class PoolNode(BaseModel):
    name: str
    tcp: str
    websocket: str
    peer: str
    management: str
    state: str
    heartbeat_age_s: float | None
    this_node: bool
    linked: bool | None = Field(None, description="A peer link to it is up (pooled nodes only)")


class PoolOut(BaseModel):
    pooled: bool
    nodes: list[PoolNode]


class AuditOut(BaseModel):
    id: int
    ts: int
    actor: str
    actor_id: int | None
    action: str
    target: str
    before: Any
    after: Any


class AuditQuery(_In):
    action: Annotated[str, Field(max_length=64, pattern=NO_NUL)] | None = None
    actor: Description | None = None
    target: Description | None = None
    since: Annotated[int, Field(ge=0, le=2**53)] | None = None
    before: Annotated[int, Field(ge=1, le=2**53)] | None = Field(
        None, description="Entries with a smaller id (the next page: the last id you got)"
    )
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class TokenOut(BaseModel):
    token: str
    user: UserBrief


class ComplianceOut(BaseModel):
    enabled: bool
    database_url: str
    adapter: str
    output_dir: str
    run_interval_s: int
    one_room_per_file: bool
    add_room_details: bool
    add_user_details: bool
    attachments_manifest: bool


# -- the request context --------------------------------------------------------------------


@dataclass
class Ctx:
    node: Node
    actor: User
    actor_label: str  # the user name, or "token"
    params: dict[str, int]
    body: Any
    query: Any
    audited: bool = False

    @property
    def gov(self) -> Any:
        return self.node.governance

    @property
    def db(self) -> Any:
        return self.node.db

    async def audit(self, action: str, target: str, before: Any, after: Any) -> None:
        actor_id = self.actor.id or None
        await admin_store.audit(self.db, self.actor_label, actor_id, action, target, before, after)
        self.audited = True


def _not_found(what: str, ident: int) -> ChatError:
    return ChatError(NOT_FOUND, f"no {what} {ident}")


# -- users ----------------------------------------------------------------------------------


async def _user_out(ctx: Ctx, user_id: int) -> dict[str, Any]:
    user = await user_store.get_user(ctx.db, user_id)
    if user is None:
        raise _not_found("user", user_id)
    return _user_view(ctx, user)


def _user_view(ctx: Ctx, user: User) -> dict[str, Any]:
    return {
        **user.public(),
        "is_admin": user.is_admin,
        "persistent_chat_enabled": ctx.node.auth.policy_enabled(user),
        "policy": user.persistent_chat_enabled,
    }


@route(
    "GET",
    "/api/v1/users",
    tag="users",
    summary="List users",
    query=UserQuery,
    response=list[UserOut],
)
async def list_users(ctx: Ctx) -> Any:
    q: UserQuery = ctx.query
    return [_user_view(ctx, u) for u in await user_store.list_users(ctx.db, q.query, q.limit)]


@route(
    "POST",
    "/api/v1/users",
    tag="users",
    summary="Add a user",
    body=UserIn,
    response=UserOut,
    status=201,
)
async def create_user(ctx: Ctx) -> Any:
    body: UserIn = ctx.body
    user = await ctx.node.accounts.add_user(
        body.name, body.password, is_admin=body.is_admin, display_name=body.display_name
    )
    out = _user_view(ctx, user)
    await ctx.audit("user.create", f"user:{user.id}", None, out)
    return out


@route("GET", "/api/v1/users/{user_id}", tag="users", summary="Get a user", response=UserOut)
async def get_user(ctx: Ctx) -> Any:
    return await _user_out(ctx, ctx.params["user_id"])


@route(
    "PUT",
    "/api/v1/users/{user_id}/policy",
    tag="users",
    summary="Set a user's persistent_chat_enabled policy (null: the global default)",
    body=PolicyIn,
    response=UserOut,
)
async def set_policy(ctx: Ctx) -> Any:
    uid = ctx.params["user_id"]
    before = await _user_out(ctx, uid)
    await ctx.gov.set_policy(ctx.actor, uid, ctx.body.persistent_chat_enabled)
    after = await _user_out(ctx, uid)
    await ctx.audit("user.policy", f"user:{uid}", before, after)
    return after


@route(
    "GET",
    "/api/v1/sessions",
    tag="sessions",
    summary="Users connected to this node",
    response=SessionsOut,
)
async def list_sessions(ctx: Ctx) -> Any:
    out: list[dict[str, Any]] = []
    for conn in list(ctx.node.connections):
        user = conn.session.user
        if user is None:
            continue
        out.append(
            {
                "user": user.public(),
                "transport": conn.transport_name,
                "peer": conn.peer,
                "rooms": len(conn.session.rooms),
            }
        )
    out.sort(key=lambda s: (s["user"]["name"], s["peer"]))
    return {"node": ctx.node.config.node.name, "sessions": out}


@route(
    "DELETE",
    "/api/v1/users/{user_id}/sessions",
    tag="sessions",
    summary="Disconnect a user's connections and revoke their session tokens",
    response=DisconnectOut,
)
async def disconnect_user(ctx: Ctx) -> Any:
    uid = ctx.params["user_id"]
    await _user_out(ctx, uid)
    count = await ctx.node.accounts.revoke_tokens(uid, "disconnected")
    await ctx.audit("user.disconnect", f"user:{uid}", None, {"disconnected": count})
    return {"disconnected": count}


# -- groups ---------------------------------------------------------------------------------


async def _group_out(ctx: Ctx, group_id: int) -> dict[str, Any]:
    group = await principal_store.get_group(ctx.db, group_id)
    if group is None:
        raise _not_found("group", group_id)
    members = await principal_store.group_members_of(ctx.db, group_id)
    return {**group.public(), "members": [p.wire() for p in members]}


@route("GET", "/api/v1/groups", tag="groups", summary="List groups", response=list[GroupOut])
async def list_groups(ctx: Ctx) -> Any:
    return await admin_store.list_groups(ctx.db)


@route(
    "POST",
    "/api/v1/groups",
    tag="groups",
    summary="Add a group",
    body=GroupIn,
    response=GroupOut,
    status=201,
)
async def create_group(ctx: Ctx) -> Any:
    out = await ctx.gov.create_group(ctx.actor, ctx.body.name, ctx.body.description)
    out = await _group_out(ctx, out["id"])
    await ctx.audit("group.create", f"group:{out['id']}", None, out)
    return out


@route(
    "GET",
    "/api/v1/groups/{group_id}",
    tag="groups",
    summary="Get a group and its members",
    response=GroupOut,
)
async def get_group(ctx: Ctx) -> Any:
    return await _group_out(ctx, ctx.params["group_id"])


@route(
    "PATCH",
    "/api/v1/groups/{group_id}/members",
    tag="groups",
    summary="Add and remove members (users and groups)",
    body=MembersIn,
    response=GroupOut,
)
async def change_group_members(ctx: Ctx) -> Any:
    gid = ctx.params["group_id"]
    before = await _group_out(ctx, gid)
    await ctx.gov.change_group(
        ctx.actor, gid, [p.store() for p in ctx.body.add], [p.store() for p in ctx.body.remove]
    )
    after = await _group_out(ctx, gid)
    await ctx.audit("group.members", f"group:{gid}", before, after)
    return after


@route("DELETE", "/api/v1/groups/{group_id}", tag="groups", summary="Remove a group")
async def delete_group(ctx: Ctx) -> Any:
    gid = ctx.params["group_id"]
    before = await _group_out(ctx, gid)
    await ctx.gov.delete_group(ctx.actor, gid)
    await ctx.audit("group.delete", f"group:{gid}", before, None)


# -- categories -----------------------------------------------------------------------------


async def _category_out(ctx: Ctx, category_id: int) -> dict[str, Any]:
    category = await ctx.node.facts.category(category_id)
    if category is None:
        raise _not_found("category", category_id)
    return category.public(with_principals=True)  # type: ignore[no-any-return]


def _lists(lists: CategoryLists | RoleLists) -> dict[str, list[StorePrincipal]]:
    out = {}
    for name in type(lists).model_fields:
        principals = [p.store() for p in getattr(lists, name)]
        if principals:
            out["creator" if name == "creators" else name] = principals
    return out


@route(
    "GET",
    "/api/v1/categories",
    tag="categories",
    summary="List categories",
    response=list[CategoryOut],
)
async def list_categories(ctx: Ctx) -> Any:
    return await ctx.gov.list_categories(ctx.actor)


@route(
    "POST",
    "/api/v1/categories",
    tag="categories",
    summary="Add a category",
    body=CategoryIn,
    response=CategoryOut,
    status=201,
)
async def create_category(ctx: Ctx) -> Any:
    b: CategoryIn = ctx.body
    created = await ctx.gov.create_category(
        ctx.actor,
        b.name,
        description=b.description,
        invitations=b.invitations,
        file_upload=b.file_upload,
        chat_history=b.chat_history,
    )
    lists = _lists(CategoryLists(allowed=b.allowed, denied=b.denied, creators=b.creators))
    if lists:
        try:
            created = await ctx.gov.update_category(ctx.actor, created["id"], {}, lists, {})
        except ChatError:
            await ctx.gov.delete_category(ctx.actor, created["id"])  # all or nothing
            raise
    await ctx.audit("category.create", f"category:{created['id']}", None, created)
    return created


@route(
    "GET",
    "/api/v1/categories/{category_id}",
    tag="categories",
    summary="Get a category",
    response=CategoryOut,
)
async def get_category(ctx: Ctx) -> Any:
    return await _category_out(ctx, ctx.params["category_id"])


@route(
    "PATCH",
    "/api/v1/categories/{category_id}",
    tag="categories",
    summary="Change a category: settings, and allowed / denied / creators",
    body=CategoryPatch,
    response=CategoryOut,
)
async def update_category(ctx: Ctx) -> Any:
    cid = ctx.params["category_id"]
    b: CategoryPatch = ctx.body
    before = await _category_out(ctx, cid)
    values = b.model_dump(exclude={"add", "remove"}, exclude_none=True)
    after = await ctx.gov.update_category(ctx.actor, cid, values, _lists(b.add), _lists(b.remove))
    await ctx.audit("category.update", f"category:{cid}", before, after)
    return after


@route(
    "DELETE",
    "/api/v1/categories/{category_id}",
    tag="categories",
    summary="Remove an empty category",
)
async def delete_category(ctx: Ctx) -> Any:
    cid = ctx.params["category_id"]
    before = await _category_out(ctx, cid)
    await ctx.gov.delete_category(ctx.actor, cid)
    await ctx.audit("category.delete", f"category:{cid}", before, None)


async def _eligible_users(ctx: Ctx, allowed: Any) -> list[dict[str, Any]]:
    out = []
    for user in await user_store.list_users(ctx.db, None, limit=100_000):
        groups = await ctx.node.facts.groups_of("user", user.id)
        if allowed(Actor(user.id, False, groups), StorePrincipal("user", user.id), groups):
            out.append(user.public())
    return out


@route(
    "GET",
    "/api/v1/categories/{category_id}/eligible",
    tag="categories",
    summary="Users the category allows (groups expanded, denials applied)",
    response=list[UserBrief],
)
async def category_eligible(ctx: Ctx) -> Any:
    cid = ctx.params["category_id"]
    category = await ctx.node.facts.category(cid)
    if category is None:
        raise _not_found("category", cid)
    return await _eligible_users(
        ctx, lambda _actor, p, groups: access.eligible(p, category, groups)
    )


# -- rooms ----------------------------------------------------------------------------------


async def _room_out(ctx: Ctx, room_id: int) -> dict[str, Any]:
    # Read the store, not a cache another node may have changed; a read changes nothing.
    room = await room_store.get_room(ctx.db, room_id)
    if room is None:
        raise _not_found("room", room_id)
    out = room.public(with_roles=True)
    out["last_seq"] = await ctx.node.enforcement.last_seq(room_id)
    return out  # type: ignore[no-any-return]


async def _check_addin(ctx: Ctx, addin_id: int | None) -> None:
    if addin_id is not None and await admin_store.get_addin(ctx.db, addin_id) is None:
        raise _not_found("add-in", addin_id)


@route(
    "GET",
    "/api/v1/rooms",
    tag="rooms",
    summary="List rooms, filtered",
    query=RoomQuery,
    response=RoomPage,
)
async def list_rooms(ctx: Ctx) -> Any:
    q: RoomQuery = ctx.query

    def principal(text: str | None) -> tuple[str, int] | None:
        if text is None:
            return None
        kind, _, ident = text.partition(":")
        return kind, int(ident)

    ids = await admin_store.query_rooms(
        ctx.db,
        admin_store.RoomQuery(
            category_id=q.category,
            privacy=q.privacy,
            type=q.type,
            disabled=q.disabled,
            member=principal(q.member),
            manager=principal(q.manager),
            addin_id=q.addin,
            contains=q.contains,
            content_exceeds_mb=q.content_exceeds_mb,
        ),
        after_id=q.after,
        limit=q.limit,
    )
    rooms = []
    for rid in ids:
        try:
            rooms.append(await _room_out(ctx, rid))
        except ChatError:  # removed meanwhile
            continue
    return {"rooms": rooms, "next": ids[-1] if len(ids) == q.limit else None}


@route(
    "POST",
    "/api/v1/rooms",
    tag="rooms",
    summary="Add a room",
    body=RoomIn,
    response=RoomOut,
    status=201,
)
async def create_room(ctx: Ctx) -> Any:
    b: RoomIn = ctx.body
    await _check_addin(ctx, b.addin)
    room = await ctx.gov.create_room(
        ctx.actor, b.category, b.name, b.description, b.privacy, b.type, b.invitations
    )
    roles = _lists(RoleLists(member=b.members, manager=b.managers, presenter=b.presenters))
    try:
        if roles:
            await ctx.gov.change_roles(ctx.actor, room.id, roles, {})
        if b.addin is not None:
            await ctx.gov.update_room(ctx.actor, room.id, {"addin_id": b.addin})
    except ChatError:
        await ctx.gov.delete_room(ctx.actor, room.id)  # all or nothing
        raise
    out = await _room_out(ctx, room.id)
    await ctx.audit("room.create", f"room:{room.id}", None, out)
    return out


@route("GET", "/api/v1/rooms/{room_id}", tag="rooms", summary="Get a room", response=RoomOut)
async def get_room(ctx: Ctx) -> Any:
    return await _room_out(ctx, ctx.params["room_id"])


@route(
    "PATCH",
    "/api/v1/rooms/{room_id}",
    tag="rooms",
    summary="Change a room: settings, category, add-in, members / managers / presenters",
    body=RoomPatch,
    response=RoomOut,
)
async def update_room(ctx: Ctx) -> Any:
    rid = ctx.params["room_id"]
    b: RoomPatch = ctx.body
    before = await _room_out(ctx, rid)
    await _check_addin(ctx, b.addin)
    if b.addin is not None and b.detach_addin:
        raise ChatError(BAD_REQUEST, "give either addin or detach_addin")
    values = b.model_dump(
        include={"name", "description", "privacy", "type", "invitations"}, exclude_none=True
    )
    if b.addin is not None:
        values["addin_id"] = b.addin
    if b.detach_addin:
        values["addin_id"] = None
    add, remove = _lists(b.add), _lists(b.remove)
    try:
        if b.category is not None and b.category != before["category"]:
            await ctx.gov.move_room(ctx.actor, rid, b.category)
        if values:
            await ctx.gov.update_room(ctx.actor, rid, values)
        if add or remove:
            await ctx.gov.change_roles(ctx.actor, rid, add, remove)
    except ChatError:
        await _restore_room(ctx, rid, before)  # all or nothing
        raise
    after = await _room_out(ctx, rid)
    await ctx.audit("room.update", f"room:{rid}", before, after)
    return after


async def _restore_room(ctx: Ctx, rid: int, before: dict[str, Any]) -> None:
    """Undo the steps of a room update that failed part way; if the room cannot be put back
    as it was, what did change is audited."""
    try:
        now = await _room_out(ctx, rid)
        if now == before:
            return
        if now["category"] != before["category"]:
            await ctx.gov.move_room(ctx.actor, rid, before["category"])
        keys = ("name", "description", "privacy", "type", "invitations")
        values = {key: before[key] for key in keys if now[key] != before[key]}
        if now["addin"] != before["addin"]:
            values["addin_id"] = before["addin"]
        if values:
            await ctx.gov.update_room(ctx.actor, rid, values)
    except ChatError:
        log.exception("room %d: undoing a failed update failed", rid)
    after = await _room_out(ctx, rid)
    if after != before:
        await ctx.audit("room.update", f"room:{rid}", before, after)


async def _set_disabled(ctx: Ctx, disabled: bool) -> Any:
    rid = ctx.params["room_id"]
    before = await _room_out(ctx, rid)
    await ctx.gov.set_disabled(ctx.actor, rid, disabled)
    after = await _room_out(ctx, rid)
    await ctx.audit("room.disable" if disabled else "room.enable", f"room:{rid}", before, after)
    return after


@route(
    "POST",
    "/api/v1/rooms/{room_id}/disable",
    tag="rooms",
    summary="Disable a room (members are removed from it; nothing is deleted)",
    response=RoomOut,
)
async def disable_room(ctx: Ctx) -> Any:
    return await _set_disabled(ctx, True)


@route(
    "POST", "/api/v1/rooms/{room_id}/enable", tag="rooms", summary="Enable a room", response=RoomOut
)
async def enable_room(ctx: Ctx) -> Any:
    return await _set_disabled(ctx, False)


@route("DELETE", "/api/v1/rooms/{room_id}", tag="rooms", summary="Delete a room and its history")
async def delete_room(ctx: Ctx) -> Any:
    rid = ctx.params["room_id"]
    before = await _room_out(ctx, rid)
    await ctx.gov.delete_room(ctx.actor, rid)
    await ctx.audit("room.delete", f"room:{rid}", before, None)


@route(
    "GET",
    "/api/v1/rooms/{room_id}/eligible",
    tag="rooms",
    summary="Users who may read the room (groups expanded, category denials applied)",
    response=list[UserBrief],
)
async def room_eligible(ctx: Ctx) -> Any:
    rid = ctx.params["room_id"]
    await _room_out(ctx, rid)
    room = await room_store.get_room(ctx.db, rid)
    category = await ctx.node.facts.category(room.category_id) if room else None
    if room is None or category is None:
        raise _not_found("room", rid)
    return await _eligible_users(
        ctx, lambda actor, _p, _groups: access.can_read(actor, room, category)
    )


@route(
    "POST",
    "/api/v1/rooms/{room_id}/clear",
    tag="messages",
    summary="Remove every message posted on or before a date",
    body=ClearIn,
    response=ClearOut,
)
async def clear_room(ctx: Ctx) -> Any:
    rid = ctx.params["room_id"]
    await _room_out(ctx, rid)
    until = _when(ctx.body.until, end_of_day=True)
    assert until is not None
    removed, through = await admin_store.clear_room(
        ctx.db, rid, until, compliance_node=ctx.node.compliance_node, actor=ctx.actor_label
    )
    if removed:
        ctx.node.messages_changed(rid, [], through)
    out = {"removed": removed, "through_seq": through}
    await ctx.audit("room.clear", f"room:{rid}", {"until_ms": until}, out)
    return out


# -- messages -------------------------------------------------------------------------------


@route(
    "POST",
    "/api/v1/messages/search",
    tag="messages",
    summary="Find messages by room, user, date range and keywords",
    body=MessageFilterIn,
    response=MessagesOut,
)
async def search_messages(ctx: Ctx) -> Any:
    found = await admin_store.find_messages(ctx.db, ctx.body.store(), ctx.body.limit)
    return {"messages": [m.public() for m in found]}


async def _change(ctx: Ctx, state: str, text: str) -> Any:
    body: MessageFilterIn = ctx.body
    if body.room is None and body.user is None:
        raise ChatError(BAD_REQUEST, "select messages by room or user (or both)")
    if body.room is not None:
        await _room_out(ctx, body.room)
    found = await admin_store.change_messages(
        ctx.db,
        body.store(),
        state=state,
        text=text,
        limit=body.limit,
        compliance_node=ctx.node.compliance_node,
        actor=ctx.actor_label,
    )
    by_room: dict[int, list[MessageChange]] = {}
    for m in found:
        by_room.setdefault(m.room_id, []).append(MessageChange(m.seq, state, text))
    for room_id, changes in by_room.items():
        ctx.node.messages_changed(room_id, changes, None)
    originals = [m.public() for m in found]
    action = "messages.replace" if state == "replaced" else "messages.remove"
    target = f"room:{body.room}" if body.room is not None else f"user:{body.user}"
    await ctx.audit(
        action,
        target,
        {"filter": body.model_dump(mode="json"), "messages": originals},
        {"changed": len(found), "text": text if state == "replaced" else None},
    )
    return {"changed": len(found), "messages": originals}


@route(
    "POST",
    "/api/v1/messages/remove",
    tag="messages",
    summary="Remove the selected messages (their seq stays, their text is gone)",
    body=RemoveIn,
    response=ChangedOut,
)
async def remove_messages(ctx: Ctx) -> Any:
    return await _change(ctx, "removed", "")


@route(
    "POST",
    "/api/v1/messages/replace",
    tag="messages",
    summary="Replace the text of the selected messages",
    body=ReplaceIn,
    response=ChangedOut,
)
async def replace_messages(ctx: Ctx) -> Any:
    return await _change(ctx, "replaced", ctx.body.text)


# -- add-ins --------------------------------------------------------------------------------


async def _addin_out(ctx: Ctx, addin_id: int) -> dict[str, Any]:
    found = await admin_store.get_addin(ctx.db, addin_id)
    if found is None:
        raise _not_found("add-in", addin_id)
    return found


@route("GET", "/api/v1/addins", tag="addins", summary="List add-ins", response=list[AddinOut])
async def list_addins(ctx: Ctx) -> Any:
    return await admin_store.list_addins(ctx.db)


@route(
    "POST",
    "/api/v1/addins",
    tag="addins",
    summary="Add an add-in (a web page for rooms)",
    body=AddinIn,
    response=AddinOut,
    status=201,
)
async def create_addin(ctx: Ctx) -> Any:
    try:
        out = await admin_store.create_addin(ctx.db, ctx.body.name, ctx.body.url)
    except admin_store.AddinExists:
        raise ChatError(CONFLICT, f"an add-in named {ctx.body.name!r} exists") from None
    await ctx.audit("addin.create", f"addin:{out['id']}", None, out)
    return out


@route("GET", "/api/v1/addins/{addin_id}", tag="addins", summary="Get an add-in", response=AddinOut)
async def get_addin(ctx: Ctx) -> Any:
    return await _addin_out(ctx, ctx.params["addin_id"])


@route(
    "PATCH",
    "/api/v1/addins/{addin_id}",
    tag="addins",
    summary="Change an add-in",
    body=AddinPatch,
    response=AddinOut,
)
async def update_addin(ctx: Ctx) -> Any:
    aid = ctx.params["addin_id"]
    before = await _addin_out(ctx, aid)
    values = ctx.body.model_dump(exclude_none=True)
    if values:
        try:
            await admin_store.update_addin(ctx.db, aid, **values)
        except admin_store.AddinExists:
            raise ChatError(CONFLICT, f"an add-in named {values['name']!r} exists") from None
    after = await _addin_out(ctx, aid)
    await ctx.audit("addin.update", f"addin:{aid}", before, after)
    return after


@route(
    "DELETE",
    "/api/v1/addins/{addin_id}",
    tag="addins",
    summary="Remove an add-in that no room uses",
)
async def delete_addin(ctx: Ctx) -> Any:
    aid = ctx.params["addin_id"]
    before = await _addin_out(ctx, aid)
    try:
        await admin_store.delete_addin(ctx.db, aid)
    except admin_store.AddinInUse:
        raise ChatError(CONFLICT, "rooms still use this add-in; detach it first") from None
    await ctx.audit("addin.delete", f"addin:{aid}", before, None)


# -- configuration --------------------------------------------------------------------------


async def _settings_out(ctx: Ctx) -> dict[str, Any]:
    stored = await admin_store.load_settings(ctx.db)
    return {
        "node": ctx.node.config.node.name,
        "defaults": ctx.node.default_settings(),
        "global": stored.get("", {}),
        "nodes": {scope: values for scope, values in stored.items() if scope},
        "effective": ctx.node.effective_settings(),
    }


@route("GET", "/api/v1/config", tag="config", summary="Run-time settings", response=SettingsOut)
async def get_config(ctx: Ctx) -> Any:
    return await _settings_out(ctx)


async def _set_settings(ctx: Ctx, scope: str) -> Any:
    before = await _settings_out(ctx)
    values = {key: getattr(ctx.body, key) for key in ctx.body.model_fields_set}
    if values:
        await admin_store.store_settings(ctx.db, scope, values)
        await ctx.node.settings_changed()
    after = await _settings_out(ctx)
    target = "config:global" if not scope else f"config:node:{scope}"
    await ctx.audit("config.update", target, before, after)
    return after


@route(
    "PATCH",
    "/api/v1/config",
    tag="config",
    summary="Change deployment-wide settings (null clears an override)",
    body=SettingsPatch,
    response=SettingsOut,
)
async def update_config(ctx: Ctx) -> Any:
    return await _set_settings(ctx, "")


@route(
    "PATCH",
    "/api/v1/config/nodes/{node_name}",
    tag="config",
    summary="Change one node's settings (null clears an override)",
    body=SettingsPatch,
    response=SettingsOut,
)
async def update_node_config(ctx: Ctx) -> Any:
    return await _set_settings(ctx, ctx.params["node_name"])  # type: ignore[arg-type]


@route(
    "GET",
    "/api/v1/compliance",
    tag="config",
    summary="The compliance service's configuration (read-only; set in [compliance])",
    response=ComplianceOut,
)
async def get_compliance(ctx: Ctx) -> Any:
    out = ctx.node.config.compliance.model_dump()
    url = out["database_url"]
    if "@" in url and "://" in url:  # never show a password
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        out["database_url"] = f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return out


# -- pool and audit -------------------------------------------------------------------------


@route(
    "GET",
    "/api/v1/pool",
    tag="pool",
    summary="The nodes of this pool and their state",
    response=PoolOut,
)
async def get_pool(ctx: Ctx) -> Any:
    return await ctx.node.pool_view()


class ActiveIn(_In):
    nodes: list[Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]] = Field(
        min_length=1,
        max_length=64,
        description="Exactly these nodes are active; other active nodes become standby",
    )


class SwapIn(_In):
    active: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]
    standby: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]


async def _pool_change(ctx: Ctx, action: str, target: str, change: Any) -> Any:
    from ..pool.control import PoolControlError

    pool = ctx.node.pool
    if pool is None:
        raise ChatError(CONFLICT, "this node is not in a pool ([pool] enabled is false)")
    before = await ctx.node.pool_view()
    try:
        await change(pool)
    except PoolControlError as exc:
        code = {404: NOT_FOUND, 409: CONFLICT}.get(exc.status, BAD_REQUEST)
        raise ChatError(code, str(exc)) from None
    after = await ctx.node.pool_view()
    await ctx.audit(action, target, before, after)
    return after


@route(
    "PUT",
    "/api/v1/pool/active",
    tag="pool",
    summary="Set the active nodes (at most pool.max_active); the other active nodes become standby",
    body=ActiveIn,
    response=PoolOut,
)
async def set_active_nodes(ctx: Ctx) -> Any:
    from ..pool import control

    names: list[str] = ctx.body.nodes
    max_active = ctx.node.config.pool.max_active
    return await _pool_change(
        ctx,
        "pool.active",
        "pool",
        lambda pool: control.set_active(ctx.db, names, max_active=max_active, pool=pool),
    )


@route(
    "POST",
    "/api/v1/pool/swap",
    tag="pool",
    summary="Move an active node to standby and a standby node to active, at once",
    body=SwapIn,
    response=PoolOut,
)
async def swap_nodes(ctx: Ctx) -> Any:
    from ..pool import control

    b: SwapIn = ctx.body
    return await _pool_change(
        ctx,
        "pool.swap",
        f"node:{b.active}",
        lambda pool: control.swap(ctx.db, b.active, b.standby, pool=pool),
    )


@route(
    "POST",
    "/api/v1/pool/nodes/{node_name}/drain",
    tag="pool",
    summary="Drain a node: its clients are told to move to the active nodes, then it stops",
    response=PoolOut,
)
async def drain_node(ctx: Ctx) -> Any:
    from ..pool import control

    name = str(ctx.params["node_name"])
    return await _pool_change(
        ctx, "pool.drain", f"node:{name}", lambda pool: control.drain(ctx.db, name, pool=pool)
    )


@route(
    "GET",
    "/api/v1/audit",
    tag="audit",
    summary="The audit log, newest first",
    query=AuditQuery,
    response=list[AuditOut],
)
async def list_audit(ctx: Ctx) -> Any:
    q: AuditQuery = ctx.query
    entries = await admin_store.audit_entries(
        ctx.db,
        limit=q.limit,
        before_id=q.before,
        action=q.action,
        actor=q.actor,
        target=q.target,
        since_ms=q.since,
    )
    return [e.public() for e in entries]


@route(
    "POST",
    "/api/v1/tokens",
    tag="auth",
    summary="Create a session token for the calling administrator (log in with Basic auth)",
    response=TokenOut,
    status=201,
)
async def create_token(ctx: Ctx) -> Any:
    if not ctx.actor.id:
        raise ChatError(FORBIDDEN, "the static token has no user to make a session for")
    token = await user_store.create_session(
        ctx.db, ctx.actor.id, ctx.node.config.chat.session_ttl_s
    )
    await ctx.audit("token.create", f"user:{ctx.actor.id}", None, None)
    return {"token": token, "user": ctx.actor.public()}
