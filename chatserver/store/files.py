"""Files: uploads stored in the content store in chunks, and the message that carries each.

An upload's life (docs/architecture.md, "Files")::

    begin()  ─► a "pending" row (invisible to every reader), naming the node receiving it
    put_chunk() ... ─► file_chunks rows, one short transaction each (the bytes are never whole
                        in memory; a chunk is at most the row's chunk_size)
    finish()  ─► one transaction: lock the room's row, take the next seq, store the message,
                 mark the file "ready" with its size, type and SHA-256, record FILEUPLOAD (and
                 CHAT) in the compliance outbox; only now can anyone see it
    abandon()  ─► an upload that failed (client gone, too large, checksum wrong): its chunks
                  and row deleted
    sweep()  ─► what a killed node left pending: at its restart every pending row it named,
                and, on any node, pending rows older than a bound

The room's row is locked exactly as the group commit locks it (store/messages.py), so the file's
message takes its seq in commit order like any post (ARCHITECTURE invariant 2).

Removing a file (its uploader, a room manager, an administrator) turns its message into a
tombstone, deletes its chunks and keeps its row as "removed": the compliance record (FILEUPLOAD)
stays where it is, and a REMOVE event records the removal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asyncpg.exceptions import ForeignKeyViolationError
from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from . import holds
from .db import Database, now_ms
from .messages import FileRef, Message
from .outbox import Event, record
from .schema import categories, file_chunks, files, messages, rooms

PENDING, READY, REMOVED = "pending", "ready", "removed"


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A ready file as a download needs it."""

    id: int
    room: int
    uploader_id: int
    name: str
    media_type: str
    size: int
    sha256: str
    chunk_size: int
    created_ms: int
    seq: int

    def ref(self) -> FileRef:
        return FileRef(self.id, self.name, self.size, self.media_type, self.sha256)


class UploadLost(Exception):
    """The pending row is gone (swept meanwhile, or its room deleted): nothing was stored."""

    def __init__(self, message: str, *, room_gone: bool) -> None:
        super().__init__(message)
        self.room_gone = room_gone


class QuotaExceeded(Exception):
    """The room's files would exceed its quota."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(f"the room's files use {used} of {quota} bytes")
        self.used, self.quota = used, quota


async def begin(
    db: Database, room: int, uploader: int, name: str, chunk_size: int, node: str
) -> int:
    """A pending file row; its id."""
    async with db.write() as conn:
        result = await conn.execute(
            insert(files).values(
                room_id=room,
                uploader_id=uploader,
                name=name,
                media_type="application/octet-stream",
                size=0,
                sha256="",
                chunk_size=chunk_size,
                created_ms=now_ms(),
                state=PENDING,
                node=node,
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])


async def put_chunk(db: Database, file_id: int, index: int, data: bytes) -> None:
    """Store one chunk of a pending upload; :class:`UploadLost` if its row is gone."""
    try:
        await _put_chunk(db, file_id, index, data)
    except (IntegrityError, ForeignKeyViolationError):  # (asyncpg's: the fast path)
        raise UploadLost(f"upload {file_id} is no longer pending", room_gone=False) from None


# One statement, its own transaction, in one round trip: set_config(..., true) is SET LOCAL, and
# synchronous_commit is read when that transaction commits.
_PUT_CHUNK_PG = (
    "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))"
    " INSERT INTO file_chunks (file_id, idx, data) SELECT $1, $2, $3 FROM async"
)


async def _put_chunk(db: Database, file_id: int, index: int, data: bytes) -> None:
    if db.is_postgres:
        # On the asyncpg pool, committed without waiting for the WAL to reach the disk: a chunk
        # matters only once finish() commits the file, and that commit (synchronous) flushes the
        # WAL up to its own record, every chunk's included. A crash before it loses chunks of an
        # upload that was never acknowledged (and is swept at restart).
        pool = await db.pg_pool()
        await pool.execute(_PUT_CHUNK_PG, file_id, index, data)
        return
    async with db.write() as conn:
        await conn.execute(insert(file_chunks).values(file_id=file_id, idx=index, data=data))


async def _chunk(db: Database, file_id: int, index: int) -> bytes | None:
    if db.is_postgres:
        pool = await db.pg_pool()
        data = await pool.fetchval(
            "SELECT data FROM file_chunks WHERE file_id = $1 AND idx = $2", file_id, index
        )
    else:
        async with db.read() as conn:
            data = await conn.scalar(
                select(file_chunks.c.data).where(
                    file_chunks.c.file_id == file_id, file_chunks.c.idx == index
                )
            )
    return None if data is None else bytes(data)


async def room_usage(db: Database, room: int) -> int:
    """Bytes of the room's ready files."""
    async with db.read() as conn:
        used = await conn.scalar(
            select(func.coalesce(func.sum(files.c.size), 0)).where(
                files.c.room_id == room, files.c.state == READY
            )
        )
    return int(used or 0)


async def finish(
    db: Database,
    file_id: int,
    *,
    media_type: str,
    size: int,
    sha256: str,
    text: str,
    sender_name: str,
    quota: int | None,
    capture: str | None,
) -> Message:
    """Make the pending file ready and store its message; see the module docstring.

    Raises :class:`UploadLost` when the pending row is gone, :class:`QuotaExceeded` when the
    room's ready files and this one would pass ``quota`` bytes (checked under the room's lock, so
    two uploads cannot both slip under it). Either way nothing is stored.
    """
    async with db.write() as conn:
        pending = (
            await conn.execute(
                select(files.c.room_id, files.c.uploader_id, files.c.name).where(
                    files.c.id == file_id, files.c.state == PENDING
                )
            )
        ).first()
        if pending is None:
            raise UploadLost(f"upload {file_id} is no longer pending", room_gone=False)
        room_id, uploader = int(pending.room_id), int(pending.uploader_id)
        locked = (
            await conn.execute(
                # the message's time on the store's clock, as posts' (store/messages.py)
                select(rooms.c.last_seq, categories.c.chat_history, db.now_ms().label("now"))
                .join(categories, categories.c.id == rooms.c.category_id)
                .where(rooms.c.id == room_id)
                .with_for_update(of=rooms)
            )
        ).first()
        if locked is None:
            raise UploadLost(f"the room of upload {file_id} is gone", room_gone=True)
        if quota is not None:
            used = int(
                await conn.scalar(
                    select(func.coalesce(func.sum(files.c.size), 0)).where(
                        files.c.room_id == room_id, files.c.state == READY
                    )
                )
                or 0
            )
            if used + size > quota:
                raise QuotaExceeded(used, quota)
        seq, ts, kept = int(locked.last_seq) + 1, int(locked.now), bool(locked.chat_history)
        cid = f"file:{file_id}"
        if kept:
            await conn.execute(
                insert(messages).values(
                    room_id=room_id, seq=seq, sender_id=uploader, cid=cid, text=text, ts=ts
                )
            )
        await conn.execute(update(rooms).where(rooms.c.id == room_id).values(last_seq=seq))
        await conn.execute(
            update(files)
            .where(files.c.id == file_id)
            .values(state=READY, seq=seq, media_type=media_type, size=size, sha256=sha256)
        )
        ref = FileRef(file_id, pending.name, size, media_type, sha256)
        if capture is not None:
            await record(
                conn,
                capture,
                [
                    Event(
                        "CHAT",
                        room_id,
                        uploader,
                        {
                            "seq": seq,
                            "text": text,
                            "cid": cid,
                            "sender": sender_name,
                            "kept": kept,
                            "file": file_id,
                        },
                        ts,
                    ),
                    Event("FILEUPLOAD", room_id, uploader, _file_payload(ref, seq, text), ts),
                ],
            )
    return Message(room_id, seq, ts, uploader, sender_name, text, cid, kept, file=ref)


def _file_payload(ref: FileRef, seq: int, text: str) -> dict[str, object]:
    return {
        "file": ref.id,
        "name": ref.name,
        "size": ref.size,
        "media_type": ref.media_type,
        "sha256": ref.sha256,
        "seq": seq,
        "text": text,
    }


async def abandon(db: Database, file_id: int) -> None:
    """Delete a pending upload: its chunks, then its row."""
    async with db.write() as conn:
        await _delete_pending(conn, [file_id])


async def _delete_pending(conn: AsyncConnection, ids: list[int]) -> None:
    if not ids:
        return
    await conn.execute(delete(file_chunks).where(file_chunks.c.file_id.in_(ids)))
    await conn.execute(delete(files).where(files.c.id.in_(ids), files.c.state == PENDING))


async def sweep(db: Database, *, node: str | None, older_than_ms: int) -> int:
    """Delete pending uploads left behind: every one naming ``node`` (a node sweeping at its
    start: nothing of its own can be in progress), and any node's begun before
    ``older_than_ms``. Returns how many went."""
    cond = files.c.created_ms < older_than_ms
    if node is not None:
        cond = cond | (files.c.node == node)
    async with db.write() as conn:
        ids = [
            int(row.id)
            for row in await conn.execute(select(files.c.id).where(files.c.state == PENDING, cond))
        ]
        await _delete_pending(conn, ids)
    return len(ids)


async def get(db: Database, file_id: int) -> StoredFile | None:
    """The ready file ``file_id``, or None (missing, pending, removed)."""
    async with db.read() as conn:
        row = (
            await conn.execute(select(files).where(files.c.id == file_id, files.c.state == READY))
        ).first()
    if row is None:
        return None
    return StoredFile(
        int(row.id),
        int(row.room_id),
        int(row.uploader_id),
        row.name,
        row.media_type,
        int(row.size),
        row.sha256,
        int(row.chunk_size),
        int(row.created_ms),
        int(row.seq),
    )


async def chunks(
    db: Database, file_id: int, first: int, last: int, slots: asyncio.Semaphore | None = None
) -> AsyncIterator[bytes]:
    """The chunks ``first`` … ``last`` of a file, each read in a query of its own, the next one
    read while the caller sends this one (a download holds at most two chunks in memory, and no
    store connection between chunks). ``slots`` bounds the reads of every download at once."""
    if first > last:
        return

    async def read(index: int) -> bytes | None:
        if slots is None:
            return await _chunk(db, file_id, index)
        async with slots:
            return await _chunk(db, file_id, index)

    loop = asyncio.get_running_loop()
    ahead = loop.create_task(read(first))
    try:
        for index in range(first, last + 1):
            data = await ahead
            if index < last:
                ahead = loop.create_task(read(index + 1))
            if data is None:  # removed meanwhile
                return
            yield data
    finally:
        if not ahead.done():
            ahead.cancel()
            await asyncio.gather(ahead, return_exceptions=True)


async def record_download(db: Database, node: str, user_id: int, found: StoredFile) -> None:
    """Commit a FILEDOWNLOAD compliance event (before the bytes are sent)."""
    async with db.write() as conn:
        await record(
            conn,
            node,
            [Event("FILEDOWNLOAD", found.room, user_id, _file_payload(found.ref(), found.seq, ""))],
        )


async def remove(db: Database, file_id: int, *, by: str, capture: str | None) -> int | None:
    """Remove a ready file: its message becomes a tombstone, its chunks are deleted, its row
    stays as "removed". Returns the message's seq, or None if there was no such ready file."""
    async with db.write() as conn:
        row = (
            await conn.execute(
                select(files.c.room_id, files.c.seq, files.c.uploader_id, files.c.name).where(
                    files.c.id == file_id, files.c.state == READY
                )
            )
        ).first()
        if row is None:
            return None
        await conn.execute(update(files).where(files.c.id == file_id).values(state=REMOVED))
        if not await _held_files(conn, int(row.room_id), [file_id]):
            await conn.execute(delete(file_chunks).where(file_chunks.c.file_id == file_id))
        at = messages.c.seq == row.seq
        await holds.keep_held(conn, int(row.room_id), at, "remove")
        original = await conn.scalar(
            select(messages.c.text).where(
                messages.c.room_id == row.room_id, messages.c.seq == row.seq
            )
        )
        await conn.execute(
            update(messages)
            .where(and_(messages.c.room_id == row.room_id, messages.c.seq == row.seq))
            .values(state="removed", text="")
        )
        if capture is not None:
            await record(
                conn,
                capture,
                [
                    Event(
                        "REMOVE",
                        int(row.room_id),
                        int(row.uploader_id),
                        {
                            "seq": int(row.seq),
                            "original_text": original or "",
                            "new_text": None,
                            "by": by,
                            "file": file_id,
                            "name": row.name,
                        },
                    )
                ],
            )
    return int(row.seq)


async def remove_covered(conn: AsyncConnection, room: int, seqs: list[int] | None) -> int:
    """Inside the caller's transaction (a message removal, a room clear): the room's ready files
    whose messages are now removed (those of ``seqs``, or all of them when None) lose their
    chunks and become "removed". Returns how many."""
    cond = (
        (files.c.room_id == room)
        & (files.c.state == READY)
        & files.c.seq.in_(
            select(messages.c.seq).where(
                messages.c.room_id == room, messages.c.state.in_(("removed", "deleted"))
            )
        )
    )
    if seqs is not None:
        cond = cond & files.c.seq.in_(seqs)
    ids = [int(r.id) for r in await conn.execute(select(files.c.id).where(cond))]
    if ids:
        # A legal hold keeps the bytes of the files it covers (store/holds.py).
        kept = await _held_files(conn, room, ids)
        gone = [i for i in ids if i not in kept]
        if gone:
            await conn.execute(delete(file_chunks).where(file_chunks.c.file_id.in_(gone)))
        await conn.execute(update(files).where(files.c.id.in_(ids)).values(state=REMOVED))
    return len(ids)


async def _held_files(conn: AsyncConnection, room: int, ids: list[int]) -> set[int]:
    """Those of the files ``ids`` whose message a legal hold covers."""
    active = await holds.active(conn)
    if not active:
        return set()
    rows = await conn.execute(
        select(files.c.id)
        .join(messages, (messages.c.room_id == files.c.room_id) & (messages.c.seq == files.c.seq))
        .where(files.c.room_id == room, files.c.id.in_(ids), holds.held_condition(active))
    )
    return {int(r.id) for r in rows}


async def counts(db: Database) -> dict[str, int]:
    """Rows of files per state and of chunks (tests and metrics: nothing leaked)."""
    async with db.read() as conn:
        by_state = {
            row.state: int(row.n)
            for row in await conn.execute(
                select(files.c.state, func.count().label("n")).group_by(files.c.state)
            )
        }
        by_state["chunks"] = int(
            await conn.scalar(select(func.count()).select_from(file_chunks)) or 0
        )
    return by_state
