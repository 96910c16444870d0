"""A smoke run of the files benchmark (``python -m loadtest.files``), so it never rots: a tiny
file, two concurrent uploads, on SQLite (no cluster to start); no number is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_files_benchmark_runs() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.files", "--sqlite", "--mb", "1", "--concurrent", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines() if line.strip())
    assert lines["store"] == "sqlite"
    for key in ("upload_MBps", "download_MBps", "rss_growth_MiB", "chat_p99_ms"):
        assert float(lines[key]) >= 0, key
