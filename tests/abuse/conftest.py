"""Fixtures of the abuse suite.

pytest applies ``tests/conftest.py`` to every test below ``tests/``, so its fixtures (``harness``,
``db_url``, …) are available here unchanged. The attacks exercise the transports and the codec,
not the store, so this package runs them on SQLite only: ``db_url`` is overridden below.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    from chatserver.store.migrate import upgrade

    url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, url)
    return url
