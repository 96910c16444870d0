"""A smoke run of the export/import benchmark (``python -m loadtest.export``), so it never rots:
a few hundred messages and files on SQLite (no cluster to start). The round trip's comparison is
asserted (it is the benchmark's own check); no time or memory number is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)  # four `chatserver` processes on a shared machine
def test_export_benchmark_round_trip_is_identical() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["--target", "sqlite", "--messages", "600", "--rooms", "3", "--files", "4"]
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.export", *args, "--file-kb", "80"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compared 7" in done.stdout and ": 0 differences" in done.stdout, done.stdout
    assert "peak RSS" in done.stdout
