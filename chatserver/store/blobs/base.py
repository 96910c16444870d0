"""Where a file's bytes live: the one interface every storage backend implements.

A *blob* is the stored bytes of one upload, named by an integer: the id of the file row that
first stored them (``files.id``; a file deduplicated onto another's bytes names that blob in
``files.blob_id``). :mod:`chatserver.rooms.files` streams an upload into a :class:`BlobWriter`,
reads ranges back with :meth:`BlobStore.read` and deletes blobs nobody refers to any more;
which rows refer to which blob is the content store's business (:mod:`chatserver.store.files`),
so every backend is only bytes under a key:

- :mod:`.table` — chunks in the ``file_chunks`` table of the content store (the default);
- :mod:`.directory` — one file per blob under a directory (a single node);
- :mod:`.s3` — one object per blob in an S3-compatible bucket (multipart for large files).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class BlobWriter(Protocol):
    """One upload's bytes on their way in. ``write`` is called with the chunks in order
    (``index`` 0, 1, …, each ``chunk_size`` bytes but the last); a few may be in flight at once.
    Then exactly one of ``finish`` (every chunk was written: make the blob whole) or ``abort``
    (nothing of it may stay)."""

    async def write(self, index: int, data: bytes) -> None: ...

    async def finish(self) -> None: ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    #: the backend's name in ``[files] storage``
    kind: str
    #: the bytes are rows of the content store, deleted in the same transaction as the rows
    #: that stop referring to them (the other backends delete after the commit)
    in_database: bool
    #: chunk writes one upload may have in flight at once (while few uploads run)
    writes_ahead: int

    def writer(self, blob: int, chunk_size: int) -> BlobWriter: ...

    def read(self, blob: int, chunk_size: int, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes ``start`` … ``end`` (inclusive) of the blob, in pieces of at most
        ``chunk_size``; it ends early if the blob is gone meanwhile."""
        ...

    async def delete(self, blobs: list[int], *, unfinished: bool = False) -> None:
        """Delete the blobs (those missing already are no error); ``unfinished``: also what
        an upload cut off on its way may have left of them (an S3 multipart upload)."""
        ...

    def stored(self) -> AsyncIterator[list[int]]:
        """Every blob stored, a page at a time (the sweep of orphans)."""
        ...

    async def close(self) -> None: ...
