"""SQLAlchemy Core table definitions shared by every store module and the migrations.

The tables are defined in one ``MetaData`` so Alembic can compare them; each domain module
(``users``, ``principals``, ``categories``, ``rooms``, ``messages``) owns the functions that read
and write its tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# An auto-incrementing 64-bit id; SQLite only auto-increments an INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer, "sqlite")

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("display_name", String(256), nullable=False),
    Column("password_hash", String(512), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    # None: the global default ([policy] persistent_chat_enabled).
    Column("persistent_chat_enabled", Boolean, nullable=True),
    # "local" or "directory" (synchronised from LDAP, external_id the directory's stable id).
    Column("source", String(16), nullable=False, default="local", server_default="local"),
    Column("external_id", String(512), nullable=True),
    Column("email", String(256), nullable=True),
    # Refused at sign-in.
    Column("disabled", Boolean, nullable=False, default=False, server_default=false()),
    Index("ux_users_source_external_id", "source", "external_id", unique=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_sessions_user_id", "user_id"),
)

# Failed sign-ins, per account name (known or not) and per source address: the login throttle's
# state, shared by every node of a pool. Rows are forgotten (deleted) some time after the last
# failure; a success deletes the account's row.
login_failures = Table(
    "login_failures",
    metadata,
    Column("scope", String(8), nullable=False),  # "account" | "address"
    Column("key", String(256), nullable=False),  # the name as given, or the address (IPv6: /64)
    Column("failures", Integer, nullable=False),
    Column("last_ms", BigInteger, nullable=False),
    Column("locked_until_ms", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("scope", "key", name="pk_login_failures"),
    Index("ix_login_failures_last_ms", "last_ms"),
)

# A principal is a user, a group, or everyone: (kind, id) with kind "user" | "group" | "everyone"
# (id 0 for everyone).

groups = Table(
    "groups",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("description", String(256), nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    # Or "directory".
    Column("source", String(16), nullable=False, default="local", server_default="local"),
    Column("external_id", String(512), nullable=True),
    Index("ux_groups_source_external_id", "source", "external_id", unique=True),
    sqlite_autoincrement=True,  # a deleted group's id is never given to a new one
)

# The directory sync's lease (one node of a pool syncs at a time) and its last outcome; one row.
directory_sync = Table(
    "directory_sync",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("holder", String(128), nullable=False),
    Column("lease_until_ms", BigInteger, nullable=False),
    Column("last_run_ms", BigInteger, nullable=False),
    Column("last_result", String(2000), nullable=False),
    # The last run's start (last_run_ms is its end), outcome ("ok", "failed", "stopped"; "" before
    # the first) and counts (JSON); when the holder runs next; a pending request for a run now.
    Column("started_ms", BigInteger, nullable=False, default=0, server_default="0"),
    Column("outcome", String(16), nullable=False, default="", server_default=""),
    Column("counts", String(4000), nullable=False, default="", server_default=""),
    Column("next_run_ms", BigInteger, nullable=False, default=0, server_default="0"),
    Column("requested_ms", BigInteger, nullable=False, default=0, server_default="0"),
    Column("requested_by", String(128), nullable=False, default="", server_default=""),
    Column("request_override", Boolean, nullable=False, default=False, server_default=false()),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", Id, ForeignKey("groups.id", ondelete="CASCADE"), nullable=False),
    Column("member_kind", String(8), nullable=False),  # "user" | "group"
    Column("member_id", Id, nullable=False),
    PrimaryKeyConstraint("group_id", "member_kind", "member_id", name="pk_group_members"),
    Index("ix_group_members_member", "member_kind", "member_id"),
)

categories = Table(
    "categories",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("description", String(256), nullable=False, default=""),
    Column("invitations", Boolean, nullable=False, default=True),
    Column("file_upload", Boolean, nullable=False, default=True),
    Column("chat_history", Boolean, nullable=False, default=True),
    Column("created_ms", BigInteger, nullable=False),
    # Users' edits and deletes of their own messages: "never" | "always" | minutes ("15");
    # None: the deployment's default (chat.edit_policy). Migration 0018.
    Column("edit_policy", String(16), nullable=True),
    sqlite_autoincrement=True,
)

category_principals = Table(
    "category_principals",
    metadata,
    Column("category_id", Id, ForeignKey("categories.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(8), nullable=False),  # "allowed" | "denied" | "creator"
    Column("principal_kind", String(8), nullable=False),
    Column("principal_id", Id, nullable=False),
    PrimaryKeyConstraint(
        "category_id", "role", "principal_kind", "principal_id", name="pk_category_principals"
    ),
)

rooms = Table(
    "rooms",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Not unique: a name clashes only with rooms the person naming may find (docs/governance.md,
    # "Names"), so a secret room's name is never confirmed to someone who may not find it.
    Column("name", String(256), nullable=False),
    Column("description", String(256), nullable=False, default=""),
    Column("last_seq", BigInteger, nullable=False, default=0),
    Column("created_ms", BigInteger, nullable=False),
    Column("category_id", Id, ForeignKey("categories.id"), nullable=False),
    Column("privacy", String(8), nullable=False, default="closed"),  # open | closed | secret
    Column("type", String(12), nullable=False, default="normal"),  # normal | auditorium
    Column("disabled", Boolean, nullable=False, default=False),
    Column("invitations", String(8), nullable=False, default="inherit"),  # inherit | off
    Column("addin_id", BigInteger, nullable=True),
    # The room's change counter: every edit, delete or reaction takes the next number (0018).
    Column("change_no", BigInteger, nullable=False, default=0, server_default="0"),
    Column("edit_policy", String(16), nullable=True),  # None: the category's
    Index("ix_rooms_category_id", "category_id"),
    Index("ix_rooms_name", "name", "id"),
)

room_principals = Table(
    "room_principals",
    metadata,
    Column("room_id", Id, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(10), nullable=False),  # "member" | "manager" | "presenter"
    Column("principal_kind", String(8), nullable=False),
    Column("principal_id", Id, nullable=False),
    PrimaryKeyConstraint(
        "room_id", "role", "principal_kind", "principal_id", name="pk_room_principals"
    ),
    Index("ix_room_principals_principal", "principal_kind", "principal_id"),
)

invitations = Table(
    "invitations",
    metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("room_id", Id, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("inviter_id", Id, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "room_id", name="pk_invitations"),
)

messages = Table(
    "messages",
    metadata,
    Column("room_id", Id, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sender_id", Id, ForeignKey("users.id"), nullable=False),
    Column("cid", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    # "" (as posted) | "replaced" (text substituted by an administrator) | "removed" (a tombstone:
    # the text is gone, the seq stays so readers still see a gap-free order).
    # Users' changes (migration 0018): "edited" | "deleted" (a placeholder: text gone, seq
    # kept) are states too.
    Column("state", String(8), nullable=False, default="", server_default=""),
    Column("edited_ms", BigInteger, nullable=True),  # the sender's last edit
    Column("reply_to", BigInteger, nullable=True),  # the seq this message answers (same room)
    Column("reactions", Text, nullable=True),  # JSON {emoji: count}, in step with reactions
    Column("change_no", BigInteger, nullable=False, default=0, server_default="0"),
    PrimaryKeyConstraint("room_id", "seq", name="pk_messages"),
    UniqueConstraint("room_id", "sender_id", "cid", name="uq_messages_room_sender_cid"),
    Index("ix_messages_ts", "ts"),  # newest-first search (migration 0012)
    Index("ix_messages_room_id_reply_to", "room_id", "reply_to"),  # threads
    Index("ix_messages_room_id_change_no", "room_id", "change_no"),  # resume's changes
)

# -- the life of a message (issue 18, migration 0018) ----------------------------------------

# One user's emoji on one message; the counts are also kept in messages.reactions.
reactions = Table(
    "reactions",
    metadata,
    Column("room_id", Id, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("user_id", Id, nullable=False),
    Column("emoji", String(32), nullable=False),
    Column("ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("room_id", "seq", "user_id", "emoji", name="pk_reactions"),
)

# The client ids of edits, deletes and reactions: a retry answers the first one's outcome.
message_ops = Table(
    "message_ops",
    metadata,
    Column("room_id", Id, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Id, nullable=False),
    Column("cid", String(64), nullable=False),
    Column("op", String(16), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("change_no", BigInteger, nullable=False),
    Column("ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("room_id", "user_id", "cid", name="pk_message_ops"),
    Index("ix_message_ops_ts", "ts"),
)

# Keep messages (and files) ``days`` days, then purge: scope "deployment" (scope_id 0),
# "category" or "room"; the narrowest enabled policy applies.
retention_policies = Table(
    "retention_policies",
    metadata,
    Column("scope", String(16), nullable=False),
    Column("scope_id", Id, nullable=False),
    Column("days", Integer, nullable=False),
    Column("files_days", Integer, nullable=True),  # None: as ``days``
    Column("enabled", Boolean, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("scope", "scope_id", name="pk_retention_policies"),
)

# A named legal hold on users and/or rooms (JSON lists of ids), messages posted within
# [since_ms, until_ms] (None: unbounded). Lifted holds stay, for the record.
legal_holds = Table(
    "legal_holds",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False),
    Column("users", Text, nullable=False),
    Column("rooms", Text, nullable=False),
    Column("since_ms", BigInteger, nullable=True),
    Column("until_ms", BigInteger, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("lifted_ms", BigInteger, nullable=True),
    Column("lifted_by", String(256), nullable=True),
    UniqueConstraint("name", name="uq_legal_holds_name"),
    sqlite_autoincrement=True,
)

# What a held message was before an edit, delete, removal, clear or purge changed it. No
# foreign keys: held content outlives its room and its sender.
held_messages = Table(
    "held_messages",
    metadata,
    Column("room_id", Id, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    Column("sender_id", Id, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("text", Text, nullable=False),
    Column("reason", String(16), nullable=False),  # edit | delete | remove | clear | purge
    Column("saved_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("room_id", "seq", "version", name="pk_held_messages"),
)

# A time-limited lease: the one node of a pool that runs a job (the retention purge).
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), nullable=False),
    Column("holder", String(128), nullable=False),
    Column("until_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("name", name="pk_leases"),
)

# -- read markers and mentions (issue 17) ----------------------------------------------------

# The highest seq a user has read in a room (written coalesced: chatserver/rooms/unread.py).
read_markers = Table(
    "read_markers",
    metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("room_id", Id, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "room_id", name="pk_read_markers"),
)

# A user named by ``@name`` in a message, written in the message's storing transaction; the
# mentions since a read marker are a range of the primary key.
mentions = Table(
    "mentions",
    metadata,
    # No foreign key: the storing statement takes the ids from users (never deleted) itself.
    Column("user_id", Id, nullable=False),
    Column("room_id", Id, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sender_id", Id, nullable=False),
    Column("ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "room_id", "seq", name="pk_mentions"),
    Index("ix_mentions_user_id_ts", "user_id", "ts"),
)

# -- files (issue 16) ----------------------------------------------------------------------

# A file uploaded into a room. Its bytes are a blob (chatserver/store/blobs/); the message that
# carries it is the room's message (room_id, seq). An upload in progress is "pending" (invisible;
# the node that receives it is named, so a restarted node sweeps what it left), then "ready" once
# its message is committed, and "removed" when deleted (the row stays, for the record; its blob
# goes unless another file shares it).
files = Table(
    "files",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("room_id", Id, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("uploader_id", Id, ForeignKey("users.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("media_type", String(127), nullable=False, default="application/octet-stream"),
    Column("size", BigInteger, nullable=False, default=0),
    Column("sha256", String(64), nullable=False, default=""),
    Column("chunk_size", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("state", String(8), nullable=False, default="pending"),  # pending | ready | removed
    Column("node", String(128), nullable=False, default=""),
    Column("seq", BigInteger, nullable=True),  # the message's seq, once ready
    # the blob holding the bytes when it is another file's (deduplicated); NULL: its own id
    Column("blob_id", Id, nullable=True),
    Index("ix_files_room_id_seq", "room_id", "seq"),
    Index("ix_files_state_created_ms", "state", "created_ms"),
    Index("ix_files_sha256", "sha256"),
    Index("ix_files_blob_id", "blob_id"),
    sqlite_autoincrement=True,  # a deleted file's id never names another file
)

# A blob's bytes in the content store ([files] storage = "store"): file_id is the blob's id (the
# file that first stored them), without a foreign key: a blob outlives that file's row while a
# deduplicated file refers to it (chatserver/store/blobs/).
file_chunks = Table(
    "file_chunks",
    metadata,
    Column("file_id", Id, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("file_id", "idx", name="pk_file_chunks"),
)

# -- search and topic feeds (issue 17) --------------------------------------------------------

# The full-text index over messages.text is not declared here: on PostgreSQL it is the generated
# column messages.tsv with the GIN index ix_messages_tsv on (room_id, tsv) (migration 0014), on
# SQLite the FTS5 table messages_fts with its triggers (migration 0012); see
# chatserver/store/search.py.

# A user's saved topic feed: a query in the search syntax (docs/protocol.md, "Search").
feeds = Table(
    "feeds",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("query", String(500), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("user_id", "name", name="uq_feeds_user_id_name"),
    sqlite_autoincrement=True,
)

# -- management (issue 4) ------------------------------------------------------------------

# Every change made through the management port: who, what, when, and the state before/after.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("actor", String(256), nullable=False),  # a user name, or "token" (the static token)
    Column("actor_id", Id, nullable=True),
    Column("action", String(64), nullable=False),  # e.g. "room.update"
    Column("target", String(256), nullable=False),  # e.g. "room:12"
    Column("before", Text, nullable=True),  # JSON
    Column("after", Text, nullable=True),  # JSON
    Index("ix_audit_log_ts_ms", "ts_ms"),
    sqlite_autoincrement=True,
)

addins = Table(
    "addins",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("url", String(2048), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)

# Run-time settings: scope "" is the whole deployment, otherwise a node name overriding it.
settings = Table(
    "settings",
    metadata,
    Column("scope", String(128), nullable=False),
    Column("key", String(64), nullable=False),
    Column("value", Text, nullable=False),  # JSON
    PrimaryKeyConstraint("scope", "key", name="pk_settings"),
)

# -- compliance (issue 6): written in the same transaction as the change it records --------

compliance_outbox = Table(
    "compliance_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),  # a UUID
    Column("ts_ms", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # JOIN | PART | CHAT | BACKCHAT | …
    Column("node", String(128), nullable=False),
    Column("room_id", Id, nullable=True),
    Column("user_id", Id, nullable=True),
    Column("payload", Text, nullable=False),  # JSON
    sqlite_autoincrement=True,
)

# -- pool (issue 5): the nodes sharing this store ------------------------------------------

pool_nodes = Table(
    "pool_nodes",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("tcp", String(256), nullable=False, default=""),
    Column("websocket", String(256), nullable=False, default=""),
    Column("peer", String(256), nullable=False, default=""),
    Column("management", String(256), nullable=False, default=""),
    Column("state", String(8), nullable=False, default="active"),  # active | standby | draining
    Column("started_ms", BigInteger, nullable=False),
    Column("heartbeat_ms", BigInteger, nullable=False),
)

# The pool's store state (issue 15): "normal" on database.url, or "failed_over" onto
# database.backup_url. One row (id 1), written into the store the pool moves to; the newest of the
# two stores' rows says which one the nodes use (pool/failover.py).
pool_state = Table(
    "pool_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),  # normal | failed_over
    Column("since_ms", BigInteger, nullable=False),  # the store's clock
    Column("by", String(128), nullable=False),
    Column("reason", Text, nullable=False),
)

# -- export and import (issue 18) ------------------------------------------------------------

# This store's identity (one row, id 1): written into every export's header (chatserver/transfer).
deployment = Table(
    "deployment",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("uuid", String(36), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

# What an import created here for each object of a source deployment: a re-run reuses it.
import_ids = Table(
    "import_ids",
    metadata,
    Column("source", String(36), nullable=False),
    Column("kind", String(16), nullable=False),  # user | group | addin | category | room | file
    Column("source_id", BigInteger, nullable=False),
    Column("target_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("source", "kind", "source_id", name="pk_import_ids"),
)
