"""Files in rooms (issue 16) over the client HTTP listener, on both store dialects.

Upload, live delivery of the file's message, history, download (whole, ranges, conditional),
removal; the limits (size cut off while reading, checksum, category switch, rate, quota); and
what an interrupted upload leaves (nothing).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from chatserver.client import Client
from chatserver.client_files import FileRequestFailed
from chatserver.rooms.changes import CategoriesChanged
from chatserver.store import files as file_store
from chatserver.store.blobs.table import put_chunk
from chatserver.store.categories import update_category
from chatserver.store.users import credentials
from tests.conftest import Harness, node_config, scaled, start_node


async def files_harness(db_url: str, **sections: dict[str, object]) -> Harness:
    sections.setdefault("files", {}).setdefault("chunk_kb", 4)  # files of a few chunks
    node = await start_node(node_config(db_url, **sections))
    return Harness(node)


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    harness = await files_harness(db_url)
    try:
        yield harness
    finally:
        await harness.close()


def base(h: Harness) -> str:
    return h.http


async def signed_in(h: Harness, name: str, *, admin: bool = False) -> Client:
    await h.user(name, admin=admin)
    return await h.login(name)


async def http(
    h: Harness, method: str, path: str, token: str | None, **kwargs: Any
) -> tuple[int, CIMultiDict[str], bytes]:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session:
        async with session.request(method, base(h) + path, headers=headers, **kwargs) as r:
            return r.status, CIMultiDict(r.headers), await r.read()


async def until(h: Harness, done: Any, timeout: float = 10) -> dict[str, int]:
    """The store's file counts, once ``done(counts)`` holds."""
    async with asyncio.timeout(scaled(timeout)):
        for _ in iter(int, 1):
            counts = await file_store.counts(h.node.db)
            if done(counts):
                return counts
            await asyncio.sleep(0.02)
    raise AssertionError("unreachable")


async def nothing_left(h: Harness) -> dict[str, int]:
    """The file rows and chunks once no upload is in progress: none pending, no orphan chunk."""
    counts = await file_store.counts(h.node.db)
    assert counts.get("pending", 0) == 0, counts
    return counts


async def test_upload_is_a_message_and_downloads_back(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    bob = await signed_in(h, "bob")
    await bob.call("join", room=room)
    data = os.urandom(10_000)  # three 4 KiB chunks
    reply = await alice.upload(base(h), room, data, name="report.bin", text="the numbers")
    file = reply["file"]
    assert file["size"] == len(data)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert file["name"] == "report.bin"
    assert file["media_type"] == "application/octet-stream"
    event = await bob.next_event("message", timeout=scaled(5))
    assert event["file"] == file and event["text"] == "the numbers"
    assert event["seq"] == reply["message"]["seq"]
    # history and the join backchat carry it too
    page = await bob.call("history", room=room)
    assert page["messages"][-1]["file"] == file
    carol = await signed_in(h, "carol")
    joined = await carol.call("join", room=room)
    assert joined["messages"][-1]["file"] == file
    assert await bob.download(base(h), file["id"]) == data
    # an ordinary post after it takes the next seq
    posted = await alice.call("post", room=room, text="after", cid="a1")
    assert posted["seq"] == file_seq(reply) + 1
    # and the node's metrics count it
    from prometheus_client import generate_latest

    text = generate_latest(h.node.metrics.registry).decode()
    assert "chatserver_files_uploaded_total 1.0" in text
    assert f"chatserver_files_uploaded_bytes_total {float(len(data))}" in text
    assert "chatserver_files_downloads_total 1.0" in text
    assert "chatserver_http_connections " in text


def file_seq(reply: dict[str, Any]) -> int:
    return int(reply["message"]["seq"])


async def test_download_headers_ranges_and_conditions(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    data = bytes(range(256)) * 40  # 10,240 bytes: chunks of 4096, 4096, 2048
    file = (await alice.upload(base(h), room, data, name="bytes.dat"))["file"]
    path = f"/api/v1/files/{file['id']}"
    status, headers, body = await http(h, "GET", path, alice.token)
    assert status == 200 and body == data
    assert headers["ETag"] == f'"{file["sha256"]}"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["Content-Disposition"].startswith("attachment;")
    assert headers["Accept-Ranges"] == "bytes"
    for spec, lo, hi in [
        ("bytes=0-9", 0, 9),
        ("bytes=4090-4100", 4090, 4100),  # across a chunk boundary
        ("bytes=8000-", 8000, len(data) - 1),
        ("bytes=-100", len(data) - 100, len(data) - 1),
        ("bytes=10000-99999", 10000, len(data) - 1),
    ]:
        status, headers, body = await http(h, "GET", path, alice.token, headers={"Range": spec})
        assert status == 206, spec
        assert body == data[lo : hi + 1], spec
        assert headers["Content-Range"] == f"bytes {lo}-{hi}/{len(data)}", spec
    status, headers, _ = await http(
        h, "GET", path, alice.token, headers={"Range": f"bytes={len(data)}-"}
    )
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    # an If-Range that no longer matches gets the whole file
    status, _, body = await http(
        h, "GET", path, alice.token, headers={"Range": "bytes=0-9", "If-Range": '"other"'}
    )
    assert status == 200 and body == data
    status, _, body = await http(
        h, "GET", path, alice.token, headers={"If-None-Match": f'"{file["sha256"]}"'}
    )
    assert status == 304 and body == b""


async def test_html_is_sent_as_an_opaque_attachment(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    page = b"<!DOCTYPE html><script>alert(document.cookie)</script>"
    file = (await alice.upload(base(h), room, page, name="x.html"))["file"]
    assert file["media_type"] == "text/html"  # sniffed, not taken from the client
    status, headers, body = await http(h, "GET", f"/api/v1/files/{file['id']}", alice.token)
    assert status == 200 and body == page
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Security-Policy"] == "sandbox"
    png = await alice.upload(base(h), room, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, name="a.txt")
    assert png["file"]["media_type"] == "image/png"


async def test_delete_by_uploader_manager_admin_only(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    bob = await signed_in(h, "bob")
    root = await signed_in(h, "root", admin=True)
    await bob.call("join", room=room)
    first = (await alice.upload(base(h), room, b"a" * 9000, name="a"))["file"]
    second = (await alice.upload(base(h), room, b"b" * 100, name="b"))["file"]
    await bob.next_event("message", timeout=scaled(5))
    await bob.next_event("message", timeout=scaled(5))
    status, _, body = await http(h, "DELETE", f"/api/v1/files/{first['id']}", bob.token)
    assert status == 403, body
    status, _, _ = await http(h, "DELETE", f"/api/v1/files/{first['id']}", alice.token)
    assert status == 204
    changed = await bob.next_event("message.changed", timeout=scaled(5))
    assert changed["state"] == "removed"
    status, _, _ = await http(h, "GET", f"/api/v1/files/{first['id']}", bob.token)
    assert status == 404
    status, _, _ = await http(h, "DELETE", f"/api/v1/files/{second['id']}", root.token)
    assert status == 204
    page = await bob.call("history", room=room)
    assert not [m for m in page["messages"] if "file" in m]
    counts = await nothing_left(h)
    assert counts == {"removed": 2, "chunks": 0}


async def test_checksum_mismatch_stores_nothing(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    status, _, body = await http(
        h,
        "POST",
        f"/api/v1/rooms/{room}/files?name=x",
        alice.token,
        data=b"x" * 10_000,
        headers={"X-Content-SHA256": hashlib.sha256(b"y").hexdigest()},
    )
    assert status == 400 and b"SHA-256" in body
    assert await nothing_left(h) == {"chunks": 0}
    page = await alice.call("history", room=room)
    assert page["messages"] == []


async def test_disabled_category_refuses_uploads(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    await update_category(h.node.db, 1, file_upload=False)
    h.node.facts.forget(CategoriesChanged())
    with pytest.raises(FileRequestFailed) as refused:
        await alice.upload(base(h), room, b"data", name="a")
    assert refused.value.status == 403
    assert "switched off" in str(refused.value.message)
    assert await nothing_left(h) == {"chunks": 0}


async def raw_upload(h: Harness, token: str, room: int, head_extra: str = "") -> tuple[Any, Any]:
    host, port = h.node.addresses["http"]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"POST /api/v1/rooms/{room}/files?name=big HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n{head_extra}\r\n"
        ).encode()
    )
    return reader, writer


async def test_oversized_upload_is_cut_off_at_the_limit(db_url: str) -> None:
    h = await files_harness(db_url, chat={"max_file_size_kb": 64})
    try:
        room = await h.room()
        alice = await signed_in(h, "alice")
        # declared too large: refused before a byte of the body is read
        status, _, body = await http(
            h,
            "POST",
            f"/api/v1/rooms/{room}/files?name=a",
            alice.token,
            data=b"z" * (65 * 1024),
        )
        assert status == 413 and b"max_file_size_kb=64" in body
        # chunked, no length: the node stops at the limit and answers while we still send
        assert alice.token is not None
        reader, writer = await raw_upload(h, alice.token, room, "Transfer-Encoding: chunked\r\n")
        sent = 0
        piece = b"q" * 8192
        answer = b""
        try:
            while sent < 16 * 1_048_576:  # far more than 64 KiB
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                sent += len(piece)
                try:
                    answer = await asyncio.wait_for(reader.read(4096), 0.01)
                except TimeoutError:
                    continue
                break
        except (ConnectionError, OSError):
            pass
        if not answer:
            answer = await asyncio.wait_for(reader.read(4096), scaled(5))
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 4 * 1_048_576, f"the node read {sent} bytes before refusing"
        assert await nothing_left(h) == {"chunks": 0}
    finally:
        await h.close()


@pytest.mark.parametrize("how", ["reset", "half-close"])
async def test_client_gone_mid_upload_leaves_nothing(
    h: Harness, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    assert alice.token is not None
    _reader, writer = await raw_upload(h, alice.token, room, "Content-Length: 1000000\r\n")
    writer.write(b"p" * 300_000)
    await writer.drain()
    # the chunks land while the upload is pending (invisible)
    counts = await until(h, lambda c: c.get("chunks", 0) >= 10)
    assert counts.get("pending") == 1 and "ready" not in counts
    if how == "reset":
        writer.transport.abort()
    else:
        writer.write_eof()  # the body ends short of its Content-Length
    await until(h, lambda c: c == {"chunks": 0})
    writer.transport.abort()
    assert (await alice.call("history", room=room))["messages"] == []
    # one warning line, no traceback
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "cut off" in refused[0].getMessage(), caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_rate_and_quota(db_url: str) -> None:
    h = await files_harness(db_url, files={"uploads_per_user_per_min": 3, "room_quota_mb": 1})
    try:
        room = await h.room()
        other = await h.room("other")
        alice = await signed_in(h, "alice")
        bob = await signed_in(h, "bob")
        await alice.upload(base(h), room, b"a" * 600_000, name="a")
        with pytest.raises(FileRequestFailed) as full:
            await bob.upload(base(h), room, b"b" * 600_000, name="b")
        assert full.value.status == 507 and "quota" in str(full.value.message)
        await alice.upload(base(h), other, b"c" * 600_000, name="c")  # a room of its own
        await alice.upload(base(h), other, b"d", name="d")
        with pytest.raises(FileRequestFailed) as slow:
            await alice.upload(base(h), other, b"e", name="e")
        assert slow.value.status == 429
        await nothing_left(h)
    finally:
        await h.close()


async def test_sweep_removes_what_a_killed_node_left(h: Harness) -> None:
    """Pending rows of this node (its restart) and old ones of any node go; others stay."""
    room = await h.room()
    await h.user("alice")
    db = h.node.db
    found = await credentials(db, "alice")
    assert found is not None
    alice = found[0]
    mine = await file_store.begin(db, room, alice.id, "a", 4096, "test-node")
    theirs = await file_store.begin(db, room, alice.id, "b", 4096, "other-node")
    for fid in (mine, theirs):
        await put_chunk(db, fid, 0, b"x" * 10)
    assert await h.node.files.sweep(at_start=True) == 1
    assert await file_store.counts(db) == {"pending": 1, "chunks": 1}
    assert await file_store.sweep(db, node=None, older_than_ms=2**62) == [theirs]
    assert await file_store.counts(db) == {"chunks": 0}


async def manage(h: Harness, token: str | None, path: str, body: Any) -> Any:
    assert h.node.management is not None and h.node.management.address is not None
    host, port = h.node.management.address
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://{host}:{port}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def test_message_removal_and_room_clear_take_the_files_with_them(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    root = await signed_in(h, "root", admin=True)
    first = (await alice.upload(base(h), room, b"1" * 9000, name="one", text="first"))["file"]
    await alice.call("post", room=room, text="plain", cid="p1")
    second = (await alice.upload(base(h), room, b"2" * 9000, name="two", text="second"))["file"]
    # an administrator removes the first file's message: the file goes with it
    out = await manage(
        h, root.token, "/api/v1/messages/remove", {"room": room, "keywords": ["first"]}
    )
    assert out["changed"] == 1
    assert (await http(h, "GET", f"/api/v1/files/{first['id']}", alice.token))[0] == 404
    assert (await http(h, "GET", f"/api/v1/files/{second['id']}", alice.token))[0] == 200
    counts = await nothing_left(h)
    assert counts == {"removed": 1, "ready": 1, "chunks": 3}
    # a room clear takes the rest
    out = await manage(h, root.token, f"/api/v1/rooms/{room}/clear", {"until": 2**41})
    assert out["removed"] == 2
    assert (await http(h, "GET", f"/api/v1/files/{second['id']}", alice.token))[0] == 404
    assert await nothing_left(h) == {"removed": 2, "chunks": 0}


async def test_uploads_in_progress_per_user_and_per_node(db_url: str) -> None:
    h = await files_harness(db_url, files={"max_uploads_per_user": 2, "max_concurrent_uploads": 3})
    held: list[Any] = []
    try:
        room = await h.room()
        alice = await signed_in(h, "alice")
        bob = await signed_in(h, "bob")
        carol = await signed_in(h, "carol")
        assert alice.token and bob.token and carol.token

        async def hold(token: str) -> None:
            _reader, writer = await raw_upload(h, token, room, "Content-Length: 100000\r\n")
            writer.write(b"s" * 10)
            await writer.drain()
            held.append(writer)
            await until(h, lambda c: c.get("pending", 0) == len(held))

        await hold(alice.token)
        await hold(alice.token)
        with pytest.raises(FileRequestFailed) as mine:
            await alice.upload(base(h), room, b"x", name="x")
        assert mine.value.status == 429 and "in progress" in str(mine.value.message)
        await hold(bob.token)
        with pytest.raises(FileRequestFailed) as node:
            await carol.upload(base(h), room, b"x", name="x")
        assert node.value.status == 503
        for writer in held:
            writer.transport.abort()
        await until(h, lambda c: c == {"chunks": 0})
        await carol.upload(base(h), room, b"x", name="x")  # the slots are free again
        await alice.upload(base(h), room, b"x", name="x")
    finally:
        for writer in held:
            writer.transport.abort()
        await h.close()


async def test_stopping_the_node_ends_uploads_in_progress(db_url: str) -> None:
    h = await files_harness(db_url)
    room = await h.room()
    alice = await signed_in(h, "alice")
    assert alice.token is not None
    _reader, writer = await raw_upload(h, alice.token, room, "Content-Length: 100000\r\n")
    try:
        writer.write(b"s" * 20_000)
        await writer.drain()
        await until(h, lambda c: c.get("chunks", 0) >= 4)
        started = asyncio.get_running_loop().time()
        await h.close()
        assert asyncio.get_running_loop().time() - started < scaled(10)
    finally:
        writer.transport.abort()
    # what the stop cut off is gone (or, had the store closed first, swept at the next start)
    node = await start_node(node_config(db_url))
    try:
        assert await file_store.counts(node.db) == {"chunks": 0}
    finally:
        await node.stop()


@pytest.mark.parametrize("lost", ["swept", "room deleted"])
async def test_an_upload_whose_pending_row_went_stores_nothing(h: Harness, lost: str) -> None:
    from chatserver.store.rooms import delete_room

    room = await h.room()
    alice = await signed_in(h, "alice")
    assert alice.token is not None
    reader, writer = await raw_upload(h, alice.token, room, "Content-Length: 10000\r\n")
    try:
        writer.write(b"s" * 5000)
        await writer.drain()
        await until(h, lambda c: c.get("pending", 0) == 1 and c.get("chunks", 0) >= 1)
        if lost == "swept":
            assert len(await file_store.sweep(h.node.db, node=None, older_than_ms=2**62)) == 1
        else:
            assert await delete_room(h.node.db, room)
        writer.write(b"s" * 5000)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), scaled(10))
    finally:
        writer.transport.abort()
    expected = b"HTTP/1.1 503" if lost == "swept" else b"HTTP/1.1 404"
    assert answer.startswith(expected), answer[:300]
    if lost == "swept":
        assert b"pending_timeout_s" in answer
    assert await nothing_left(h) == {"chunks": 0}


async def test_hello_advertises_the_http_url(db_url: str) -> None:
    """hello's http_url: the listener's address, files.public_url when set, null when off."""
    for listen, files, expected in (
        ({}, {}, None),  # (the harness's own address, checked below)
        ({}, {"public_url": "https://files.example.com/chat/"}, "https://files.example.com/chat"),
        ({"http": ""}, {}, None),
    ):
        h = Harness(await start_node(node_config(db_url, listen=listen, files=files)))
        try:
            client = await h.connect()
            hello = await client.call("hello", protocol=1, client="test")
            if not listen and not files:
                expected = h.http
            assert hello["http_url"] == expected, (listen, files)
        finally:
            await h.close()


async def test_the_store_lists_its_blobs_a_page_at_a_time(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep of orphans walks the blobs in file_chunks in pages (one index probe each)."""
    from chatserver.store.blobs import table

    for blob in (3, 5, 9, 10, 11):
        for index in range(3):
            await put_chunk(h.node.db, blob, index, b"x")
    monkeypatch.setattr(table, "PAGE", 2)
    pages = [page async for page in table.TableBlobs(h.node.db).stored()]
    assert pages == [[3, 5], [9, 10], [11]]
    assert await h.node.files.sweep_orphans() == 5  # no file refers to any of them
    assert await file_store.counts(h.node.db) == {"chunks": 0}
