"""The directory sync's status and requests (operators see the sync and ask for one now).

``directory_sync`` gains: ``started_ms`` (when the last run started; ``last_run_ms`` is when it
ended), ``outcome`` (``ok``, ``failed``, ``stopped`` by the mass-removal guard; empty before the
first run), ``counts`` (JSON: what the last run saw and changed, or the guard's counts),
``next_run_ms`` (when the lease holder runs next), and a pending request for a run now
(``requested_ms``, ``requested_by``, ``request_override``: the guard overridden for that run).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("directory_sync") as batch:
        batch.add_column(sa.Column("started_ms", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("outcome", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("counts", sa.String(4000), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("next_run_ms", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("requested_ms", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("requested_by", sa.String(128), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("request_override", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("directory_sync") as batch:
        for column in (
            "request_override",
            "requested_by",
            "requested_ms",
            "next_run_ms",
            "counts",
            "outcome",
            "started_ms",
        ):
            batch.drop_column(column)
