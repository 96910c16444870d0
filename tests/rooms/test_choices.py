"""``room.choices`` and ``rooms.managed``: what the management pages search and list, within the
rights rules (docs/protocol.md sections 6.27 and 6.28), on both store dialects."""

from __future__ import annotations

from typing import Any

import pytest

from chatserver.client import Client, RequestFailed
from tests.conftest import Harness


async def setup(harness: Harness) -> dict[str, Any]:
    """Category "Research" allows group "team" and alice, denies dave (who is in "team"); alice
    creates there. bob is in no category but General; carol and dave are in "team"."""
    for name in ("root", "alice", "bob", "carol", "dave", "erin"):
        await harness.user(name, admin=name == "root")
    root = await harness.login("root")
    ids = {u["name"]: u["id"] for u in (await root.call("users"))["users"]}
    team = (await root.call("group.create", name="team"))["group"]["id"]
    await root.call(
        "group.members",
        group=team,
        add=[{"kind": "user", "id": ids["carol"]}, {"kind": "user", "id": ids["dave"]}],
    )
    other = (await root.call("group.create", name="outsiders"))["group"]["id"]
    research = (await root.call("category.create", name="Research"))["category"]["id"]
    await root.call(
        "category.update",
        category=research,
        add={
            "allowed": [{"kind": "group", "id": team}, {"kind": "user", "id": ids["alice"]}],
            "denied": [{"kind": "user", "id": ids["dave"]}],
            "creators": [{"kind": "user", "id": ids["alice"]}],
        },
    )
    alice = await harness.login("alice")
    room = (await alice.call("room.create", name="Falcon", category=research))["room"]["id"]
    await alice.call(
        "room.members", room=room, add={"members": [{"kind": "user", "id": ids["carol"]}]}
    )
    return {"ids": ids, "team": team, "other": other, "research": research, "room": room}


async def refused(client: Client, op: str, **fields: Any) -> str:
    with pytest.raises(RequestFailed) as info:
        await client.call(op, **fields)
    return info.value.code


async def test_a_manager_finds_only_whom_the_category_accepts(harness: Harness) -> None:
    s = await setup(harness)
    alice = await harness.login("alice")
    found = await alice.call("room.choices", room=s["room"], query="")
    names = {u["name"] for u in found["users"]}
    # dave is in "team" but denied; bob, erin and root are not in Research: none is offered
    assert names == {"alice", "carol"}
    assert {g["name"] for g in found["groups"]} == {"team"}
    assert found["everyone"] is False
    holders = {(h["kind"], h["name"]) for h in found["holders"]}
    assert holders == {("user", "alice"), ("user", "carol")}
    assert found["holders_complete"] is True
    narrowed = await alice.call("room.choices", room=s["room"], query="CAR")
    assert [u["name"] for u in narrowed["users"]] == ["carol"]
    assert narrowed["groups"] == []
    # the same question for a new room of the category (no holders there)
    fresh = await alice.call("room.choices", category=s["research"], query="")
    assert {u["name"] for u in fresh["users"]} == {"alice", "carol"}
    assert "holders" not in fresh


async def test_others_are_refused_as_the_rules_say(harness: Harness) -> None:
    """The attacker's view: a user who does not manage the room learns nothing from it."""
    s = await setup(harness)
    bob = await harness.login("bob")  # not in Research: the room does not exist for him
    assert await refused(bob, "room.choices", room=s["room"], query="") == "not_found"
    assert await refused(bob, "room.choices", room=99999, query="") == "not_found"
    assert await refused(bob, "room.choices", category=s["research"]) == "not_found"
    carol = await harness.login("carol")  # a member, not a manager; in Research, not a creator
    assert await refused(carol, "room.choices", room=s["room"], query="a") == "forbidden"
    assert await refused(carol, "room.choices", category=s["research"]) == "forbidden"
    assert await refused(carol, "room.choices", query="a") == "bad_request"
    assert (
        await refused(carol, "room.choices", room=s["room"], category=s["research"])
        == "bad_request"
    )
    # and the ops that change a room refuse her forged requests too
    assert (
        await refused(
            carol,
            "room.members",
            room=s["room"],
            add={"managers": [{"kind": "user", "id": s["ids"]["carol"]}]},
        )
        == "forbidden"
    )
    assert await refused(carol, "room.update", room=s["room"], name="pwned") == "forbidden"


async def test_rooms_managed_lists_disabled_rooms_to_their_managers(harness: Harness) -> None:
    s = await setup(harness)
    alice = await harness.login("alice")
    await alice.call("room.disable", room=s["room"])
    managed = (await alice.call("rooms.managed"))["rooms"]
    assert [(r["id"], r["disabled"], r["can_manage"]) for r in managed] == [(s["room"], True, True)]
    assert "members" in managed[0]  # the role lists, as room.get shows a manager
    carol = await harness.login("carol")
    assert (await carol.call("rooms.managed"))["rooms"] == []
    # a manager role the category no longer honours does not count
    root = await harness.login("root")
    await root.call(
        "category.update",
        category=s["research"],
        add={"denied": [{"kind": "user", "id": s["ids"]["alice"]}]},
    )
    assert (await alice.call("rooms.managed"))["rooms"] == []
