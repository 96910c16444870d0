"""Room names are no longer unique in the store: a name is refused only when it clashes with a
room the person naming it may find (docs/governance.md, section 6). A unique name across all
rooms told anyone who could create a room whether a secret room of that name existed.

The unique constraint gives way to a plain index on (name, id), the order of the room directory
and of its cursor.

Downgrading restores the constraint, and fails while two rooms share a name: rename one first.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.drop_constraint("uq_rooms_name", type_="unique")
        batch.create_index("ix_rooms_name", ["name", "id"])


def downgrade() -> None:
    # Checked first: on SQLite a failed batch would leave its copy of the table behind.
    shared = (
        op.get_bind()
        .execute(sa.text("SELECT name FROM rooms GROUP BY name HAVING COUNT(*) > 1 LIMIT 1"))
        .first()
    )
    if shared is not None:
        raise RuntimeError(
            f"cannot make room names unique again: more than one room is named {shared[0]!r};"
            " rename them first"
        )
    with op.batch_alter_table("rooms") as batch:
        batch.drop_index("ix_rooms_name")
        batch.create_unique_constraint("uq_rooms_name", ["name"])
