"""deploy/compose.yaml's topology without containers: a PostgreSQL primary with a synchronous
streaming replica (the nodes' URL names both), a separate compliance database, ``chatserver
migrate`` run once, four active nodes and a standby (``LocalPool``: real ``chatserver run``
processes, the pool secret from a file), and the compliance writer with its ``/metrics``."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from chatserver.pool.local import LocalPool, NodeProcess
from chatserver.testing import PostgresCluster, ReplicaCluster, free_port
from tests.conftest import scaled

ACTIVE, STANDBY = 4, 1
TOKEN = "topology-management-token-0123456789"
ADMIN_PASSWORD = "topology-admin-1"


def multi_host_url(primary: PostgresCluster, replica: ReplicaCluster, database: str) -> str:
    """The nodes' URL in compose.yaml's form: both hosts; the driver keeps the primary."""
    return (
        f"postgresql://{primary.user}@/{database}"
        f"?host=127.0.0.1:{primary.port}&host=127.0.0.1:{replica.port}"
    )


async def run_command(*args: str, env: dict[str, str], stdin: str = "") -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatserver",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode()), scaled(120))
    assert proc.returncode == 0, f"chatserver {' '.join(args)}:\n{out.decode()}"
    return out.decode()


def scrape(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=scaled(10)) as response:
        return str(response.read().decode())


@dataclass
class Topology:
    url: str
    compliance_url: str
    env: dict[str, str]
    pool: LocalPool
    writer: NodeProcess
    writer_metrics: str
    management: list[str] = field(default_factory=list)  # each node's host:port

    def node_metrics(self, index: int) -> str:
        node = self.pool.nodes[index]
        try:
            return scrape(f"http://{self.management[index]}/metrics", TOKEN)
        except OSError as exc:
            output = "".join(node.lines[-20:])
            raise AssertionError(f"{node.name}: /metrics: {exc}; its output:\n{output}") from exc

    def all_metrics(self) -> list[str]:
        """Every node's /metrics and the writer's, as Prometheus scrapes them in compose."""
        texts = [self.node_metrics(i) for i in range(len(self.management))]
        return [*texts, scrape(self.writer_metrics)]

    async def stop(self) -> None:
        await asyncio.gather(self.pool.stop(), self.writer.stop(), return_exceptions=True)


async def start_topology(
    primary: PostgresCluster, replica: ReplicaCluster, compliance: PostgresCluster, tmp: Path
) -> Topology:
    await replica.wait_streaming()  # synchronous: every commit is on the replica's disk too
    await primary.create_database("chat", template="template0")
    comp_db = f"compliance_{secrets.token_hex(4)}"
    compliance_url = await compliance.create_database(comp_db, template="template0")
    url = multi_host_url(primary, replica, "chat")
    secret_file = tmp / "pool_secret"
    secret_file.write_text(secrets.token_urlsafe(32) + "\n")
    secret_file.chmod(0o600)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env = {
        **base,
        "CHATSERVER_DATABASE_URL": url,
        "CHATSERVER_COMPLIANCE_ENABLED": "true",
        "CHATSERVER_COMPLIANCE_DATABASE_URL": compliance_url,
        "CHATSERVER_COMPLIANCE_OUTPUT_DIR": str(tmp / "compliance"),
        "PYTHONUNBUFFERED": "1",
    }
    await run_command("migrate", env=env)  # compose's one-time `migrate` service
    await run_command("room", "add", "lobby", env=env)
    await run_command("user", "add", "alice", "--password-stdin", env=env, stdin="alice-pass-1\n")
    await run_command("user", "add", "bob", "--password-stdin", env=env, stdin="bob-pass-12\n")
    pool = LocalPool(
        url,
        env={
            "CHATSERVER_POOL_SECRET": "",
            "CHATSERVER_POOL_SECRET_FILE": str(secret_file),
            "CHATSERVER_POOL_MAX_ACTIVE": str(ACTIVE),
            "CHATSERVER_COMPLIANCE_ENABLED": "true",
            "CHATSERVER_COMPLIANCE_DATABASE_URL": compliance_url,
            "CHATSERVER_MANAGEMENT_TOKEN": TOKEN,
            "CHATSERVER_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CHATSERVER_LOG_FORMAT": "json",
            "CHATSERVER_LOG_CONNECTIONS": "true",
        },
    )
    metrics_port = free_port()
    writer = NodeProcess("compliance-writer", env)
    writer_started = False
    try:
        await asyncio.gather(*(pool.add() for _ in range(ACTIVE)))  # as compose starts them
        for node in pool.nodes:
            await node.wait_for(r"joined as active", scaled(30))
        standby = await pool.add()  # compose's node5 waits for the four to be healthy
        await standby.wait_for(r"joined as standby", scaled(30))
        writer = await start_writer(env, metrics_port)
        writer_started = True
    except BaseException:
        await pool.stop()
        if writer_started:
            await writer.stop()
        raise
    topology = Topology(
        url, compliance_url, env, pool, writer, f"http://127.0.0.1:{metrics_port}/metrics"
    )
    topology.management = [n.env["CHATSERVER_LISTEN_MANAGEMENT"] for n in pool.nodes]
    return topology


async def start_writer(env: dict[str, str], port: int) -> NodeProcess:
    """compose's ``compliance-writer``: ``chatserver compliance run --metrics``."""
    args = ("compliance", "run", "--poll-s", "0.2", "--metrics", f"127.0.0.1:{port}")
    writer = NodeProcess("compliance-writer", env, args=args)
    await writer.start()
    await writer.wait_for(r"compliance writer metrics on", scaled(30))
    return writer
