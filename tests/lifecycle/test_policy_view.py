"""What a client learns of the edit policy (docs/protocol.md, 6.6 and 6.27): the ``join`` reply's
``edit_policy`` and ``now`` say exactly what the server then enforces on ``message.edit`` and
``message.delete`` — never, always, N minutes — for a room's, a category's and the deployment's
policy, on both dialects; and nobody who may not read a room learns its policy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from chatserver.client import Client
from chatserver.store import lifecycle as store
from chatserver.store.db import now_ms
from chatserver.store.schema import messages
from tests.conftest import Harness, node_config, start_node
from tests.rooms.test_governance import admin_client, make_user, new_category, new_room, user


async def _outcome(client: Client, op: str, **fields: Any) -> str:
    """ "ok", or the error's code."""
    out = await client.request(op, **fields)
    return "ok" if out["ok"] else str(out["error"]["code"])


async def _age(harness: Harness, room: int, seq: int, minutes: float) -> int:
    """Make the message ``minutes`` old (the store's clock); its new ts."""
    async with harness.node.db.write() as conn:
        await conn.execute(
            update(messages)
            .where(messages.c.room_id == room, messages.c.seq == seq)
            .values(ts=now_ms() - int(minutes * 60_000))
        )
        ts = await conn.scalar(
            select(messages.c.ts).where(messages.c.room_id == room, messages.c.seq == seq)
        )
    return int(ts or 0)


def _allows(policy: str, ts: int, now: int) -> bool:
    """The rule docs/protocol.md gives a client (and editpolicy.js applies)."""
    if policy == "never":
        return False
    return policy == "always" or now - ts <= int(policy) * 60_000


async def test_the_join_reply_says_the_policy_the_server_enforces(harness: Harness) -> None:
    admin = await admin_client(harness)
    await make_user(harness, "ann")
    category = await new_category(admin, "c")
    room = await new_room(admin, category, "r", "open")
    ann = await harness.login("ann")
    db = harness.node.db
    posted = [
        int((await ann.call("post", room=room, text=f"m{i}", cid=f"p{i}"))["seq"]) for i in range(6)
    ]
    cids = iter(range(1000))

    async def check(policy: str, seq: int, ts: int | None = None) -> None:
        before = now_ms()
        joined = await ann.call("join", room=room)
        assert joined["edit_policy"] == policy
        assert before <= joined["now"] <= now_ms()
        expected = "ok" if ts is None or _allows(policy, ts, joined["now"]) else "forbidden"
        if policy == "never":
            expected = "forbidden"
        n = next(cids)
        edit = await _outcome(ann, "message.edit", room=room, seq=seq, text="v2", cid=f"e{n}")
        delete = await _outcome(ann, "message.delete", room=room, seq=seq, cid=f"d{n}")
        assert (edit, delete) == (expected, expected), (policy, edit, delete)

    # The deployment's default (always), then the category's, then the room's own over it.
    await check("always", posted[0])
    await store.set_edit_policy(db, "category", category, "never")
    await check("never", posted[1])
    await store.set_edit_policy(db, "room", room, "always")
    await check("always", posted[1])
    # Five minutes: a message four minutes old may change, one six minutes old may not.
    await store.set_edit_policy(db, "room", room, "5")
    await check("5", posted[2], await _age(harness, room, posted[2], 4))
    ts = await _age(harness, room, posted[3], 6)
    assert not _allows("5", ts, now_ms())
    await check("5", posted[3], ts)
    # The room inherits again: the category's minutes.
    await store.set_edit_policy(db, "room", room, None)
    await store.set_edit_policy(db, "category", category, "1")
    await check("1", posted[4], await _age(harness, room, posted[4], 2))
    await check("1", posted[5], await _age(harness, room, posted[5], 0.5))


async def test_the_deployments_policy_and_nothing_for_an_outsider(db_url: str) -> None:
    node = await start_node(node_config(db_url, chat={"edit_policy": "never"}))
    harness = Harness(node)
    try:
        admin = await admin_client(harness)
        ann = await make_user(harness, "ann")
        await make_user(harness, "eve")
        category = await new_category(admin, "c")
        room = await new_room(admin, category, "r", "closed", members=[user(ann)])
        ann_client = await harness.login("ann")
        joined = await ann_client.call("join", room=room)
        assert joined["edit_policy"] == "never"
        seq = int((await ann_client.call("post", room=room, text="m", cid="p1"))["seq"])
        assert await _outcome(ann_client, "message.delete", room=room, seq=seq, cid="d1") == (
            "forbidden"
        )
        # Eve may not read the room: her join is refused as before, with no policy in it.
        eve = await harness.login("eve")
        out = await eve.request("join", room=room)
        assert not out["ok"] and "edit_policy" not in out and "now" not in out
        assert out["error"]["code"] in ("forbidden", "not_found")
        # A forged change is refused whatever the page was told.
        forged = await _outcome(eve, "message.delete", room=room, seq=seq, cid="x1")
        assert forged == out["error"]["code"]
    finally:
        await harness.close()


def test_the_rule_at_its_edges() -> None:
    assert store.refusal("always", 0, 10**12) is None
    assert store.refusal("never", 10, 10) is not None
    assert store.refusal("5", 1000, 1000 + 5 * 60_000) is None
    assert store.refusal("5", 1000, 1000 + 5 * 60_000 + 1) == (
        "messages may be changed only 5 minutes after posting"
    )
    assert store.effective_policy(None, None, "3") == "3"
    assert store.effective_policy(None, "never", "3") == "never"
    assert store.effective_policy("always", "never", "3") == "always"
