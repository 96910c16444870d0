"""Files over the client HTTP listener on PostgreSQL storage (issue 16's numbers).

    python -m loadtest.files [--mb 20] [--concurrent 50] [--sqlite]

Starts a throwaway PostgreSQL cluster and ``chatserver run`` on it, then measures:

1. one upload and one download of an ``--mb`` MB file over loopback, in MB/s, and the same bytes
   copied into and out of the same database with asyncpg alone (rows of the node's chunk size
   in a table of the same shape: the ceiling the store sets); the median of ``--repeat`` rounds
   (5) with the range, after one small file up and down (the node's first request fills its
   caches: ``first_upload_ms``);
2. ``--concurrent`` uploads of that file at once: the node's RSS growth (VmHWM - RSS before)
   and, meanwhile, the delivery latency of chat posts between two other users (p50 / p99),
   measured by a process of its own (``--probe``), so the probe's own event loop is not the one
   pushing the uploads (``--inline-probe``: in this process, as the first runs measured);
   ``--slowest N`` prints the N slowest posts, when they came (seconds from the uploads' start)
   and how much of it was the wait for the post's acknowledgement.

PostgreSQL runs with ``max_wal_size = 4GB`` (``--max-wal-size``), as ``deploy/compose.yaml``
sets it: with the default 1GB the 1 GB of the concurrent uploads starts a checkpoint halfway,
and its end holds one chat commit for 250-380 ms (loadtest/RESULTS.md).

Nothing is asserted: the numbers are printed (the issue's targets: ≥ 100 MB/s each way;
≤ 64 MB of RSS for 50 x 20 MB; chat p99 ≤ 50 ms during the transfers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chatserver.client import Client
from chatserver.client_files import download, upload
from chatserver.store.migrate import upgrade
from chatserver.testing import PostgresCluster, free_port

PASSWORD = "files-benchmark-password"
MB = 1_000_000
ROOT = str(Path(__file__).resolve().parent.parent)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"{key}:\s+(\d+)", text)
    return int(found.group(1)) if found else 0  # KiB


async def _raw_asyncpg(url: str, data: bytes, chunk: int) -> tuple[float, float]:
    """MB/s writing ``data`` as bytea rows of ``chunk`` bytes into a table of file_chunks'
    shape (a logged table, uncompressed storage, one statement per row committed as the node
    does: without waiting for the WAL flush) and reading them back, with asyncpg alone."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE raw_chunks (file_id bigint, idx int, data bytea,"
            " PRIMARY KEY (file_id, idx));"
            " ALTER TABLE raw_chunks ALTER COLUMN data SET STORAGE EXTERNAL"
        )
        started = time.perf_counter()
        for index in range(0, len(data), chunk):
            await conn.execute(
                "WITH a AS (SELECT set_config('synchronous_commit', 'off', true))"
                " INSERT INTO raw_chunks SELECT 1, $1, $2 FROM a",
                index // chunk,
                data[index : index + chunk],
            )
        write = len(data) / MB / (time.perf_counter() - started)
        started = time.perf_counter()
        got = 0
        for index in range(0, (len(data) + chunk - 1) // chunk):
            row = await conn.fetchval(
                "SELECT data FROM raw_chunks WHERE file_id = 1 AND idx = $1", index
            )
            got += len(row)
        assert got == len(data)
        read = len(data) / MB / (time.perf_counter() - started)
        await conn.execute("DROP TABLE raw_chunks")
    finally:
        await conn.close()
    return write, read


async def _chat_latency(port: int, room: int, stop: asyncio.Event) -> list[list[float]]:
    """A post every 20 ms until ``stop``: [wall time, delivered (s), acknowledged (s)] each."""
    sender = await Client.connect_tcp("127.0.0.1", port)
    reader = await Client.connect_tcp("127.0.0.1", port)
    await sender.login("poster", PASSWORD)
    await reader.login("listener", PASSWORD)
    await reader.call("join", room=room)
    out: list[list[float]] = []
    n = 0
    try:
        while not stop.is_set():
            n += 1
            started = time.perf_counter()
            await sender.call("post", room=room, text=f"ping {n}", cid=f"p{n}")
            acked = time.perf_counter() - started
            while True:
                event = await reader.next_event("message", timeout=30)
                if event.get("cid") == f"p{n}":
                    break
            out.append([time.time(), time.perf_counter() - started, acked])
            await asyncio.sleep(0.02)
    finally:
        await sender.close()
        await reader.close()
    return out


async def run(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="chatserver-files-")
    cluster = None
    if args.sqlite:
        url = f"sqlite:///{workdir}/chat.db"
    else:
        cluster = PostgresCluster(settings={"max_wal_size": args.max_wal_size}).start()
        url = cluster.url()
    upgrade(url)
    port, http_port = free_port(), free_port()
    env = dict(
        os.environ,
        CHATSERVER_DATABASE_URL=url,
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{port}",
        CHATSERVER_LISTEN_WEBSOCKET="",
        CHATSERVER_LISTEN_MANAGEMENT="",
        CHATSERVER_LISTEN_HTTP=f"127.0.0.1:{http_port}",
        CHATSERVER_ADMIN_PASSWORD=PASSWORD,
        CHATSERVER_CHAT_MAX_FILE_SIZE_KB=str(args.mb * MB // 1024 + 64),
        CHATSERVER_FILES_ROOM_QUOTA_MB="0",
        CHATSERVER_FILES_CHUNK_KB=os.environ.get("CHATSERVER_FILES_CHUNK_KB", "256"),
        CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="1000",
        CHATSERVER_FILES_UPLOADS_PER_USER_PER_MIN="100000",
        CHATSERVER_FILES_MAX_CONCURRENT_UPLOADS=str(max(args.concurrent, 1)),
        CHATSERVER_FILES_MAX_UPLOADS_PER_USER=str(max(args.concurrent, 1)),
        # every upload here is the same bytes: with dedup each would drop its own copy
        CHATSERVER_FILES_DEDUP="true" if args.dedup else "false",
        MALLOC_MMAP_THRESHOLD_="131072",
        PYTHONPATH=ROOT,  # this checkout's server
    )
    # The node is another process, started once; blocking on its first lines is fine here.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "chatserver", "run", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=workdir,
    )
    base = f"http://127.0.0.1:{http_port}"
    results: dict[str, Any] = {"store": "sqlite" if args.sqlite else "postgresql"}
    try:
        assert proc.stdout is not None
        while "HTTP clients" not in proc.stdout.readline():
            if proc.poll() is not None:
                raise SystemExit("the node did not start")
        admin = await Client.connect_tcp("127.0.0.1", port)
        await admin.login("admin", PASSWORD)
        room = (await admin.call("room.create", name="files", privacy="open"))["room"]["id"]
        chat = (await admin.call("room.create", name="chat", privacy="open"))["room"]["id"]
        assert admin.token is not None
        token = admin.token
        data = os.urandom(args.mb * MB)

        # One small file up and down first: the node's first request reads the room, the
        # user and the session into its caches and prepares its statements (~30 ms, timed
        # apart as first_upload_ms), which is not what a throughput is about.
        started = time.perf_counter()
        warm = await upload(base, token, room, b"warm-up", name="warm.bin", check=False)
        results["first_upload_ms"] = (time.perf_counter() - started) * 1000
        await download(base, token, warm["file"]["id"])
        # Each of --repeat rounds: the file up, down, and the same bytes through asyncpg alone;
        # the median of each (a 20 MB upload lasts ~0.2 s: one run is at the mercy of the
        # machine's scheduler), with the range. The client's own SHA-256 of the file (~50 ms
        # here) is left out of the upload's time.
        ups: list[float] = []
        downs: list[float] = []
        raw: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            reply = await upload(base, token, room, data, name="big.bin", check=False)
            ups.append(args.mb / (time.perf_counter() - started))
            started = time.perf_counter()
            got = await download(base, token, reply["file"]["id"])
            downs.append(args.mb / (time.perf_counter() - started))
            assert got == data
            del got
            if not args.sqlite:
                assert cluster is not None
                raw.append(await _raw_asyncpg(cluster.url(), data, 256 * 1024))
        results["upload_MBps"] = statistics.median(ups)
        results["upload_MBps_range"] = f"{min(ups):.1f}-{max(ups):.1f}"
        results["download_MBps"] = statistics.median(downs)
        results["download_MBps_range"] = f"{min(downs):.1f}-{max(downs):.1f}"
        if raw:
            write = statistics.median(w for w, _ in raw)
            read = statistics.median(r for _, r in raw)
            results["asyncpg_write_MBps"], results["asyncpg_read_MBps"] = write, read
            results["upload_vs_asyncpg"] = results["upload_MBps"] / write
            results["download_vs_asyncpg"] = results["download_MBps"] / read

        if args.concurrent:
            await _users(url)
            before = _status(proc.pid, "VmRSS")
            stop = asyncio.Event()
            probe = None
            if args.inline_probe:
                latency = asyncio.create_task(_chat_latency(port, chat, stop))
            else:
                probe = _ProbeProcess(port, chat)
                await probe.start()
            await asyncio.sleep(1)
            cpu = _cpu_s(proc.pid)
            started = time.perf_counter()
            wall = time.time()
            await asyncio.gather(
                *(
                    upload(base, token, room, data, name=f"c{i}.bin", check=False)
                    for i in range(args.concurrent)
                )
            )
            elapsed = time.perf_counter() - started
            cpu = _cpu_s(proc.pid) - cpu
            stop.set()
            samples = await (latency if probe is None else probe.samples())
            peak = _status(proc.pid, "VmHWM")
            results["concurrent"] = args.concurrent
            results["concurrent_MBps"] = args.concurrent * args.mb / elapsed
            # the node's CPU per GB uploaded: what the machine's other load does not change much
            results["node_cpu_s_per_GB"] = cpu / (args.concurrent * args.mb / 1000)
            results["rss_before_MiB"] = before / 1024
            results["rss_growth_MiB"] = (peak - before) / 1024
            if samples:
                delivered = sorted(sample[1] for sample in samples)
                results["chat_p50_ms"] = statistics.median(delivered) * 1000
                results["chat_p99_ms"] = delivered[int(len(delivered) * 0.99) - 1] * 1000
                results["chat_samples"] = len(delivered)
                slowest = sorted(samples, key=lambda sample: -sample[1])[: args.slowest]
                if slowest:
                    results["chat_slowest"] = " ".join(
                        f"{at - wall:+.2f}s:{took * 1000:.0f}ms(ack {ack * 1000:.0f})"
                        for at, took, ack in slowest
                    )
        await admin.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if cluster is not None:
            cluster.stop()
    for key, value in results.items():
        print(f"{key:22} {value:.1f}" if isinstance(value, float) else f"{key:22} {value}")


async def _users(url: str) -> None:
    from chatserver.passwords import hash_password
    from chatserver.store import users as user_store
    from chatserver.store.db import Database

    db = Database(url)
    try:
        password_hash = await asyncio.to_thread(hash_password, PASSWORD)
        for name in ("poster", "listener"):
            await user_store.create_user(db, name, password_hash)
    finally:
        await db.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.files", description=__doc__)
    p.add_argument("--mb", type=int, default=20, help="file size in MB (10^6 bytes)")
    p.add_argument("--concurrent", type=int, default=50, help="concurrent uploads (0: skip)")
    p.add_argument("--sqlite", action="store_true", help="SQLite storage instead")
    p.add_argument(
        "--max-wal-size",
        default="4GB",
        help="PostgreSQL's max_wal_size (4GB as deploy/compose.yaml; 1GB: its default)",
    )
    p.add_argument("--slowest", type=int, default=0, help="print the N slowest chat posts")
    p.add_argument(
        "--repeat", type=int, default=5, help="rounds of the one-file measurement (median)"
    )
    p.add_argument(
        "--dedup", action="store_true", help="files.dedup on (every upload is a duplicate)"
    )
    p.add_argument(
        "--inline-probe", action="store_true", help="measure chat latency in this process"
    )
    p.add_argument("--probe", help=argparse.SUPPRESS)  # PORT:ROOM: be the latency probe
    args = p.parse_args()
    if args.probe:
        asyncio.run(_probe(args.probe))
        return
    asyncio.run(run(args))


async def _probe(where: str) -> None:
    """The chat latency probe as a process of its own: until its stdin closes, then the
    samples ([wall time, delivered, acknowledged], seconds) as JSON on stdout."""
    port, room = (int(part) for part in where.split(":"))
    stop = asyncio.Event()
    latency = asyncio.create_task(_chat_latency(port, room, stop))
    await asyncio.to_thread(sys.stdin.read)
    stop.set()
    print(json.dumps(await latency))


class _ProbeProcess:
    def __init__(self, port: int, room: int) -> None:
        self._where = f"{port}:{room}"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtest.files",
            "--probe",
            self._where,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )

    async def samples(self) -> list[list[float]]:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.close()
        out, _ = await self._proc.communicate()
        samples: list[list[float]] = json.loads(out)
        return samples


if __name__ == "__main__":
    main()
