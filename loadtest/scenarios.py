"""The scenarios, parent side: set up, command the workers phase by phase, summarise.

Each ``run_<name>(args, stack)`` returns a result dict (phases, summary, targets). Sizes come
from the command line; ``--smoke`` picks tiny ones (used by tests/loadtest/test_smoke.py).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from chatserver.store.dsn import parse
from chatserver.testing import free_port

from .lean import connect
from .pool import Workers
from .stack import ProcStats, Stack, provision
from .stats import Phase

FAST_NODE = {
    # The node's per-user post bucket (default 20/s) would cap a benchmark, not the server.
    "CHATSERVER_LIMITS_POSTS_PER_USER_PER_S": "1000000",
}


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def cpu_split(phase: Phase) -> str:
    node = phase.extra.get("node", {})
    other = phase.extra.get("cpu_pct", {})
    return (
        f"{node.get('cpu_pct')} / {other.get('postgres')} / {other.get('generator')}"
        f" (node runnable but waiting for a CPU: {node.get('runqueue_wait_pct')}%)"
    )


def per_op_us(phase: Phase, counter: str) -> float | None:
    """Node CPU time per operation: comparable across runs on a shared, busy machine."""
    n = phase.totals.get(counter, 0)
    cpu = phase.extra.get("node", {}).get("cpu_s")
    return round(1e6 * cpu / n, 2) if n and cpu is not None else None


def users_of(prov: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"index": i, "uid": uid, "name": name, "token": token}
        for i, (uid, name, token) in enumerate(prov["users"])
    ]


# -- profiling ------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` of the node during one phase; the top frames by self time."""

    def __init__(self, pid: int | None, duration: float, out: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = out
        spy = Path(sys.executable).with_name("py-spy")
        if pid is None or not spy.exists():
            return
        self.proc = subprocess.Popen(
            [
                str(spy),
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, int(duration))),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def top(self, n: int = 15) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        if not self.out.exists():
            return None
        self_time: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            total += int(count)
            self_time[frames[-1]] += int(count)
            for frame in set(frames):
                inclusive[frame] += int(count)
        if not total:
            return None
        top = [f"{100 * c / total:5.1f}%  {frame}" for frame, c in self_time.most_common(n)]
        top.append("-- inclusive --")
        top += [
            f"{100 * c / total:5.1f}%  {frame}"
            for frame, c in inclusive.most_common(n + 10)
            if "chatserver" in frame or "asyncpg" in frame or "uvloop" in frame
        ][:n]
        return {"samples": total, "top": top, "file": str(self.out)}


# -- 1. ingest ------------------------------------------------------------------------------


async def ingest_ceiling(
    url: str, duration: float, text_bytes: int, batch: int = 1000
) -> dict[str, Any]:
    """asyncpg inserting message rows in ``batch``-row ``unnest`` transactions, one connection."""
    conn = await asyncpg.connect(**parse(url).asyncpg_args())  # store/dsn.py
    try:
        await conn.execute("DROP TABLE IF EXISTS loadtest_ceiling")
        await conn.execute("CREATE TABLE loadtest_ceiling (LIKE messages INCLUDING ALL)")
        text = "x" * text_bytes
        rows = 0
        seq = 0
        start = time.monotonic()
        while time.monotonic() - start < duration:
            seqs = list(range(seq + 1, seq + batch + 1))
            seq += batch
            await conn.execute(
                """INSERT INTO loadtest_ceiling (room_id, seq, sender_id, cid, text, ts)
                   SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],
                                        $5::text[], $6::bigint[])""",
                [1 + s % 100 for s in seqs],
                seqs,
                [1] * batch,
                [f"c{s}" for s in seqs],
                [text] * batch,
                [int(time.time() * 1000)] * batch,
            )
            rows += batch
        elapsed = time.monotonic() - start
        await conn.execute("DROP TABLE loadtest_ceiling")
    finally:
        await conn.close()
    return {"rows": rows, "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed, 1)}


async def run_ingest(args: Any, stack: Stack) -> dict[str, Any]:
    url = stack.start_store()
    n_users, n_rooms = (20, 10) if args.smoke else (args.users or 400, args.rooms or 200)
    duration = 1.0 if args.smoke else args.duration
    prov = await provision(url, users=n_users, rooms=n_rooms)
    rooms = prov["rooms"]
    users = users_of(prov)
    for u in users:
        u["post"] = [rooms[(u["index"] * 7 + j) % len(rooms)] for j in range(5)]
    phases: list[dict[str, Any]] = []
    print(
        f"ingest: raw ceiling (asyncpg unnest, 1,000-row batches) for {duration:.0f}s",
        file=sys.stderr,
    )
    ceiling = await ingest_ceiling(url, duration, args.text_bytes)
    node = stack.start_node(**FAST_NODE)
    workers = Workers(users, workers=args.workers, sources=args.sources, text_bytes=args.text_bytes)
    workers.node_stats = ProcStats(node.pid)
    workers.postgres_stats = stack.postgres_stats()
    profile = None
    try:
        await workers.phase(
            "connect",
            {"op": "connect", "host": node.host, "port": node.tcp_port},
            main_counter="connected",
            latency="login",
        )
        prof = (
            Profiler(node.pid, duration, Path(tempfile.mkdtemp()) / "ingest.raw")
            if args.profile
            else None
        )
        top = await workers.phase(
            "max", {"op": "run", "duration": duration, "post": {"window": args.window}}
        )
        if prof:
            profile = prof.top()
        max_rate = top.totals.get("acked", 0) / duration
        half = max(1.0, max_rate / 2)
        per_worker = half / workers.count
        paced = await workers.phase(
            "half-rate",
            {
                "op": "run",
                "duration": duration,
                "post": {"window": args.window, "rate": per_worker},
            },
        )
        await workers.phase("disconnect", {"op": "disconnect"}, main_counter="disconnected")
    finally:
        await workers.stop()
    phases = [p.result() for p in workers.phases]
    paced_res = paced.result()
    p99 = paced_res["latency"].get("ack", {}).get("p99_ms")
    ratio = max_rate / ceiling["rows_per_s"] if ceiling["rows_per_s"] else 0
    return {
        "phases": phases,
        "ceiling": ceiling,
        "profile": profile,
        "summary": {
            "acknowledged posts/s (closed loop)": round(max_rate, 1),
            "raw ceiling rows/s (asyncpg unnest 1,000)": ceiling["rows_per_s"],
            "ratio to ceiling": round(ratio, 3),
            "paced rate posts/s": round(paced_res["totals"].get("acked", 0) / duration, 1),
            "CPU % in closed loop (node / PostgreSQL / generator)": cpu_split(top),
            "node CPU µs per acknowledged post": per_op_us(top, "acked"),
            "p99 ack at half rate (ms)": p99,
            "errors": {k: v for k, v in top.totals.items() if k.startswith("err_")},
            "target >= 25,000 posts/s": verdict(max_rate >= 25_000),
            "target >= 0.3 of ceiling": verdict(ratio >= 0.3),
            "target p99 <= 50 ms at half rate": verdict(p99 is not None and p99 <= 50),
        },
    }


# -- 2. fan-out -----------------------------------------------------------------------------


class Broadcaster:
    def __init__(self) -> None:
        self.tcp_port, self.ws_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtest.broadcaster",
                "--tcp",
                str(self.tcp_port),
                "--ws",
                str(self.ws_port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if "ready" not in self.proc.stdout.readline():
            raise SystemExit("the broadcaster did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def ramp(
    workers: Workers,
    label: str,
    members: int,
    room: int,
    *,
    start: float,
    factor: float,
    drain: float,
    steps: int,
    step_s: float,
) -> tuple[float, Phase | None]:
    """Post at rising rates; the top is the best delivered rate of a step that kept up."""
    best = 0.0
    best_phase: Phase | None = None
    done: list[Phase] = []
    rate = start
    for step in range(steps):
        per_worker = rate / workers.count
        phase = await workers.phase(
            f"{label} step {step} ({rate:,.0f} posts/s)",
            {
                "op": "run",
                "duration": step_s,
                "drain": drain,
                "post": {"rate": per_worker, "window": 64, "members": {str(room): members}},
            },
            main_counter="delivered",
            latency="delivery",
        )
        done.append(phase)
        t = phase.totals
        expected = t.get("expected", 0)
        delivered = t.get("delivered", 0)
        # Kept up: the deliveries arrived within the step and its drain, the posters never hit
        # their window, and nobody was told to resync. (No bound on the p99 here: at 10,000
        # members the generator's own reading of 10,000 sockets takes most of a second.)
        kept_up = (
            expected > 0
            and delivered >= 0.95 * expected
            and t.get("skipped", 0) <= 0.01 * max(1, t.get("sent", 0))
            and not t.get("event_resync")
        )
        phase.extra["kept_up"] = kept_up
        if kept_up:
            if delivered / step_s > best:
                best, best_phase = delivered / step_s, phase
        else:
            break
        rate *= factor
    return best, best_phase


async def run_fanout(args: Any, stack: Stack) -> dict[str, Any]:
    url = stack.start_store()
    sizes = [5] if args.smoke else [int(x) for x in args.members.split(",")]
    transports = ["tcp", "websocket"] if args.transport == "both" else [args.transport]
    step_s = 0.5 if args.smoke else args.step
    drain = 0.2 if args.smoke else 1.0
    steps = 1 if args.smoke else args.steps
    n_posters = max(1, args.workers)
    prov = await provision(url, users=max(sizes) + n_posters, rooms=1)
    room = prov["rooms"][0]
    users = users_of(prov)
    for u in users[: max(sizes)]:
        u["subscribe"] = [room]
    for j, u in enumerate(users[max(sizes) :]):
        u["index"] = -1 - j
        u["post"] = [room]
    # Users are dealt to the workers round robin: poster j lands on worker j.
    posters, members_list = users[max(sizes) :], users[: max(sizes)]
    node = stack.start_node(**FAST_NODE)
    ceiling = Broadcaster() if not stack.target and not args.no_ceiling else None
    workers = Workers(
        posters + members_list, workers=n_posters, sources=args.sources, text_bytes=args.text_bytes
    )
    summary: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    try:
        for transport in transports:
            ws = transport == "websocket"
            for m in sizes:
                key = f"{transport} {m}"
                start_rate = (20_000 if not args.smoke else 50) / m
                entry: dict[str, Any] = {}
                targets = [("ceiling", ceiling)] if ceiling else []
                targets.append(("node", None))
                for label, bc in targets:
                    host = node.host
                    port = (
                        (bc.ws_port if ws else bc.tcp_port)
                        if bc
                        else (node.ws_port if ws else node.tcp_port)
                    )
                    workers.node_stats = ProcStats(bc.proc.pid if bc else node.pid)
                    workers.postgres_stats = stack.postgres_stats()
                    await workers.phase(
                        f"{key} {label} connect",
                        {
                            "op": "connect",
                            "host": host,
                            "port": port,
                            "websocket": ws,
                            "max_index": m,
                            "concurrency": 100,
                        },
                        main_counter="connected",
                        latency="login",
                    )
                    prof = None
                    if label == "node" and args.profile:
                        prof = Profiler(
                            node.pid, step_s * steps, Path(tempfile.mkdtemp()) / "fanout.raw"
                        )
                    top, best_phase = await ramp(
                        workers,
                        f"{key} {label}",
                        m,
                        room,
                        start=start_rate,
                        factor=args.factor,
                        steps=steps,
                        step_s=step_s,
                        drain=drain,
                    )
                    if prof:
                        profiles[key] = prof.top()
                    entry[f"{label}_deliveries_per_s"] = round(top, 1)
                    if best_phase is not None:
                        entry[f"{label}_cpu_pct_at_top"] = best_phase.extra.get("node", {}).get(
                            "cpu_pct"
                        )
                        entry[f"{label}_cpu_us_per_delivery"] = per_op_us(best_phase, "delivered")
                        entry[f"{label}_runqueue_wait_pct_at_top"] = best_phase.extra.get(
                            "node", {}
                        ).get("runqueue_wait_pct")
                    if label == "node":
                        half_posts = max(1.0, top / 2 / m)
                        paced = await workers.phase(
                            f"{key} node half-rate ({half_posts:,.0f} posts/s)",
                            {
                                "op": "run",
                                "duration": step_s * 2,
                                "drain": drain,
                                "post": {
                                    "rate": half_posts / workers.count,
                                    "window": 64,
                                    "members": {str(room): m},
                                },
                            },
                            main_counter="delivered",
                            latency="delivery",
                        )
                        lat = paced.result()["latency"].get("delivery", {})
                        entry["p99_delivery_ms_at_half"] = lat.get("p99_ms")
                        entry["node_cpu_pct_at_half"] = paced.extra.get("node", {}).get("cpu_pct")
                    await workers.phase(
                        f"{key} {label} disconnect",
                        {"op": "disconnect"},
                        main_counter="disconnected",
                    )
                c_us, n_us = (
                    entry.get("ceiling_cpu_us_per_delivery"),
                    entry.get("node_cpu_us_per_delivery"),
                )
                if c_us and n_us:
                    # The generator's receivers, not the server, may set both tops on a small
                    # machine; CPU per delivery compares the servers themselves.
                    entry["cpu_efficiency_vs_ceiling"] = round(c_us / n_us, 3)
                    entry["projected_deliveries_per_s_on_one_core"] = round(1e6 / n_us)
                if entry.get("ceiling_deliveries_per_s"):
                    entry["ratio_to_ceiling"] = round(
                        entry["node_deliveries_per_s"] / entry["ceiling_deliveries_per_s"], 3
                    )
                runs[key] = entry
    finally:
        await workers.stop()
        if ceiling:
            ceiling.stop()
    for key, entry in runs.items():
        summary[key] = entry
    tcp1k, ws1k = runs.get("tcp 1000"), runs.get("websocket 1000")
    if tcp1k:
        summary["target >= 1,000,000 deliveries/s TCP at 1,000"] = verdict(
            tcp1k["node_deliveries_per_s"] >= 1_000_000
        )
        summary["target >= 0.5 of ceiling (TCP 1,000)"] = verdict(
            tcp1k.get("ratio_to_ceiling", 0) >= 0.5
        )
        p99 = tcp1k.get("p99_delivery_ms_at_half")
        summary["target p99 <= 50 ms at half rate (TCP 1,000)"] = verdict(
            p99 is not None and p99 <= 50
        )
    if tcp1k and ws1k and tcp1k["node_deliveries_per_s"]:
        r = ws1k["node_deliveries_per_s"] / tcp1k["node_deliveries_per_s"]
        summary["WebSocket / TCP at 1,000"] = round(r, 3)
        summary["target WebSocket >= 0.8 of TCP"] = verdict(r >= 0.8)
    first = next(iter(profiles.values()), None)
    return {
        "phases": [p.result() for p in workers.phases],
        "runs": runs,
        "profile": first,
        "profiles": profiles,
        "summary": summary,
    }


# -- 3. connections -------------------------------------------------------------------------


async def run_connections(args: Any, stack: Stack) -> dict[str, Any]:
    url = stack.start_store()
    n = 20 if args.smoke else args.connections
    idle_s = 1.0 if args.smoke else args.idle
    interval = 1.0 if args.smoke else args.ping_interval
    transports = ["tcp", "websocket"] if args.transport == "both" else [args.transport]
    prov = await provision(url, users=n + 1, rooms=0)
    users = users_of(prov)
    probe, users = users[0], users[1:]
    if args.same_user:
        # Every connection resumes one session: the server's cost per connection alone,
        # without its cost per distinct user (compare with a run without --same-user).
        for u in users:
            u["token"] = probe["token"]
    summary: dict[str, Any] = {}
    phases: list[dict[str, Any]] = []
    for transport in transports:
        ws = transport == "websocket"
        node = stack.start_node()
        workers = Workers(users, workers=args.workers, sources=args.sources)
        stats = ProcStats(node.pid)
        workers.node_stats = stats
        workers.postgres_stats = stack.postgres_stats()
        try:
            first = await connect(
                node.host, node.ws_port if ws else node.tcp_port, websocket=ws, token=probe["token"]
            )
            await asyncio.sleep(0.2 if args.smoke else 1.0)
            before = stats.rss_kib()
            await workers.phase(
                f"{transport} connect {n}",
                {
                    "op": "connect",
                    "host": node.host,
                    "port": node.ws_port if ws else node.tcp_port,
                    "websocket": ws,
                    "subscribe": False,
                    "concurrency": 100,
                },
                main_counter="connected",
                latency="login",
            )
            connected = workers.connected
            await asyncio.sleep(0.2 if args.smoke else 2.0)
            after = stats.rss_kib()
            idle = await workers.phase(
                f"{transport} idle", {"op": "run", "duration": idle_s}, main_counter="pongs"
            )
            keep = await workers.phase(
                f"{transport} keep-alive (ping every {interval:g}s)",
                {
                    "op": "run",
                    "duration": max(interval, idle_s),
                    "ping_interval": interval,
                    "drain": 0,
                },
                main_counter="pongs",
                latency="ping",
            )
            await workers.phase(
                f"{transport} disconnect", {"op": "disconnect"}, main_counter="disconnected"
            )
            first.close()
        finally:
            await workers.stop()
            stack.stop_node(node)
        per = (after - before) / max(1, connected)
        limit = 8.0 if ws else 4.0
        keep_cpu = keep.extra.get("node", {}).get("cpu_pct")
        summary[transport] = {
            "connections": connected,
            "distinct users": 1 if args.same_user else connected,
            "rss_kib_before": before,
            "rss_kib_after": after,
            "kib_per_connection": round(per, 2),
            "idle_node_cpu_pct": idle.extra.get("node", {}).get("cpu_pct"),
            "keepalive_node_cpu_pct": keep_cpu,
            "keepalive_pings_per_s": round(connected / interval, 1),
            f"target <= {limit:g} KiB": verdict(per <= limit),
            "target keep-alive <= 5% of a core": verdict(keep_cpu is not None and keep_cpu <= 5),
        }
        phases += [p.result() for p in workers.phases]
    return {"phases": phases, "summary": summary}


# -- 4. join storm --------------------------------------------------------------------------


async def run_join(args: Any, stack: Stack) -> dict[str, Any]:
    url = stack.start_store()
    n_users, n_rooms = (20, 5) if args.smoke else (args.users or 1000, args.rooms or 200)
    duration = 1.0 if args.smoke else args.duration
    backchat = 30
    prov = await provision(url, users=n_users, rooms=n_rooms, backchat=backchat + 10)
    rooms = prov["rooms"]
    users = users_of(prov)
    for u in users:
        u["join"] = rooms
    node = stack.start_node()
    workers = Workers(users, workers=args.workers, sources=args.sources)
    workers.node_stats = ProcStats(node.pid)
    workers.postgres_stats = stack.postgres_stats()
    profile = None
    try:
        await workers.phase(
            "connect",
            {"op": "connect", "host": node.host, "port": node.tcp_port, "subscribe": False},
            main_counter="connected",
            latency="login",
        )
        prof = (
            Profiler(node.pid, duration, Path(tempfile.mkdtemp()) / "join.raw")
            if args.profile
            else None
        )
        storm = await workers.phase(
            "storm",
            {"op": "run", "duration": duration, "join": {"backchat": backchat}},
            main_counter="joins",
            latency="join",
        )
        if prof:
            profile = prof.top()
        top = storm.totals.get("joins", 0) / duration
        paced_rate = 2000.0 if top >= 2000 else max(1.0, top / 2)
        paced = await workers.phase(
            f"paced {paced_rate:,.0f}/s",
            {
                "op": "run",
                "duration": duration,
                "join": {"backchat": backchat, "rate": paced_rate / workers.count},
            },
            main_counter="joins",
            latency="join",
        )
        await workers.phase("disconnect", {"op": "disconnect"}, main_counter="disconnected")
    finally:
        await workers.stop()
    s, p = storm.result(), paced.result()
    p99_storm = s["latency"].get("join", {}).get("p99_ms")
    p99_paced = p["latency"].get("join", {}).get("p99_ms")
    full = storm.totals.get("backchat_full", 0)
    return {
        "phases": [ph.result() for ph in workers.phases],
        "profile": profile,
        "summary": {
            "users": n_users,
            "rooms": n_rooms,
            "joins/s (storm, one join in flight per user)": round(top, 1),
            "p99 join ms (storm)": p99_storm,
            "paced rate joins/s": round(p["totals"].get("joins", 0) / duration, 1),
            "p99 join ms (paced)": p99_paced,
            "joins with a full 30-message backchat": f"{full} of {storm.totals.get('joins', 0)}",
            "CPU % in the storm (node / PostgreSQL / generator)": cpu_split(storm),
            "node CPU µs per join": per_op_us(storm, "joins"),
            "target >= 2,000 joins/s": verdict(top >= 2000),
            "target p99 <= 20 ms (storm)": verdict(p99_storm is not None and p99_storm <= 20),
            "target p99 <= 20 ms (paced)": verdict(p99_paced is not None and p99_paced <= 20),
        },
    }


# -- 5. reference model ---------------------------------------------------------------------

REFERENCE = {
    # Lync Server 2013 Persistent Chat capacity planning (../shared/reference): room classes of
    # 30, 150 and 16,000 users; 24 rooms per user in its performance model, which we split in the
    # proportions of its room model (75% small, 12.5% medium, 12.5% large memberships);
    # chat 24 messages/s and joins 10/s at peak for 80,000 concurrent users.
    "classes": [("small", 30, 18), ("medium", 150, 3), ("large", 16_000, 3)],
    "chat_per_s": 24.0,
    "joins_per_s": 10.0,
    "users": 80_000,
}


def reference_rooms(n_users: int) -> tuple[list[tuple[str, int]], list[list[int]]]:
    """(class, size) per room index and each user's 24 room indexes."""
    rooms: list[tuple[str, int]] = []
    memberships: list[list[int]] = [[] for _ in range(n_users)]
    for name, size, per_user in REFERENCE["classes"]:
        size = min(size, n_users)
        count = max(per_user, math.ceil(n_users * per_user / size))
        base = len(rooms)
        rooms += [(name, 0)] * count
        for u in range(n_users):
            for j in range(per_user):
                memberships[u].append(base + (u * per_user + j) % count)
    sizes = Counter(r for m in memberships for r in m)
    rooms = [(name, sizes[i]) for i, (name, _) in enumerate(rooms)]
    return rooms, memberships


async def run_reference(args: Any, stack: Stack) -> dict[str, Any]:
    url = stack.start_store()
    n_users = 40 if args.smoke else args.users or 2000
    duration = 1.0 if args.smoke else args.duration
    drain = 0.3 if args.smoke else 1.0
    scales = [10.0] if args.smoke else [float(x) for x in args.scales.split(",")]
    classes, memberships = reference_rooms(n_users)
    prov = await provision(url, users=n_users, rooms=len(classes))
    room_ids = prov["rooms"]
    users = users_of(prov)
    for u, member_of in zip(users, memberships, strict=False):
        ids = [room_ids[i] for i in member_of]
        u["subscribe"] = ids
        u["post"] = ids
        u["join"] = ids
    members = {str(room_ids[i]): size for i, (_, size) in enumerate(classes)}
    nodes = stack.start_nodes(**FAST_NODE)
    node = nodes[0]
    # With a pool, worker i's users connect to node i % N: rooms span nodes, so most deliveries
    # cross a peer link.
    workers = Workers(
        users,
        workers=max(args.workers, len(nodes)),
        sources=args.sources,
        text_bytes=args.text_bytes,
    )
    workers.node_stats = ProcStats([n.pid for n in nodes])
    workers.postgres_stats = stack.postgres_stats()
    results = {}
    profile = None
    try:
        await workers.phase(
            "connect and join 24 rooms each",
            {"op": "connect", "concurrency": 50},
            per_worker=[
                {"host": nodes[i % len(nodes)].host, "port": nodes[i % len(nodes)].tcp_port}
                for i in range(workers.count)
            ],
            main_counter="joins",
            latency="join",
        )
        for scale in scales:
            chat = REFERENCE["chat_per_s"] * scale
            joins = REFERENCE["joins_per_s"] * scale
            prof = None
            if args.profile and scale == scales[-1]:
                prof = Profiler(node.pid, duration, Path(tempfile.mkdtemp()) / "reference.raw")
            phase = await workers.phase(
                f"{scale:g}x: chat {chat:,.0f}/s, joins {joins:,.0f}/s",
                {
                    "op": "run",
                    "duration": duration,
                    "drain": drain,
                    "post": {"rate": chat / workers.count, "window": 8, "members": members},
                    "join": {"rate": joins / workers.count, "backchat": 0},
                },
                main_counter="delivered",
                latency="delivery",
            )
            if prof:
                profile = prof.top()
            r = phase.result()
            t = r["totals"]
            results[f"{scale:g}x"] = {
                "chat posts/s acknowledged": round(t.get("acked", 0) / duration, 1),
                "joins/s": round(t.get("joins", 0) / duration, 1),
                "deliveries/s": round(t.get("delivered", 0) / duration, 1),
                "delivered / expected": round(
                    t.get("delivered", 0) / max(1, t.get("expected", 0)), 4
                ),
                "p99 delivery ms": r["latency"].get("delivery", {}).get("p99_ms"),
                "p99 ack ms": r["latency"].get("ack", {}).get("p99_ms"),
                "p99 join ms": r["latency"].get("join", {}).get("p99_ms"),
                "node cpu %": r.get("node", {}).get("cpu_pct"),
                "CPU % (nodes / PostgreSQL / generator)": cpu_split(phase),
                "node CPU µs per delivery": per_op_us(phase, "delivered"),
                "node rss MiB": round(r.get("node", {}).get("rss_kib_after", 0) / 1024, 1),
            }
        await workers.phase("disconnect", {"op": "disconnect"}, main_counter="disconnected")
    finally:
        await workers.stop()
    summary: dict[str, Any] = {
        "users": n_users,
        "rooms": dict(Counter(c for c, _ in classes)),
        "room sizes": {
            c: max(s for cc, s in classes if cc == c) for c, _ in {c: 0 for c, _ in classes}.items()
        },
        "nodes": len(nodes),
        **results,
    }
    last = results.get(f"{scales[0]:g}x", {})
    p99 = last.get("p99 delivery ms")
    summary[f"target p99 delivery <= 100 ms at {scales[0]:g}x"] = verdict(
        p99 is not None and p99 <= 100
    )
    if len(nodes) == 1:
        summary["pending"] = "one node; the target is across a pool: --nodes N (issue 5)"
    return {"phases": [p.result() for p in workers.phases], "profile": profile, "summary": summary}


async def run_pool(args: Any, stack: Stack) -> dict[str, Any]:
    """Scenario 6: the reference model across a pool of ``--nodes`` nodes (default 80,000 users).

    The same run as ``reference``; compare its "node CPU µs per delivery" with a one-node run of
    the same model for the cross-node cost."""
    if stack.pool_size < 2 and not args.smoke:
        raise SystemExit("pool: give --nodes N (N >= 2), e.g. --nodes 6")
    if not args.users and not args.smoke:
        args.users = 80_000
    if args.connect_only:
        return await pool_connections(args, stack)
    result = await run_reference(args, stack)
    result["summary"].pop("pending", None)
    return result


async def pool_connections(args: Any, stack: Stack) -> dict[str, Any]:
    """``pool --connect-only``: the users connected and authenticated across the pool, idle and
    then pinging once per ``--ping-interval``; memory and CPU of every node. No rooms: on two
    cores the generator cannot also receive the reference model's traffic for 80,000 users."""
    url = stack.start_store()
    n = 40 if args.smoke else args.users
    prov = await provision(url, users=n, rooms=0)
    users = users_of(prov)
    nodes = stack.start_nodes()
    workers = Workers(
        users,
        workers=max(args.workers, len(nodes), math.ceil(n / 15_000)),
        sources=args.sources,
    )
    stats = [ProcStats(node.pid) for node in nodes]
    workers.node_stats = ProcStats([node.pid for node in nodes])
    workers.postgres_stats = stack.postgres_stats()
    before = [s.rss_kib() for s in stats]
    interval = 1.0 if args.smoke else args.ping_interval
    try:
        await workers.phase(
            f"connect {n} users to {len(nodes)} nodes",
            {"op": "connect", "subscribe": False, "concurrency": 100},
            per_worker=[
                {"host": nodes[i % len(nodes)].host, "port": nodes[i % len(nodes)].tcp_port}
                for i in range(workers.count)
            ],
            main_counter="connected",
            latency="login",
        )
        connected = workers.connected
        await asyncio.sleep(0.2 if args.smoke else 3.0)
        after = [s.rss_kib() for s in stats]
        idle_s = 1.0 if args.smoke else args.idle
        prof = None
        if args.profile:
            prof = Profiler(nodes[0].pid, idle_s, Path(tempfile.mkdtemp()) / "pool-idle.raw")
        idle = await workers.phase("idle", {"op": "run", "duration": idle_s}, main_counter="pongs")
        profile = prof.top() if prof else None
        keep = await workers.phase(
            f"keep-alive (ping every {interval:g}s)",
            {"op": "run", "duration": interval, "ping_interval": interval, "drain": 0},
            main_counter="pongs",
            latency="ping",
        )
        await workers.phase("disconnect", {"op": "disconnect"}, main_counter="disconnected")
    finally:
        await workers.stop()
    grown = sum(after) - sum(before)
    ping = keep.result()["latency"].get("ping", {})
    return {
        "phases": [p.result() for p in workers.phases],
        "profile": profile,
        "summary": {
            "nodes": len(nodes),
            "users connected": connected,
            "node RSS MiB before": [round(k / 1024, 1) for k in before],
            "node RSS MiB after": [round(k / 1024, 1) for k in after],
            "all nodes RSS MiB after": round(sum(after) / 1024, 1),
            "KiB per connection": round(grown / max(1, connected), 2),
            "nodes CPU % idle (sum)": idle.extra.get("node", {}).get("cpu_pct"),
            "nodes CPU % keep-alive (sum)": keep.extra.get("node", {}).get("cpu_pct"),
            "pings/s": round(connected / interval, 1),
            "ping p99 ms": ping.get("p99_ms"),
            "target 80,000 connected users": verdict(connected >= 80_000),
        },
    }


SCENARIOS = {
    "ingest": (run_ingest, "acked", "ack"),
    "fanout": (run_fanout, "delivered", "delivery"),
    "connections": (run_connections, "pongs", "ping"),
    "join": (run_join, "joins", "join"),
    "reference": (run_reference, "delivered", "delivery"),
    "pool": (run_pool, "delivered", "delivery"),
}
