"""The directory sync's status and a run now, through the management API and the command line,
against a real OpenLDAP server (tests/userdir/slapd.py) and real nodes, on both store dialects.

``GET /api/v1/directory/sync`` reads the status from the store; ``POST`` runs the sync on the
node holding the lease, or leaves a request that the holder takes within its poll. The
mass-removal guard holds for a run asked for, unless ``override_guard``.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatserver.cli import main
from chatserver.store import admin as admin_store
from chatserver.store import userdir as userdir_store
from chatserver.userdir.sync import REQUEST_POLL_S
from tests.conftest import Harness, node_config, scaled, start_node
from tests.userdir import slapd
from tests.userdir.slapd import Slapd, user_dn
from tests.userdir.test_directory import directory_settings, sign_in

pytestmark = pytest.mark.skipif(not slapd.available(), reason="slapd is not installed")

STATIC = "static-automation-token-0123456789"
SYNC = "/api/v1/directory/sync"


@pytest.fixture
async def ldap_server(tmp_path: Path) -> AsyncIterator[Slapd]:
    server = Slapd(tmp_path / "ldap")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        server.kill()


async def admin_node(
    db_url: str, server: Slapd, name: str = "test-node", **overrides: Any
) -> Harness:
    config = node_config(db_url, management={"token": STATIC}, node={"name": name})
    config = config.model_copy(update={"directory": directory_settings(server, **overrides)})
    node = await start_node(config)
    assert node.directory_sync is not None
    await asyncio.wait_for(node.directory_sync.first_run.wait(), scaled(20))
    return Harness(node)


def url(h: Harness, path: str = SYNC) -> str:
    assert h.node.management is not None and h.node.management.address is not None
    host, port = h.node.management.address
    return f"http://{host}:{port}{path}"


async def call(
    h: Harness, method: str, body: Any = None, *, token: str | None = STATIC, status: int = 200
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url(h), json=body, headers=headers) as response:
            data = await response.json()
            assert response.status == status, (method, response.status, data)
            return data


async def actions(h: Harness, after_id: int = 0) -> list[admin_store.AuditEntry]:
    """The audit entries after ``after_id``, oldest first."""
    entries = await admin_store.audit_entries(h.node.db, limit=100)
    return [e for e in reversed(entries) if e.id > after_id]


async def newest_audit_id(h: Harness) -> int:
    entries = await admin_store.audit_entries(h.node.db, limit=1)
    return entries[0].id if entries else 0


def cli(h: Harness, *argv: str, as_json: bool = True) -> tuple[int, str, str]:
    """``chatserver ARGV [--json] --url …`` in this process (call it in a worker thread)."""
    out, err = io.StringIO(), io.StringIO()
    saved, sys.stdin = sys.stdin, io.StringIO("")
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main([*argv, *(["--json"] if as_json else []), "--url", url(h, "")])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def h(db_url: str, ldap_server: Slapd) -> AsyncIterator[Harness]:
    harness = await admin_node(db_url, ldap_server)
    try:
        yield harness
    finally:
        await harness.close()


async def test_status_after_a_sync_shows_what_it_did(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = time.time() * 1000
    status = await call(h, "GET")
    # The node synced as it started: 5 users (dave disabled), 4 groups, all new.
    assert status["outcome"] == "ok" and status["reason"].startswith("ok: users: 5 created")
    counts = status["counts"]
    assert (counts["users_seen"], counts["groups_seen"]) == (5, 4)
    assert (counts["users_added"], counts["groups_added"]) == (5, 4)
    assert counts["users_disabled"] == counts["users_removed"] == counts["groups_removed"] == 0
    assert status["holder"] == status["last_holder"] == "test-node"
    assert status["lease_until_ms"] > before and not status["running"]
    assert status["last_started_ms"] <= status["last_ended_ms"] <= before
    interval_ms = 3600 * 1000
    assert status["next_sync_ms"] == pytest.approx(status["last_ended_ms"] + interval_ms, abs=5000)
    assert status["guard"] is None and status["request"] is None

    # The command line shows the same (``chatserver directory status``).
    monkeypatch.setenv("CHATSERVER_ADMIN_TOKEN", STATIC)
    code, out, err = await asyncio.to_thread(cli, h, "directory", "status")
    assert code == 0, err
    assert json.loads(out) == await call(h, "GET")
    code, out, err = await asyncio.to_thread(cli, h, "admin", "directory", "status")
    assert code == 0 and json.loads(out)["counts"] == counts
    code, out, err = await asyncio.to_thread(cli, h, "directory", "status", as_json=False)
    assert code == 0, err
    for line in ("lease holder +test-node", "outcome +ok", "users added +5", "groups seen +4"):
        assert re.search(f"^{line}$", out, re.MULTILINE), (line, out)


async def test_a_sync_asked_for_picks_up_a_change_before_the_interval(
    h: Harness, ldap_server: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await sign_in(h, "alice")
    await asyncio.to_thread(ldap_server.add_user, "frank", "Frank Fox", "frank-pw")
    await asyncio.to_thread(
        ldap_server.modify, user_dn("alice"), {"employeeType": [("replace", ["disabled"])]}
    )
    last = await newest_audit_id(h)
    monkeypatch.setenv("CHATSERVER_ADMIN_TOKEN", STATIC)
    code, out, err = await asyncio.to_thread(cli, h, "directory", "sync")  # interval: 1 hour
    assert code == 0, err
    answer = json.loads(out)
    assert answer["ran"] is True
    counts = answer["status"]["counts"]
    assert (counts["users_seen"], counts["users_added"], counts["users_disabled"]) == (6, 1, 1)
    assert counts["users_removed"] == 0
    stored = {u.name: u for u in (await userdir_store.directory_users(h.node.db)).values()}
    assert "frank" in stored and stored["alice"].disabled
    bye = await alice.next_event("bye", timeout=scaled(5))
    assert bye["reason"] == "disabled"
    entries = await actions(h, last)
    assert [(e.actor, e.action, e.target) for e in entries] == [
        ("token", "directory.sync.request", "directory"),
        ("directory", "directory.sync", "directory"),
    ]
    assert entries[0].after == {"override_guard": False}
    assert entries[1].after["requested_by"] == "token"
    assert "override_guard" not in entries[1].after
    assert (await call(h, "GET"))["request"] is None  # taken by the run


async def test_the_guard_stops_a_sync_asked_for_unless_overridden(
    db_url: str, ldap_server: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await admin_node(db_url, ldap_server, max_removal_share=0.3)
    try:
        for uid in ("bob", "carol", "erin"):
            await asyncio.to_thread(ldap_server.delete, user_dn(uid))
        error = (await call(h, "POST", {}, status=409))["error"]
        assert "mass-removal guard" in error["message"] and "3 of 4" in error["message"]
        assert "override_guard" in error["message"]
        stored = await userdir_store.directory_users(h.node.db)
        assert [u.name for u in stored.values() if u.disabled] == ["dave"]  # nothing changed
        status = await call(h, "GET")
        assert status["outcome"] == "stopped" and "3 of 4" in status["reason"]
        assert status["guard"] == {"kind": "users", "leaving": 3, "total": 4, "max_share": 0.3}
        assert status["counts"] is None  # the last run's, and it did nothing

        last = await newest_audit_id(h)
        monkeypatch.setenv("CHATSERVER_ADMIN_TOKEN", STATIC)
        code, _, err = await asyncio.to_thread(cli, h, "directory", "sync")
        assert code == 1 and "409 conflict" in err and "mass-removal guard" in err
        code, out, err = await asyncio.to_thread(cli, h, "directory", "sync", "--override-guard")
        assert code == 0, err
        answer = json.loads(out)
        assert answer["ran"] and answer["status"]["outcome"] == "ok"
        assert answer["status"]["guard"] is None
        counts = answer["status"]["counts"]
        assert (counts["users_disabled"], counts["users_removed"]) == (3, 3)
        stored = await userdir_store.directory_users(h.node.db)
        assert sorted(u.name for u in stored.values() if u.disabled) == [
            "bob",
            "carol",
            "dave",
            "erin",
        ]
        entries = [(e.action, e.after) for e in await actions(h, last)]
        assert entries[0] == ("directory.sync.request", {"override_guard": False})
        assert entries[1][0] == "directory.sync.stopped"
        assert entries[2] == ("directory.sync.request", {"override_guard": True})
        assert entries[3][0] == "directory.sync" and entries[3][1]["override_guard"] is True
        assert len(entries) == 4
    finally:
        await h.close()


async def test_a_node_without_the_lease_leaves_the_request_to_the_holder(
    db_url: str, ldap_server: Slapd
) -> None:
    holder = await admin_node(db_url, ldap_server)  # takes the lease as it starts
    other = await admin_node(db_url, ldap_server, name="other-node")
    try:
        first = await call(other, "GET")
        assert first["holder"] == "test-node"
        assert await call(holder, "GET") == first  # every node reads the same status
        await asyncio.to_thread(ldap_server.add_user, "frank", "Frank Fox", "frank-pw")
        answer = await call(other, "POST", {})
        assert answer["ran"] is False and "test-node" in answer["message"]
        request = answer["status"]["request"]
        assert request is not None and request["requested_by"] == "token"
        # The holder takes it within its poll (the interval is an hour).
        deadline = time.monotonic() + scaled(REQUEST_POLL_S * 2 + 10)
        while True:
            status = await call(other, "GET")
            if status["request"] is None and not status["running"]:
                if status["last_started_ms"] > first["last_ended_ms"]:
                    break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
        assert status["holder"] == "test-node" and status["counts"]["users_added"] == 1
        assert "frank" in {
            u.name for u in (await userdir_store.directory_users(other.node.db)).values()
        }
    finally:
        await other.close()
        await holder.close()


async def test_others_are_refused_and_nothing_is_asked(h: Harness) -> None:
    alice = await sign_in(h, "alice")  # a directory user, not an administrator
    last = await newest_audit_id(h)
    for method, body in (("GET", None), ("POST", {}), ("POST", {"override_guard": True})):
        for token, status in ((None, 401), ("not-a-token", 401), (alice.token, 403)):
            error = await call(h, method, body, token=token, status=status)
            assert set(error) == {"error"}
    assert (await call(h, "GET"))["request"] is None
    assert await actions(h, last) == []
    # a body the route does not know is refused before anything is asked
    await call(h, "POST", {"override_guard": "yes"}, status=400)
    await call(h, "POST", {"force": True}, status=400)
    assert (await call(h, "GET"))["request"] is None and await actions(h, last) == []


async def test_without_a_directory_the_routes_say_so(harness: Harness) -> None:
    assert harness.node.directory_sync is None
    await harness.user("root", admin=True)
    root = await harness.login("root")
    for method, body in (("GET", None), ("POST", {})):
        error = (await call(harness, method, body, token=root.token, status=409))["error"]
        assert error["code"] == "conflict" and "directory is not configured" in error["message"]
