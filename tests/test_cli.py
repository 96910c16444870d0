"""The ``chatserver`` command, run as a separate process the way an operator runs it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from chatserver.client import Client
from chatserver.testing import PostgresCluster, free_port
from tests.conftest import scaled


def env_for(tmp_path: Path, url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env.update(
        CHATSERVER_DATABASE_URL=url or f"sqlite:///{tmp_path}/deep/dir/chat.db",
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_MANAGEMENT=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_HTTP=f"127.0.0.1:{free_port()}",
    )
    env.update(extra)
    return env


async def chatserver(
    *args: str, env: dict[str, str], stdin: str = "", timeout: float = 60
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatserver",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), scaled(timeout))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Running:
    """``chatserver run`` in the background; its output is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, env: dict[str, str]) -> Running:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chatserver",
            "run",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(scaled(timeout)):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError("exited; output:\n" + "".join(self.lines))
                self.lines.append(line)
                if match := re.search(pattern, line):
                    return match

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), scaled(30))
        self.lines.append(rest.decode())
        return await self.proc.wait()


@pytest.mark.parametrize("args", [[], ["run"], ["migrate"], ["user", "add"], ["room", "add"]])
async def test_help(args: list[str], tmp_path: Path) -> None:
    code, out, _ = await chatserver(*args, "--help", env=env_for(tmp_path))
    assert code == 0 and "usage: chatserver" in out and "--help" in out


async def test_user_and_room_commands_work_on_a_fresh_store(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    code, out, err = await chatserver(
        "user", "add", "alice", "--password-stdin", env=env, stdin="s3cret-pass\n"
    )
    assert code == 0, err
    assert "added user 'alice'" in out
    code, _, err = await chatserver(
        "user", "add", "alice", "--password-stdin", env=env, stdin="another-pass\n"
    )
    assert code == 1 and "exists" in err
    code, _, err = await chatserver(
        "user", "add", "bob", "--password-stdin", env=env, stdin="short\n"
    )
    assert code == 2 and "at least 8" in err
    code, out, err = await chatserver("room", "add", "lobby", "--description", "hi", env=env)
    assert code == 0 and "added room 'lobby'" in out, err
    code, _, err = await chatserver("room", "add", "lobby", env=env)
    assert code == 1 and "exists" in err


async def test_run_creates_admin_once_and_serves_clients(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    code, _, err = await chatserver("room", "add", "lobby", env=env)
    assert code == 0, err
    server = await Running.start(env)
    try:
        password = (await server.wait_for(r"administrator 'admin' with password: (\S+)")).group(1)
        tcp = await server.wait_for(r"tcp clients on tcp://([\d.]+):(\d+)/")
        await server.wait_for(r"websocket clients on ws://")
        client = await Client.connect_tcp(tcp.group(1), int(tcp.group(2)))
        await client.login("admin", password)
        rooms = await client.call("rooms")
        assert [r["name"] for r in rooms["rooms"]] == ["lobby"]
        await client.call("join", room=rooms["rooms"][0]["id"])
        await client.call("post", room=rooms["rooms"][0]["id"], text="hello", cid="1")
    finally:
        code = await server.stop()
    assert code == 0
    bye = await client.next_event("bye", timeout=scaled(5))
    assert bye["reason"] == "shutting_down"
    await client.close()

    server = await Running.start(env)  # a second start: the admin exists, no password shown
    try:
        await server.wait_for(r"websocket clients on")
    finally:
        await server.stop()
    assert not any("password" in line for line in server.lines)


async def test_admin_password_from_environment(tmp_path: Path) -> None:
    env = env_for(tmp_path, CHATSERVER_ADMIN_PASSWORD="chosen-password")
    server = await Running.start(env)
    try:
        await server.wait_for("password from CHATSERVER_ADMIN_PASSWORD")
        tcp = await server.wait_for(r"tcp clients on tcp://([\d.]+):(\d+)/")
        client = await Client.connect_tcp(tcp.group(1), int(tcp.group(2)))
        await client.login("admin", "chosen-password")
        await client.close()
    finally:
        await server.stop()


async def test_invalid_configuration_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "chat.toml"
    config.write_text("[chat]\ndefault_chat_history = 0\n")
    code, _, err = await chatserver("run", "--config", str(config), env=env_for(tmp_path))
    assert code == 2 and "chat.default_chat_history" in err
    code, _, err = await chatserver(
        "run", env=env_for(tmp_path, CHATSERVER_LISTEN_TCP="localhost:99999")
    )
    assert code == 2 and "listen.tcp" in err


async def test_port_in_use_is_reported(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    first = await Running.start(env)
    try:
        await first.wait_for("websocket clients on")
        code, _, err = await chatserver("run", env=env)
        assert code == 2 and "listen.tcp: cannot listen" in err
    finally:
        await first.stop()


@pytest.mark.postgres
async def test_postgres_needs_migrate_before_run(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    url = await pg_cluster.create_database("cli_fresh")
    env = env_for(tmp_path, url)
    code, _, err = await chatserver("run", env=env)
    assert code == 2 and "chatserver migrate" in err
    code, _, err = await chatserver(
        "user", "add", "x", "--password-stdin", env=env, stdin="12345678\n"
    )
    assert code == 2 and "chatserver migrate" in err
    code, out, err = await chatserver("migrate", env=env)
    assert code == 0 and "revision" in out, err
    code, _, err = await chatserver("room", "add", "lobby", env=env)
    assert code == 0, err
    server = await Running.start(env)
    try:
        await server.wait_for("created administrator")
        await server.wait_for("websocket clients on")
    finally:
        assert await server.stop() == 0


async def test_unreachable_store_is_reported_without_a_traceback(tmp_path: Path) -> None:
    env = env_for(tmp_path, f"postgresql://nobody@127.0.0.1:{free_port()}/chat")
    for args in (["run"], ["migrate"]):
        code, _, err = await chatserver(*args, env=env)
        assert code == 1 and "cannot use the store" in err and "Traceback" not in err
