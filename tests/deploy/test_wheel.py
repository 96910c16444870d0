"""``pip install`` of the wheel ``python -m build`` makes, into a fresh virtual environment, and
``chatserver run`` from it on SQLite with nothing else: the package carries everything a node
needs (the migrations among it). Slow: pip fetches the dependencies."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from chatserver.testing import free_port
from tests.conftest import scaled

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


# The test's own environment without PYTHONPATH and friends: with the checkout on the path, pip
# would take chatserver for installed already, and the node would import the checkout's.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("CHATSERVER_", "PYTHON"))}


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


async def test_the_built_wheel_installs_and_runs_a_node(tmp_path: Path) -> None:
    # Build from a copy of the sources, so the checkout gets no build/ or egg-info.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "*.egg-info", "__pycache__"),
    )
    run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", source)
    # (build needs the test environment's packages: it runs with the test's interpreter.)
    (wheel,) = (tmp_path / "dist").glob("chatserver-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    # Nothing of the checkout: another directory, no PYTHONPATH, no CHATSERVER_ setting but
    # the listening addresses (free ports, as every test here).
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    management = f"127.0.0.1:{free_port()}"
    env = dict(CLEAN_ENV)
    env.update(
        PYTHONUNBUFFERED="1",  # its lines as they come, through the pipe
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_HTTP=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_MANAGEMENT=management,
    )
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "chatserver"),
        "run",
        cwd=workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(scaled(60)):
            while "compliance capture is" not in "".join(lines):
                line = (await proc.stdout.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
            while await asyncio.to_thread(readyz, f"http://{management}/readyz") != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert (workdir / "var" / "chat.db").exists()  # the SQLite store, made and migrated
        assert "administrator 'admin'" in "".join(lines)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), scaled(30))
    assert proc.returncode == 0, "".join(lines)
