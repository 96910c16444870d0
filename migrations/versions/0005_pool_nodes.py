"""Pool membership: the nodes sharing this store, with their addresses and heartbeats.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool_nodes",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("tcp", sa.String(256), nullable=False),
        sa.Column("websocket", sa.String(256), nullable=False),
        sa.Column("peer", sa.String(256), nullable=False),
        sa.Column("management", sa.String(256), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_pool_nodes"),
    )


def downgrade() -> None:
    op.drop_table("pool_nodes")
