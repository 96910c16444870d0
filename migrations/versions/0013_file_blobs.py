"""Files' bytes apart from their rows (issue 16): storage backends and deduplication.

``files.blob_id`` names the blob holding a file's bytes when it is another file's (a
deduplicated upload; NULL: the file's own id), and ``ix_files_sha256`` finds a stored copy of
the same bytes. ``file_chunks`` rows are now a blob's (``file_id`` is the blob's id), so they no
longer cascade with a file's row: a blob outlives its first file while another refers to it,
and the sweep deletes blobs nobody refers to (chatserver/store/files.py).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("blob_id", Id, nullable=True))
    op.create_index("ix_files_sha256", "files", ["sha256"])
    op.create_index("ix_files_blob_id", "files", ["blob_id"])
    with op.batch_alter_table("file_chunks") as batch:
        batch.drop_constraint("fk_file_chunks_file_id_files", type_="foreignkey")


def downgrade() -> None:
    op.execute("DELETE FROM file_chunks WHERE file_id NOT IN (SELECT id FROM files)")
    with op.batch_alter_table("file_chunks") as batch:
        batch.create_foreign_key(
            "fk_file_chunks_file_id_files", "files", ["file_id"], ["id"], ondelete="CASCADE"
        )
    op.drop_index("ix_files_blob_id", table_name="files")
    op.drop_index("ix_files_sha256", table_name="files")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("blob_id")
