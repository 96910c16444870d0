"""A legal hold keeps a file's bytes when its uploader deletes it, or deletes the message that
carries it; an unheld file's bytes go (on both dialects)."""

from __future__ import annotations

import base64

import aiohttp

from chatserver.store import files as file_store
from chatserver.store import holds as hold_store
from tests.conftest import PASSWORD, Harness
from tests.test_files import base, h, http, signed_in  # noqa: F401  (the fixture)


async def test_a_hold_keeps_the_bytes_of_a_removed_file(h: Harness) -> None:  # noqa: F811
    room = await h.room()
    other = await h.room("other")
    alice = await signed_in(h, "alice")
    await hold_store.place(h.node.db, "room", [], [room], None, None, "test")
    held = (await alice.upload(base(h), room, b"h" * 9000, name="held"))["file"]
    also = await alice.upload(base(h), room, b"d" * 100, name="deleted")
    free = (await alice.upload(base(h), other, b"f" * 100, name="free"))["file"]
    for file in (held, free):
        status, _, _ = await http(h, "DELETE", f"/api/v1/files/{file['id']}", alice.token)
        assert status == 204
    seq = also["message"]["seq"]
    await alice.call("message.delete", room=room, seq=seq, cid="d1")
    counts = await file_store.counts(h.node.db)
    # Every file is removed for its readers; the held ones' chunks stay (3 + 1), the free one's go.
    assert counts == {"removed": 3, "chunks": 4}, counts
    status, _, _ = await http(h, "GET", f"/api/v1/files/{held['id']}", alice.token)
    assert status == 404


async def test_an_administrator_reads_a_removed_held_file(h: Harness) -> None:  # noqa: F811
    """``GET /api/v1/holds/{id}/files/{file}``: the held file's bytes after its removal, for
    administrators; a file the hold does not cover answers exactly like a missing one."""
    room = await h.room()
    other = await h.room("other")
    alice = await signed_in(h, "alice")
    hold = await hold_store.place(h.node.db, "room", [], [room], None, None, "test")
    body = bytes(range(256)) * 40 + b"<script>alert(1)</script>"
    held = (await alice.upload(base(h), room, body, name='x".html'))["file"]
    free = (await alice.upload(base(h), other, b"f" * 100, name="free"))["file"]
    for file in (held, free):
        status, _, _ = await http(h, "DELETE", f"/api/v1/files/{file['id']}", alice.token)
        assert status == 204
    await h.user("root", admin=True)
    assert h.node.management is not None and h.node.management.address is not None
    host, port = h.node.management.address
    async with aiohttp.ClientSession(f"http://{host}:{port}") as api:
        async with api.post("/api/v1/tokens", headers=basic("root")) as response:
            assert response.status == 201, await response.text()
            token = (await response.json())["token"]
        admin = {"Authorization": f"Bearer {token}"}
        async with api.get(f"/api/v1/holds/{hold.id}/files/{held['id']}", headers=admin) as r:
            assert r.status == 200
            assert await r.read() == body
            assert r.headers["Content-Type"] == "application/octet-stream"
            assert r.headers["ETag"] == f'"{held["sha256"]}"'
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Content-Disposition"].startswith('attachment; filename="x_.html"')
        answers = []
        for path in (
            f"/api/v1/holds/{hold.id}/files/{free['id']}",  # not covered by the hold
            f"/api/v1/holds/{hold.id}/files/999999",  # no such file
        ):
            async with api.get(path, headers=admin) as r:
                answers.append((r.status, (await r.json())["error"]["code"]))
        assert answers == [(404, "not_found")] * 2
        async with api.get(f"/api/v1/holds/{hold.id + 1}/files/{held['id']}", headers=admin) as r:
            assert r.status == 404
        # Not an administrator: refused before anything is read.
        path = f"/api/v1/holds/{hold.id}/files/{held['id']}"
        async with api.get(path, headers=basic("alice")) as r:
            assert r.status == 403


def basic(name: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()}
