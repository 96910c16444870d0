"""Files in rooms (issue 16): the files table and their bytes in file_chunks.

A file is stored in the content store in chunks, so every node of a pool serves every file and
a backup of the database holds them; see chatserver/store/files.py.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("uploader_id", Id, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(127), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("chunk_size", sa.Integer, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_files"),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_files_room_id_rooms", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["uploader_id"], ["users.id"], name="fk_files_uploader_id_users"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_files_room_id_seq", "files", ["room_id", "seq"])
    op.create_index("ix_files_state_created_ms", "files", ["state", "created_ms"])
    op.create_table(
        "file_chunks",
        sa.Column("file_id", Id, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("file_id", "idx", name="pk_file_chunks"),
        sa.ForeignKeyConstraint(
            ["file_id"], ["files.id"], name="fk_file_chunks_file_id_files", ondelete="CASCADE"
        ),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Chunks are stored out of line without compression: most files are compressed already,
        # and trying costs CPU on every chunk written.
        op.execute("ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("file_chunks")
    op.drop_index("ix_files_state_created_ms", table_name="files")
    op.drop_index("ix_files_room_id_seq", table_name="files")
    op.drop_table("files")
