"""The compliance archive's own retention (``chatserver compliance purge``), subject to legal
holds: old exported events lose their content but keep their place in the hash chain, so
``verify`` still proves nothing was deleted; held and unexported events keep everything; an
event emptied outside the purge's cutoff breaks the chain."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import update

from chatserver.store import holds as hold_store
from chatserver.store import outbox
from chatserver.store.db import now_ms
from compliance.retention import purge
from compliance.schema import events
from compliance.verify import verify
from tests.compliance.test_compliance import (  # noqa: F401  (fixtures)
    Stores,
    comp_cluster,
    comp_url,
    compliance_cmd,
    exported_files,
    parse_valid,
    payload,
    post_some,
    setup,
)
from tests.conftest import Harness

DAY = 86_400_000


async def test_the_archive_forgets_old_events_but_not_held_ones(
    setup: tuple[Harness, Stores],  # noqa: F811
) -> None:
    h, stores = setup
    room = await post_some(h, 3)  # recent CHAT events
    old = now_ms() - 60 * DAY
    ann, bob = 901, 902  # users of a deployment long ago: only their ids matter to a hold
    async with stores.content.write() as conn:
        await outbox.record(
            conn,
            "test-node",
            [
                outbox.Event("CHAT", room, who, {"seq": 1000 + i, "text": f"old {i}"}, old + i)
                for i, who in enumerate((ann, ann, bob, bob))
            ],
        )
    await stores.drain()
    # Not exported yet: nothing is pruned.
    report = await purge(stores.comp, stores.content, 30, now_ms())
    assert (report.pruned, report.unexported) == (0, 4)
    code, out = await compliance_cmd(stores.config, "export")
    assert code == 0, out
    await hold_store.place(stores.content, "bob", [bob], [], None, None, "test")
    report = await purge(stores.comp, stores.content, 30, now_ms())
    assert (report.pruned, report.held, report.unexported) == (2, 2, 0)
    rows = {payload(r).get("seq"): r for r in await stores.events("CHAT")}
    assert payload(rows[1000]) == {"pruned": True, "seq": 1000}
    assert payload(rows[1001]) == {"pruned": True, "seq": 1001}
    assert payload(rows[1002])["text"] == "old 2" and payload(rows[1003])["text"] == "old 3"
    assert all(payload(rows[s])["text"] == f"p{s - 1}" for s in (1, 2, 3))  # recent: kept
    checked = await verify(stores.comp, stores.content)
    assert checked.ok, checked.lines()
    code, out = await compliance_cmd(stores.config, "purge", "--days", "30")
    assert code == 0 and "0 events" in out and "2 under legal hold" in out, out
    # Emptying a recent event the same way is not a purge: verify says where.
    target = rows[2]
    async with stores.comp.write() as conn:
        await conn.execute(
            update(events)
            .where(events.c.seq == target.seq)
            .values(payload=json.dumps({"pruned": True, "seq": 2}, separators=(",", ":")))
        )
    checked = await verify(stores.comp, stores.content)
    assert not checked.ok and checked.broken is not None
    assert checked.broken["seq"] == target.seq


async def test_users_changes_and_holds_export_as_valid_xml(
    setup: tuple[Harness, Stores],  # noqa: F811
) -> None:
    h, stores = setup
    room = await post_some(h, 1)
    poster = await h.login("poster")
    await poster.call("message.edit", room=room, seq=1, text="p0, better", cid="e1")
    await poster.call("reaction.add", room=room, seq=1, emoji="🎉", cid="r1")
    await poster.call("message.delete", room=room, seq=1, cid="d1")
    hold = await hold_store.place(
        stores.content, "x", [], [room], None, None, "root", h.node.compliance_node
    )
    await hold_store.lift(stores.content, hold.id, "root", h.node.compliance_node)
    await stores.drain()
    code, out = await compliance_cmd(stores.config, "export")
    assert code == 0, out
    kinds: dict[str, str] = {}
    for path in exported_files(Path(stores.config.compliance.output_dir)):
        for message in parse_valid(path).xpath("//Messages/Message"):
            kinds[message.get("type")] = message.get("content")
    assert kinds["EDIT"] == "p0, better" and kinds["REACT"] == "🎉"
    assert {"DELETE", "HOLD", "HOLD_LIFT"} <= set(kinds)
