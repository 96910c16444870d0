"""The management API's request and response models.

Request models derive from :class:`~chatserver.admin.types.In` (no unknown field, storable text
only); response models are what the handlers promise to return, checked before each response
leaves. The route table (:mod:`chatserver.admin.routes`) names them per route and builds the
OpenAPI document from them, so a class name here is a schema name there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator
from pydantic.config import JsonDict

from ..config import ROOM_MANAGEMENT_URL
from ..store import admin as admin_store
from .types import (
    NO_NUL,
    Description,
    Id,
    In,
    Member,
    Name,
    NodeName,
    Principal,
    PrincipalText,
    QueryBool,
    Url,
    When,
    epoch_ms,
)


class UserOut(BaseModel):
    id: int
    name: str
    display_name: str
    is_admin: bool
    persistent_chat_enabled: bool
    policy: bool | None = Field(description="The user's own setting; null: the global default")
    source: str = Field("local", description="local, or directory (LDAP)")
    disabled: bool = False


class UserBrief(BaseModel):
    id: int
    name: str
    display_name: str


class UserIn(In):
    name: Name
    password: Annotated[str, Field(min_length=8, max_length=1024, pattern=NO_NUL)]
    display_name: Name | None = None
    is_admin: bool = False


class PolicyIn(In):
    persistent_chat_enabled: bool | None


class UserQuery(In):
    query: Description | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class GroupOut(BaseModel):
    id: int
    name: str
    description: str
    source: str = Field("local", description="local, or directory (changed only by the sync)")
    members: list[Principal] | None = None


class GroupIn(In):
    name: Name
    description: Description = ""


class MembersIn(In):
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


class CategoryIn(In):
    name: Name
    description: Description = ""
    invitations: bool = True
    file_upload: bool = True
    chat_history: bool = True
    allowed: list[Principal] = Field(default_factory=list, max_length=1000)
    denied: list[Principal] = Field(default_factory=list, max_length=1000)
    creators: list[Principal] = Field(default_factory=list, max_length=1000)


class CategoryLists(In):
    allowed: list[Principal] = Field(default_factory=list, max_length=1000)
    denied: list[Principal] = Field(default_factory=list, max_length=1000)
    creators: list[Principal] = Field(default_factory=list, max_length=1000)


class CategoryPatch(In):
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


class RoleLists(In):
    member: list[Principal] = Field(default_factory=list, max_length=1000)
    manager: list[Principal] = Field(default_factory=list, max_length=1000)
    presenter: list[Principal] = Field(default_factory=list, max_length=1000)


class RoomIn(In):
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


class RoomPatch(In):
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


class RoomQuery(In):
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


class ClearIn(In):
    until: When = Field(
        description="Messages posted on or before this instant are removed: epoch ms, or an ISO"
        " 8601 date or date-time (UTC unless an offset is given; a bare date means the whole"
        " day: its messages are removed too)"
    )

    @field_validator("until")
    @classmethod
    def _check(cls, value: int | str) -> int | str:
        epoch_ms(value)
        return value


class ClearOut(BaseModel):
    removed: int
    through_seq: int


class MessageFilterIn(In):
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
        epoch_ms(value)
        return value

    def store(self) -> admin_store.MessageFilter:
        return admin_store.MessageFilter(
            room_id=self.room,
            user_id=self.user,
            since_ms=epoch_ms(self.since),
            until_ms=epoch_ms(self.until, end_of_day=True),
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


class MessageSearchIn(MessageFilterIn):
    """The search's filter, plus ``query``: the users' search syntax (docs/protocol.md,
    "Search") answered from the full-text index, over every room (secret and disabled ones
    too), newest first. ``keywords`` stay substring matches (a scan), for moderation."""

    query: Annotated[str, Field(min_length=1, max_length=500, pattern=NO_NUL)] | None = None


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


class AddinIn(In):
    name: Name
    url: Url


class AddinPatch(In):
    name: Name | None = None
    url: Url | None = None


class Settings(BaseModel):
    default_chat_history: int
    max_file_size_kb: int
    participant_update_limit: int
    room_management_url: str


class SettingsPatch(In):
    """Set a value, or give null to clear an override (back to the inherited value)."""

    default_chat_history: Annotated[int, Field(ge=1, le=500)] | None = None
    max_file_size_kb: Annotated[int, Field(ge=1, le=1_048_576)] | None = None
    participant_update_limit: Annotated[int, Field(ge=0, le=100_000)] | None = None
    room_management_url: (
        Annotated[str, Field(max_length=2048, pattern=ROOM_MANAGEMENT_URL)] | None
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


class PasswordSetIn(In):
    password: Annotated[str, Field(min_length=8, max_length=1024, pattern=NO_NUL)]


class PasswordGenerateIn(In):
    generate: Literal[True] = Field(description="Make a random password and return it, once")


class PasswordIn(RootModel[PasswordSetIn | PasswordGenerateIn]):
    """A new password, or ``{"generate": true}`` for a random one."""


class ResetOut(BaseModel):
    disconnected: int
    password: str = Field(description="The generated password (shown only here, once)")


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


class ActiveIn(In):
    nodes: list[NodeName] = Field(
        min_length=1,
        max_length=64,
        description="Exactly these nodes are active; other active nodes become standby",
    )


class SwapIn(In):
    active: NodeName
    standby: NodeName


class PoolStateIn(In):
    state: Literal["normal", "failed_over"] = Field(
        description="failed_over: onto database.backup_url; normal: back onto database.url"
    )
    promote: bool = Field(
        False,
        description="Promote the target store if it is still a standby (pg_promote), after"
        " fencing the other store and waiting until the standby has replayed its WAL",
    )
    reason: str = Field("", max_length=500)


class PoolStateOut(BaseModel):
    state: Literal["normal", "failed_over"]
    since_ms: int = Field(description="When it was recorded, by the store's clock (0: never)")
    by: str
    reason: str
    store: Literal["main", "backup"] = Field(description="The store this node uses now")
    backup: bool = Field(description="Whether this node has a database.backup_url")


class AuditOut(BaseModel):
    id: int
    ts: int
    actor: str
    actor_id: int | None
    action: str
    target: str
    before: Any
    after: Any


class AuditQuery(In):
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
