"""Blobs as files under a directory (``[files] storage = "directory"``): for a single node (or
nodes sharing one POSIX file system). A blob is ``DIR/xx/ID`` (``xx``: the id's last byte in
hex, so no directory grows past a few thousand entries); chunks are written in place at their
offsets (``pwrite``), in a worker thread, so the event loop never waits for the disk."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

PAGE = 1000


class _FileWriter:
    def __init__(self, path: Path, chunk_size: int) -> None:
        self._path, self._chunk_size = path, chunk_size
        self._fd: int | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> int:
        async with self._opening:
            if self._fd is None:
                self._fd = await asyncio.to_thread(_create, self._path)
            return self._fd

    async def write(self, index: int, data: bytes) -> None:
        fd = await self._open()
        await asyncio.to_thread(_pwrite_all, fd, data, index * self._chunk_size)

    async def finish(self) -> None:
        fd = await self._open()  # (an empty file has had no write)
        self._fd = None
        await asyncio.to_thread(_sync_close, fd)

    async def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        await asyncio.to_thread(_unlink, self._path)


def _create(path: Path) -> int:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _sync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


class DirectoryBlobs:
    kind = "directory"
    in_database = False
    writes_ahead = 3

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, blob: int) -> Path:
        return self.root / f"{blob & 0xFF:02x}" / str(blob)

    def writer(self, blob: int, chunk_size: int) -> _FileWriter:
        return _FileWriter(self.path(blob), chunk_size)

    async def read(self, blob: int, chunk_size: int, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            f = await asyncio.to_thread(open, self.path(blob), "rb", buffering=0)
        except FileNotFoundError:
            return
        try:
            at = start
            while at <= end:
                data = await asyncio.to_thread(
                    os.pread, f.fileno(), min(chunk_size, end + 1 - at), at
                )
                if not data:
                    return
                at += len(data)
                yield data
        finally:
            f.close()

    async def delete(self, blobs: list[int], *, unfinished: bool = False) -> None:
        if blobs:
            await asyncio.to_thread(self._unlink_all, blobs)

    def _unlink_all(self, blobs: list[int]) -> None:
        for blob in blobs:
            _unlink(self.path(blob))

    async def stored(self) -> AsyncIterator[list[int]]:
        found = await asyncio.to_thread(self._scan)
        for at in range(0, len(found), PAGE):
            yield found[at : at + PAGE]

    def _scan(self) -> list[int]:
        found: list[int] = []
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                found.extend(int(p.name) for p in sub.iterdir() if p.name.isdigit())
        return sorted(found)

    async def close(self) -> None:
        pass
