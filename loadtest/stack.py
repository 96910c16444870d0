"""What the load generator measures: a node on a throwaway PostgreSQL, or a running deployment.

- :class:`Stack` starts a :class:`chatserver.testing.PostgresCluster`, runs ``chatserver migrate``
  and starts nodes as real ``python -m chatserver run`` subprocesses configured with
  ``CHATSERVER_*`` environment variables. ``nodes > 1`` is reserved for the pool (issue 5).
- With ``--target host:port`` nothing is started; ``--database-url`` names the deployment's store
  so that the simulated users, sessions and rooms can be provisioned in it.
- Provisioning writes straight into the store with asyncpg (one password hash for every simulated
  user, session tokens inserted with their SHA-256): 15,000 scrypt logins would take minutes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from chatserver.passwords import hash_password
from chatserver.store.dsn import parse
from chatserver.testing import PostgresCluster, free_port

ADMIN_PASSWORD = "loadtest-admin"
USER_PASSWORD = "loadtest-user"


@dataclass
class Node:
    host: str
    tcp_port: int
    ws_port: int
    proc: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def _drain(stream: Any, keep: str | None = None) -> None:
    if keep is None:
        for _ in stream:
            pass
        return
    with open(keep, "a") as out:
        for line in stream:
            out.write(line)
            out.flush()


class ProcStats:
    """CPU seconds and RSS of a process (or the sum over several), from /proc."""

    def __init__(self, pid: int | list[int | None] | None) -> None:
        self._pids = [p for p in (pid if isinstance(pid, list) else [pid]) if p is not None]
        self.ticks = os.sysconf("SC_CLK_TCK")

    @property
    def pids(self) -> list[int]:
        return self._pids

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / self.ticks
        return total

    def runqueue_wait_s(self) -> float:
        """Seconds the threads were runnable but waiting for a CPU (/proc/PID/task/*/schedstat):
        how much a busy, shared machine held the process back."""
        total = 0
        for pid in self.pids:
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    total += int((task / "schedstat").read_text().split()[1])
            except (OSError, ValueError, IndexError):
                continue
        return total / 1e9

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmRSS:\s+(\d+)", status)
            total += int(match.group(1)) if match else 0
        return total


class TreeStats(ProcStats):
    """A process and its children (PostgreSQL's postmaster and its backends). Children that
    exit between two samples take their CPU time with them, so this is a lower bound."""

    @property
    def pids(self) -> list[int]:
        if not self._pids:
            return []
        root = self._pids[0]
        found = [root]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == root:
                found.append(int(entry.name))
        return found


class Stack:
    def __init__(
        self,
        *,
        target: str | None = None,
        database_url: str | None = None,
        nodes: int = 1,
        fsync: bool = True,
        node_env: dict[str, str] | None = None,
        server_ref: str | None = None,
        node_gc_threshold: int = 0,
    ) -> None:
        self.pool_size = nodes
        self.pool_secret = secrets.token_hex(32)
        self.target = target
        self.database_url = database_url
        self.fsync = fsync
        self.node_env = node_env or {}
        self.cluster: PostgresCluster | None = None
        self.nodes: list[Node] = []
        self.node_gc_threshold = node_gc_threshold
        self.server_dir: str | None = None  # None: the working tree
        self.server_commit = git_commit("HEAD")
        if server_ref:
            self.server_dir, self.server_commit = snapshot(server_ref)

    # -- store --------------------------------------------------------------------------------

    def start_store(self) -> str:
        if self.database_url:
            return self.database_url
        self.cluster = PostgresCluster(fsync=self.fsync).start()
        self.database_url = self.cluster.url()
        subprocess.run(
            [sys.executable, "-m", "chatserver", "migrate"],
            env=self._env(),
            check=True,
            capture_output=True,
            cwd=self.server_dir,
        )
        return self.database_url

    def postgres_stats(self) -> ProcStats | None:
        if self.cluster is None:
            return None
        try:
            pid = int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return TreeStats(pid)

    def _env(self, **extra: str) -> dict[str, str]:
        assert self.database_url is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
        env.update(
            CHATSERVER_DATABASE_URL=self.database_url,
            CHATSERVER_ADMIN_PASSWORD=ADMIN_PASSWORD,
            CHATSERVER_LISTEN_MANAGEMENT="",
            CHATSERVER_LISTEN_HTTP="",
            CHATSERVER_LISTEN_PEER="",
            # The generator logs thousands of users in at once from a few 127.0.0.x addresses:
            # the per-address limit on connections still logging in would cap the benchmark.
            CHATSERVER_LIMITS_MAX_UNAUTHENTICATED_PER_ADDRESS="0",
        )
        env.update(extra)
        return env

    # -- nodes --------------------------------------------------------------------------------

    def start_node(self, **env: str) -> Node:
        if self.target:
            host, port = self.target.rsplit(":", 1)
            ws_port = (
                int(self.node_env.get("ws_port", 0)) or int(port) + 39
            )  # 5041 → 5080 by default
            node = Node(host, int(port), ws_port)
            self.nodes.append(node)
            return node
        port, ws_port = free_port(), free_port()
        if self.pool_size > 1:
            # A pool member (issue 5): nodes find each other through the shared store.
            env = {
                "CHATSERVER_NODE_NAME": f"lt-node{len(self.nodes) + 1}",
                "CHATSERVER_POOL_ENABLED": "true",
                "CHATSERVER_POOL_SECRET": self.pool_secret,
                "CHATSERVER_POOL_MAX_ACTIVE": str(max(4, self.pool_size)),
                "CHATSERVER_LISTEN_PEER": f"127.0.0.1:{free_port()}",
                **env,
            }
        node_env = self._env(
            CHATSERVER_LISTEN_TCP=f"127.0.0.1:{port}",
            CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{ws_port}",
            CHATSERVER_LIMITS_AUTH_TIMEOUT_S="3600",
            **env,
        )
        # Started once per measurement; blocking on its first lines is fine here.
        # LOADTEST_NODE_LOG=FILE keeps the nodes' output (at info level) for a post-mortem.
        node_log = os.environ.get("LOADTEST_NODE_LOG")
        level = "info" if node_log else "warning"
        command = [sys.executable, "-m", "chatserver", "run", "--log-level", level]
        if self.node_gc_threshold:
            # An experiment, not a server change: the same node with the collector's first
            # threshold raised (how much of the fan-out cost is garbage collection?).
            command = [
                sys.executable,
                "-c",
                f"import gc, sys; gc.set_threshold({int(self.node_gc_threshold)}, 10, 10); "
                "sys.argv = ['chatserver', 'run', '--log-level', 'warning']; "
                "from chatserver.cli import main; main()",
            ]
        proc = subprocess.Popen(
            command,
            env=node_env,
            stdout=subprocess.PIPE,
            text=True,
            cwd=self.server_dir,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while True:
            line = proc.stdout.readline()
            if "websocket clients" in line:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the node did not start")
        # Keep reading its output so that the pipe never fills and blocks the node.
        threading.Thread(target=_drain, args=(proc.stdout, node_log), daemon=True).start()
        node = Node("127.0.0.1", port, ws_port, proc, node_env)
        self.nodes.append(node)
        return node

    def start_nodes(self, **env: str) -> list[Node]:
        """One node, or ``nodes`` pool members (then give the peer links a moment to form)."""
        started = [self.start_node(**env) for _ in range(self.pool_size if not self.target else 1)]
        if len(started) > 1:
            time.sleep(5)
        return started

    def stop_node(self, node: Node) -> None:
        if node.proc is not None:
            node.proc.terminate()
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        if node in self.nodes:
            self.nodes.remove(node)

    def stop(self) -> None:
        for node in list(self.nodes):
            self.stop_node(node)
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.server_dir:
            shutil.rmtree(self.server_dir, ignore_errors=True)


ROOT = Path(__file__).resolve().parent.parent


def git_commit(ref: str) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def snapshot(ref: str) -> tuple[str, str]:
    """The server at a commit (``git archive`` of chatserver/ and migrations/), so that a
    benchmark measures a known version and not files that are being edited."""
    commit = git_commit(ref)
    target = tempfile.mkdtemp(prefix="loadtest-server-")
    archive = subprocess.run(
        ["git", "archive", commit, "chatserver", "migrations"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    return target, commit


# -- provisioning ---------------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def provision(
    url: str,
    *,
    users: int,
    rooms: int,
    prefix: str | None = None,
    backchat: int = 0,
    text_bytes: int = 100,
) -> dict[str, Any]:
    """Create ``users`` users with one session token each and ``rooms`` open rooms in the
    category General (which allows everyone), each with ``backchat`` stored messages."""
    prefix = prefix or f"lt{secrets.token_hex(3)}"
    now = int(time.time() * 1000)
    pw = hash_password(USER_PASSWORD)
    conn = await asyncpg.connect(**parse(url).asyncpg_args())  # store/dsn.py
    try:
        async with conn.transaction():
            user_ids = await conn.fetch(
                """INSERT INTO users (name, display_name, password_hash, is_admin, created_ms)
                   SELECT n, n, $2, false, $3 FROM unnest($1::text[]) AS n RETURNING id, name""",
                [f"{prefix}-u{i}" for i in range(users)],
                pw,
                now,
            )
            ids = [
                r["id"] for r in sorted(user_ids, key=lambda r: int(r["name"].rsplit("u", 1)[1]))
            ]
            tokens = [f"{prefix}-{i}-{secrets.token_urlsafe(16)}" for i in range(users)]
            await conn.execute(
                """INSERT INTO sessions (token_hash, user_id, created_ms, expires_ms)
                   SELECT h, u, $3, $4 FROM unnest($1::text[], $2::bigint[]) AS t(h, u)""",
                [token_hash(t) for t in tokens],
                ids,
                now,
                now + 86_400_000,
            )
            room_rows = await conn.fetch(
                """INSERT INTO rooms (name, description, last_seq, created_ms, category_id,
                                      privacy, type, disabled, invitations)
                   SELECT n, '', $2, $3, 1, 'open', 'normal', false, 'inherit'
                   FROM unnest($1::text[]) AS n RETURNING id, name""",
                [f"{prefix}-r{i}" for i in range(rooms)],
                backchat,
                now,
            )
            room_ids = [
                r["id"] for r in sorted(room_rows, key=lambda r: int(r["name"].rsplit("r", 1)[1]))
            ]
            if backchat and room_ids:
                text = "x" * text_bytes
                n = len(room_ids) * backchat
                await conn.execute(
                    """INSERT INTO messages (room_id, seq, sender_id, cid, text, ts)
                       SELECT r, s, $3, 'seed-' || r || '-' || s, $4, $5
                       FROM unnest($1::bigint[], $2::bigint[]) AS t(r, s)""",
                    [r for r in room_ids for _ in range(backchat)],
                    [s for _ in room_ids for s in range(1, backchat + 1)],
                    ids[0],
                    text,
                    now,
                )
                assert n > 0
    finally:
        await conn.close()
    return {
        "prefix": prefix,
        "users": [
            [uid, f"{prefix}-u{i}", tok]
            for i, (uid, tok) in enumerate(zip(ids, tokens, strict=False))
        ],
        "rooms": room_ids,
    }
