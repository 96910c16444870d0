"""Export and import (issue 18, section 3).

``deployment``: one row, this store's identity (a UUID made by the first export), written into
every export's header so an import recognises objects it already brought over from that source.
``import_ids``: per source deployment and object kind, the source's id and the id the import gave
the object here: re-running an import finds what it created and creates nothing twice.

Revision ID: 0016
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deployment"),
    )
    op.create_table(
        "import_ids",
        sa.Column("source", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source_id", sa.BigInteger, nullable=False),
        sa.Column("target_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("source", "kind", "source_id", name="pk_import_ids"),
    )


def downgrade() -> None:
    op.drop_table("import_ids")
    op.drop_table("deployment")
