"""Smoke runs of the benchmarks, so they never rot (no timing or size assertions)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_idle_memory_smoke() -> None:
    result = subprocess.run(
        [sys.executable, "loadtest/idle_memory.py", "--connections", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for transport in ("tcp", "websocket"):
        assert re.search(
            rf"^{transport}: 20 idle authenticated connections: -?[\d.]+ KiB", result.stdout, re.M
        ), result.stdout
