"""The ``loop_errors`` fixture (conftest): an error the event loop saw and nobody handled fails
the test that caused it."""

from __future__ import annotations

import asyncio
import gc
import textwrap
from pathlib import Path

import pytest

from tests.conftest import LoopErrors

ROOT = Path(__file__).resolve().parents[1]


async def _boom() -> None:
    raise ValueError("boom from a background task")


async def test_the_recorder_sees_a_task_exception_nobody_retrieved(loop_errors: LoopErrors) -> None:
    task = asyncio.get_running_loop().create_task(_boom())
    await asyncio.sleep(0)
    assert task.done()
    del task
    gc.collect()  # the task reports its exception from its finalizer
    assert len(loop_errors.contexts) == 1
    context = loop_errors.contexts[0]
    assert context["message"] == "Task exception was never retrieved"
    assert isinstance(context["exception"], ValueError)
    assert "boom from a background task" in loop_errors.describe()
    loop_errors.contexts.clear()  # seen on purpose: this test passes


async def test_a_retrieved_exception_is_not_reported(loop_errors: LoopErrors) -> None:
    task = asyncio.get_running_loop().create_task(_boom())
    with pytest.raises(ValueError):
        await task
    del task
    gc.collect()
    assert loop_errors.contexts == []


def test_tests_that_leave_errors_behind_fail(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a separate pytest run, using this suite's conftest: each of the three ways fails."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = session
        asyncio_default_test_loop_scope = session
        """
    )
    pytester.makeconftest("from tests.conftest import loop_errors, pytest_asyncio_loop_factories\n")
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            """
            import asyncio

            async def boom():
                raise ValueError("boom from a background task")

            async def test_task_dies_unobserved():
                asyncio.get_running_loop().create_task(boom())
                await asyncio.sleep(0.01)

            async def test_callback_raises():
                def callback():
                    raise KeyError("raised in a callback")

                asyncio.get_running_loop().call_soon(callback)
                await asyncio.sleep(0.01)

            def test_task_dies_on_another_loop():
                async def main():
                    asyncio.get_running_loop().create_task(boom())
                    await asyncio.sleep(0.01)

                asyncio.run(main())

            async def test_clean():
                task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
                await task
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=3)
    output = result.stdout.str()
    assert output.count("Task exception was never retrieved") >= 2
    assert "ValueError: boom from a background task" in output
    assert "KeyError: 'raised in a callback'" in output
    result.stdout.fnmatch_lines(
        [
            "ERROR test_inner.py::test_task_dies_unobserved - *",
            "ERROR test_inner.py::test_callback_raises - *",
            "ERROR test_inner.py::test_task_dies_on_another_loop - *",
        ]
    )
