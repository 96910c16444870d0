"""chatserver.store.health without a store: which errors mean the store failed, and the log
lines a change of state makes (the real thing: tests/store/test_store_faults.py)."""

from __future__ import annotations

import logging
import time

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from chatserver.store.health import (
    StoreHealth,
    StoreUnavailable,
    acquire_failed,
    as_unavailable,
    describe,
    unreachable,
)


def test_a_log_reason_is_never_empty() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(ValueError("first line\nsecond")) == "ValueError: first line"


@pytest.mark.parametrize(
    ("error", "store_failed"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle"), True),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), True),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
        (sa_exc.DBAPIError("SELECT 1", None, ValueError("x"), connection_invalidated=True), True),
        (sa_exc.IntegrityError("INSERT", None, ValueError("duplicate")), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_errors_mean_the_store_failed(error: BaseException, store_failed: bool) -> None:
    assert unreachable(error) is store_failed
    health = StoreHealth()
    result = as_unavailable(
        error, expired=False, timeout_s=5, health=health, started=time.monotonic()
    )
    assert isinstance(result, StoreUnavailable) is store_failed
    assert health.available is not store_failed
    if not store_failed:
        assert result is error  # a statement's own error goes through unchanged


def test_a_connection_not_got_in_time_is_unavailable_but_not_a_store_failure() -> None:
    health = StoreHealth()
    for error in (TimeoutError(), sa_exc.TimeoutError("QueuePool limit")):
        result = acquire_failed(error, timeout_s=5, health=health, started=time.monotonic())
        assert isinstance(result, StoreUnavailable)
    assert health.available
    refused = acquire_failed(
        ConnectionRefusedError(111, "refused"), timeout_s=5, health=health, started=0
    )
    assert isinstance(refused, StoreUnavailable) and not health.available


def test_one_log_line_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    health = StoreHealth()
    with caplog.at_level(logging.INFO, logger="chatserver.store"):
        for _ in range(100):
            health.failed(TimeoutError(), time.monotonic())
        health.succeeded()
        health.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("store unavailable: TimeoutError")
    assert "100 store operations failed" in lines[1]
    assert health.outages == 1 and health.available


def test_a_failure_begun_before_the_last_success_changes_nothing() -> None:
    """A statement stuck since before the store came back fails at its deadline: that is old
    news, not a new outage."""
    health = StoreHealth()
    begun = time.monotonic()
    time.sleep(0.01)
    health.succeeded()
    health.failed(TimeoutError(), begun)
    assert health.available
    health.failed(TimeoutError(), time.monotonic())
    assert not health.available


async def test_a_deadline_the_node_slept_through_waits_once_more() -> None:
    """A node stopped (SIGSTOP) past a deadline: the answer may be in the socket, unread; the
    connection is given as long again before it is terminated."""
    import asyncio

    from chatserver.store.health import Deadline

    fired: list[float] = []
    started = time.monotonic()
    deadline = Deadline(0.1, lambda: fired.append(time.monotonic() - started))
    time.sleep(1.3)  # noqa: ASYNC251 -- the loop stands still past the deadline (> STALL_S)
    await asyncio.sleep(0.05)
    assert not fired and not deadline.expired
    await asyncio.sleep(0.2)
    assert deadline.expired and len(fired) == 1

    on_time: list[bool] = []
    prompt = Deadline(0.05, lambda: on_time.append(True))
    await asyncio.sleep(0.2)
    assert prompt.expired and on_time == [True]
