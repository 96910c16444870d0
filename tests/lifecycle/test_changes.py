"""Users change their own messages: edit, delete, reactions, replies and threads, resume's
changes (issue 18, section 1), through real clients against a running node, on both dialects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import select, update

from chatserver.client import Client
from chatserver.store import messages as message_store
from chatserver.store.schema import compliance_outbox, messages
from tests.conftest import Harness, node_config, start_node
from tests.rooms.test_governance import admin_client, make_user, new_category, new_room, user


async def _post(client: Client, room: int, text: str, cid: str, **extra: Any) -> int:
    out = await client.call("post", room=room, text=text, cid=cid, **extra)
    return int(out["seq"])


async def _chat(client: Client) -> dict[str, Any]:
    """The next message or message.changed event (participant events skipped)."""
    while True:
        event = await client.next_event()
        if event["ev"] in ("message", "message.changed"):
            return event


async def _error(client: Client, op: str, **fields: Any) -> dict[str, Any]:
    out = await client.request(op, **fields)
    assert not out["ok"], out
    error: dict[str, Any] = out["error"]
    return error


async def _setup(harness: Harness) -> tuple[int, Client, Client]:
    await harness.user("ann")
    await harness.user("bob")
    room = await harness.room()
    ann = await harness.login("ann")
    bob = await harness.login("bob")
    await ann.call("join", room=room)
    await bob.call("join", room=room)
    return room, ann, bob


async def test_an_edit_reaches_every_reader_and_every_read(harness: Harness) -> None:
    room, ann, bob = await _setup(harness)
    seq = await _post(ann, room, "the deploy is at noon", "p1")
    await bob.next_event("message")
    out = await ann.call("message.edit", room=room, seq=seq, text="the release is at one", cid="e1")
    assert out["message"]["text"] == "the release is at one"
    assert out["message"]["state"] == "edited" and out["duplicate"] is False
    event = await bob.next_event("message.changed")
    assert event["seq"] == seq and event["state"] == "edited"
    assert event["text"] == "the release is at one" and event["change"] == out["change"]
    assert event["edited_ts"] == out["message"]["edited_ts"]
    # History, a new join's backchat (the node's cache) and search show the edit.
    page = (await bob.call("history", room=room))["messages"]
    assert [(m["seq"], m["text"], m["state"]) for m in page] == [
        (seq, "the release is at one", "edited")
    ]
    await harness.user("cy")
    cy = await harness.login("cy")
    joined = await cy.call("join", room=room)
    assert [m["text"] for m in joined["messages"]] == ["the release is at one"]
    assert (await bob.call("search", query="release"))["hits"]
    assert not (await bob.call("search", query="deploy"))["hits"]
    # The same client id again: the first outcome, nothing changed, nobody told.
    again = await ann.call("message.edit", room=room, seq=seq, text="other", cid="e1")
    assert again["duplicate"] is True and again["message"]["text"] == "the release is at one"
    await _post(ann, room, "after", "p2")
    assert (await _chat(bob))["ev"] == "message"  # no second message.changed before it


async def test_a_delete_leaves_a_placeholder_with_its_seq(harness: Harness) -> None:
    room, ann, bob = await _setup(harness)
    first = await _post(ann, room, "one", "p1")
    second = await _post(ann, room, "two", "p2")
    third = await _post(ann, room, "three", "p3")
    await ann.call("reaction.add", room=room, seq=second, emoji="👍", cid="r1")
    out = await ann.call("message.delete", room=room, seq=second, cid="d1")
    assert out["message"]["state"] == "deleted" and out["message"]["text"] == ""
    events = [await _chat(bob) for _ in range(5)]
    changed = events[-1]
    assert changed["ev"] == "message.changed" and changed["state"] == "deleted"
    assert "text" not in changed and changed["reactions"] == {}
    page = (await bob.call("history", room=room))["messages"]
    assert [(m["seq"], m["text"], m.get("state", "")) for m in page] == [
        (first, "one", ""),
        (second, "", "deleted"),
        (third, "three", ""),
    ]
    assert "reactions" not in page[1]
    # A deleted message is not edited, reacted to, or found.
    assert (await _error(ann, "message.edit", room=room, seq=second, text="x", cid="e"))[
        "code"
    ] == "conflict"
    error = await _error(bob, "reaction.add", room=room, seq=second, emoji="👍", cid="r2")
    assert error["code"] == "not_found"
    assert not (await bob.call("search", query="two"))["hits"]
    # Retried: the same answer.
    again = await ann.call("message.delete", room=room, seq=second, cid="d1")
    assert again["duplicate"] is True and again["change"] == out["change"]


async def test_only_the_sender_changes_a_message(harness: Harness) -> None:
    room, ann, bob = await _setup(harness)
    seq = await _post(ann, room, "mine", "p1")
    for op, extra in (("message.edit", {"text": "yours"}), ("message.delete", {})):
        error = await _error(bob, op, room=room, seq=seq, cid="x", **extra)
        assert error["code"] == "forbidden", error
    stored = await message_store.latest(harness.node.db, room, 5)
    assert [(m.text, m.state) for m in stored] == [("mine", "")]


async def test_a_room_one_may_not_read_answers_like_a_missing_one(harness: Harness) -> None:
    """Attacker: mallory knows a secret room's id and a seq in it; every op answers exactly as
    for a room that does not exist, and nothing changes."""
    admin = await admin_client(harness)
    ann_id = await make_user(harness, "ann")
    await make_user(harness, "mallory")
    category = await new_category(admin, "c")
    secret = await new_room(admin, category, "s", "secret", members=[user(ann_id)])
    ann = await harness.login("ann")
    await ann.call("join", room=secret)
    seq = await _post(ann, secret, "hidden words", "p1")
    mallory = await harness.login("mallory")
    ops: list[tuple[str, dict[str, Any]]] = [
        ("message.edit", {"text": "x", "cid": "c"}),
        ("message.delete", {"cid": "c"}),
        ("reaction.add", {"emoji": "👀", "cid": "c"}),
        ("reaction.remove", {"emoji": "👀", "cid": "c"}),
        ("thread", {}),
    ]
    for op, extra in ops:
        hidden = await _error(mallory, op, room=secret, seq=seq, **extra)
        missing = await _error(mallory, op, room=999_999, seq=seq, **extra)
        assert hidden["code"] == missing["code"] == "not_found", (op, hidden)
        assert hidden["message"].replace(str(secret), "N") == missing["message"].replace(
            "999999", "N"
        ), op
    # A reply into it is refused the same way.
    hidden = await _error(mallory, "post", room=secret, text="hi", cid="r", reply_to=seq)
    missing = await _error(mallory, "post", room=999_999, text="hi", cid="r", reply_to=seq)
    assert hidden["code"] == missing["code"] == "not_found"
    stored = await message_store.latest(harness.node.db, secret, 5)
    assert [(m.text, m.state, m.reactions) for m in stored] == [("hidden words", "", None)]
    # And a message that does not exist in a room one reads answers not_found too.
    assert (await _error(ann, "message.edit", room=secret, seq=99, text="x", cid="c"))[
        "code"
    ] == "not_found"


async def test_reactions_are_counted_idempotent_and_limited(db_url: str) -> None:
    node = await start_node(
        node_config(db_url, chat={"max_distinct_reactions": 2, "max_reactions_per_message": 3})
    )
    harness = Harness(node)
    try:
        room, ann, bob = await _setup(harness)
        seq = await _post(ann, room, "vote", "p1")
        await bob.next_event("message")
        out = await ann.call("reaction.add", room=room, seq=seq, emoji="👍", cid="a1")
        assert out["message"]["reactions"] == {"👍": 1}
        event = await bob.next_event("message.changed")
        assert event["reactions"] == {"👍": 1} and event["text"] == "vote"
        assert event["reaction"] == {
            "user": event["reaction"]["user"],
            "emoji": "👍",
            "added": True,
        }
        # A retry (same cid) and the same emoji again (new cid) change nothing.
        assert (await ann.call("reaction.add", room=room, seq=seq, emoji="👍", cid="a1"))[
            "duplicate"
        ]
        assert (await ann.call("reaction.add", room=room, seq=seq, emoji="👍", cid="a2"))[
            "message"
        ]["reactions"] == {"👍": 1}
        out = await bob.call("reaction.add", room=room, seq=seq, emoji="👍", cid="b1")
        assert out["message"]["reactions"] == {"👍": 2}
        out = await bob.call("reaction.add", room=room, seq=seq, emoji="🎉", cid="b2")
        assert out["message"]["reactions"] == {"👍": 2, "🎉": 1}
        # Three in all: the limit per message; two distinct emoji: the limit of emoji.
        assert (await _error(ann, "reaction.add", room=room, seq=seq, emoji="🎉", cid="a3"))[
            "code"
        ] == "too_large"
        await bob.call("reaction.remove", room=room, seq=seq, emoji="🎉", cid="b3")
        await ann.call("reaction.add", room=room, seq=seq, emoji="🚀", cid="a4")
        await bob.call("reaction.remove", room=room, seq=seq, emoji="👍", cid="b4")
        # {👍: 1, 🚀: 1}: two in all, but two distinct emoji already.
        error = await _error(bob, "reaction.add", room=room, seq=seq, emoji="🎉", cid="b5")
        assert error["code"] == "too_large" and "distinct" in error["message"]
        await ann.call("reaction.remove", room=room, seq=seq, emoji="🚀", cid="a7")
        # A bad emoji is refused before anything is read.
        assert (await _error(ann, "reaction.add", room=room, seq=seq, emoji="a b", cid="a5"))[
            "code"
        ] == "bad_request"
        out = await ann.call("reaction.remove", room=room, seq=seq, emoji="👍", cid="a6")
        assert "reactions" not in out["message"]  # none left
        out = await bob.call("reaction.add", room=room, seq=seq, emoji="🎉", cid="b6")
        assert out["message"]["reactions"] == {"🎉": 1}
        page = (await bob.call("history", room=room))["messages"]
        assert page[0]["reactions"] == {"🎉": 1}
        joined = await (await harness.login("ann")).call("join", room=room)
        assert joined["messages"][0]["reactions"] == {"🎉": 1}  # the node's cache
    finally:
        await harness.close()


async def test_replies_and_threads(harness: Harness) -> None:
    room, ann, bob = await _setup(harness)
    root = await _post(ann, room, "question", "p1")
    other = await _post(ann, room, "unrelated", "p2")
    answers = [await _post(bob, room, f"answer {i}", f"b{i}", reply_to=root) for i in range(3)]
    await _post(bob, room, "elsewhere", "b9", reply_to=other)
    event = await ann.next_event("message")
    while event["seq"] != answers[0]:
        event = await ann.next_event("message")
    assert event["reply_to"] == root
    page = await ann.call("thread", room=room, seq=root, limit=2)
    assert page["message"]["text"] == "question"
    assert [m["seq"] for m in page["replies"]] == answers[:2] and page["more"] is True
    rest = await ann.call("thread", room=room, seq=root, after=answers[1])
    assert [m["text"] for m in rest["replies"]] == ["answer 2"] and rest["more"] is False
    history = (await ann.call("history", room=room))["messages"]
    assert [m.get("reply_to") for m in history] == [None, None, root, root, root, other]
    # A reply to a seq the room does not have yet is refused; a retried reply stores nothing.
    error = await _error(bob, "post", room=room, text="x", cid="b10", reply_to=100)
    assert error["code"] == "not_found"
    again = await bob.call("post", room=room, text="answer 0", cid="b0", reply_to=root)
    assert again["duplicate"] is True and again["seq"] == answers[0]


async def test_the_edit_policy_of_rooms_and_categories(harness: Harness) -> None:
    admin = await admin_client(harness)
    ann_id = await make_user(harness, "ann")
    category = await new_category(admin, "c")
    room = await new_room(admin, category, "r", "open")
    ann = await harness.login("ann")
    await ann.call("join", room=room)
    seq = await _post(ann, room, "v1", "p1")
    db = harness.node.db
    from chatserver.store import lifecycle as store

    await store.set_edit_policy(db, "category", category, "never")
    error = await _error(ann, "message.edit", room=room, seq=seq, text="v2", cid="e1")
    assert error["code"] == "forbidden" and "off" in error["message"]
    await store.set_edit_policy(db, "room", room, "5")  # the room's own wins
    await ann.call("message.edit", room=room, seq=seq, text="v2", cid="e2")
    # Posted six minutes ago (the store's clock): past the five minutes.
    async with db.write() as conn:
        await conn.execute(
            update(messages)
            .where(messages.c.room_id == room, messages.c.seq == seq)
            .values(ts=messages.c.ts - 6 * 60_000)
        )
    error = await _error(ann, "message.delete", room=room, seq=seq, cid="d1")
    assert error["code"] == "forbidden" and "5 minutes" in error["message"]
    await store.set_edit_policy(db, "room", room, None)
    await store.set_edit_policy(db, "category", category, None)  # the default: always
    await ann.call("message.delete", room=room, seq=seq, cid="d2")
    assert ann_id


async def test_a_resuming_client_gets_what_changed_while_it_was_away(harness: Harness) -> None:
    room, ann, bob = await _setup(harness)
    seqs = [await _post(ann, room, f"m{i}", f"p{i}") for i in range(4)]
    first = await bob.call("join", room=room, changes=0)
    known, last = first["change_no"], first["last_seq"]
    assert first["changed"] == [] and last == seqs[-1]
    await bob.close()
    await ann.call("message.edit", room=room, seq=seqs[1], text="m1 fixed", cid="e1")
    await ann.call("message.delete", room=room, seq=seqs[2], cid="d1")
    await ann.call("reaction.add", room=room, seq=seqs[0], emoji="✅", cid="r1")
    newer = await _post(ann, room, "m4", "p4")
    back = await harness.login("bob")
    resumed = await back.call("join", room=room, since=last, changes=known)
    assert [m["seq"] for m in resumed["messages"]] == [newer]
    assert [(m["seq"], m["text"], m.get("state", "")) for m in resumed["changed"]] == [
        (seqs[1], "m1 fixed", "edited"),
        (seqs[2], "", "deleted"),
        (seqs[0], "m0", ""),
    ]
    assert resumed["changed"][2]["reactions"] == {"✅": 1}
    assert resumed["change_no"] == known + 3 and resumed["changes_gap"] is False


@pytest.mark.parametrize("compliance_on", [True])
async def test_compliance_keeps_the_old_and_the_new_text(
    db_url: str, tmp_path: Any, compliance_on: bool
) -> None:
    node = await start_node(
        node_config(
            db_url,
            compliance={"enabled": compliance_on, "database_url": f"sqlite:///{tmp_path}/c.db"},
        )
    )
    harness = Harness(node)
    try:
        room, ann, _bob = await _setup(harness)
        seq = await _post(ann, room, "original words", "p1")
        await ann.call("message.edit", room=room, seq=seq, text="second words", cid="e1")
        await ann.call("reaction.add", room=room, seq=seq, emoji="🙂", cid="r1")
        await ann.call("message.delete", room=room, seq=seq, cid="d1")
        async with node.db.read() as conn:
            rows = list(
                await conn.execute(
                    select(compliance_outbox.c.kind, compliance_outbox.c.payload)
                    .where(compliance_outbox.c.kind.in_(("EDIT", "DELETE", "REACT")))
                    .order_by(compliance_outbox.c.id)
                )
            )
        found = [(r.kind, json.loads(r.payload)) for r in rows]
        assert [k for k, _ in found] == ["EDIT", "REACT", "DELETE"]
        assert found[0][1]["original_text"] == "original words"
        assert found[0][1]["new_text"] == "second words"
        assert found[1][1]["emoji"] == "🙂" and found[1][1]["added"] is True
        assert found[2][1]["original_text"] == "second words"
        assert found[2][1]["new_text"] is None
    finally:
        await harness.close()


async def test_changes_race_posts_without_losing_order(harness: Harness) -> None:
    """Edits and reactions sent while posts stream in: every reader sees each message before
    any change to it, and ends with the store's state."""
    room, ann, bob = await _setup(harness)
    seqs = [await _post(ann, room, f"m{i}", f"p{i}") for i in range(5)]
    jobs = [ann.request("post", room=room, text=f"n{i}", cid=f"n{i}") for i in range(20)]
    jobs += [ann.request("message.edit", room=room, seq=s, text=f"e{s}", cid=f"e{s}") for s in seqs]
    replies = await asyncio.gather(*jobs)
    assert all(r["ok"] for r in replies), replies
    seen: dict[int, str] = {}
    while len(seen) < 25 or any(seen.get(s) != f"e{s}" for s in seqs):
        event = await _chat(bob)
        if event["ev"] == "message":
            seen[event["seq"]] = event["text"]
        elif event["ev"] == "message.changed":
            assert event["seq"] in seen, event  # never before its message
            seen[event["seq"]] = event["text"]
    stored = {m.seq: m.text for m in await message_store.latest(harness.node.db, room, 50)}
    assert seen == stored


async def test_changes_take_the_users_post_rate_limit(db_url: str) -> None:
    """Attacker: a flood of reactions is refused like a flood of posts, before the store."""
    node = await start_node(node_config(db_url, limits={"posts_per_user_per_s": 2}))
    harness = Harness(node)
    try:
        await harness.user("ann")
        room = await harness.room()
        ann = await harness.login("ann")
        seq = await _post(ann, room, "target", "p1")
        replies = await asyncio.gather(
            *(
                ann.request("reaction.add", room=room, seq=seq, emoji=f"e{i}", cid=f"r{i}")
                for i in range(10)
            )
        )
        codes = [r["error"]["code"] for r in replies if not r["ok"]]
        assert codes and set(codes) == {"rate_limited"}, replies
        stored = await message_store.latest(node.db, room, 1)
        assert sum((stored[0].reactions or {}).values()) == 10 - len(codes)
    finally:
        await harness.close()
