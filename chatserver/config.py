"""The node's configuration: one typed object from defaults, a TOML file, then the environment.

Sources, later ones winning:

1. the defaults below;
2. a TOML file (``--config FILE`` or ``CHATSERVER_CONFIG``);
3. environment variables ``CHATSERVER_<SECTION>_<KEY>``, e.g. ``CHATSERVER_DATABASE_URL`` or
   ``CHATSERVER_LISTEN_TCP``. Text settings take the value as it is; other values are parsed
   like TOML values (numbers, booleans).

Any invalid file, unknown key or bad value raises :class:`ConfigError`, whose message names the key.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# re-exported: the accounts' sections and ConfigError are imported from here everywhere
from .config_accounts import DirectoryConfig as DirectoryConfig
from .config_accounts import OidcConfig as OidcConfig
from .config_accounts import PasswordsConfig as PasswordsConfig
from .config_base import ConfigError as ConfigError
from .config_base import _Section
from .store.dsn import parse as parse_database_url

ENV_PREFIX = "CHATSERVER_"


def parse_address(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:port`` for IPv6) into its parts."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not of the form host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range 0-65535")
    return host, port


# What `room_management_url` may be, here and in the management API: empty, an http(s) URL of
# printable ASCII, or an absolute path (not "//host" or "/\\host": a browser reads another host).
# Nothing else reaches clients: no javascript: or data: URL.
ROOM_MANAGEMENT_URL = r"^(https?://[!-~]+|/([!-.0-\[\]-~][!-~]*)?)?$"

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(origin: str) -> str | None:
    """A web origin as browsers send it: ``scheme://host[:port]`` in lower case, without the
    scheme's default port; None if ``origin`` is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if not scheme or not host or parts.path not in ("", "/") or parts.query or parts.username:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


# A node's name: 1 to 128 letters, digits, ".", "_" or "-", beginning with a letter or a digit (a
# host name fits; "..", "/", spaces and control characters do not). The management API's per-node
# settings take the same names.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NODE_NAME_RULE = "1 to 128 letters, digits, '.', '_' or '-', beginning with a letter or a digit"


class NodeConfig(_Section):
    name: str = Field(default_factory=socket.gethostname)

    @field_validator("name")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if not NODE_NAME.fullmatch(value):
            raise ValueError(f"{value!r}: a node name has {NODE_NAME_RULE}")
        return value


class DatabaseConfig(_Section):
    url: str = "sqlite:///var/chat.db"
    # PostgreSQL: the bound on one use of a store connection (waiting for a free one, connecting,
    # and every statement until it is given back). A use that takes longer has its connection
    # dropped and fails with ``unavailable`` (see docs/operations.md, "When the store fails").
    timeout_s: float = Field(5.0, gt=0, le=600)
    # PostgreSQL: TCP keepalive on every store connection: the first probe after this many idle
    # seconds, then every third of it; three unanswered probes drop the connection.
    keepalive_s: float = Field(10.0, ge=1, le=3600)
    # The backup store (a PostgreSQL replica at another site) the pool fails over onto with
    # `chatserver pool failover`; empty: none (docs/operations.md, "Disaster recovery").
    backup_url: str = ""
    # How often a node with a backup_url looks at the other store's pool state.
    failover_check_s: float = Field(2.0, gt=0, le=600)

    @field_validator("url", "backup_url")
    @classmethod
    def _usable(cls, value: str, info: ValidationInfo) -> str:
        if value or info.field_name == "url":
            parse_database_url(value)  # the parser every connection uses (store/dsn.py)
        return value

    @model_validator(mode="after")
    def _backup_is_postgres(self) -> DatabaseConfig:
        if self.backup_url and not (
            parse_database_url(self.url).is_postgres
            and parse_database_url(self.backup_url).is_postgres
        ):
            raise ValueError("backup_url: a backup store needs PostgreSQL for url and backup_url")
        return self


class ListenConfig(_Section):
    tcp: str = "127.0.0.1:5041"
    websocket: str = "127.0.0.1:5080"
    management: str = "127.0.0.1:8012"
    peer: str = "127.0.0.1:8011"
    # The client HTTP listener (files; docs/protocol.md, "Files"); empty switches it off.
    http: str = "127.0.0.1:5081"
    # Browser origins (scheme://host[:port]) allowed to open a WebSocket, besides a page served
    # from the address the browser connects to; "*" allows any. A handshake without Origin (not a
    # browser) is always allowed. See docs/security.md.
    websocket_origins: tuple[str, ...] = ()

    @field_validator("tcp", "websocket", "management", "peer", "http")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:  # an empty string switches the listener off
            parse_address(value)
        return value

    @field_validator("websocket_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for origin in value:
            normal = origin if origin in ("*", "null") else normalize_origin(origin)
            if normal is None:
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port]), * or null")
            out.append(normal)
        return tuple(out)


class TlsConfig(_Section):
    certificate: str = ""
    key: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.certificate)


class ChatConfig(_Section):
    default_chat_history: int = Field(30, ge=1, le=500)
    max_message_chars: int = Field(8000, ge=1, le=1_000_000)
    history_page_max: int = Field(500, ge=1, le=10_000)
    session_ttl_s: int = Field(30 * 24 * 3600, ge=60)
    # Also settable at run time through the management API (global, or per node).
    max_file_size_kb: int = Field(20_480, ge=1, le=1_048_576)
    participant_update_limit: int = Field(75, ge=0, le=100_000)
    # Told to clients in `hello`: an http(s) URL, or a path on the node's client HTTP listener
    # (the default: the room management pages it serves); "" for none.
    room_management_url: str = Field("/manage/", max_length=2048, pattern=ROOM_MANAGEMENT_URL)
    # How often the pending read markers are written (at most one write per user and room per
    # interval; a crash loses at most the last interval's markers).
    read_marker_flush_s: float = Field(1.0, ge=0.1, le=60)
    # Users' edits and deletes where the room and its category say nothing: never, always, or
    # minutes after posting ("15"); reactions per message (all users), distinct emoji.
    edit_policy: str = Field("always", pattern=r"^(never|always|[1-9][0-9]{0,5})$")
    max_reactions_per_message: int = Field(1000, ge=1, le=100_000)
    max_distinct_reactions: int = Field(20, ge=1, le=1000)


class LimitsConfig(_Section):
    max_frame_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    auth_timeout_s: float = Field(10, gt=0, le=3600)
    posts_per_user_per_s: float = Field(20, gt=0)
    output_buffer_bytes: int = Field(4_194_304, ge=65_536)
    max_nesting_depth: int = Field(16, ge=2, le=100)
    max_requests_in_flight: int = Field(64, ge=1, le=10_000)
    max_pending_posts: int = Field(100_000, ge=100)
    # Hostile clients (docs/security.md). Before authentication a frame is at most this long.
    max_unauthenticated_frame_bytes: int = Field(16_384, ge=1024, le=64 * 1_048_576)
    # A frame's arrays and maps plus their items and entries, counted while it is decoded.
    max_frame_values: int = Field(32_768, ge=256, le=10_000_000)
    # A frame (WebSocket message) must complete this long after its first byte arrived.
    frame_timeout_s: float = Field(30, gt=0, le=3600)
    # Bytes of unfinished frames held on the whole node; a connection growing one past it closes.
    max_buffered_input_bytes: int = Field(64 * 1_048_576, ge=1024)
    # Connections from one address (IPv6: its /64) not yet authenticated; 0: no limit.
    max_unauthenticated_per_address: int = Field(64, ge=0)
    # Authenticated connections of one user on this node; 0: no limit.
    max_connections_per_user: int = Field(32, ge=0)
    # File descriptors kept free for the node's own work (store, peers, management port).
    fd_reserve: int = Field(256, ge=0)

    @model_validator(mode="after")
    def _input_budget_holds_a_frame(self) -> LimitsConfig:
        if self.max_buffered_input_bytes < self.max_frame_bytes:
            raise ValueError(
                "max_buffered_input_bytes must be at least max_frame_bytes"
                f" ({self.max_buffered_input_bytes} < {self.max_frame_bytes})"
            )
        return self


class LogConfig(_Section):
    # "text": the classic lines; "json": one JSON object a line, with the node, connection and
    # request ids (chatserver/logs.py).
    format: Literal["text", "json"] = "text"
    # One line when a client connection opens and one when it closes (never one per message).
    connections: bool = False


class PolicyConfig(_Section):
    # The default of each user's persistent_chat_enabled policy (the reference system shipped
    # it off; on here, so a fresh install works).
    persistent_chat_enabled: bool = True


class ManagementConfig(_Section):
    # A static bearer token for automation (empty: only administrators' session tokens work).
    token: str = ""
    # Connections the management port holds at once; more are answered 503 and closed.
    max_connections: int = Field(64, ge=1, le=100_000)
    # A new connection's first request line and headers must arrive within this (also the TLS
    # handshake's limit); later requests' within keepalive_timeout_s of the previous response.
    header_timeout_s: float = Field(10, gt=0, le=3600)
    # A request's body must arrive within this once its headers have.
    body_timeout_s: float = Field(30, gt=0, le=3600)
    # A connection idle this long after a response is closed.
    keepalive_timeout_s: float = Field(15, gt=0, le=3600)


class FilesConfig(_Section):
    """Files in rooms (docs/configuration.md, ``[files]``); the size limit of one file is
    ``chat.max_file_size_kb`` (a run-time setting)."""

    # Bytes of all ready files of one room, in MiB; 0: no quota.
    room_quota_mb: int = Field(1024, ge=0, le=1_048_576)
    # Uploads one user may start per minute on one node (a token bucket).
    uploads_per_user_per_min: float = Field(30, gt=0)
    # Uploads in progress on one node at once; more are answered 503.
    max_concurrent_uploads: int = Field(32, ge=1, le=10_000)
    # Uploads in progress of one user on one node; more are answered 429.
    max_uploads_per_user: int = Field(4, ge=1, le=10_000)
    # An upload's body must keep arriving: each read waits at most this long.
    idle_timeout_s: float = Field(30, gt=0, le=3600)
    # Size of a stored chunk (KiB): what one upload or download holds in memory at a time.
    chunk_kb: int = Field(256, ge=4, le=16_384)
    # Pending uploads of any node older than this are swept (a node sweeps its own at start).
    pending_timeout_s: int = Field(3600, ge=60, le=7 * 86_400)
    # Connections the client HTTP listener holds at once; more are answered 503 and closed.
    max_connections: int = Field(1024, ge=1, le=100_000)
    # A request's head must arrive within this; an idle keep-alive connection closes after it.
    header_timeout_s: float = Field(10, gt=0, le=3600)
    # An upload must average at least this many KiB/s once min_upload_grace_s have passed
    # (a client trickling bytes holds a slot for nothing); 0: no minimum.
    min_upload_kb_per_s: float = Field(16, ge=0, le=1_048_576)
    min_upload_grace_s: float = Field(10, ge=0, le=3600)
    # Where the bytes go (docs/configuration.md): "store" (chunks in the content store),
    # "directory" (files under `directory`, one node) or "s3" (an S3-compatible bucket).
    storage: str = Field("store", pattern=r"^(store|directory|s3)$")
    directory: str = "var/files"
    s3_endpoint: str = ""  # empty: AWS's own for s3_region
    s3_region: str = "us-east-1"
    s3_bucket: str = ""
    s3_prefix: str = Field("files/", max_length=200)
    s3_access_key: str = ""  # empty (both): the AWS credential chain (environment, ~/.aws, role)
    s3_secret_key: str = Field("", repr=False)
    s3_part_mb: int = Field(8, ge=5, le=1024)
    # Store the bytes of identical files once (the uploads are still all read and checked).
    dedup: bool = True
    # The client HTTP listener's URL as clients reach it (hello's http_url); empty: its address.
    public_url: str = Field("", pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$", max_length=2000)

    @model_validator(mode="after")
    def _storage(self) -> FilesConfig:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError('s3_bucket: storage = "s3" needs a bucket')
        if self.storage == "directory" and not self.directory:
            raise ValueError('directory: storage = "directory" needs a directory')
        return self


class SearchConfig(_Section):
    """Search and topic feeds (docs/configuration.md, ``[search]``)."""

    # PostgreSQL text search configuration ('simple': no stemming, any language). Another one
    # (e.g. 'english') gets its own index, made at start-up if missing (slow on a large store).
    language: str = Field("simple", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # A query's length (characters) and its number of words and phrases.
    max_query_chars: int = Field(256, ge=8, le=500)
    max_terms: int = Field(8, ge=1, le=32)
    # Hits per page (a request may ask for fewer).
    page_max: int = Field(50, ge=1, le=500)
    # Searches one user may make per second on one node (a token bucket; burst: 5).
    per_user_per_s: float = Field(2.0, gt=0)
    # A search's statement is cancelled after this long (answered ``unavailable``).
    timeout_ms: int = Field(2000, ge=50, le=60_000)
    # Saved topic feeds per user.
    max_feeds_per_user: int = Field(20, ge=0, le=1000)


class PoolConfig(_Section):
    # A pool is several nodes sharing one PostgreSQL store; see docs/operations.md.
    enabled: bool = False
    # Proves each peer on connect (challenge-response): at least 32 random characters, the same
    # on every node; required. Or a file holding it (secret_file), to keep it out of this file.
    secret: str = ""
    secret_file: str = ""
    max_active: int = Field(4, ge=1, le=64)
    # The client address other nodes and clients are told (default: listen.tcp).
    advertise_tcp: str = ""
    advertise_websocket: str = ""
    # The peer address other nodes dial (default: listen.peer with its bound port).
    advertise_peer: str = ""
    # The management address shown in the registry (default: listen.management, bound port).
    advertise_management: str = ""
    # With [tls] configured, the peer port speaks TLS too; peers' certificates are checked
    # against peer_ca (default: the node's own tls.certificate, for a pool sharing one).
    peer_tls: bool = True
    peer_ca: str = ""
    heartbeat_s: float = Field(1.0, gt=0, le=60)
    # A peer link on which nothing (not even a heartbeat) arrived for this long is closed.
    link_timeout_s: float = Field(3.0, gt=0, le=600)
    # A node whose heartbeat is older than this is treated as gone.
    dead_after_s: float = Field(10.0, gt=0, le=3600)
    # When an active node is expired, a standby takes its place (see docs/operations.md).
    auto_promote: bool = False
    # Rooms with local subscribers are compared with the store this often, and what a lost peer
    # event or a down link kept from them is delivered: the bound on delivery delay during a
    # partition (see docs/operations.md).
    catchup_interval_s: float = Field(2.0, gt=0, le=600)


class ComplianceConfig(_Section):
    enabled: bool = False
    # A separate database: PostgreSQL, or SQLite for a single node.
    database_url: str = "sqlite:///var/compliance.db"
    adapter: str = "xml"
    output_dir: str = "var/compliance"
    run_interval_s: int = Field(900, ge=60, le=30 * 24 * 3600)
    one_room_per_file: bool = False
    add_room_details: bool = False
    add_user_details: bool = False
    attachments_manifest: bool = False
    # An Ed25519 private key (PEM, `chatserver compliance keygen`) kept outside the compliance
    # database: with it, every export carries a signed checkpoint of the chain (compliance.md).
    signing_key: str = ""
    # PostgreSQL: the bound on each use of the writer's connections to the content store and to
    # the compliance database (connecting, every statement until the connection is given back).
    # A use that takes longer has its connection dropped, and the round is retried (compliance.md).
    timeout_s: float = Field(30.0, gt=0, le=3600)

    @field_validator("database_url")
    @classmethod
    def _usable(cls, value: str) -> str:
        parse_database_url(value)
        return value


class RetentionConfig(_Section):  # how the purge runs: docs/administration.md, "Retention"
    enabled: bool = True  # this node may run the purge (the node holding the lease does)
    interval_s: float = Field(3600, ge=0.05, le=7 * 24 * 3600)
    batch_size: int = Field(1000, ge=1, le=100_000)  # messages per transaction
    batch_pause_s: float = Field(0.05, ge=0, le=60)  # between batches: off the hot path
    lease_s: float = Field(60, ge=0.5, le=24 * 3600)  # a dead purger hands on after this
    compliance_days: int = Field(0, ge=0, le=36_500)  # ``compliance purge``; 0: keep all


class TransferConfig(_Section):
    """Export and import through the management API (docs/export-format.md): the one folder
    its files are written to and read from (the command line takes any path)."""

    directory: str = "var/transfer"


class LoginConfig(_Section):
    """Throttling of failed sign-ins (docs/security.md): per account name and per source
    address, exponential backoff after the free failures, then a temporary lockout."""

    # Failures of one account name (known or not) before each further attempt must wait;
    # account_throttle = false turns the per-account throttle off.
    account_throttle: bool = True
    account_free_failures: int = Field(5, ge=1, le=1000)
    # Failures of one account name that lock it out for lockout_s (0: never lock out).
    account_lockout_failures: int = Field(20, ge=0, le=100_000)
    # The same for one source address (an IPv4 address, an IPv6 /64); many users may share one
    # (NAT, a proxy), so the defaults are higher. address_throttle = false turns it off.
    address_throttle: bool = True
    address_free_failures: int = Field(100, ge=1, le=1_000_000)
    address_lockout_failures: int = Field(500, ge=0, le=10_000_000)
    # The wait after the free failures: backoff_base_s, doubling with each failure, at most
    # backoff_max_s.
    backoff_base_s: float = Field(1.0, gt=0, le=3600)
    backoff_max_s: float = Field(60.0, gt=0, le=86_400)
    lockout_s: int = Field(900, ge=1, le=30 * 86_400)
    # Failures are forgotten this long after the last one (a success forgets the account's).
    forget_after_s: int = Field(3600, ge=1, le=30 * 86_400)

    @model_validator(mode="after")
    def _forget_after_lockout(self) -> LoginConfig:
        if self.forget_after_s < self.lockout_s:
            raise ValueError("forget_after_s must be at least lockout_s")
        return self


class Config(_Section):
    node: NodeConfig = Field(default_factory=NodeConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    listen: ListenConfig = Field(default_factory=ListenConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    management: ManagementConfig = Field(default_factory=ManagementConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    files: FilesConfig = Field(default_factory=FilesConfig)
    compliance: ComplianceConfig = Field(default_factory=ComplianceConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    login: LoginConfig = Field(default_factory=LoginConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    directory: DirectoryConfig = Field(default_factory=DirectoryConfig)
    passwords: PasswordsConfig = Field(default_factory=PasswordsConfig)
    oidc: OidcConfig = Field(default_factory=OidcConfig)


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _from_environment(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    sections = {name: model.model_fields for name, model in _sections().items()}
    out: dict[str, dict[str, Any]] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section in sections and key in sections[section]:
            # Text settings take the value as it is ("1" is a fine node name).
            is_text = sections[section][key].annotation is str
            out.setdefault(section, {})[key] = text if is_text else _env_value(text)
    return out


def _sections() -> dict[str, type[BaseModel]]:
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        sections[name] = annotation
    return sections


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Build the configuration from the defaults, the TOML file at ``path`` and ``env``."""
    env = os.environ if env is None else env
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"configuration file {path} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    for section, values in _from_environment(env).items():
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a table")
        target.update(values)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from None
