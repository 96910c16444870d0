"""Smoke runs of the benchmarks, so they never rot (no timing or size assertions).

Every scenario of ``python -m loadtest`` runs at a tiny size against its own throwaway
PostgreSQL cluster and node; the test checks that it finished and wrote a sane result file.
The scenarios run concurrently to keep the wall time of this file short.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ["ingest", "fanout", "connections", "join", "reference", "pool"]
EXTRA = {"pool": ["--nodes", "2"]}

needs_postgres = pytest.mark.skipif(
    not shutil.which("initdb") or not shutil.which("pg_ctl"),
    reason="initdb and pg_ctl are needed for a throwaway PostgreSQL cluster",
)

# The module's fixture runs every scenario (two at a time, each with its own cluster and node):
# about a minute on an idle 2-core machine, several on a loaded one. Each run has its own 120 s
# bound below; this bound covers them all.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("loadtest")
    env = dict(os.environ, LOADTEST_PROGRESS="0")

    def start(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtest",
                name,
                "--smoke",
                "--workers",
                "1",
                "--out",
                str(out),
                *EXTRA.get(name, []),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    runs: dict[str, Any] = {}
    # Two at a time: the machine has few cores, and each run has its own cluster and node.
    for pair in (SCENARIOS[i : i + 2] for i in range(0, len(SCENARIOS), 2)):
        procs = {name: start(name) for name in pair}
        for name, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            path = out / f"{name}.json"
            runs[name] = {
                "returncode": proc.returncode,
                "stdout": stdout,
                "stderr": stderr[-4000:],
                "result": json.loads(path.read_text()) if path.exists() else None,
                "out": out,
            }
    return runs


def completed(results: dict[str, Any], name: str) -> dict[str, Any]:
    run = results[name]
    assert run["returncode"] == 0, run["stderr"]
    result = run["result"]
    assert result is not None, run["stderr"]
    assert result["scenario"] == name
    assert result["machine"]["cpu_count"] >= 1
    assert len(result["machine"]["loadavg"]) == 3
    assert result["phases"], result
    for phase in result["phases"]:
        assert phase["duration_s"] >= 0
    assert (run["out"] / f"{name}.md").exists()
    assert (run["out"] / f"{name}.png").stat().st_size > 0
    return result  # type: ignore[no-any-return]


def phase(result: dict[str, Any], pattern: str) -> dict[str, Any]:
    matching = [p for p in result["phases"] if re.search(pattern, p["name"])]
    assert matching, [p["name"] for p in result["phases"]]
    found = dict(matching[0])
    found["totals"] = Totals(found["totals"], result)
    return found


class Totals(dict[str, int]):
    """A phase's counters; a missing one is 0 (and a failed check shows every phase's)."""

    def __init__(self, totals: dict[str, int], result: dict[str, Any]) -> None:
        super().__init__(totals)
        self.context = [(p["name"], p["totals"], p.get("workers")) for p in result["phases"]]

    def __missing__(self, key: str) -> int:
        return 0

    def __repr__(self) -> str:
        return f"{dict(self)} in {self.context}"


@needs_postgres
def test_ingest_smoke(results: dict[str, Any]) -> None:
    result = completed(results, "ingest")
    top = phase(result, "^max$")
    assert top["totals"]["acked"] > 0
    assert top["latency"]["ack"]["count"] > 0
    assert top["latency"]["ack"]["p99_ms"] > 0
    assert result["ceiling"]["rows"] > 0
    assert not result["summary"]["errors"]


@needs_postgres
def test_fanout_smoke(results: dict[str, Any]) -> None:
    result = completed(results, "fanout")
    for transport in ("tcp", "websocket"):
        run = result["runs"][f"{transport} 5"]
        assert run["node_deliveries_per_s"] > 0, run
        assert run["ceiling_deliveries_per_s"] > 0, run
        step = phase(result, rf"^{transport} 5 node step 0")
        assert step["totals"]["delivered"] > 0
        assert step["totals"]["acked"] > 0
        assert step["latency"]["delivery"]["count"] > 0


@needs_postgres
def test_connections_smoke(results: dict[str, Any]) -> None:
    result = completed(results, "connections")
    for transport in ("tcp", "websocket"):
        summary = result["summary"][transport]
        assert summary["connections"] == 20, summary
        assert summary["rss_kib_after"] > 0
        keep = phase(result, rf"^{transport} keep-alive")
        assert keep["totals"]["pongs"] > 0


@needs_postgres
def test_join_smoke(results: dict[str, Any]) -> None:
    result = completed(results, "join")
    storm = phase(result, "^storm$")
    assert storm["totals"]["joins"] > 0
    # Every room was seeded with more than 30 messages: each join returns the full backchat.
    assert storm["totals"]["backchat_full"] == storm["totals"]["joins"]


@needs_postgres
def test_reference_smoke(results: dict[str, Any]) -> None:
    result = completed(results, "reference")
    setup = phase(result, "^connect and join")
    assert setup["totals"]["joins"] == 40 * 24
    run = phase(result, r"^10x")
    assert run["totals"]["acked"] > 0
    assert run["totals"]["delivered"] > 0
    assert run["totals"]["joins"] > 0


@needs_postgres
def test_pool_smoke(results: dict[str, Any]) -> None:
    result = completed(results, "pool")
    assert result["summary"]["nodes"] == 2
    run = phase(result, r"^10x")
    assert run["totals"]["acked"] > 0
    assert run["totals"]["delivered"] > 0


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
