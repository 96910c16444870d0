"""A legal hold keeps a file's bytes when its uploader deletes it, or deletes the message that
carries it; an unheld file's bytes go (on both dialects)."""

from __future__ import annotations

from chatserver.store import files as file_store
from chatserver.store import holds as hold_store
from tests.conftest import Harness
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
