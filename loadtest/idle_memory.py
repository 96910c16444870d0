"""Server memory per idle authenticated connection, TCP and WebSocket (a first benchmark).

    .venv/bin/python loadtest/idle_memory.py [--connections 3000]

Starts ``chatserver run`` on a throwaway SQLite store, opens N connections that each resume the
same session token, and reports the node's RSS growth per connection. The full load generator
(issue 7) will replace this; the number it prints is the one to compare with the 4 KiB (TCP) and
8 KiB (WebSocket) targets. Traffic stays on 127.0.0.1 and the script stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from chatserver.client import Client
from chatserver.testing import free_port

PASSWORD = "idle-memory-benchmark"


async def measure(transport: str, count: int) -> float:
    data = tempfile.mkdtemp(prefix="chatserver-idle-")
    port, ws_port = free_port(), free_port()
    env = dict(
        os.environ,
        CHATSERVER_DATABASE_URL=f"sqlite:///{data}/chat.db",
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{port}",
        CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{ws_port}",
        CHATSERVER_LISTEN_HTTP="",
        CHATSERVER_ADMIN_PASSWORD=PASSWORD,
        CHATSERVER_LIMITS_AUTH_TIMEOUT_S="3600",
        # Every connection resumes the same administrator's token.
        CHATSERVER_LIMITS_MAX_CONNECTIONS_PER_USER="0",
    )
    # The node is another process, started once; blocking on its first lines is fine here.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "chatserver", "run", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    clients: list[Client] = []
    try:
        assert proc.stdout is not None
        while "websocket clients" not in proc.stdout.readline():
            if proc.poll() is not None:
                raise SystemExit("the node did not start")

        def rss_kib() -> int:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

        first = await Client.connect_tcp("127.0.0.1", port)
        clients.append(first)
        await first.login("admin", PASSWORD)
        await asyncio.sleep(0.5)
        before = rss_kib()
        for _ in range(count):
            if transport == "tcp":
                client = await Client.connect_tcp("127.0.0.1", port)
            else:
                client = await Client.connect_websocket(f"ws://127.0.0.1:{ws_port}/")
            clients.append(client)
            assert first.token is not None
            await client.resume(first.token)
        await asyncio.sleep(1)
        per_connection = (rss_kib() - before) / count
        print(
            f"{transport}: {count} idle authenticated connections: "
            f"{per_connection:.2f} KiB of server RSS each"
        )
        return per_connection
    finally:
        for client in clients:
            await client.close()
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000)
    args = parser.parse_args()
    import uvloop

    for transport in ("tcp", "websocket"):
        uvloop.run(measure(transport, args.connections))


if __name__ == "__main__":
    main()
