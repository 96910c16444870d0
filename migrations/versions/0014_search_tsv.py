"""Search, faster (issue 17): a stored tsvector and a GIN index on (room_id, tsv).

PostgreSQL only (SQLite keeps its FTS5 table from migration 0012; nothing changes there):

- ``messages.tsv``: ``to_tsvector('simple', text)``, a generated column, so it is computed in the
  statement that stores, replaces or removes the message (the storing transaction), and a
  search reads it instead of computing it again for every candidate row (the recheck of a phrase
  or of a lossy bitmap page did that with 0012's expression index);
- ``ix_messages_tsv``: GIN on ``(room_id, tsv)`` with the ``btree_gin`` extension, so a search
  over some rooms finds the rows of those rooms inside the index instead of intersecting with
  the primary key's bitmap; ``fastupdate = off``, so a search never scans a pending list that
  the ingest keeps filling (each insert updates the index itself);
- 0012's expression index ``ix_messages_search`` goes: ``ix_messages_tsv`` serves its queries
  (the administrators' search over every room included: a GIN index answers a condition on any
  of its columns alone).

``ALTER TABLE ... ADD COLUMN ... STORED`` rewrites the table under an exclusive lock: about 20 s
per million messages on the benchmark machine, the index ~6 s more (docs/operations.md).
``CREATE EXTENSION btree_gin`` needs the CREATE privilege on the database (btree_gin is a
trusted extension from PostgreSQL 13 on, so no superuser is needed for a database owner);
without it the migration stops and says what to run.

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

TSV = "to_tsvector('simple'::regconfig, text)"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    have = bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'btree_gin'")).first()
    if have is None:
        allowed = bind.execute(
            sa.text("SELECT has_database_privilege(current_database(), 'CREATE')")
        ).scalar()
        available = bind.execute(
            sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'btree_gin'")
        ).first()
        if available is None or not allowed:
            raise RuntimeError(
                "migration 0014 needs the btree_gin extension (PostgreSQL contrib): "
                + (
                    "it is not installed on the database server (Debian: postgresql-contrib,"
                    " part of the postgresql package from 10 on)"
                    if available is None
                    else "this user may not create it; as a superuser or the database owner,"
                    " run: CREATE EXTENSION btree_gin;  in this database, then migrate again"
                )
            )
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.execute(f"ALTER TABLE messages ADD COLUMN tsv tsvector GENERATED ALWAYS AS ({TSV}) STORED")
    op.execute(
        "CREATE INDEX ix_messages_tsv ON messages USING gin (room_id, tsv) WITH (fastupdate = off)"
    )
    op.execute("DROP INDEX IF EXISTS ix_messages_search")
    # The planner's word frequencies for the new column (and the store's, chatserver/store/
    # search.py): without them it would guess until autovacuum's next analyze.
    op.execute("ANALYZE messages")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE INDEX IF NOT EXISTS ix_messages_search ON messages USING gin ({TSV})")
    op.execute("DROP INDEX IF EXISTS ix_messages_tsv")
    op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS tsv")
