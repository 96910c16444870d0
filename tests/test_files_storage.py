"""The storage backends of files (issue 16): a directory, and an S3-compatible bucket on moto's
server (a real S3 HTTP endpoint on loopback, in a thread of the test process), on both store
dialects: upload (S3 multipart past a part), whole and range downloads, removal deleting the
bytes, an interrupted upload leaving nothing (no object, no unfinished multipart upload), and
the sweep of what a killed node left."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chatserver.rooms.files import Files
from chatserver.store import files as file_store
from chatserver.store.users import credentials
from tests.conftest import Harness, scaled
from tests.test_files import base, files_harness, http, raw_upload, signed_in, until

_buckets = itertools.count(1)
ACCESS = {"s3_access_key": "testing", "s3_secret_key": "testing", "s3_region": "us-east-1"}


async def make_bucket(endpoint: str) -> str:
    from aiobotocore.session import get_session

    name = f"files-{os.getpid()}-{next(_buckets)}"
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as client:
        await client.create_bucket(Bucket=name)
    return name


async def storage_section(kind: str, request: pytest.FixtureRequest, tmp: Any) -> dict[str, Any]:
    if kind == "directory":
        return {"storage": "directory", "directory": str(tmp / "files")}
    endpoint = request.getfixturevalue("moto_url")
    bucket = await make_bucket(endpoint)
    return {"storage": "s3", "s3_endpoint": endpoint, "s3_bucket": bucket, **ACCESS}


@pytest.fixture(params=["directory", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    return await storage_section(request.param, request, tmp_path)


@pytest.fixture
async def h(db_url: str, storage: dict[str, Any]) -> AsyncIterator[Harness]:
    harness = await files_harness(db_url, files={**storage, "s3_part_mb": 5, "chunk_kb": 256})
    try:
        yield harness
    finally:
        await harness.close()


async def stored(files: Files) -> list[int]:
    """Every blob the backend holds (objects and unfinished multipart uploads)."""
    return [blob async for page in files.blobs.stored() for blob in page]


async def stored_until(files: Files, done: Any, timeout: float = 10) -> list[int]:
    async with asyncio.timeout(scaled(timeout)):
        for _ in iter(int, 1):
            blobs = await stored(files)
            if done(blobs):
                return blobs
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


async def test_upload_range_and_removal(h: Harness) -> None:
    files = h.node.files
    assert files.blobs.kind == h.node.config.files.storage
    room = await h.room()
    alice = await signed_in(h, "alice")
    data = os.urandom(11 * 1024 * 1024 + 12_345)  # three S3 parts of 5 MiB (the last short)
    reply = await alice.upload(base(h), room, data, name="big.bin")
    file = reply["file"]
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert await stored(files) == [file["id"]]
    assert await file_store.counts(h.node.db) == {"ready": 1, "chunks": 0}  # not in the store
    assert await alice.download(base(h), file["id"]) == data
    ranges = [(0, 0), (5 * 1024 * 1024 - 3, 5 * 1024 * 1024 + 3), (len(data) - 10, len(data) - 1)]
    for lo, hi in ranges:
        status, headers, body = await http(
            h,
            "GET",
            f"/api/v1/files/{file['id']}",
            alice.token,
            headers={"Range": f"bytes={lo}-{hi}"},
        )
        assert status == 206 and body == data[lo : hi + 1], (lo, hi, status)
        assert headers["Content-Range"] == f"bytes {lo}-{hi}/{len(data)}"
    status, _, _ = await http(h, "DELETE", f"/api/v1/files/{file['id']}", alice.token)
    assert status == 204
    assert await stored(files) == []  # the bytes went with the removal
    status, _, _ = await http(h, "GET", f"/api/v1/files/{file['id']}", alice.token)
    assert status == 404


async def test_interrupted_upload_leaves_no_object(h: Harness) -> None:
    files = h.node.files
    room = await h.room()
    alice = await signed_in(h, "alice")
    assert alice.token is not None
    size = 12 * 1024 * 1024
    _reader, writer = await raw_upload(h, alice.token, room, f"Content-Length: {size}\r\n")
    try:
        for _ in range(7):  # past one S3 part: a multipart upload is under way
            writer.write(b"p" * 1024 * 1024)
            await writer.drain()
        await stored_until(files, bool, 20)
    finally:
        writer.transport.abort()
    await until(h, lambda c: "pending" not in c)
    await stored_until(files, lambda blobs: not blobs)
    assert (await alice.call("history", room=room))["messages"] == []


async def test_the_sweep_deletes_what_a_killed_node_left(h: Harness) -> None:
    """A pending upload of this node (killed mid-stream: bytes stored, unfinished) and bytes
    no file refers to (a crash between a removal's commit and the deletion) go at the start."""
    files, db = h.node.files, h.node.db
    room = await h.room()
    alice = await signed_in(h, "alice")
    kept = (await alice.upload(base(h), room, b"kept" * 1000, name="kept"))["file"]["id"]
    found = await credentials(db, "alice")
    assert found is not None
    pending = await file_store.begin(db, room, found[0].id, "cut", 256 * 1024, "test-node")
    writer = files.blobs.writer(pending, 256 * 1024)
    for index in range(24):  # 6 MiB: one multipart part sent, the rest buffered
        await writer.write(index, b"c" * 256 * 1024)
    orphan = files.blobs.writer(10**9, 1024)  # bytes of no file at all
    await orphan.write(0, b"orphan")
    await orphan.finish()
    assert sorted(await stored(files)) == sorted({kept, pending, 10**9})
    assert await files.sweep(at_start=True) == 1
    assert await stored(files) == [kept]
    assert await alice.download(base(h), kept) == b"kept" * 1000
