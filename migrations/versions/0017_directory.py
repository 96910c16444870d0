"""Directory users and groups (issue 20): where each user and group comes from, and the sync lease.

``users.source`` / ``groups.source``: ``local`` (made here) or ``directory`` (synchronised from
LDAP; not editable locally), with ``external_id`` the directory's stable id (entryUUID, AD's
objectGUID). ``users.disabled``: refused at sign-in (a user disabled or removed in the directory,
or disabled by an administrator). ``users.email`` from the directory. ``directory_sync``: one row,
the lease that lets one node of a pool sync at a time, and the last sync's outcome.

Revision ID: 0017
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="local"))
        batch.add_column(sa.Column("external_id", sa.String(512), nullable=True))
        batch.add_column(sa.Column("email", sa.String(256), nullable=True))
        batch.add_column(
            sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.create_index("ux_users_source_external_id", ["source", "external_id"], unique=True)
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="local"))
        batch.add_column(sa.Column("external_id", sa.String(512), nullable=True))
        batch.create_index("ux_groups_source_external_id", ["source", "external_id"], unique=True)
    op.create_table(
        "directory_sync",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=False),
        sa.Column("last_run_ms", sa.BigInteger, nullable=False),
        sa.Column("last_result", sa.String(2000), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_directory_sync"),
    )


def downgrade() -> None:
    op.drop_table("directory_sync")
    with op.batch_alter_table("groups") as batch:
        batch.drop_index("ux_groups_source_external_id")
        batch.drop_column("external_id")
        batch.drop_column("source")
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ux_users_source_external_id")
        batch.drop_column("disabled")
        batch.drop_column("email")
        batch.drop_column("external_id")
        batch.drop_column("source")
