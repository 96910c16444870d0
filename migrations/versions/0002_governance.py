"""Governance: groups, categories, room privacy/type/roles, invitations, user policy.

Rooms that exist before this revision move into the category "General", which allows everyone,
and become open, so they stay as reachable as they were.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("persistent_chat_enabled", sa.Boolean, nullable=True))
    op.create_table(
        "groups",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
        sa.UniqueConstraint("name", name="uq_groups_name"),
        sqlite_autoincrement=True,  # a deleted group's id is never given to a new one
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", Id, nullable=False),
        sa.Column("member_kind", sa.String(8), nullable=False),
        sa.Column("member_id", Id, nullable=False),
        sa.PrimaryKeyConstraint("group_id", "member_kind", "member_id", name="pk_group_members"),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name="fk_group_members_group_id_groups", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_group_members_member", "group_members", ["member_kind", "member_id"])
    categories = op.create_table(
        "categories",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("invitations", sa.Boolean, nullable=False),
        sa.Column("file_upload", sa.Boolean, nullable=False),
        sa.Column("chat_history", sa.Boolean, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_categories"),
        sa.UniqueConstraint("name", name="uq_categories_name"),
        sqlite_autoincrement=True,
    )
    category_principals = op.create_table(
        "category_principals",
        sa.Column("category_id", Id, nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("principal_kind", sa.String(8), nullable=False),
        sa.Column("principal_id", Id, nullable=False),
        sa.PrimaryKeyConstraint(
            "category_id", "role", "principal_kind", "principal_id", name="pk_category_principals"
        ),
        sa.ForeignKeyConstraint(
            ["category_id"],
            ["categories.id"],
            name="fk_category_principals_category_id_categories",
            ondelete="CASCADE",
        ),
    )
    op.bulk_insert(
        categories,
        [
            {
                "id": 1,
                "name": "General",
                "description": "Rooms everyone may find",
                "invitations": True,
                "file_upload": True,
                "chat_history": True,
                "created_ms": int(time.time() * 1000),
            }
        ],
    )
    op.bulk_insert(
        category_principals,
        [{"category_id": 1, "role": "allowed", "principal_kind": "everyone", "principal_id": 0}],
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SELECT setval(pg_get_serial_sequence('categories', 'id'), 1)")
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("category_id", Id, nullable=False, server_default="1"))
        batch.add_column(sa.Column("privacy", sa.String(8), nullable=False, server_default="open"))
        batch.add_column(sa.Column("type", sa.String(12), nullable=False, server_default="normal"))
        batch.add_column(
            sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("invitations", sa.String(8), nullable=False, server_default="inherit")
        )
        batch.add_column(sa.Column("addin_id", sa.BigInteger, nullable=True))
        batch.create_foreign_key(
            "fk_rooms_category_id_categories", "categories", ["category_id"], ["id"]
        )
        batch.create_index("ix_rooms_category_id", ["category_id"])
    op.create_table(
        "room_principals",
        sa.Column("room_id", Id, nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("principal_kind", sa.String(8), nullable=False),
        sa.Column("principal_id", Id, nullable=False),
        sa.PrimaryKeyConstraint(
            "room_id", "role", "principal_kind", "principal_id", name="pk_room_principals"
        ),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_room_principals_room_id_rooms", ondelete="CASCADE"
        ),
    )
    op.create_index(
        "ix_room_principals_principal", "room_principals", ["principal_kind", "principal_id"]
    )
    op.create_table(
        "invitations",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("inviter_id", Id, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "room_id", name="pk_invitations"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_invitations_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_invitations_room_id_rooms", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("invitations")
    op.drop_index("ix_room_principals_principal", table_name="room_principals")
    op.drop_table("room_principals")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_index("ix_rooms_category_id")
        batch.drop_constraint("fk_rooms_category_id_categories", type_="foreignkey")
        for column in ("addin_id", "invitations", "disabled", "type", "privacy", "category_id"):
            batch.drop_column(column)
    op.drop_table("category_principals")
    op.drop_table("categories")
    op.drop_index("ix_group_members_member", table_name="group_members")
    op.drop_table("group_members")
    op.drop_table("groups")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("persistent_chat_enabled")
