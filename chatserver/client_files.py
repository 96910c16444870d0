"""Files over the client HTTP listener (docs/protocol.md, "Files"), for :class:`~chatserver.
client.Client`: upload a file (streamed from disk or bytes, with its SHA-256 for the server to
check) and download one (streamed to disk or returned, resumable with ``Range``).

The session token goes in ``Authorization: Bearer``; ``base`` is the node's HTTP address, e.g.
``http://127.0.0.1:5081``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

CHUNK = 256 * 1024


class FileRequestFailed(Exception):
    """The listener refused the request: ``status`` and the error's ``code`` and ``message``."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status = status
        self.code = error.get("code")
        self.message = error.get("message")


async def _failed(response: aiohttp.ClientResponse) -> FileRequestFailed:
    try:
        body = await response.json(content_type=None)
        error = body.get("error", {}) if isinstance(body, dict) else {}
    except (ValueError, aiohttp.ContentTypeError):
        error = {"code": "http", "message": response.reason}
    return FileRequestFailed(response.status, error)


def _sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            yield block


async def upload(
    base: str,
    token: str,
    room: int,
    source: bytes | str | os.PathLike[str],
    *,
    name: str | None = None,
    text: str = "",
    check: bool = True,
) -> dict[str, Any]:
    """Upload ``source`` (bytes, or a path streamed from disk) into ``room``; the reply:
    ``{"file": {...}, "message": {...}}``. With ``check`` the SHA-256 is sent for the server
    to compare."""
    headers = {"Authorization": f"Bearer {token}"}
    body: Any
    if isinstance(source, bytes):
        body = io.BytesIO(source)  # (sent in pieces: a large bytes body would block the loop)
        name = name or "file"
        digest = hashlib.sha256(source).hexdigest() if check else None
        headers["Content-Length"] = str(len(source))
    else:
        path = Path(source)
        name = name or path.name
        checksum, size = await asyncio.to_thread(_sha256_of, path)
        digest = checksum if check else None
        body = _read_file(path)
        headers["Content-Length"] = str(size)
    if digest is not None:
        headers["X-Content-SHA256"] = digest
    headers["X-File-Name"] = quote(name, safe="")
    params = {"text": text} if text else None
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/api/v1/rooms/{room}/files", data=body, headers=headers, params=params
        ) as response:
            if response.status != 201:
                raise await _failed(response)
            reply: dict[str, Any] = await response.json()
            return reply


async def download(
    base: str,
    token: str,
    file_id: int,
    dest: str | os.PathLike[str] | None = None,
    *,
    start: int | None = None,
    end: int | None = None,
) -> bytes | Path:
    """The file's bytes (``start`` … ``end`` inclusive, if given), or, with ``dest``, written
    there a chunk at a time (appended when ``start`` is given: resuming). A whole file is
    checked against its ETag (the SHA-256)."""
    headers = {"Authorization": f"Bearer {token}"}
    if start is not None or end is not None:
        headers["Range"] = f"bytes={start or 0}-{'' if end is None else end}"
    digest = hashlib.sha256()
    parts: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/v1/files/{file_id}", headers=headers) as response:
            if response.status not in (200, 206):
                raise await _failed(response)
            out = None
            if dest is not None:
                out = await asyncio.to_thread(Path(dest).open, "ab" if start else "wb")
            try:
                async for block in response.content.iter_chunked(CHUNK):
                    digest.update(block)
                    if out is not None:
                        out.write(block)
                    else:
                        parts.append(block)
            finally:
                if out is not None:
                    out.close()
            etag = response.headers.get("ETag", "").strip('"')
            if response.status == 200 and etag and etag != digest.hexdigest():
                raise FileRequestFailed(
                    response.status, {"code": "checksum", "message": "the download is corrupt"}
                )
    return Path(dest) if dest is not None else b"".join(parts)
