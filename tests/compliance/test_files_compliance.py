"""Compliance of files (issue 16): FILEUPLOAD (with the file's CHAT) in the upload's
transaction, FILEDOWNLOAD before the bytes go out, REMOVE when a file is deleted; exported in
the XML format and its attachments manifest, both valid against the shipped XSD."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from chatserver.client_files import download
from chatserver.testing import PostgresCluster
from compliance.xml_adapter import export
from tests.compliance.test_compliance import (
    XSD,
    Stores,
    admin,
    comp_config,
    exported_files,
    parse_valid,
    payload,
)
from tests.conftest import Harness, start_node
from tests.test_files import base, http

_numbers = itertools.count(1)


@pytest.fixture
async def comp_url(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The compliance database: beside a SQLite store a file, beside a PostgreSQL store a
    database of its own on the session's cluster (``pg_cluster``). Re-exporting
    test_compliance's fixtures here would give this module a session fixture of its own, so a
    second PostgreSQL cluster would start for these tests alone."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/compliance.db"
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    return await cluster.create_database(f"files_compliance_{next(_numbers)}")


async def test_file_events_are_captured_and_exported(
    db_url: str, comp_url: str, tmp_path: Path
) -> None:
    config = comp_config(db_url, comp_url, tmp_path, attachments_manifest=True)
    node = await start_node(config)
    h = Harness(node)
    stores = Stores(config)
    try:
        root, uid = await admin(h)
        room = await h.room()
        data = b"compliance " * 1000
        reply = await root.upload(base(h), room, data, name="minutes.txt", text="see attached")
        file = reply["file"]
        assert root.token is not None
        assert await download(base(h), root.token, file["id"]) == data
        status, _, _ = await http(h, "DELETE", f"/api/v1/files/{file['id']}", root.token)
        assert status == 204
        await stores.drain()
        kinds = [row.kind for row in await stores.events() if row.user_id == uid]
        assert kinds[-4:] == ["CHAT", "FILEUPLOAD", "FILEDOWNLOAD", "REMOVE"], kinds
        (upload,) = await stores.events("FILEUPLOAD")
        (down,) = await stores.events("FILEDOWNLOAD")
        for row in (upload, down):
            p = payload(row)
            assert (row.room_id, row.user_id) == (room, uid)
            assert (p["file"], p["name"], p["size"]) == (file["id"], "minutes.txt", len(data))
            assert p["sha256"] == hashlib.sha256(data).hexdigest()
            assert p["seq"] == reply["message"]["seq"]
        assert payload(upload)["text"] == "see attached"
        (removed,) = await stores.events("REMOVE")
        assert payload(removed)["file"] == file["id"]
        assert payload(removed)["original_text"] == "see attached"

        out = tmp_path / "out"
        await export(config, stores.comp, stores.content)
        (exported,) = exported_files(out)
        tree = parse_valid(exported)
        types = tree.xpath("//Messages/Message/@type")
        assert {"FILEUPLOAD", "FILEDOWNLOAD", "REMOVE"} <= set(types)
        (uploaded,) = tree.xpath("//Messages/Message[@type='FILEUPLOAD']")
        assert uploaded.get("roomSeq") == str(reply["message"]["seq"])
        assert uploaded.get("content") == "see attached"
        manifest = exported.with_name(exported.stem + "-attachments.xml")
        from lxml import etree

        doc = etree.parse(str(manifest))
        assert etree.XMLSchema(etree.parse(str(XSD))).validate(doc), manifest.read_text()
        attachments = doc.xpath("//Attachment")
        assert [
            (a.get("type"), a.get("file"), a.get("name"), a.get("size")) for a in attachments
        ] == [
            ("FILEUPLOAD", str(file["id"]), "minutes.txt", str(len(data))),
            ("FILEDOWNLOAD", str(file["id"]), "minutes.txt", str(len(data))),
        ]
    finally:
        await h.close()
        await stores.close()
