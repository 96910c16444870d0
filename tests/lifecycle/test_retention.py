"""Retention policies, the purge and legal holds with a movable clock (the purge's clock is
injected: ``node.retention.clock``), through the management API, on both dialects: nothing
outside a policy is deleted, everything inside it is, held content survives (and stays readable
to administrators only), lifting a hold lets the purge take it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from chatserver.store import messages as message_store
from chatserver.store.categories import create_category
from chatserver.store.db import now_ms
from chatserver.store.messages import NewPost
from chatserver.store.rooms import create_room
from chatserver.store.schema import held_messages, messages
from tests.admin.test_api import Api, api  # noqa: F401  (the fixture)

DAY = 86_400_000


async def _seed(a: Api, room: int, sender: int, ages: list[int], now: int) -> list[int]:
    """A message per age (days before ``now``), oldest first; their seqs."""
    seqs = []
    for i, age in enumerate(ages):
        post = NewPost(room, sender, "x", f"r{room}-{i}", f"room {room} age {age} #{i}")
        stored = await message_store.store_batch(a.h.node.db, [post], ts=now - age * DAY)
        assert stored[0].message is not None
        seqs.append(stored[0].message.seq)
    return seqs


async def _left(a: Api, room: int) -> list[int]:
    async with a.h.node.db.read() as conn:
        rows = await conn.execute(
            select(messages.c.seq).where(messages.c.room_id == room).order_by(messages.c.seq)
        )
        return [int(r.seq) for r in rows]


async def test_retention_deletes_exactly_what_its_policies_say(api: Api) -> None:  # noqa: F811
    a = api
    db = a.h.node.db
    now = now_ms()
    a.h.node.retention.clock = lambda: now
    ann = await a.user("ann")
    short = await create_category(db, "short")
    ten = (await create_room(db, "ten days")).id  # its own policy
    month = (await create_room(db, "a month", category_id=short)).id  # its category's
    kept = (await create_room(db, "no policy")).id  # none: never purged
    ages = [400, 40, 31, 29, 11, 9, 1, 0]
    seqs = {room: await _seed(a, room, ann, ages, now) for room in (ten, month, kept)}
    await a.call("PUT", f"/api/v1/retention/rooms/{ten}", {"days": 10, "enabled": False})
    await a.call("PUT", f"/api/v1/retention/categories/{short}", {"days": 30})
    # The preview counts the disabled policy too (it is what enabling it would do).
    preview = await a.call("POST", "/api/v1/retention/preview", {})
    by_room = {r["room"]: r for r in preview["rooms"]}
    assert set(by_room) == {ten, month}
    assert by_room[ten]["messages"] == 5 and by_room[month]["messages"] == 3
    assert by_room[ten]["oldest_ms"] == now - 400 * DAY
    assert by_room[ten]["newest_ms"] == now - 11 * DAY
    assert by_room[month]["newest_ms"] == now - 31 * DAY
    # A candidate for the deployment reaches the room without a policy too.
    candidate = await a.call(
        "POST", "/api/v1/retention/preview", {"candidate": {"scope": "deployment", "days": 100}}
    )
    assert {r["room"]: r["messages"] for r in candidate["rooms"]} == {ten: 5, month: 3, kept: 1}
    assert await _left(a, ten) == seqs[ten]  # a preview deletes nothing
    run = await a.call("POST", "/api/v1/retention/run")
    assert run["ran"] is True and run["messages"] == 3  # the disabled policy purged nothing
    assert await _left(a, ten) == seqs[ten]
    assert await _left(a, month) == seqs[month][3:]
    assert await _left(a, kept) == seqs[kept]
    await a.call("PUT", f"/api/v1/retention/rooms/{ten}", {"days": 10})
    await a.call("POST", "/api/v1/retention/run")
    assert await _left(a, ten) == seqs[ten][5:]
    # Five days later, two more of each are older than their policy.
    later = now + 5 * DAY
    a.h.node.retention.clock = lambda: later
    await a.call("POST", "/api/v1/retention/run")
    assert await _left(a, ten) == seqs[ten][6:]  # 9 + 5 days > 10
    assert await _left(a, month) == seqs[month][4:]  # 29 + 5 > 30
    assert await _left(a, kept) == seqs[kept]
    # History and search no longer find the purged messages; the audit log has the changes.
    client = await a.login("ann")
    history = (await client.call("history", room=ten))["messages"]
    assert [m["seq"] for m in history] == seqs[ten][6:]
    assert not (await client.call("search", query="400", room=ten))["hits"]
    actions = [e["action"] for e in await a.audit()]
    assert actions.count("retention.set") == 3 and "retention.run" in actions


async def test_a_legal_hold_outlives_purge_edit_delete_and_removal(api: Api) -> None:  # noqa: F811
    a = api
    db = a.h.node.db
    now = now_ms()
    a.h.node.retention.clock = lambda: now
    ann = await a.user("ann")
    bob = await a.user("bob")
    room = (await create_room(db, "case")).id
    other = (await create_room(db, "elsewhere")).id
    ann_seqs = await _seed(a, room, ann, [90, 60, 2], now)
    bob_seqs = await _seed(a, other, bob, [90, 60], now)
    # Room "case" from 100 to 50 days ago, and whatever bob posted anywhere.
    hold = await a.call(
        "POST",
        "/api/v1/holds",
        {"name": "matter-7", "rooms": [room], "since": now - 100 * DAY, "until": now - 50 * DAY},
    )
    user_hold = await a.call("POST", "/api/v1/holds", {"name": "bob", "users": [bob]})
    await a.call("POST", "/api/v1/holds", {"name": "bob", "users": [bob]}, status=409)
    await a.call("PUT", "/api/v1/retention/deployment", {"days": 30})
    preview = await a.call("POST", "/api/v1/retention/preview", {})
    assert preview["messages"] == 0  # everything older than 30 days is held
    await a.call("POST", "/api/v1/retention/run")
    assert await _left(a, room) == ann_seqs and await _left(a, other) == bob_seqs
    # The sender's edit and delete, an administrator's removal and a room clear change what
    # readers see, never what the hold keeps.
    client = await a.login("ann")
    await client.call("join", room=room)
    await client.call("message.edit", room=room, seq=ann_seqs[0], text="softened", cid="e1")
    await client.call("message.delete", room=room, seq=ann_seqs[0], cid="d1")
    await a.call("POST", "/api/v1/messages/remove", {"room": room, "keywords": ["60"]})
    await a.call("POST", f"/api/v1/rooms/{other}/clear", {"until": now})
    history = (await client.call("history", room=room))["messages"]
    assert [(m["seq"], m["text"], m.get("state")) for m in history] == [
        (ann_seqs[0], "", "deleted"),
        (ann_seqs[2], f"room {room} age 2 #2", None),
    ]
    held = await a.call("GET", f"/api/v1/holds/{hold['id']}/messages")
    first = next(m for m in held["messages"] if m["seq"] == ann_seqs[0])
    assert first["state"] == "deleted"
    assert [(v["text"], v["reason"]) for v in first["versions"]] == [
        (f"room {room} age 90 #0", "edit"),
        ("softened", "delete"),
    ]
    second = next(m for m in held["messages"] if m["seq"] == ann_seqs[1])
    assert [(v["text"], v["reason"]) for v in second["versions"]] == [
        (f"room {room} age 60 #1", "remove")
    ]
    assert ann_seqs[2] not in {m["seq"] for m in held["messages"]}  # outside the date range
    bobs = await a.call("GET", f"/api/v1/holds/{user_hold['id']}/messages")
    assert sorted(v["text"] for m in bobs["messages"] for v in m["versions"]) == [
        f"room {other} age 60 #1",
        f"room {other} age 90 #0",
    ]
    # Lifting the room's hold lets the purge take that room's old rows and their versions.
    await a.call("POST", f"/api/v1/holds/{hold['id']}/lift")
    await a.call("POST", f"/api/v1/holds/{hold['id']}/lift", status=409)
    await a.call("POST", "/api/v1/retention/run")
    assert await _left(a, room) == [ann_seqs[2]]
    assert await _left(a, other) == bob_seqs  # bob's hold still stands
    async with db.read() as conn:
        versions = await conn.scalar(
            select(func.count()).select_from(held_messages).where(held_messages.c.room_id == room)
        )
    assert versions == 0
    listed = {h["name"]: h for h in (await a.call("GET", "/api/v1/holds"))["holds"]}
    assert listed["matter-7"]["lifted_ms"] is not None and listed["bob"]["lifted_ms"] is None
    actions = [e["action"] for e in await a.audit()]
    assert actions.count("hold.place") == 2 and actions.count("hold.lift") == 1
    # Deleting a room takes its messages, never what a hold keeps of them.
    await a.call("DELETE", f"/api/v1/rooms/{other}")
    gone = await a.call("GET", f"/api/v1/holds/{user_hold['id']}/messages")
    assert {m["state"] for m in gone["messages"]} == {"gone"}
    texts = sorted(v["text"] for m in gone["messages"] for v in m["versions"])
    assert texts == [f"room {other} age 60 #1", f"room {other} age 90 #0"]


async def test_holds_and_policies_are_administrators_only(api: Api) -> None:  # noqa: F811
    """Attacker: a signed-in user's token on the management port gets 403 for every route,
    and learns nothing of the holds."""
    a = api
    await a.user("mallory")
    client = await a.login("mallory")
    token = client.token
    assert token is not None
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/api/v1/holds", None),
        ("POST", "/api/v1/holds", {"name": "x", "rooms": [1]}),
        ("GET", "/api/v1/holds/1/messages", None),
        ("POST", "/api/v1/holds/1/lift", None),
        ("GET", "/api/v1/retention", None),
        ("PUT", "/api/v1/retention/deployment", {"days": 1}),
        ("POST", "/api/v1/retention/preview", {}),
        ("POST", "/api/v1/retention/run", None),
    ]
    for method, path, body in calls:
        await a.call(method, path, body, token=token, status=403)
    assert (await a.call("GET", "/api/v1/holds"))["holds"] == []
    assert (await a.call("GET", "/api/v1/retention"))["policies"] == []
