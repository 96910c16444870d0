"""Compliance outbox: chat events waiting for the compliance writer.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "compliance_outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("room_id", Id, nullable=True),
        sa.Column("user_id", Id, nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_compliance_outbox"),
        sa.UniqueConstraint("event_id", name="uq_compliance_outbox_event_id"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("compliance_outbox")
