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
    def __init__(self, *, fsync: bool = True) -> None:
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
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
