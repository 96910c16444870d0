"""Failed sign-ins per account name and per source address (the login throttle).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_ms", sa.BigInteger, nullable=False),
        sa.Column("locked_until_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_login_failures"),
    )
    op.create_index("ix_login_failures_last_ms", "login_failures", ["last_ms"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_last_ms", "login_failures")
    op.drop_table("login_failures")
