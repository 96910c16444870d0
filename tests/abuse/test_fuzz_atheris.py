"""Coverage-guided fuzzing of the client protocol's decoders with atheris (libFuzzer): the
harness is ``tests/abuse/fuzz_codecs.py`` (its docstring says what it checks).

A libFuzzer run ends its process, so each run here is a process of its own. The default run
checks that the harness works, with 20,000 inputs from its seeds (under a second);
``--run-slow`` fuzzes for two minutes (measured here: ~2.3 million inputs a minute, nothing
found). A crash fails the test with libFuzzer's report and the input, kept under tmp_path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.abuse.attack import CHECKOUT

pytest.importorskip("atheris", reason="atheris has no wheel for this platform")


def fuzz(tmp_path: Path, *flags: str, timeout: float) -> None:
    from tests.abuse.fuzz_codecs import seeds

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.abuse.fuzz_codecs",
            "-max_len=20000",
            f"-artifact_prefix={artifacts}/",
            *flags,
            str(corpus),
        ],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = done.stderr[-6000:]
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert done.returncode == 0 and not crashes, f"{crashes}\n{report}"
    assert "Done" in report, report  # libFuzzer's last words after a run that found nothing


def test_the_codec_fuzzer_runs(tmp_path: Path) -> None:
    """Would catch: a harness that no longer runs (an import, a renamed decoder), and any crash
    found from the seeds within 20,000 inputs."""
    fuzz(tmp_path, "-runs=20000", timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fuzz_the_codecs_for_two_minutes(tmp_path: Path) -> None:
    """Would catch: an input for which a decoder raises anything but its protocol error,
    returns something beyond its bounds or that cannot be sent on, or the TCP framing that
    depends on how the stream was cut."""
    fuzz(tmp_path, "-max_total_time=120", timeout=300)
