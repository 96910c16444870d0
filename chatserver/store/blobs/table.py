"""Blobs as chunks in the content store's ``file_chunks`` table (``[files] storage = "store"``,
the default): every node of a pool serves every file with nothing else to run, and a backup of
the database holds the files. A chunk is one row, written in a short transaction of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sqlalchemy import delete, insert, select, text

from ..db import Database
from ..schema import file_chunks

PAGE = 1000  # blob ids a page of stored() lists
# The next PAGE distinct blob ids after :after, one probe of the primary key's index each (a
# loose index scan: DISTINCT would read every chunk row of those blobs), on both dialects.
_DISTINCT_BLOBS = text(
    "WITH RECURSIVE b(id) AS ("
    " SELECT (SELECT min(file_id) FROM file_chunks WHERE file_id > :after)"
    " UNION ALL"
    " SELECT (SELECT min(file_id) FROM file_chunks WHERE file_id > b.id)"
    " FROM b WHERE b.id IS NOT NULL"
    ") SELECT id FROM b WHERE id IS NOT NULL LIMIT :n"
)

# One statement, its own transaction, in one round trip: set_config(..., true) is SET LOCAL, and
# synchronous_commit is read when that transaction commits.
_PUT_CHUNK_PG = (
    "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))"
    " INSERT INTO file_chunks (file_id, idx, data) SELECT $1, $2, $3 FROM async"
)


async def put_chunk(db: Database, blob: int, index: int, data: bytes) -> None:
    if db.is_postgres:
        # On the asyncpg pool, committed without waiting for the WAL to reach the disk: a chunk
        # matters only once the file's finish() commits, and that commit (synchronous) flushes
        # the WAL up to its own record, every chunk's included. A crash before it loses chunks
        # of an upload that was never acknowledged (and is swept at restart).
        pool = await db.pg_pool()
        await pool.execute(_PUT_CHUNK_PG, blob, index, data)
        return
    async with db.write() as conn:
        await conn.execute(insert(file_chunks).values(file_id=blob, idx=index, data=data))


async def get_chunk(db: Database, blob: int, index: int) -> bytes | None:
    if db.is_postgres:
        pool = await db.pg_pool()
        data = await pool.fetchval(
            "SELECT data FROM file_chunks WHERE file_id = $1 AND idx = $2", blob, index
        )
    else:
        async with db.read() as conn:
            data = await conn.scalar(
                select(file_chunks.c.data).where(
                    file_chunks.c.file_id == blob, file_chunks.c.idx == index
                )
            )
    return None if data is None else bytes(data)


class _TableWriter:
    def __init__(self, db: Database, blob: int) -> None:
        self._db, self._blob = db, blob

    async def write(self, index: int, data: bytes) -> None:
        await put_chunk(self._db, self._blob, index, data)

    async def finish(self) -> None:
        pass  # every chunk is a committed row already

    async def abort(self) -> None:
        await TableBlobs(self._db).delete([self._blob])


class TableBlobs:
    kind = "store"
    in_database = True
    writes_ahead = 3  # chunk writes of one upload in flight (while few uploads run)

    def __init__(self, db: Database, read_slots: asyncio.Semaphore | None = None) -> None:
        self._db = db
        self._slots = read_slots

    def writer(self, blob: int, chunk_size: int) -> _TableWriter:
        return _TableWriter(self._db, blob)

    async def read(self, blob: int, chunk_size: int, start: int, end: int) -> AsyncIterator[bytes]:
        """Each chunk read in a query of its own, the next one while the caller sends this one
        (at most two chunks in memory, and no store connection held between chunks)."""
        first, last = start // chunk_size, end // chunk_size
        if first > last:
            return
        db, slots = self._db, self._slots

        async def read(index: int) -> bytes | None:
            if slots is None:
                return await get_chunk(db, blob, index)
            async with slots:
                return await get_chunk(db, blob, index)

        loop = asyncio.get_running_loop()
        ahead = loop.create_task(read(first))
        try:
            for index in range(first, last + 1):
                data = await ahead
                if index < last:
                    ahead = loop.create_task(read(index + 1))
                if data is None:  # removed meanwhile
                    return
                lo = start - index * chunk_size if index == first else 0
                hi = end - index * chunk_size + 1 if index == last else len(data)
                yield data[lo:hi]
        finally:
            if not ahead.done():
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)

    async def delete(self, blobs: list[int], *, unfinished: bool = False) -> None:
        if blobs:
            async with self._db.write() as conn:
                await conn.execute(delete(file_chunks).where(file_chunks.c.file_id.in_(blobs)))

    async def stored(self) -> AsyncIterator[list[int]]:
        after = -1
        while True:
            async with self._db.read() as conn:
                page = [
                    int(blob)
                    for blob in await conn.scalars(_DISTINCT_BLOBS, {"after": after, "n": PAGE})
                ]
            if not page:
                return
            yield page
            after = page[-1]

    async def close(self) -> None:
        pass
