"""Audit completeness (issue 14, item 9): every way of administering writes the audit log.

Before, only the management API's handlers wrote entries: a category created, a room renamed, a
user's policy switched off over the client protocol, or a user added with ``chatserver user
add``, left no trace, although the documentation said every change is recorded. Now governance
records each change it commits, whichever front end asked, accounts the users it creates, and
the command line its own changes (as ``cli:`` and the operating-system user).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatserver.cli_common import cli_actor
from chatserver.client import Client, RequestFailed
from tests.conftest import Harness, node_config, start_node
from tests.test_cli import chatserver, env_for

STATIC = "static-token-for-the-audit-tests"


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    node = await start_node(node_config(db_url, management={"token": STATIC}))
    harness = Harness(node)
    try:
        yield harness
    finally:
        await harness.close()


async def audit_log(h: Harness, **params: str) -> list[dict[str, Any]]:
    """``GET /api/v1/audit``, oldest first."""
    assert h.node.management is not None and h.node.management.address is not None
    host, port = h.node.management.address
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://{host}:{port}/api/v1/audit",
            params={"limit": "1000", **params},
            headers={"Authorization": f"Bearer {STATIC}"},
        ) as response,
    ):
        assert response.status == 200
        return list(reversed(await response.json()))


def user(uid: int) -> dict[str, Any]:
    return {"kind": "user", "id": uid}


async def login(h: Harness, name: str, *, admin: bool = False) -> tuple[Client, int]:
    await h.user(name, admin=admin)
    client = await h.login(name)
    assert client.user is not None
    return client, int(client.user["id"])


async def test_changes_over_the_client_protocol_are_audited(h: Harness) -> None:
    """Every governance op an administrator sends over the client protocol has its entry:
    the administrator's name and id, the op, the target, the state before and after."""
    root, root_id = await login(h, "root", admin=True)
    _alice, alice = await login(h, "alice")
    since = (await audit_log(h))[-1]["id"]

    category = (await root.call("category.create", name="Deals", chat_history=False))["category"]
    cid = category["id"]
    await root.call("category.update", category=cid, add={"allowed": [user(alice)]})
    group = (await root.call("group.create", name="legal"))["group"]
    gid = group["id"]
    await root.call("group.members", group=gid, add=[user(alice)])
    await root.call("user.policy", user=alice, persistent_chat_enabled=True)
    room = (await root.call("room.create", name="merger", category=cid))["room"]
    rid = room["id"]
    await root.call("room.update", room=rid, description="Project Falcon")
    await root.call("room.members", room=rid, add={"members": [user(alice)]})
    await root.call("room.move", room=rid, category=1)
    await root.call("room.disable", room=rid)
    await root.call("room.enable", room=rid)
    await root.call("room.delete", room=rid)
    await root.call("group.delete", group=gid)
    await root.call("category.delete", category=cid)

    entries = [e for e in await audit_log(h) if e["id"] > since]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("category.create", f"category:{cid}"),
        ("category.update", f"category:{cid}"),
        ("group.create", f"group:{gid}"),
        ("group.members", f"group:{gid}"),
        ("user.policy", f"user:{alice}"),
        ("room.create", f"room:{rid}"),
        ("room.update", f"room:{rid}"),
        ("room.members", f"room:{rid}"),
        ("room.move", f"room:{rid}"),
        ("room.disable", f"room:{rid}"),
        ("room.enable", f"room:{rid}"),
        ("room.delete", f"room:{rid}"),
        ("group.delete", f"group:{gid}"),
        ("category.delete", f"category:{cid}"),
    ]
    assert {(e["actor"], e["actor_id"]) for e in entries} == {("root", root_id)}
    by = {e["action"]: e for e in entries}
    assert by["category.create"]["before"] is None
    assert by["category.create"]["after"]["name"] == "Deals"
    assert by["category.create"]["after"]["chat_history"] is False
    assert by["category.update"]["before"]["allowed"] == []
    assert by["category.update"]["after"]["allowed"] == [user(alice)]
    assert by["group.members"]["before"]["members"] == []
    assert by["group.members"]["after"]["members"] == [user(alice)]
    assert by["user.policy"]["before"]["policy"] is None
    assert by["user.policy"]["after"] == {
        "id": alice,
        "name": "alice",
        "display_name": "alice",
        "is_admin": False,
        "policy": True,
    }
    assert by["room.update"]["before"]["description"] == ""
    assert by["room.update"]["after"]["description"] == "Project Falcon"
    assert by["room.members"]["after"]["members"] == [user(alice)]
    assert by["room.move"]["before"]["category"] == cid
    assert by["room.move"]["after"]["category"] == 1
    assert by["room.disable"]["after"]["disabled"] is True
    assert by["room.delete"]["after"] is None and by["room.delete"]["before"]["id"] == rid
    assert "last_seq" not in by["room.create"]["after"]


async def test_a_room_manager_changing_their_room_is_audited_and_a_refusal_is_not(
    h: Harness,
) -> None:
    """Governance changes by anyone are recorded: a manager's change to their room names the
    manager. A refused op changes nothing and records nothing."""
    root, _ = await login(h, "root", admin=True)
    carol, carol_id = await login(h, "carol")
    _bob, bob = await login(h, "bob")
    rid = (await root.call("room.create", name="team", privacy="closed"))["room"]["id"]
    await root.call("room.members", room=rid, add={"managers": [user(carol_id)]})
    since = (await audit_log(h))[-1]["id"]

    await carol.call("room.update", room=rid, name="team-2")
    await carol.call("room.members", room=rid, add={"members": [user(bob)]})
    with pytest.raises(RequestFailed):
        await carol.call("category.create", name="mine")  # administrators only
    with pytest.raises(RequestFailed):
        await carol.call("room.delete", room=rid)
    with pytest.raises(RequestFailed):
        await carol.call("user.policy", user=bob, persistent_chat_enabled=False)

    entries = [e for e in await audit_log(h) if e["id"] > since]
    assert [(e["actor"], e["actor_id"], e["action"]) for e in entries] == [
        ("carol", carol_id, "room.update"),
        ("carol", carol_id, "room.members"),
    ]
    assert entries[0]["before"]["name"] == "team" and entries[0]["after"]["name"] == "team-2"
    assert (await audit_log(h, actor="carol")) == entries


async def test_a_change_over_the_api_is_recorded_once(h: Harness) -> None:
    """The management API calls the same governance: one entry per change, not two."""
    root, _ = await login(h, "root", admin=True)
    rid = (await root.call("room.create", name="lobby", privacy="open"))["room"]["id"]
    since = (await audit_log(h))[-1]["id"]
    assert h.node.management is not None and h.node.management.address is not None
    host, port = h.node.management.address
    async with (
        aiohttp.ClientSession() as http,
        http.patch(
            f"http://{host}:{port}/api/v1/rooms/{rid}",
            json={"description": "new"},
            headers={"Authorization": f"Bearer {STATIC}"},
        ) as response,
    ):
        assert response.status == 200
    entries = [e for e in await audit_log(h) if e["id"] > since]
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("token", "room.update", f"room:{rid}")
    ]


async def test_the_command_line_s_changes_are_audited(db_url: str, tmp_path: Path) -> None:
    """``chatserver user add`` and ``chatserver room add`` write the store themselves (no node
    need run); their entries name ``cli:`` and the operating-system user."""
    env = env_for(tmp_path, url=db_url)
    code, _, err = await chatserver(
        "user", "add", "dora", "--admin", "--password-stdin", env=env, stdin="s3cret-pass\n"
    )
    assert code == 0, err
    code, _, err = await chatserver("room", "add", "hall", "--description", "hi", env=env)
    assert code == 0, err

    node = await start_node(node_config(db_url, management={"token": STATIC}))
    h = Harness(node)
    try:
        entries = [e for e in await audit_log(h) if e["actor"] == cli_actor()]
    finally:
        await h.close()
    assert [(e["action"], e["actor_id"], e["before"]) for e in entries] == [
        ("user.create", None, None),
        ("room.create", None, None),
    ]
    created_user, created_room = entries[0]["after"], entries[1]["after"]
    assert entries[0]["target"] == f"user:{created_user['id']}"
    assert created_user["name"] == "dora" and created_user["is_admin"] is True
    assert "password" not in str(created_user) and "s3cret" not in str(entries)
    assert entries[1]["target"] == f"room:{created_room['id']}"
    assert created_room["name"] == "hall" and created_room["description"] == "hi"
    assert created_room["privacy"] == "open" and created_room["members"] == []
