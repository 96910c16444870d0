"""Files in a pool (issue 16): every node serves every file (the chunks are in the shared
store), the file's message reaches subscribers on other nodes, a removal made on one node is
seen on the others; and a node killed with ``kill -9`` mid-upload leaves nothing visible, and
its restart sweeps the chunks it left."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from chatserver.client import Client
from chatserver.client_files import FileRequestFailed
from chatserver.store import files as file_store
from chatserver.store.db import Database
from chatserver.testing import PostgresCluster
from tests.conftest import scaled
from tests.pool.test_pool import login, new_database, running_pool, seed


def http_of(node: object) -> str:
    return "http://" + node.env["CHATSERVER_LISTEN_HTTP"]  # type: ignore[attr-defined]


async def test_a_file_uploaded_on_one_node_downloads_from_another(
    pg_cluster: PostgresCluster,
) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob"], ["lobby"])
    room = ids["lobby"]
    async with running_pool(url, 2, CHATSERVER_FILES_CHUNK_KB="64") as pool:
        n1, n2 = pool.nodes
        alice = await login(n1, "alice")
        bob = await login(n2, "bob")
        try:
            await alice.call("join", room=room)
            await bob.call("join", room=room)
            data = os.urandom(300_000)  # five 64 KiB chunks
            reply = await alice.upload(http_of(n1), room, data, name="shared.bin")
            file = reply["file"]
            event = await bob.next_event("message", timeout=scaled(10))
            assert event["file"] == file and event["seq"] == reply["message"]["seq"]
            assert await bob.download(http_of(n2), file["id"]) == data
            part = await bob.download(http_of(n2), file["id"], start=70_000, end=200_000)
            assert part == data[70_000:200_001]
            # removed on node 2: gone on node 1, and alice hears of it
            await _delete(http_of(n2), alice, file["id"])
            changed = await alice.next_event("message.changed", timeout=scaled(10))
            assert (changed["seq"], changed["state"]) == (file_seq(reply), "removed")
            with pytest.raises(FileRequestFailed) as gone:
                await bob.download(http_of(n1), file["id"])
            assert gone.value.status == 404
        finally:
            await alice.close()
            await bob.close()


def file_seq(reply: dict[str, object]) -> int:
    return int(reply["message"]["seq"])  # type: ignore[index]


async def _delete(base: str, client: Client, file_id: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.delete(
            f"{base}/api/v1/files/{file_id}", headers={"Authorization": f"Bearer {client.token}"}
        ) as r:
            assert r.status == 204, await r.text()


async def test_kill_9_mid_upload_leaves_nothing_after_restart(pg_cluster: PostgresCluster) -> None:
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    room = ids["lobby"]
    db = Database(url)
    try:
        async with running_pool(url, 1, CHATSERVER_FILES_CHUNK_KB="16") as pool:
            (node,) = pool.nodes
            alice = await login(node, "alice")
            assert alice.token is not None
            host, port = node.env["CHATSERVER_LISTEN_HTTP"].rsplit(":", 1)
            _reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                (
                    f"POST /api/v1/rooms/{room}/files?name=big HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {alice.token}\r\nContent-Length: 4000000\r\n\r\n"
                ).encode()
            )
            writer.write(b"k" * 1_000_000)
            await writer.drain()
            deadline = time.monotonic() + scaled(15)
            while (await file_store.counts(db)).get("chunks", 0) < 20:
                assert time.monotonic() < deadline, await file_store.counts(db)
                await asyncio.sleep(0.05)
            await node.kill()
            writer.close()
            await alice.close()
            left = await file_store.counts(db)
            assert left.get("pending") == 1 and left["chunks"] >= 20, left
            assert "ready" not in left
            # nothing of it is visible meanwhile: no message, no file
            async with db.read() as conn:
                from sqlalchemy import func, select

                from chatserver.store.schema import messages

                stored = await conn.scalar(select(func.count()).select_from(messages))
            assert stored == 0
            # the restarted node sweeps what it left
            await node.start()
            await node.started()
            assert await file_store.counts(db) == {"chunks": 0}
            assert any("swept 1 unfinished upload" in line for line in node.lines), node.lines
            # and uploads work again
            alice = await login(node, "alice")
            data = b"after the crash"
            reply = await alice.upload(http_of(node), room, data)
            assert reply["file"]["sha256"] == hashlib.sha256(data).hexdigest()
            await alice.close()
    finally:
        await db.close()


async def test_s3_files_are_served_by_every_node(
    pg_cluster: PostgresCluster, moto_url: str
) -> None:
    """With the bytes in an S3-compatible bucket (moto's server), a file uploaded on one node
    (a multipart upload: past one 5 MiB part) downloads whole and in ranges from the other, and
    its removal there deletes the object."""
    from tests.test_files_storage import ACCESS, make_bucket

    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob"], ["lobby"])
    room = ids["lobby"]
    bucket = await make_bucket(moto_url)
    s3 = {f"CHATSERVER_FILES_{k.upper()}": v for k, v in ACCESS.items()}
    async with running_pool(
        url,
        2,
        CHATSERVER_FILES_STORAGE="s3",
        CHATSERVER_FILES_S3_ENDPOINT=moto_url,
        CHATSERVER_FILES_S3_BUCKET=bucket,
        CHATSERVER_FILES_S3_PART_MB="5",
        **s3,
    ) as pool:
        n1, n2 = pool.nodes
        alice = await login(n1, "alice")
        bob = await login(n2, "bob")
        try:
            data = os.urandom(6 * 1024 * 1024 + 100)
            file = (await alice.upload(http_of(n1), room, data, name="big.bin"))["file"]
            assert await objects(moto_url, bucket) == [f"files/{file['id']}"]
            assert await bob.download(http_of(n2), file["id"]) == data
            lo, hi = 5 * 1024 * 1024 - 10, 5 * 1024 * 1024 + 10
            part = await bob.download(http_of(n2), file["id"], start=lo, end=hi)
            assert part == data[lo : hi + 1]
            await _delete(http_of(n2), alice, file["id"])
            assert await objects(moto_url, bucket) == []
        finally:
            await alice.close()
            await bob.close()


async def objects(endpoint: str, bucket: str) -> list[str]:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as client:
        listed = await client.list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listed.get("Contents", ())]
