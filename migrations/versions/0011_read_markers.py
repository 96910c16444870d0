"""Read markers and mentions (issue 17, sections 2 and 3).

``read_markers``: one row per user and room, the highest seq the user has read (written
coalesced, at most once a second per user and room; see chatserver/rooms/unread.py).
``mentions``: one row per user named by ``@name`` in a message, written in the message's storing
transaction, so the mentions since a read marker are an index range on (user, room, seq).
``ix_users_lower_name`` (PostgreSQL): the case-insensitive lookup of mentioned names. It is
not in schema.py (SQLAlchemy does not reflect expression indexes on SQLite; the PostgreSQL
comparison in tests/store/test_migrations.py knows it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "read_markers",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "room_id", name="pk_read_markers"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_read_markers_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_read_markers_room_id_rooms", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "mentions",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("sender_id", Id, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        # No foreign key on user_id: the storing statement takes the ids from users itself, users
        # are never deleted, and the check cost 4 µs a row on the group commit.
        sa.PrimaryKeyConstraint("user_id", "room_id", "seq", name="pk_mentions"),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_mentions_room_id_rooms", ondelete="CASCADE"
        ),
    )
    # Paging one's mentions newest first, across rooms.
    op.create_index("ix_mentions_user_id_ts", "mentions", ["user_id", "ts"])
    if op.get_bind().dialect.name == "postgresql":
        # On SQLite the lookup scans users (a single node's users table is small; SQLite's
        # lower() folds ASCII only, see chatserver/rooms/mentions.py).
        op.create_index("ix_users_lower_name", "users", [sa.text("lower(name)")])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_users_lower_name", table_name="users")
    op.drop_table("mentions")
    op.drop_table("read_markers")
