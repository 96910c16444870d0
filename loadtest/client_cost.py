"""Client-side CPU per request and per received event: the generic client against the lean one.

    .venv/bin/python -m loadtest.client_cost [--requests 20000] [--receivers 50]

Runs the minimal broadcaster (``loadtest.broadcaster``, which answers at once and has no store)
in a subprocess, and measures this process's CPU time (``time.process_time``) for:

- ``post`` round trips, 16 in flight: ``chatserver.client.Client.call`` vs ``loadtest.lean``;
- received ``message`` events on ``receivers`` connections: ``Client`` (decode every event,
  queue it, a consumer task takes it) vs ``Lean`` in count mode (one decode per read).

The ratio is why the load generator uses its own lean protocol (loadtest/README.md). Its output
is not kept (raw output is not tracked): run it to see the ratio on the machine at hand.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

from chatserver.client import Client
from chatserver.testing import free_port

from .lean import Lean, connect

TEXT = "x" * 100


async def generic_requests(port: int, n: int) -> float:
    client = await Client.connect_tcp("127.0.0.1", port)
    await client.call("hello", protocol=1)
    await client.call("auth", token="t")
    t0 = time.process_time()
    for i in range(0, n, 16):
        await asyncio.gather(
            *(client.call("post", room=1, text=TEXT, cid=f"g{i + j}") for j in range(16))
        )
    cpu = time.process_time() - t0
    await client.close()
    return 1e6 * cpu / n


async def lean_requests(port: int, n: int) -> float:
    conn = await connect("127.0.0.1", port, token="t")
    done = asyncio.get_running_loop().create_future()
    state = {"sent": 0, "acked": 0}

    def send() -> None:
        state["sent"] += 1
        conn.send("post", acked, room=1, text=TEXT, cid=f"l{state['sent']}")

    def acked(reply: dict[str, Any], t0: int) -> None:
        state["acked"] += 1
        if state["sent"] < n:
            send()
        elif state["acked"] == n and not done.done():
            done.set_result(None)

    t0 = time.process_time()
    for _ in range(16):
        send()
    await done
    cpu = time.process_time() - t0
    conn.close()
    return 1e6 * cpu / n


async def events(port: int, posts: int, receivers: int, lean: bool) -> float:
    room = 2 if lean else 3
    poster = await connect("127.0.0.1", port, token="p")
    got = 0
    total = posts * receivers
    finished = asyncio.get_running_loop().create_future()
    if lean:
        conns: list[Lean] = []
        for _ in range(receivers):
            c = await connect("127.0.0.1", port, token="r")
            c.count_mode = True
            c.on_sample = lambda body: None
            await c.call("join", room=room)
            conns.append(c)
    else:
        clients: list[Client] = []
        for _ in range(receivers):
            c2 = await Client.connect_tcp("127.0.0.1", port)
            await c2.call("hello", protocol=1)
            await c2.call("auth", token="r")
            await c2.call("join", room=room)
            clients.append(c2)

        async def consume(client: Client) -> None:
            nonlocal got
            while True:
                await client.next_event("message", timeout=30)
                got += 1
                if got == total and not finished.done():
                    finished.set_result(None)

        consumers = [asyncio.create_task(consume(c)) for c in clients]
    t0 = time.process_time()
    for i in range(0, posts, 16):
        await asyncio.gather(
            *(poster.call("post", room=room, text=TEXT, cid=f"e{i + j}") for j in range(16))
        )
    if lean:
        while sum(c.events for c in conns) < total:  # noqa: ASYNC110 - polls counters
            await asyncio.sleep(0.001)
    else:
        await finished
    cpu = time.process_time() - t0
    if lean:
        for c in conns:
            c.close()
    else:
        for task in consumers:
            task.cancel()
        for c2 in clients:
            await c2.close()
    poster.close()
    return 1e6 * cpu / total


async def main(args: argparse.Namespace) -> None:
    tcp, ws = free_port(), free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
        [sys.executable, "-m", "loadtest.broadcaster", "--tcp", str(tcp), "--ws", str(ws)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        g = await generic_requests(tcp, args.requests)
        lean = await lean_requests(tcp, args.requests)
        print(f"post round trip, client CPU: generic Client {g:.1f} µs, lean {lean:.1f} µs")
        posts = max(16, args.requests // args.receivers // 16 * 16)
        ge = await events(tcp, posts, args.receivers, lean=False)
        le = await events(tcp, posts, args.receivers, lean=True)
        print(f"received message event, client CPU: generic Client {ge:.2f} µs, lean {le:.2f} µs")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--receivers", type=int, default=50)
    import uvloop

    uvloop.run(main(parser.parse_args()))
