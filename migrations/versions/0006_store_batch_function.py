"""PostgreSQL: the group commit's batch as one server-side function (one round trip per batch).

``chat_store_batch`` locks the batch's rooms in id order, finds the posts already stored (by
room, sender and client id), gives the new ones the rooms' next seqs, inserts them (unless the
room's category keeps no history), advances ``rooms.last_seq`` and returns one row per stored or
found post. Called outside an explicit transaction it is its own transaction, so a batch costs
one round trip to the server, commit included. It does in SQL what
``chatserver.store.messages._plan`` does in Python for SQLite; tests/store/test_plan.py holds the
two to the same results. Its rows come back in no particular order (``out_i`` places them).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The duplicate lookup is a LATERAL probe per post so that it is always an index lookup on
# uq_messages_room_sender_cid: a cached plan made while the table looked small could otherwise
# hash-join a sequential scan of every message (measured: 27 ms per batch at 150,000 messages).
# Each statement of a VOLATILE PL/pgSQL function takes a new snapshot (READ COMMITTED), so the
# duplicate lookup and last_seq read below see everything a batch that held these rooms' locks
# before us committed.
CREATE = """
CREATE FUNCTION chat_store_batch(
    p_rooms bigint[], p_senders bigint[], p_cids text[], p_texts text[], p_ts bigint
) RETURNS TABLE (
    out_i integer, out_seq bigint, out_ts bigint, out_text text, out_new boolean,
    out_kept boolean
)
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM 1 FROM rooms WHERE rooms.id = ANY (p_rooms) ORDER BY rooms.id FOR UPDATE;
    RETURN QUERY
    WITH post AS (
        SELECT p.i::integer AS i, p.room, p.sender, p.cid, p.text
        FROM unnest(p_rooms, p_senders, p_cids, p_texts)
            WITH ORDINALITY AS p(room, sender, cid, text, i)
    ), known AS (
        SELECT post.*, r.last_seq, c.chat_history,
               m.seq AS old_seq, m.ts AS old_ts, m.text AS old_text
        FROM post
        JOIN rooms r ON r.id = post.room
        JOIN categories c ON c.id = r.category_id
        LEFT JOIN LATERAL (
            SELECT m.seq, m.ts, m.text FROM messages m
            WHERE m.room_id = post.room AND m.sender_id = post.sender AND m.cid = post.cid
            LIMIT 1
        ) AS m ON true
    ), fresh AS (
        SELECT known.i, known.room, known.sender, known.cid, known.text, known.chat_history,
               known.last_seq + row_number() OVER (PARTITION BY known.room ORDER BY known.i)
                   AS seq
        FROM known WHERE known.old_seq IS NULL
    ), inserted AS (
        INSERT INTO messages (room_id, seq, sender_id, cid, text, ts)
        SELECT fresh.room, fresh.seq, fresh.sender, fresh.cid, fresh.text, p_ts
        FROM fresh WHERE fresh.chat_history
    ), advanced AS (
        UPDATE rooms SET last_seq = top.seq
        FROM (SELECT fresh.room, max(fresh.seq) AS seq FROM fresh GROUP BY fresh.room) AS top
        WHERE rooms.id = top.room
    )
    SELECT known.i,
           coalesce(known.old_seq, fresh.seq),
           coalesce(known.old_ts, p_ts),
           coalesce(known.old_text, known.text),
           known.old_seq IS NULL,
           known.chat_history
    FROM known LEFT JOIN fresh ON fresh.i = known.i;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION chat_store_batch(bigint[], bigint[], text[], text[], bigint)")
