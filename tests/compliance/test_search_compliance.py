"""SEARCH events (issue 17): who searched for what, in which scope, recorded before the hits are
sent, exported in the XML format and valid against the shipped XSD."""

from __future__ import annotations

import json
from pathlib import Path

from compliance.xml_adapter import export
from tests.compliance import test_compliance
from tests.compliance.test_compliance import (
    Stores,
    admin,
    comp_config,
    parse_valid,
    payload,
)
from tests.conftest import Harness, start_node
from tests.test_search import http_search

# The compliance database fixtures, shared with the other compliance tests.
comp_cluster = test_compliance.comp_cluster
comp_url = test_compliance.comp_url


async def test_searches_are_captured_and_exported(
    db_url: str, comp_url: str, tmp_path: Path
) -> None:
    config = comp_config(db_url, comp_url, tmp_path)
    h = Harness(await start_node(config))
    stores = Stores(config)
    try:
        root, root_id = await admin(h)
        room = await h.room()
        await root.call("post", room=room, text="the quarterly numbers", cid="q")
        found = await root.call("search", query="quarterly")
        assert len(found["hits"]) == 1
        await root.call("search", query='"quarterly numbers" from:root', room=room)
        assert root.token is not None
        status, _ = await http_search(h, root.token, q="numb*")
        assert status == 200
        await stores.drain()
        searches = await stores.events("SEARCH")
        assert [(r.room_id, r.user_id) for r in searches] == [
            (None, root_id),
            (room, root_id),
            (None, root_id),
        ]
        assert [payload(r) for r in searches] == [
            {"query": "quarterly", "source": "search", "hits": 1, "found": [[room, 1]]},
            {
                "query": '"quarterly numbers" from:root',
                "source": "search",
                "hits": 1,
                "found": [[room, 1]],
            },
            {"query": "numb*", "source": "http", "hits": 1, "found": [[room, 1]]},
        ]
        result = await export(stores.config, stores.comp, stores.content)
        (path,) = result.files
        tree = parse_valid(path)
        exported = tree.xpath("//Messages/Message[@type='SEARCH']")
        # Grouped by conversation: the room's search with the room, the others on their own.
        by_content = {m.get("content"): m for m in exported}
        assert set(by_content) == {"quarterly", '"quarterly numbers" from:root', "numb*"}
        assert json.loads(by_content["numb*"].get("details"))["source"] == "http"
    finally:
        await h.close()
        await stores.close()
