"""A first run as a new user meets it (issue 21's frictions): the self-test keeps nothing public
behind, ``admin login`` without a terminal says what to do, the start-up banner says where the API
description is and whether compliance is on."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chatserver.admin.client import table
from chatserver.client import Client
from tests.conftest import scaled
from tests.test_cli import Running, chatserver, env_for

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow  # about 35 s: three processes, the self-test twice
async def test_selftest_leaves_nothing_public_behind(tmp_path: Path) -> None:
    env = env_for(tmp_path, CHATSERVER_ADMIN_PASSWORD="admin-password-1")
    db = tmp_path / "deep" / "dir" / "chat.db"
    code, _, err = await chatserver("room", "add", "lobby", env=env)
    assert code == 0, err
    code, _, err = await chatserver(
        "user", "add", "alice", "--password-stdin", env=env, stdin="alice-pass-1\n"
    )
    assert code == 0, err
    server = await Running.start(env)
    try:
        tcp = await server.wait_for(r"tcp clients on tcp://([\d.]+):(\d+)/")
        await server.wait_for(r"management API on")
        for _ in range(2):  # and again, on the same store
            code, out, err = await chatserver("selftest", env=env)
            assert code == 0 and "selftest passed" in out, out + err
            assert "kept for the next run" in out
        with sqlite3.connect(db) as conn:
            privacy = conn.execute("SELECT privacy FROM rooms WHERE name = 'selftest'").fetchall()
        assert privacy == [("secret",)]
        # A user finds only the rooms that were there for users: not the self-test's.
        alice = await Client.connect_tcp(tcp.group(1), int(tcp.group(2)))
        try:
            await alice.login("alice", "alice-pass-1")
            rooms = (await alice.call("rooms"))["rooms"]
        finally:
            await alice.close()
        assert [r["name"] for r in rooms] == ["lobby"]
    finally:
        assert await server.stop() == 0


async def test_admin_login_without_a_terminal_says_what_to_do(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    # chatserver() gives the command a pipe, not a terminal, on standard input.
    code, out, err = await chatserver("admin", "login", env=env)
    assert code == 2 and "--password-stdin" in err and "Traceback" not in err, err
    code, out, err = await chatserver("admin", "login", "--password-stdin", env=env, stdin="x\n")
    assert code == 2 and "--user" in err and "Traceback" not in err, err
    code, out, _ = await chatserver("admin", "login", "--help", env=env)
    assert code == 0
    assert re.search(r"--password-stdin\s+read the password", out), out


async def test_banner_names_the_api_description_and_the_compliance_state(tmp_path: Path) -> None:
    for enabled in ("false", "true"):
        env = env_for(
            tmp_path / enabled,
            CHATSERVER_COMPLIANCE_ENABLED=enabled,
            CHATSERVER_COMPLIANCE_DATABASE_URL=f"sqlite:///{tmp_path}/{enabled}/comp.db",
        )
        server = await Running.start(env)
        try:
            api = await server.wait_for(r"management API on (\S+) \((.*)\)")
            state = await server.wait_for(r"compliance capture is (on|off)")
            # /openapi.json does answer 401 without a token, as the banner says.
            status = await asyncio.to_thread(status_of, api.group(1) + "openapi.json")
        finally:
            assert await server.stop() == 0
        assert "needs an administrator's token" in api.group(2) and status == 401
        assert state.group(1) == ("on" if enabled == "true" else "off")
        if enabled == "true":
            assert "chatserver compliance export" in state.string


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_audit_list_prints_iso_times() -> None:
    rows = [{"id": 1, "ts": 1_700_000_000_123, "actor": "admin", "action": "x", "target": "y"}]
    printed = table(rows, ["id", "ts", "actor", "action", "target"])
    assert "2023-11-14T22:13:20Z" in printed and "1700000000123" not in printed


async def test_the_readme_python_snippet_runs_twice(tmp_path: Path) -> None:
    """The README's snippet, as a new user runs it (the same file twice), against a node with
    the tour's user and room (the snippet's addresses swapped for this test's free ports)."""
    readme = README.read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S)
    assert snippet is not None
    assert ".venv/bin/python" in readme[: snippet.start()].rsplit("##", 1)[-1]
    env = env_for(tmp_path)
    tcp, http = env["CHATSERVER_LISTEN_TCP"], env["CHATSERVER_LISTEN_HTTP"]
    code = snippet.group(1).replace('"127.0.0.1", 5041', f'"127.0.0.1", {tcp.split(":")[1]}')
    code = code.replace("http://127.0.0.1:5081", f"http://{http}")
    (tmp_path / "hello.py").write_text(code)
    (tmp_path / "notes.txt").write_text("some notes\n")
    for args in (
        ("user", "add", "alice", "--password-stdin"),
        ("room", "add", "lobby", "--description", "Say hello"),
    ):
        result, _, err = await chatserver(*args, env=env, stdin="her password\n")
        assert result == 0, err
    server = await Running.start(env)
    try:
        await server.wait_for(r"management API on")
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "hello.py",
                cwd=tmp_path,
                env={**env, "PYTHONPATH": str(README.parent)},  # this checkout's chatserver
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), scaled(60))
            assert proc.returncode == 0, out.decode()
            assert "'text': 'hello'" in out.decode() and "some notes" in out.decode()
    finally:
        assert await server.stop() == 0
