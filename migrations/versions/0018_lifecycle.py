"""The life of a message (issue 18, sections 1 and 2).

Section 1: users edit, delete, answer and react to messages.
``messages.edited_ms`` (when its sender last edited it), ``reply_to`` (the seq it answers, in the
same room), ``reactions`` (the counts per emoji, JSON, kept in step with ``reactions``) and
``change_no`` (the room's change number of its latest change); ``rooms.change_no`` counts a room's
changes (a resuming client asks for the changes after the number it saw). ``edit_policy`` on
categories and rooms: who may edit and delete their own messages, and for how long (null:
inherit). ``reactions``: one row per user, message and emoji. ``message_ops``: the client ids of
edits, deletes and reactions (a retry changes nothing and answers the same).

Section 2: retention and legal hold. ``retention_policies`` (per deployment, category or room),
``legal_holds`` (named, on users and/or rooms, with a date range), ``held_messages`` (the
versions of held messages that an edit, delete, removal, clear or purge replaced: compliance
officers can still read them), ``leases`` (which node of a pool runs the purge).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.add_column("messages", sa.Column("edited_ms", sa.BigInteger, nullable=True))
    op.add_column("messages", sa.Column("reply_to", sa.BigInteger, nullable=True))
    op.add_column("messages", sa.Column("reactions", sa.Text, nullable=True))
    op.add_column(
        "messages",
        sa.Column("change_no", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_messages_room_id_reply_to", "messages", ["room_id", "reply_to"])
    op.create_index("ix_messages_room_id_change_no", "messages", ["room_id", "change_no"])
    op.add_column(
        "rooms", sa.Column("change_no", sa.BigInteger, nullable=False, server_default="0")
    )
    op.add_column("rooms", sa.Column("edit_policy", sa.String(16), nullable=True))
    op.add_column("categories", sa.Column("edit_policy", sa.String(16), nullable=True))
    op.create_table(
        "reactions",
        sa.Column("room_id", Id, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("emoji", sa.String(32), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("room_id", "seq", "user_id", "emoji", name="pk_reactions"),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_reactions_room_id_rooms", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "message_ops",
        sa.Column("room_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("cid", sa.String(64), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("change_no", sa.BigInteger, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("room_id", "user_id", "cid", name="pk_message_ops"),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_message_ops_room_id_rooms", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_message_ops_ts", "message_ops", ["ts"])
    op.create_table(
        "retention_policies",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", Id, nullable=False),
        sa.Column("days", sa.Integer, nullable=False),
        sa.Column("files_days", sa.Integer, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", name="pk_retention_policies"),
    )
    op.create_table(
        "legal_holds",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("users", sa.Text, nullable=False),
        sa.Column("rooms", sa.Text, nullable=False),
        sa.Column("since_ms", sa.BigInteger, nullable=True),
        sa.Column("until_ms", sa.BigInteger, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("lifted_ms", sa.BigInteger, nullable=True),
        sa.Column("lifted_by", sa.String(256), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_legal_holds"),
        sa.UniqueConstraint("name", name="uq_legal_holds_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "held_messages",
        sa.Column("room_id", Id, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("sender_id", Id, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("saved_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("room_id", "seq", "version", name="pk_held_messages"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("until_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    for table in (
        "leases",
        "held_messages",
        "legal_holds",
        "retention_policies",
        "message_ops",
        "reactions",
    ):
        op.drop_table(table)
    op.drop_index("ix_messages_room_id_change_no", table_name="messages")
    op.drop_index("ix_messages_room_id_reply_to", table_name="messages")
    with op.batch_alter_table("categories") as batch:
        batch.drop_column("edit_policy")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("edit_policy")
        batch.drop_column("change_no")
    with op.batch_alter_table("messages") as batch:
        for column in ("change_no", "reactions", "reply_to", "edited_ms"):
            batch.drop_column(column)
