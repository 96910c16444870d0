"""A client trickling an upload's bytes (issue 16): it would hold an upload slot (and a
connection) for as long as it likes while never stalling long enough for ``idle_timeout_s``.
``files.min_upload_kb_per_s`` cuts it off once ``min_upload_grace_s`` passed and its average
fell under the bound; an upload at a decent pace is not cut."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.conftest import Harness, node_config, scaled, start_node
from tests.test_files import base, nothing_left, raw_upload, signed_in

RATE_KB, GRACE_S = 64, 0.5


@pytest.fixture
async def h(db_url: str) -> Harness:
    files = {"min_upload_kb_per_s": RATE_KB, "min_upload_grace_s": GRACE_S, "chunk_kb": 4}
    return Harness(await start_node(node_config(db_url, files=files)))


async def test_a_trickling_upload_is_cut_off(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    try:
        room = await h.room()
        alice = await signed_in(h, "alice")
        assert alice.token is not None
        reader, writer = await raw_upload(h, alice.token, room, "Content-Length: 1000000\r\n")
        started = time.monotonic()
        answer = b""
        try:
            async with asyncio.timeout(scaled(10)):
                while not answer:  # 1 KiB every 50 ms: 20 KiB/s, and never idle
                    writer.write(b"t" * 1024)
                    await writer.drain()
                    try:
                        answer = await asyncio.wait_for(reader.read(4096), 0.05)
                    except TimeoutError:
                        pass
        finally:
            writer.transport.abort()
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"too slowly" in answer and b"min_upload_kb_per_s" in answer
        # cut once the average fell under the bound: 0.5 + 20 t / 64 < t, t > 0.73 s
        assert took > GRACE_S, took
        assert h.node.files.uploading == 0
        await nothing_left(h)
        refused = [r for r in caplog.records if "too slowly" in r.getMessage()]
        assert len(refused) == 1 and refused[0].levelname == "WARNING", caplog.text
        # a file at a decent pace goes through under the same bound
        data = os.urandom(500_000)
        reply = await alice.upload(base(h), room, data, name="fast")
        assert await alice.download(base(h), reply["file"]["id"]) == data
    finally:
        await h.close()
