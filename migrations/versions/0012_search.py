"""Search and topic feeds (issue 17): the full-text index over messages, and saved feeds.

PostgreSQL: a GIN expression index on ``to_tsvector('simple', text)``; the server makes one
more for another ``search.language`` at start-up (chatserver/store/search.py). SQLite: an FTS5
table with external content (the messages table), kept in step by triggers, so every insert,
replacement, removal and clear changes the index in the transaction that changes the message.
Both: an index on messages.ts for newest-first searches of frequent words.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

SQLITE_UP = [
    "CREATE VIRTUAL TABLE messages_fts USING fts5(text, content='messages',"
    " content_rowid='rowid', tokenize='unicode61 remove_diacritics 2')",
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
    "CREATE TRIGGER messages_fts_ai AFTER INSERT ON messages BEGIN"
    " INSERT INTO messages_fts(rowid, text) VALUES (new.rowid, new.text); END",
    "CREATE TRIGGER messages_fts_ad AFTER DELETE ON messages BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.rowid, old.text);"
    " END",
    "CREATE TRIGGER messages_fts_au AFTER UPDATE OF text ON messages BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.rowid, old.text);"
    " INSERT INTO messages_fts(rowid, text) VALUES (new.rowid, new.text); END",
]


def upgrade() -> None:
    # Newest-first search of a common word walks this backwards and stops at the page's end,
    # instead of sorting every match (PostgreSQL picks it when the word is frequent).
    op.create_index("ix_messages_ts", "messages", ["ts"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_messages_search ON messages"
            " USING gin (to_tsvector('simple'::regconfig, text))"
        )
    else:
        for statement in SQLITE_UP:
            op.execute(statement)
    op.create_table(
        "feeds",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("query", sa.String(500), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feeds"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_feeds_user_id_users", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("user_id", "name", name="uq_feeds_user_id_name"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("feeds")
    op.drop_index("ix_messages_ts", table_name="messages")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_messages_search")
    else:
        for trigger in ("messages_fts_ai", "messages_fts_ad", "messages_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
