"""Files: the rows of uploads and the message that carries each; their bytes are *blobs* in a
storage backend (chatserver/store/blobs/), named by the id of the file that first stored them.

An upload's life (docs/architecture.md, "Files")::

    begin()  ─► a "pending" row (invisible to every reader), naming the node receiving it;
                its bytes go to the blob of its own id (never whole in memory)
    finish()  ─► one transaction: lock the room's row, take the next seq, store the message,
                 mark the file "ready" with its size, type and SHA-256, record FILEUPLOAD (and
                 CHAT) in the compliance outbox; only now can anyone see it. With dedup, a ready
                 file of the same SHA-256 and size lends its blob (``blob_id``), and the caller
                 drops the upload's own copy afterwards
    abandon()  ─► an upload that failed (client gone, too large, checksum wrong): its chunks
                  and row deleted (another backend's blob is the caller's to delete first)
    sweep()  ─► what a killed node left pending: at its restart every pending row it named,
                and, on any node, pending rows older than a bound
    unreferenced()  ─► which blobs no pending or ready file refers to (the sweep of orphans)

A blob is deleted once no pending or ready file refers to it: in the same transaction when its
chunks are in this store (``file_chunks``), after the commit otherwise (and a blob that a crash
left behind is found by the sweep of orphans).

The room's row is locked exactly as the group commit locks it (store/messages.py), so the file's
message takes its seq in commit order like any post (ARCHITECTURE invariant 2).

Removing a file (its uploader, a room manager, an administrator) turns its message into a
tombstone, deletes its chunks and keeps its row as "removed": the compliance record (FILEUPLOAD)
stays where it is, and a REMOVE event records the removal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from . import holds
from .db import Database, now_ms
from .messages import FileRef, Message
from .outbox import Event, record
from .schema import categories, file_chunks, files, messages, rooms

PENDING, READY, REMOVED = "pending", "ready", "removed"
LIVE = (PENDING, READY)  # the states whose files keep their blob


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
    blob: int  # where its bytes are (its own id, or the blob it shares)

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
    dedup: bool = False,
) -> tuple[Message, int | None]:
    """Make the pending file ready and store its message; see the module docstring. Returns
    the message and, when the file now shares another blob, its own (to delete).

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
        shared = await _same_bytes(conn, file_id, sha256, size) if dedup else None
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
            .values(
                state=READY,
                seq=seq,
                media_type=media_type,
                size=size,
                sha256=sha256,
                blob_id=shared[0] if shared else None,
                chunk_size=shared[1] if shared else files.c.chunk_size,
            )
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
    message = Message(room_id, seq, ts, uploader, sender_name, text, cid, kept, file=ref)
    return message, (file_id if shared is not None else None)


def blob_of() -> ColumnElement[int]:
    return func.coalesce(files.c.blob_id, files.c.id)


async def _same_bytes(
    conn: AsyncConnection, file_id: int, sha256: str, size: int
) -> tuple[int, int] | None:
    """The blob of a ready file with these bytes and its chunk size, locked until the commit
    (its removal waits, then finds this file referring to the blob and keeps it); None if there
    is none."""
    found = (
        await conn.execute(
            select(blob_of().label("blob"), files.c.chunk_size)
            .where(
                files.c.sha256 == sha256,
                files.c.size == size,
                files.c.state == READY,
                files.c.id != file_id,
            )
            .order_by(files.c.id)
            .limit(1)
            .with_for_update(of=files)
        )
    ).first()
    return None if found is None else (int(found.blob), int(found.chunk_size))


async def unreferenced(conn: AsyncConnection, blobs: Iterable[int]) -> list[int]:
    """Those of ``blobs`` that no pending or ready file refers to, nor a removed file a legal
    hold covers (store/holds.py)."""
    wanted = sorted(set(blobs))
    if not wanted:
        return []
    used = {
        int(blob)
        for blob in await conn.scalars(
            select(blob_of()).where(
                files.c.state.in_(LIVE),
                or_(
                    and_(files.c.id.in_(wanted), files.c.blob_id.is_(None)),
                    files.c.blob_id.in_(wanted),
                ),
            )
        )
    }
    active = await holds.active(conn)
    if active:  # a removed file whose message a legal hold covers keeps its bytes
        used.update(
            int(blob)
            for blob in await conn.scalars(
                select(blob_of())
                .select_from(
                    files.join(
                        messages,
                        (messages.c.room_id == files.c.room_id) & (messages.c.seq == files.c.seq),
                    )
                )
                .where(
                    files.c.state == REMOVED,
                    or_(
                        and_(files.c.id.in_(wanted), files.c.blob_id.is_(None)),
                        files.c.blob_id.in_(wanted),
                    ),
                    holds.held_condition(active),
                )
            )
        )
    return [blob for blob in wanted if blob not in used]


async def orphans(db: Database, blobs: Iterable[int]) -> list[int]:
    async with db.read() as conn:
        return await unreferenced(conn, blobs)


async def _release(conn: AsyncConnection, blobs: Iterable[int]) -> list[int]:
    """After files stopped being live: their blobs nobody refers to any more, whose chunks in
    this store are deleted here (in the caller's transaction); returned for the other
    backends, whose caller deletes them after the commit."""
    gone = await unreferenced(conn, blobs)
    if gone:
        await conn.execute(delete(file_chunks).where(file_chunks.c.file_id.in_(gone)))
    return gone


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


async def sweep(db: Database, *, node: str | None, older_than_ms: int) -> list[int]:
    """Delete pending uploads left behind: every one naming ``node`` (a node sweeping at its
    start: nothing of its own can be in progress), and any node's begun before
    ``older_than_ms``. Returns their ids (their blobs', which a pending upload never shares)."""
    cond = files.c.created_ms < older_than_ms
    if node is not None:
        cond = cond | (files.c.node == node)
    async with db.write() as conn:
        ids = [
            int(row.id)
            for row in await conn.execute(select(files.c.id).where(files.c.state == PENDING, cond))
        ]
        await _delete_pending(conn, ids)
    return ids


async def get(db: Database, file_id: int) -> StoredFile | None:
    """The ready file ``file_id``, or None (missing, pending, removed)."""
    async with db.read() as conn:
        row = (
            await conn.execute(select(files).where(files.c.id == file_id, files.c.state == READY))
        ).first()
    return None if row is None else _stored(row)


async def get_held(db: Database, file_id: int, held: Any) -> StoredFile | None:
    """The file ``file_id``, ready or removed, if its message meets ``held`` (a legal hold's
    condition on messages, store/holds.py): a removed held file keeps its bytes."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(files)
                .select_from(
                    files.join(
                        messages,
                        (messages.c.room_id == files.c.room_id) & (messages.c.seq == files.c.seq),
                    )
                )
                .where(files.c.id == file_id, files.c.state.in_((READY, REMOVED)), held)
            )
        ).first()
    return None if row is None else _stored(row)


def _stored(row: Any) -> StoredFile:
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
        int(row.blob_id if row.blob_id is not None else row.id),
    )


async def record_download(db: Database, node: str, user_id: int, found: StoredFile) -> None:
    """Commit a FILEDOWNLOAD compliance event (before the bytes are sent)."""
    async with db.write() as conn:
        await record(
            conn,
            node,
            [Event("FILEDOWNLOAD", found.room, user_id, _file_payload(found.ref(), found.seq, ""))],
        )


async def remove(
    db: Database, file_id: int, *, by: str, capture: str | None
) -> tuple[int, list[int]] | None:
    """Remove a ready file: its message becomes a tombstone, its blob is released (deleted
    unless another file shares it), its row stays as "removed". Returns the message's seq and
    the blob to delete outside this store (if any), or None if there was no such ready file."""
    async with db.write() as conn:
        row = (
            await conn.execute(
                select(
                    files.c.room_id,
                    files.c.seq,
                    files.c.uploader_id,
                    files.c.name,
                    blob_of().label("blob"),
                ).where(files.c.id == file_id, files.c.state == READY)
            )
        ).first()
        if row is None:
            return None
        await conn.execute(update(files).where(files.c.id == file_id).values(state=REMOVED))
        gone = await _release(conn, [int(row.blob)])  # kept while a legal hold covers it
        await holds.keep_held(conn, int(row.room_id), messages.c.seq == row.seq, "remove")
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
    return int(row.seq), gone


async def remove_covered(conn: AsyncConnection, room: int, seqs: list[int] | None) -> int:
    """Inside the caller's transaction (a message removal, a room clear): the room's ready files
    whose messages are now removed (those of ``seqs``, or all of them when None) become
    "removed" and release their blobs (deleted here when in this store; another backend's are
    left to the sweep of orphans). Returns how many files."""
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
    found = (await conn.execute(select(files.c.id, blob_of().label("blob")).where(cond))).all()
    if found:
        ids = [int(r.id) for r in found]
        await conn.execute(update(files).where(files.c.id.in_(ids)).values(state=REMOVED))
        await _release(conn, [int(r.blob) for r in found])
    return len(found)


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
