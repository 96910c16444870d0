"""Deduplication of files' bytes (issue 16), as an attacker: mallory cannot learn whether
someone else uploaded a file (alice's, in a secret room mallory may not read) by uploading the
same bytes. Her upload is read and stored whole all the same, answered with the same fields and
headers as any upload, with an id of its own (never alice's) and an ETag she knew anyway (the
SHA-256 of her own bytes), in the same time (medians of interleaved uploads, a generous margin);
the stored bytes are shared all the same, and each file lives and goes on its own. On both
dialects, with the bytes in the content store and in a directory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatserver.store.rooms import create_room
from tests.conftest import Harness, node_config, start_node
from tests.test_files import base, http, signed_in
from tests.test_files_storage import stored, stored_until


@pytest.fixture(params=["store", "directory"])
async def h(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    section: dict[str, object] = {"chunk_kb": 4, "uploads_per_user_per_min": 100_000}
    if request.param == "directory":
        section.update(storage="directory", directory=str(tmp_path / "files"))
    node = await start_node(node_config(db_url, files=section))
    harness = Harness(node)
    try:
        yield harness
    finally:
        await harness.close()


def shape(reply: dict[str, Any]) -> dict[str, Any]:
    """An upload's answer without what differs between any two uploads (ids, times, seqs)."""
    file = {k: v for k, v in reply["file"].items() if k != "id"}
    message = {k: v for k, v in reply["message"].items() if k not in ("seq", "ts", "cid", "file")}
    return {"file": file, "message": message}


async def test_a_duplicate_upload_tells_nothing(h: Harness) -> None:
    db = h.node.db
    secret_room = (await create_room(db, "Vault", privacy="secret")).id
    alice = await signed_in(h, "alice", admin=True)
    mallory = await signed_in(h, "mallory")
    mine = await h.room("mallory's")
    secret = os.urandom(50_000)
    alices = (await alice.upload(base(h), secret_room, secret, name="plans.bin"))["file"]

    fresh = os.urandom(len(secret))  # bytes nobody stored: the answer to compare with
    reply_fresh = await mallory.upload(base(h), mine, fresh, name="plans.bin")
    reply_dup = await mallory.upload(base(h), mine, secret, name="plans.bin")
    # the same answer as for bytes nobody has (but the checksum, which is of her own bytes)
    expected = shape(reply_fresh)
    expected["file"]["sha256"] = hashlib.sha256(secret).hexdigest()
    assert shape(reply_dup) == expected
    dup = reply_dup["file"]
    assert dup["id"] == reply_fresh["file"]["id"] + 1 != alices["id"]  # an id of its own
    # a download: the same headers but its own ETag / length; the bytes are hers
    responses = {}
    for label, file in (("fresh", reply_fresh["file"]), ("dup", dup)):
        status, headers, body = await http(h, "GET", f"/api/v1/files/{file['id']}", mallory.token)
        assert status == 200
        assert headers["ETag"] == f'"{file["sha256"]}"'
        responses[label] = sorted(k.lower() for k in headers if k.lower() != "date")
        assert body == (fresh if label == "fresh" else secret)
    assert responses["fresh"] == responses["dup"]
    # alice's secret file is still not mallory's to read, whatever she uploaded
    status, _, _ = await http(h, "GET", f"/api/v1/files/{alices['id']}", mallory.token)
    assert status == 404

    # the bytes are stored once: alice's and the fresh ones (mallory's copy went, afterwards)
    await stored_until(h.node.files, lambda blobs: len(blobs) == 2)
    assert sorted(await stored(h.node.files)) == sorted([alices["id"], reply_fresh["file"]["id"]])
    # each file lives and goes on its own: alice removes hers, mallory's still downloads ...
    status, _, _ = await http(h, "DELETE", f"/api/v1/files/{alices['id']}", alice.token)
    assert status == 204
    assert await mallory.download(base(h), dup["id"]) == secret
    # ... and the shared bytes go with the last file that uses them
    status, _, _ = await http(h, "DELETE", f"/api/v1/files/{dup['id']}", mallory.token)
    assert status == 204
    assert await stored(h.node.files) == [reply_fresh["file"]["id"]]
    assert await h.node.files.sweep_orphans() == 0  # nothing left behind either


async def test_a_duplicate_upload_takes_as_long(h: Harness) -> None:
    """Interleaved uploads of bytes alice has stored and of bytes nobody has: the medians agree
    (dedup is decided by one query that runs either way, and the copy is deleted seconds after
    the answer, at a random moment)."""
    secret_room = (await create_room(h.node.db, "Vault", privacy="secret")).id
    alice = await signed_in(h, "alice", admin=True)
    mallory = await signed_in(h, "mallory")
    assert mallory.token is not None
    mine = await h.room("mallory's")
    secret = os.urandom(64 * 1024)
    await alice.upload(base(h), secret_room, secret, name="s")
    times: dict[str, list[float]] = {"dup": [], "fresh": []}
    for _ in range(30):
        for label in ("dup", "fresh"):
            data = secret if label == "dup" else os.urandom(len(secret))
            started = time.perf_counter()
            await mallory.upload(base(h), mine, data, name="s")
            times[label].append(time.perf_counter() - started)
    medians = {label: statistics.median(t) for label, t in times.items()}
    assert 0.7 < medians["dup"] / medians["fresh"] < 1.4, medians


async def test_without_dedup_every_file_keeps_its_bytes(db_url: str) -> None:
    node = await start_node(node_config(db_url, files={"chunk_kb": 4, "dedup": False}))
    h = Harness(node)
    try:
        room = await h.room()
        alice = await signed_in(h, "alice")
        data = os.urandom(10_000)
        ids = [(await alice.upload(base(h), room, data, name="a"))["file"]["id"] for _ in range(2)]
        await asyncio.sleep(0.1)
        assert sorted(await stored(node.files)) == sorted(ids)
    finally:
        await h.close()
