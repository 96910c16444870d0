"""Where ``python -m loadtest`` writes when ``--out`` is not given: a folder git ignores.

Raw benchmark output is never tracked (loadtest/RESULTS.md carries the numbers with their
commands and commits); a run that wrote into the tree by default dirtied it every time.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from loadtest.__main__ import parser

ROOT = Path(__file__).resolve().parents[2]


def _ignored(path: Path) -> bool:
    """``git check-ignore``: 0 ignored, 1 not ignored, anything else an error."""
    done = subprocess.run(
        ["git", "check-ignore", "--quiet", str(path.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


@pytest.fixture(scope="module")
def default_out() -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is needed")
    inside = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True, check=False
    )
    if inside.returncode != 0:
        pytest.skip("not a git checkout")
    out = parser().parse_args(["ingest"]).out
    assert isinstance(out, Path)
    return out.resolve()


def test_default_out_is_ignored_by_git(default_out: Path) -> None:
    assert default_out.is_relative_to(ROOT)
    # What a run writes there (the folder need not exist yet).
    for name in ("ingest.json", "ingest.md", "ingest.png"):
        assert _ignored(default_out / name), default_out / name
    # The check tells the two apart: the published results are not ignored.
    assert not _ignored(ROOT / "loadtest" / "RESULTS.md")


def test_default_out_is_not_the_tracked_results(default_out: Path) -> None:
    results = (ROOT / "loadtest" / "results").resolve()
    assert not default_out.is_relative_to(results)
    assert not results.is_relative_to(default_out)
