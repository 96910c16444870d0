"""Where a node's memory per idle connection goes: tracemalloc, by allocating line.

    .venv/bin/python -m loadtest.memory_sites [--connections 3000] [--transport tcp|websocket]

Starts a node (``chatserver run``, throwaway PostgreSQL) inside a wrapper that runs tracemalloc
and writes a snapshot when asked (a trigger file); opens N idle authenticated connections (one
user each) and prints the allocation sites that grew, per connection. tracemalloc counts Python
allocations only (not the kernel's socket buffers or the allocator's slack), so the total is
below the RSS growth that the ``connections`` scenario reports; the sites show what to shrink.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAPPER = """
import os, sys, threading, time, tracemalloc
tracemalloc.start(1)
base = sys.argv[1]
def watch():  # a file, not a signal: uvloop does not run Python signal handlers while idle
    n = 1
    while True:
        if os.path.exists(f"{base}.go{n}"):
            tracemalloc.take_snapshot().dump(f"{base}.{n}.tmp")
            os.rename(f"{base}.{n}.tmp", f"{base}.{n}")
            n += 1
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
from chatserver.cli import main
sys.argv = ["chatserver", "run", "--log-level", "warning"]
main()
"""


async def run(args: argparse.Namespace) -> None:
    import tracemalloc

    from .lean import connect
    from .stack import Stack, provision

    stack = Stack(server_ref=args.server_ref)
    out = Path(tempfile.mkdtemp(prefix="loadtest-tracemalloc-"))
    try:
        url = stack.start_store()
        prov = await provision(url, users=args.connections, rooms=0)
        from chatserver.testing import free_port

        port, ws_port = free_port(), free_port()
        env = stack._env(
            CHATSERVER_LISTEN_TCP=f"127.0.0.1:{port}",
            CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{ws_port}",
            CHATSERVER_LISTEN_HTTP="",
        )
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [sys.executable, "-c", WRAPPER, str(out / "snap")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            cwd=stack.server_dir,
        )
        assert proc.stdout is not None
        while "websocket clients" not in proc.stdout.readline():
            if proc.poll() is not None:
                raise SystemExit("the node did not start")
        ws = args.transport == "websocket"
        target = ws_port if ws else port
        first = await connect("127.0.0.1", target, websocket=ws, token=prov["users"][0][2])
        await asyncio.sleep(1)
        (out / "snap.go1").touch()
        while not (out / "snap.1").exists():  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        conns = [first]
        for _, _, token in prov["users"][1:]:
            conns.append(await connect("127.0.0.1", target, websocket=ws, token=token))
        await asyncio.sleep(1)
        (out / "snap.go2").touch()
        deadline = time.monotonic() + 60
        while not (out / "snap.2").exists() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        n = len(conns) - 1
        before = tracemalloc.Snapshot.load(str(out / "snap.1"))
        after = tracemalloc.Snapshot.load(str(out / "snap.2"))
        diff = after.compare_to(before, "lineno")
        total = sum(d.size_diff for d in diff)
        print(f"{args.transport}: {n} connections: Python allocations grew {total / n:.0f} B each")
        for d in diff[:20]:
            frame = d.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("/main/")[-1]
            print(
                f"  {d.size_diff / n:8.1f} B  {d.count_diff / n:6.2f} blocks"
                f"  {where}:{frame.lineno}"
            )
        for c in conns:
            c.close()
        proc.terminate()
        proc.wait(timeout=30)
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--transport", choices=["tcp", "websocket"], default="tcp")
    parser.add_argument("--server-ref", help="run the node from this git commit")
    args = parser.parse_args()
    import uvloop

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
