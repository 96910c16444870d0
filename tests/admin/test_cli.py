"""``chatserver admin …`` and ``chatserver selftest`` end to end: a real node process, the real
command line, the real management port."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatserver.cli_common import cli_actor
from tests.test_cli import Running, chatserver, env_for

ADMIN_PASSWORD = "admin-pass-123"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    env = env_for(tmp_path, CHATSERVER_ADMIN_PASSWORD=ADMIN_PASSWORD)
    running = await Running.start(env)
    match = await running.wait_for(r"management API on (http://[\d.]+:\d+)/")
    await running.wait_for(r"node .* started")
    env["CHATSERVER_ADMIN_URL"] = match.group(1)
    try:
        yield env
    finally:
        assert await running.stop() == 0


async def admin(env: dict[str, str], *args: str, stdin: str = "") -> Any:
    """Run ``chatserver admin ARGS --json`` and return the parsed output."""
    code, out, err = await chatserver("admin", *args, "--json", env=env, stdin=stdin)
    assert code == 0, f"admin {args}: {err}"
    return json.loads(out)


async def test_every_resource_group_from_the_command_line(node: dict[str, str]) -> None:
    env = node
    # No token: a terminal is needed to ask for one.
    code, _, err = await chatserver("admin", "users", "list", env=env)
    assert code == 1 and "CHATSERVER_ADMIN_TOKEN" in err
    # Wrong password.
    code, _, err = await chatserver(
        "admin", "login", "--user", "admin", "--password-stdin", env=env, stdin="nope\n"
    )
    assert code == 1 and "401" in err
    code, out, err = await chatserver(
        "admin",
        "login",
        "--user",
        "admin",
        "--password-stdin",
        env=env,
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert code == 0, err
    token = re.fullmatch(r"export CHATSERVER_ADMIN_TOKEN=(\S+)\n", out)
    assert token is not None
    env = {**env, "CHATSERVER_ADMIN_TOKEN": token.group(1)}

    # users and policy
    alice = await admin(env, "users", "add", "alice", "--password-stdin", stdin="alice-pass-1\n")
    assert alice["name"] == "alice" and alice["is_admin"] is False
    off = await admin(env, "users", "policy", str(alice["id"]), "off")
    assert off["persistent_chat_enabled"] is False and off["policy"] is False
    assert {u["name"] for u in await admin(env, "users", "list")} == {"admin", "alice"}

    # groups
    group = await admin(env, "groups", "add", "legal", "--description", "Legal team")
    group = await admin(env, "groups", "members", str(group["id"]), "--add", "user:alice")
    assert group["members"] == [{"kind": "user", "id": alice["id"]}]

    # categories: an ethical wall
    category = await admin(
        env,
        "categories",
        "add",
        "Deals",
        "--allow",
        "group:legal",
        "--deny",
        "user:admin",
        "--no-invitations",
    )
    assert category["allowed"] == [{"kind": "group", "id": group["id"]}]
    assert category["denied"] == [{"kind": "user", "id": 1}]
    assert category["invitations"] is False
    eligible = await admin(env, "categories", "eligible", str(category["id"]))
    assert [u["name"] for u in eligible] == ["alice"]

    # add-ins and rooms
    addin = await admin(env, "addins", "add", "board", "https://example.com/board")
    assert addin["url"] == "https://example.com/board"
    room = await admin(
        env,
        "rooms",
        "add",
        "merger",
        "--category",
        str(category["id"]),
        "--member",
        "group:legal",
        "--privacy",
        "closed",
    )
    room = await admin(env, "rooms", "update", str(room["id"]), "--addin", str(addin["id"]))
    assert room["addin"] == addin["id"]
    listed = await admin(env, "rooms", "list", "--addin", str(addin["id"]))
    assert [r["name"] for r in listed] == ["merger"]
    disabled = await admin(env, "rooms", "disable", str(room["id"]))
    assert disabled["disabled"] is True

    # selftest: posts two messages into its own room
    code, out, err = await chatserver("selftest", env=env)
    assert code == 0, out + err
    assert "selftest passed" in out
    assert len(re.findall(r"^ok ", out, re.M)) == 13

    # messages: find, replace, then clear the room
    selftest_room = (await admin(env, "rooms", "list", "--contains", "selftest"))[0]
    found = await admin(env, "messages", "search", "--room", str(selftest_room["id"]))
    assert len(found["messages"]) == 2
    replaced = await admin(
        env,
        "messages",
        "replace",
        "--room",
        str(selftest_room["id"]),
        "--keyword",
        "FROM USER 1",
    )
    assert replaced["changed"] == 1
    found = await admin(env, "messages", "search", "--room", str(selftest_room["id"]))
    assert [m["state"] for m in found["messages"]] == ["replaced", ""]
    assert found["messages"][0]["text"] == "This message was replaced by the administrator."
    cleared = await admin(env, "rooms", "clear", str(selftest_room["id"]), "--until", "2999-01-01")
    assert cleared == {"removed": 2, "through_seq": 2}

    # config, sessions, pool, compliance, audit
    config = await admin(env, "config", "set", "default_chat_history=40")
    assert config["effective"]["default_chat_history"] == 40
    config = await admin(env, "config", "unset", "default_chat_history")
    assert config["effective"]["default_chat_history"] == 30
    sessions = await admin(env, "sessions", "list")
    assert sessions["sessions"] == []  # the selftest users have left
    pool = await admin(env, "pool", "show")
    assert len(pool) == 1 and pool[0]["this_node"] is True
    compliance = await admin(env, "compliance", "show")
    assert compliance["enabled"] is False
    audit = await admin(env, "audit", "list", "--limit", "100")
    actions = [entry["action"] for entry in audit]
    for action in (
        "user.create",
        "user.policy",
        "group.create",
        "group.members",
        "category.create",
        "addin.create",
        "room.create",
        "room.update",
        "room.disable",
        "messages.replace",
        "room.clear",
        "config.update",
    ):
        assert action in actions, action
    # the rest is the node's first administrator, and the selftest's users and room
    others = sorted((e["actor"], e["action"]) for e in audit if e["actor"] != "admin")
    assert others == [
        (cli_actor(), "room.create"),
        (cli_actor(), "user.create"),
        (cli_actor(), "user.create"),
        ("system", "user.create"),
    ]

    # a readable error for a bad request
    code, _, err = await chatserver("admin", "addins", "add", "bad", "ftp://example.com", env=env)
    assert code == 1 and "400" in err and "url" in err


async def test_selftest_fails_when_the_node_is_down(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    code, _, err = await chatserver("migrate", env=env)
    assert code == 0, err
    # Connecting to a node that is down fails at once; the bound is for preparing the users
    # (two password hashes, the room and its members), seconds on a loaded machine.
    code, out, _ = await chatserver("selftest", "--timeout", "30", env=env)
    assert code == 1
    assert re.search(r"^FAIL  user 1: connect", out, re.M), out
