"""Attacks on the client HTTP listener's files (issue 16): reading files of rooms one may not
read, credentials in the URL, hostile file names, oversized heads, no credentials at all.

A file of a room the caller may not read (secret, closed without membership, left) must answer
exactly like a file that does not exist: the same status, the same body, and no difference in
time (the same store reads on both paths; medians compared with a generous margin).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from chatserver.rooms.changes import RoomChanged
from chatserver.store.principals import Principal
from chatserver.store.rooms import change_roles, create_room
from tests.conftest import Harness, node_config, start_node
from tests.test_files import base, http, signed_in


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    node = await start_node(node_config(db_url, files={"chunk_kb": 4}))
    harness = Harness(node)
    try:
        yield harness
    finally:
        await harness.close()


MISSING = 987_654


async def _rooms_and_files(h: Harness) -> tuple[dict[str, int], dict[str, int], str | None]:
    """Files in a secret room, a closed room bob is not in, a closed room bob left, and an open
    one: (file ids, room ids, bob's token)."""
    db = h.node.db
    root = await signed_in(h, "root", admin=True)
    bob = await signed_in(h, "bob")
    bob_id = bob.user["id"]
    rooms = {
        "secret": (await create_room(db, "Falcon", privacy="secret")).id,
        "closed": (await create_room(db, "Owl", privacy="closed")).id,
        "left": (await create_room(db, "Heron", privacy="closed")).id,
        "open": (await create_room(db, "Lobby")).id,
    }
    await change_roles(db, rooms["left"], {"member": [Principal("user", bob_id)]}, {})
    ids = {}
    for label, room in rooms.items():
        reply = await root.upload(base(h), room, b"s" * 5000, name=f"{label}.txt")
        ids[label] = reply["file"]["id"]
    assert (await http(h, "GET", f"/api/v1/files/{ids['left']}", bob.token))[0] == 200
    await change_roles(db, rooms["left"], {}, {"member": [Principal("user", bob_id)]})
    h.node.facts.forget(RoomChanged(rooms["left"]))
    return ids, rooms, bob.token


async def test_unreadable_files_answer_like_missing_ones(h: Harness) -> None:
    ids, rooms, token = await _rooms_and_files(h)
    missing = await http(h, "GET", f"/api/v1/files/{MISSING}", token)
    assert missing[0] == 404
    for label in ("secret", "closed", "left"):
        for method in ("GET", "DELETE"):
            got = await http(h, method, f"/api/v1/files/{ids[label]}", token)
            gone = await http(h, method, f"/api/v1/files/{MISSING}", token)
            assert (got[0], got[2]) == (gone[0], gone[2]) == (404, missing[2]), (label, method)
            assert got[1].get("Content-Type") == gone[1].get("Content-Type")
    # the open room's file is there for bob
    assert (await http(h, "GET", f"/api/v1/files/{ids['open']}", token))[0] == 200
    # uploading into a secret room answers like uploading into a missing one
    status, _, body = await http(
        h, "POST", f"/api/v1/rooms/{MISSING}/files?name=a", token, data=b"x"
    )
    secret = rooms["secret"]
    status_secret, _, body_secret = await http(
        h, "POST", f"/api/v1/rooms/{secret}/files?name=a", token, data=b"x"
    )
    assert status == status_secret == 404
    assert body_secret == body.replace(str(MISSING).encode(), str(secret).encode())


async def test_unreadable_files_take_as_long_as_missing_ones(h: Harness) -> None:
    ids, _rooms, token = await _rooms_and_files(h)
    headers = {"Authorization": f"Bearer {token}"}
    paths = {
        "missing": f"/api/v1/files/{MISSING}",
        "secret": f"/api/v1/files/{ids['secret']}",
        "closed": f"/api/v1/files/{ids['closed']}",
    }
    times: dict[str, list[float]] = {k: [] for k in paths}
    async with aiohttp.ClientSession(base(h), headers=headers) as session:
        for _ in range(5):  # warm every cache both paths use
            for path in paths.values():
                async with session.get(path) as r:
                    await r.read()
        for _ in range(120):
            for label, path in paths.items():
                started = time.perf_counter()
                async with session.get(path) as r:
                    await r.read()
                    assert r.status == 404
                times[label].append(time.perf_counter() - started)
            await asyncio.sleep(0)
    medians = {label: statistics.median(t) for label, t in times.items()}
    for label in ("secret", "closed"):
        ratio = medians[label] / medians["missing"]
        # Measured: within 2% of each other on both dialects; without the refused cached
        # room's extra read, "closed" came in at 0.70 (SQLite) and 0.90 (PostgreSQL).
        assert 0.85 < ratio < 1.18, medians


async def test_credentials_in_the_url_are_refused(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    file = (await alice.upload(base(h), room, b"data", name="a"))["file"]
    for query in (f"token={alice.token}", f"access_token={alice.token}", "Token=x"):
        status, _, body = await http(h, "GET", f"/api/v1/files/{file['id']}?{query}", None)
        assert status == 400 and b"Authorization" in body, query
        # even alongside a good header
        status, _, _ = await http(h, "GET", f"/api/v1/files/{file['id']}?{query}", alice.token)
        assert status == 400
    status, headers, _ = await http(h, "GET", f"/api/v1/files/{file['id']}", None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = await http(h, "GET", f"/api/v1/files/{file['id']}", "not-a-token")
    assert status == 401


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ('say "hi".txt', 'say "hi".txt'),
        ("naïve résumé.pdf", "naïve résumé.pdf"),
        ("a;b=c, filename=evil.html", "a;b=c, filename=evil.html"),
    ],
)
async def test_hostile_names_are_stored_safely(h: Harness, name: str, stored: str) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    file = (await alice.upload(base(h), room, b"data", name=name))["file"]
    assert file["name"] == stored
    status, headers, _ = await http(h, "GET", f"/api/v1/files/{file['id']}", alice.token)
    assert status == 200
    disposition = headers["Content-Disposition"]
    plain = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert all(ch.isalnum() or ch in "._- " for ch in plain), disposition
    assert disposition.count('"') == 2 and "\r" not in disposition and "\n" not in disposition
    from urllib.parse import unquote

    assert unquote(disposition.split("filename*=UTF-8''", 1)[1]) == stored


@pytest.mark.parametrize("name", ["a\r\nSet-Cookie: x=1", "a\x00b", "..", "/", "   ", "x" * 256])
async def test_names_that_cannot_be_stored_are_refused(h: Harness, name: str) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    status, _, body = await http(
        h, "POST", f"/api/v1/rooms/{room}/files", alice.token, params={"name": name}, data=b"d"
    )
    assert status == 400, body
    assert b"name" in body


async def test_a_header_name_that_is_not_utf8_is_refused(h: Harness) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    for header in ("%FF%FE.txt", "a%0D%0Ab.txt"):
        status, _, body = await http(
            h,
            "POST",
            f"/api/v1/rooms/{room}/files",
            alice.token,
            headers={"X-File-Name": header},
            data=b"d",
        )
        assert status == 400, (header, body)


async def test_huge_heads_are_refused_before_the_application(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    room = await h.room()
    alice = await signed_in(h, "alice")
    host, port = h.node.addresses["http"]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /api/v1/files/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
        f"X-Junk: {'j' * 100_000}\r\n\r\n".encode()
    )
    try:
        await writer.drain()
    except ConnectionError:
        pass
    answer = await asyncio.wait_for(reader.read(200), 10)
    writer.close()
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer
    # many headers
    status, _, _ = await http(
        h,
        "POST",
        f"/api/v1/rooms/{room}/files?name=a",
        alice.token,
        headers={f"X-H{i}": "v" for i in range(200)},
        data=b"x",
    )
    assert status in (400, 431)
    # each is one warning line, not a traceback
    refused = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(refused) == 2, caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_the_listener_caps_connections_and_slow_heads(db_url: str) -> None:
    node = await start_node(
        node_config(db_url, files={"max_connections": 2, "header_timeout_s": 0.5})
    )
    h = Harness(node)
    opened = []
    try:
        host, port = node.addresses["http"]
        for _ in range(2):
            opened.append(await asyncio.open_connection(host, port))
        reader, writer = await asyncio.open_connection(host, port)
        opened.append((reader, writer))
        full = await asyncio.wait_for(reader.read(300), 5)
        assert full.startswith(b"HTTP/1.1 503") and b"client HTTP listener" in full
        # the first two sent no head: closed with 408 after header_timeout_s
        late = await asyncio.wait_for(opened[0][0].read(300), 5)
        assert late.startswith(b"HTTP/1.1 408"), late
    finally:
        for _reader, writer in opened:
            writer.close()
        await h.close()
