"""``db_url`` on SQLite only, for the transport and codec attacks: they exercise the transports
and the codec, not the store. A test module defines its own ``db_url`` fixture returning
:func:`sqlite_url` to override the suite's
(``tests/conftest.py``, both dialects); the attacks that touch the store (secret rooms, tokens,
the login throttle, a full disk) keep both dialects.
"""

from __future__ import annotations

import asyncio
from pathlib import Path


async def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite store under ``tmp_path`` (a module's ``db_url`` fixture returns it)."""
    from chatserver.store.migrate import upgrade

    url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, url)
    return url
