"""JSON-lines logs ([log] format = "json"): every log line is one JSON object with the node, and
with [log] connections on, one line per connection opened and closed, never one per message."""

from __future__ import annotations

import json
from pathlib import Path

from chatserver.client import Client
from tests.test_cli import Running, chatserver, env_for

POSTS = 25


async def test_json_logs_one_line_per_connection_open_and_close(tmp_path: Path) -> None:
    env = env_for(
        tmp_path,
        CHATSERVER_NODE_NAME="logs-node",
        CHATSERVER_LOG_FORMAT="json",
        CHATSERVER_LOG_CONNECTIONS="true",
        CHATSERVER_ADMIN_PASSWORD="admin-password-1",
        CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="1000",
    )
    code, _, err = await chatserver("room", "add", "lobby", env=env)
    assert code == 0, err
    server = await Running.start(env)
    try:
        tcp = await server.wait_for(r"tcp clients on tcp://([\d.]+):(\d+)/")
        await server.wait_for(r"management API on")
        client = await Client.connect_tcp(tcp.group(1), int(tcp.group(2)))
        try:
            await client.login("admin", "admin-password-1")
            room = (await client.call("rooms"))["rooms"][0]["id"]
            await client.call("join", room=room)
            for i in range(POSTS):
                await client.call("post", room=room, text=f"message {i}", cid=f"log-test-{i}")
            await client.call("search", query="message")  # a request that is not a post
        finally:
            await client.close()
        await server.wait_for(r"connection_close", timeout=30)
    finally:
        assert await server.stop() == 0
    # The output mixes the node's log (stderr) with what it prints for the operator (stdout,
    # plain text): every log line is one JSON object, and no text line is a log line.
    lines = [line for line in server.lines if line.strip()]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    for line in lines:
        if not line.startswith("{"):
            assert not any(f" {level} " in line for level in ("INFO", "WARNING", "ERROR")), line
    assert records, "the node logged nothing"
    for record in records:
        assert record["node"] == "logs-node"
        assert {"ts", "level", "logger", "msg"} <= record.keys()
        assert record["ts"].endswith("Z")
    opened = [r for r in records if r.get("event") == "connection_open"]
    closed = [r for r in records if r.get("event") == "connection_close"]
    assert len(opened) == 1 and len(closed) == 1, records
    assert opened[0]["conn"] == closed[0]["conn"]
    assert opened[0]["transport"] == "tcp" and closed[0]["user"] is not None
    assert closed[0]["duration_s"] >= 0
    # Nothing scales with the number of messages: far fewer lines than posts.
    assert len(records) < POSTS, [r["msg"] for r in records]


async def test_text_logs_stay_quiet_about_connections_by_default(tmp_path: Path) -> None:
    env = env_for(tmp_path, CHATSERVER_ADMIN_PASSWORD="admin-password-1")
    server = await Running.start(env)
    try:
        tcp = await server.wait_for(r"tcp clients on tcp://([\d.]+):(\d+)/")
        await server.wait_for(r"management API on")
        client = await Client.connect_tcp(tcp.group(1), int(tcp.group(2)))
        await client.login("admin", "admin-password-1")
        await client.close()
    finally:
        assert await server.stop() == 0
    text = "".join(server.lines)
    assert "connection 1 open" not in text and "{" not in text.split("management API")[-1]
