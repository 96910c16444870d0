"""Export and import through the management API, and what it refuses (both dialects)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.admin.test_api import STATIC, Api
from tests.conftest import Harness, node_config, start_node


@pytest.fixture
async def api(db_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    config = node_config(
        db_url, management={"token": STATIC}, transfer={"directory": str(tmp_path / "transfer")}
    )
    node = await start_node(config)
    harness = Harness(node)
    await harness.user("root", admin=True)
    assert node.management is not None and node.management.address is not None
    host, port = node.management.address
    try:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            yield Api(harness, http)
    finally:
        await harness.close()


async def test_export_then_import_with_each_conflict_choice(api: Api, tmp_path: Path) -> None:
    await api.user("alice")
    room = (await api.room("desk", privacy="open"))["id"]
    alice = await api.login("alice")
    for i in range(3):
        await alice.call("post", room=room, text=f"t{i}", cid=f"c{i}")
    out = await api.call("POST", "/api/v1/exports", {"file": "all.jsonl.gz", "files": True})
    assert out["counts"]["message"] == 3 and out["bytes"] > 0
    assert (tmp_path / "transfer" / "all.jsonl.gz").is_file()
    assert not list((tmp_path / "transfer").glob(".*"))  # no partial file left

    # Into the same deployment every name is taken: fail changes nothing and names them.
    refused = await api.call("POST", "/api/v1/imports", {"file": "all.jsonl.gz"}, status=409)
    assert "room 'desk' exists" in refused["error"]["message"]
    renamed = await api.call(
        "POST", "/api/v1/imports", {"file": "all.jsonl.gz", "on_conflict": "rename"}
    )
    assert renamed["complete"] and renamed["created"]["room"] == 1
    assert {"kind": "room", "name": "desk", "action": "renamed", "new_name": "desk (import 1)"} in (
        renamed["conflicts"]
    )
    # The node dropped its caches: a signed-in user sees the new room and its history at once.
    listed = {r["name"]: r["id"] for r in (await alice.call("rooms"))["rooms"]}
    copy = listed["desk (import 1)"]
    history = (await alice.call("history", room=copy))["messages"]
    assert [(m["seq"], m["cid"], m["text"]) for m in history] == [
        (1, "c0", "t0"),
        (2, "c1", "t1"),
        (3, "c2", "t2"),
    ]
    again = await api.call(
        "POST", "/api/v1/imports", {"file": "all.jsonl.gz", "on_conflict": "rename"}
    )
    assert again["created"].get("room", 0) == 0 and again["reused"]["room"] == 1
    entries = await api.audit(target="file:all.jsonl.gz")
    assert {e["action"] for e in entries} == {"export", "import"}


async def test_the_api_reads_and_writes_only_its_folder_and_only_for_administrators(
    api: Api, tmp_path: Path
) -> None:
    for name in ("../escape.jsonl.gz", "/etc/passwd", ".hidden", "a/b", "", "x" * 200):
        for path in ("/api/v1/exports", "/api/v1/imports"):
            await api.call("POST", path, {"file": name}, status=400)
    assert not (tmp_path / "escape.jsonl.gz").exists()
    await api.call("POST", "/api/v1/imports", {"file": "missing.jsonl.gz"}, status=404)
    await api.call("POST", "/api/v1/exports", {"file": "x.gz", "room": "nope"}, status=404)
    # A hostile file in the folder is refused with its line, before anything is written.
    folder = tmp_path / "transfer"
    folder.mkdir(exist_ok=True)
    with gzip.open(folder / "evil.jsonl.gz", "wt") as out:
        out.write('{"t":"header","format":"chatserver-export","version":99}\n')
    refused = await api.call("POST", "/api/v1/imports", {"file": "evil.jsonl.gz"}, status=400)
    assert "line 1" in refused["error"]["message"]
    (folder / "junk.jsonl.gz").write_bytes(b"not gzip at all")
    await api.call("POST", "/api/v1/imports", {"file": "junk.jsonl.gz"}, status=400)
    # A user who is not an administrator may do neither.
    await api.user("mallory")
    as_mallory = {"Authorization": _basic("mallory")}
    for path, file in (("/api/v1/exports", "m.jsonl.gz"), ("/api/v1/imports", "evil.jsonl.gz")):
        await api.call("POST", path, {"file": file}, token=None, headers=as_mallory, status=403)
    assert not (folder / "m.jsonl.gz").exists()


def _basic(name: str) -> str:
    import base64

    from tests.conftest import PASSWORD

    return "Basic " + base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()
