"""Storage backends for files' bytes (:mod:`.base` is the interface); :func:`open_blobs` makes
the one ``[files] storage`` names."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ...config import FilesConfig
from ..db import Database
from .base import BlobStore, BlobWriter
from .directory import DirectoryBlobs
from .table import TableBlobs

__all__ = ["BlobStore", "BlobWriter", "DirectoryBlobs", "TableBlobs", "open_blobs"]


async def open_blobs(
    config: FilesConfig, db: Database, read_slots: asyncio.Semaphore | None = None
) -> BlobStore:
    if config.storage == "directory":
        return DirectoryBlobs(Path(config.directory))
    if config.storage == "s3":
        from .s3 import S3Blobs

        return await S3Blobs.open(config)
    return TableBlobs(db, read_slots)
