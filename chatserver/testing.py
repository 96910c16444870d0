"""A throwaway PostgreSQL cluster for tests and benchmarks.

``initdb`` and ``pg_ctl`` must be on ``PATH``. PostgreSQL refuses to run as root, so when this
process is root the cluster runs as the ``postgres`` system user (created by Debian's package).
The cluster listens on a free loopback port with ``trust`` authentication and is removed on stop.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    def __init__(self, *, fsync: bool = True, settings: dict[str, str] | None = None) -> None:
        """``settings``: more server settings (``-c name=value``), e.g. a benchmark's."""
        self.settings = dict(settings or {})
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="chatserver-pg-"))
        self.data = self.root / "data"
        self.fsync = fsync
        self._as_user: list[str] = []
        self.user = "postgres"
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # raises KeyError if there is no such user
            shutil.chown(self.root, "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, cwd=self.root)

    def start(self) -> PostgresCluster:
        if not shutil.which("initdb") or not shutil.which("pg_ctl"):
            raise RuntimeError("initdb and pg_ctl must be on PATH to start a PostgreSQL cluster")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            self.user,
            "-E",
            "UTF8",
            "--no-locale",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.root}"
            f" -c max_connections=300 -c shared_buffers=256MB"
            f" -c fsync={'on' if self.fsync else 'off'}"
            " -c synchronous_commit=on -c log_min_messages=warning"
            + "".join(f" -c {name}={value}" for name, value in self.settings.items())
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    async def create_database(self, name: str, template: str | None = None) -> str:
        import asyncpg

        conn = await asyncpg.connect(self.url())
        try:
            suffix = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{suffix}')
        finally:
            await conn.close()
        return self.url(name)

    def stop(self) -> None:
        self.crash()
        shutil.rmtree(self.root, ignore_errors=True)

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every process ends at once, nothing is flushed that was
        not already (what a power cut leaves, as far as the data directory goes)."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass


class ReplicaCluster(PostgresCluster):
    """A streaming replica of ``primary``: ``pg_basebackup -R`` of it, started on its own port.

    ``synchronous`` makes the primary wait for this replica on every commit
    (``synchronous_standby_names``, with the primary's ``synchronous_commit=on``): a commit
    acknowledged by the primary is then on the replica's disk too. :meth:`promote` is
    ``pg_ctl promote``; the primary is still the caller's to stop (or :meth:`crash`).
    """

    def __init__(
        self, primary: PostgresCluster, *, synchronous: bool = True, via_port: int | None = None
    ) -> None:
        super().__init__(fsync=primary.fsync)
        self.primary = primary
        self.synchronous = synchronous
        self.name = f"replica{self.port}"
        # Stream through this port of 127.0.0.1 (a proxy standing for the network between two
        # sites, loadtest/failover.py) instead of the primary's own.
        self.via_port = via_port

    def start(self) -> ReplicaCluster:
        if not shutil.which("pg_basebackup"):
            raise RuntimeError("pg_basebackup must be on PATH to make a replica")
        self._run(
            "pg_basebackup",
            "-D",
            str(self.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.via_port or self.primary.port),
            "-U",
            self.primary.user,
            "-X",
            "stream",
            "-R",  # standby.signal and primary_conninfo
            "--checkpoint=fast",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.root}"
            f" -c max_connections=300 -c shared_buffers=128MB"
            f" -c fsync={'on' if self.fsync else 'off'} -c cluster_name={self.name}"
            " -c synchronous_commit=on -c log_min_messages=warning -c hot_standby=on"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
            "start",
        )  # fmt: skip
        return self

    async def wait_streaming(self, timeout: float = 30.0) -> None:
        """Until the primary lists this replica as streaming (and, if synchronous, as ``sync``),
        after setting ``synchronous_standby_names`` on the primary when asked to."""
        import asyncio

        import asyncpg

        conn = await asyncpg.connect(self.primary.url())
        try:
            if self.synchronous:
                await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{self.name}'")
                await conn.execute("SELECT pg_reload_conf()")
            want = "sync" if self.synchronous else "async"
            async with asyncio.timeout(timeout):
                while True:
                    row = await conn.fetchrow(
                        "SELECT state, sync_state FROM pg_stat_replication"
                        " WHERE application_name = $1",
                        self.name,
                    )
                    if row is not None and row["state"] == "streaming":
                        if row["sync_state"] == want:
                            return
                    await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")
